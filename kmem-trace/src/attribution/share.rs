//! Shared attribution strings: a node's memcgs repeat the same few (a pod's
//! UID, name and namespace in each of its memcgs, an image in every container
//! that runs it), so equal strings are kept once. Strings no attribution
//! holds any more are swept once the table has doubled since the last sweep.

use crate::lifecycle::intern::Interner;

/// The attribution's strings, each kept once.
pub type SharedStrs = Interner<str, 256>;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
