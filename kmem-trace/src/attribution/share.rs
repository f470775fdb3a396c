//! Shared attribution strings: a node's memcgs repeat the same few (a pod's
//! UID, name and namespace in each of its memcgs, an image in every container
//! that runs it), so equal strings are kept once. Strings no attribution
//! holds any more are swept once the table has doubled since the last sweep.

use std::{collections::HashSet, hash::BuildHasherDefault, sync::Arc};

use crate::lifecycle::keymap::KeyHasher;

#[derive(Debug, Default)]
pub struct SharedStrs {
    set: HashSet<Arc<str>, BuildHasherDefault<KeyHasher>>,
    sweep_at: usize,
}

impl SharedStrs {
    /// Replaces `s` with the equal string already shared, or shares `s`.
    pub fn share(&mut self, s: &mut Arc<str>) {
        if let Some(x) = self.set.get(&**s) {
            if !Arc::ptr_eq(x, s) {
                *s = x.clone();
            }
            return;
        }
        if self.set.len() >= self.sweep_at {
            self.set.retain(|a| Arc::strong_count(a) > 1);
            self.sweep_at = (self.set.len() * 2).max(256);
        }
        self.set.insert(s.clone());
    }

    pub fn share_opt(&mut self, s: &mut Option<Arc<str>>) {
        if let Some(s) = s {
            self.share(s);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_are_kept_once_and_unused_ones_swept() {
        let mut t = SharedStrs::default();
        let mut a: Arc<str> = Arc::from("shop");
        let mut b: Arc<str> = Arc::from("shop");
        t.share(&mut a);
        t.share(&mut b);
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        for i in 0..1000 {
            t.share(&mut Arc::from(format!("s{i}").as_str()));
        }
        assert!(t.len() <= 512, "{}", t.len());
    }
}
