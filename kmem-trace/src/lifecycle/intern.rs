//! Values equal across records kept once: the lifecycle's task names
//! ([`super::NameTable`]) and the attribution stage's strings share one
//! table. Values no record holds any more (only the table's own reference
//! left) are swept once the table has doubled since the last sweep, so it
//! stays near the size of what is in use without a sweep per insert.

use std::{
    collections::HashSet,
    hash::{BuildHasherDefault, Hash},
    sync::Arc,
};

use super::keymap::KeyHasher;

/// Shared values of type `T`; `MIN` is the size below which no sweep runs.
#[derive(Debug)]
pub struct Interner<T: ?Sized, const MIN: usize> {
    set: HashSet<Arc<T>, BuildHasherDefault<KeyHasher>>,
    sweep_at: usize,
}

impl<T: ?Sized, const MIN: usize> Default for Interner<T, MIN> {
    fn default() -> Self {
        Interner {
            set: HashSet::default(),
            sweep_at: 0,
        }
    }
}

impl<T: ?Sized + Hash + Eq, const MIN: usize> Interner<T, MIN> {
    /// Replaces `v` with the equal value already shared, or shares `v`.
    pub fn share(&mut self, v: &mut Arc<T>) {
        if let Some(x) = self.set.get(&**v) {
            if !Arc::ptr_eq(x, v) {
                *v = x.clone();
            }
            return;
        }
        self.insert(v.clone());
    }

    pub fn share_opt(&mut self, v: &mut Option<Arc<T>>) {
        if let Some(v) = v {
            self.share(v);
        }
    }

    fn insert(&mut self, v: Arc<T>) {
        if self.set.len() >= self.sweep_at {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = (self.set.len() * 2).max(MIN);
        }
        self.set.insert(v);
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

impl<T: Hash + Eq, const MIN: usize> Interner<T, MIN> {
    /// The shared value equal to `v` (allocated only when it is new).
    pub fn intern(&mut self, v: T) -> Arc<T> {
        if let Some(a) = self.set.get(&v) {
            return a.clone();
        }
        let a = Arc::new(v);
        self.insert(a.clone());
        a
    }
}
