//! The cgroup tree per hierarchy (kernfs id → parent and leaf name), seeded from
//! cgroupfs and grown from events, so full paths can be rebuilt for cgroups that
//! are already gone from cgroupfs.

use std::sync::Arc;

use super::keymap::KeyMap;

/// `(hierarchy_id, cgroup_id)`: kernfs ids are per hierarchy, so both are needed.
pub type CgroupKey = (u32, u64);

#[derive(Clone, Debug)]
struct Node {
    parent: u64,
    name: Box<str>,
    /// Cached full path.
    path: Option<Arc<str>>,
}

/// Cgroup nodes by key. Paths are relative to the hierarchy root (`/a/b`).
#[derive(Default, Debug)]
pub struct CgroupTree {
    nodes: KeyMap<CgroupKey, Node>,
}

/// Deepest path rebuilt; deeper (or cyclic) chains are cut with `…`.
const MAX_DEPTH: usize = 64;

impl CgroupTree {
    /// Adds or updates a node. A root has `parent == 0`.
    pub fn insert(&mut self, key: CgroupKey, parent: u64, name: &str) {
        let node = self.nodes.entry(key).or_insert_with(|| Node {
            parent,
            name: name.into(),
            path: None,
        });
        if node.parent != parent || &*node.name != name {
            node.parent = parent;
            node.name = name.into();
            node.path = None;
        }
    }

    pub fn contains(&self, key: CgroupKey) -> bool {
        self.nodes.contains_key(&key)
    }

    pub fn remove(&mut self, key: CgroupKey) {
        self.nodes.remove(&key);
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Full path of a cgroup, cached once complete. Unknown ancestors show as
    /// `?<id>` so a partial path is still useful (and is not cached).
    pub fn path(&mut self, key: CgroupKey) -> Arc<str> {
        if let Some(p) = self.nodes.get(&key).and_then(|n| n.path.clone()) {
            return p;
        }
        let (path, complete) = self.build(key);
        let path: Arc<str> = path.into();
        if complete {
            if let Some(n) = self.nodes.get_mut(&key) {
                n.path = Some(path.clone());
            }
        }
        path
    }

    fn build(&self, key: CgroupKey) -> (String, bool) {
        let mut complete = true;
        let (hier, mut id) = key;
        let mut parts: Vec<String> = Vec::new();
        for _ in 0..MAX_DEPTH {
            match self.nodes.get(&(hier, id)) {
                Some(n) if n.parent == 0 => break, // hierarchy root
                Some(n) => {
                    parts.push(n.name.to_string());
                    id = n.parent;
                }
                None => {
                    parts.push(format!("?{id}"));
                    complete = false;
                    break;
                }
            }
            if parts.len() == MAX_DEPTH {
                parts.push("…".into());
                complete = false;
            }
        }
        if parts.is_empty() {
            return ("/".into(), complete);
        }
        let mut s = String::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
        for p in parts.iter().rev() {
            s.push('/');
            s.push_str(p);
        }
        (s, complete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilds_paths_and_marks_unknown_ancestors() {
        let mut t = CgroupTree::default();
        t.insert((4, 1), 0, "");
        t.insert((4, 10), 1, "kubepods");
        t.insert((4, 11), 10, "burstable");
        t.insert((4, 12), 11, "pod1234");
        assert_eq!(&*t.path((4, 12)), "/kubepods/burstable/pod1234");
        assert_eq!(&*t.path((4, 1)), "/");
        t.insert((4, 50), 49, "orphan");
        assert_eq!(&*t.path((4, 50)), "/?49/orphan");
        t.insert((4, 49), 1, "late");
        assert_eq!(&*t.path((4, 50)), "/late/orphan");
        // another hierarchy with the same ids stays separate
        t.insert((0, 12), 1, "other");
        t.insert((0, 1), 0, "");
        assert_eq!(&*t.path((0, 12)), "/other");
    }

    #[test]
    fn cycles_do_not_loop_forever() {
        let mut t = CgroupTree::default();
        t.insert((1, 5), 6, "a");
        t.insert((1, 6), 5, "b");
        let p = t.path((1, 5));
        assert!(p.contains('…'), "{p}");
    }
}
