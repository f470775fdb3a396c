//! The cgroup tree per hierarchy (kernfs id → parent and leaf name), seeded from
//! cgroupfs and grown from events, so full paths can be rebuilt for cgroups that
//! are already gone from cgroupfs. A node also holds the memcg of its cgroup:
//! that is the lifecycle's index by cgroup, without a map of its own.

use std::sync::Arc;

use super::keymap::KeyMap;

/// `(hierarchy_id, cgroup_id)`: kernfs ids are per hierarchy, so both are needed.
pub type CgroupKey = (u32, u64);

/// `parent` of a cgroup known only through its memcg (a census or history
/// memcg whose directory is gone): no node as far as paths go.
const UNKNOWN: u64 = u64::MAX;

#[derive(Clone, Debug)]
struct Node {
    parent: u64,
    /// The leaf name, or, once the full path was built, that path (it starts
    /// with `/`, a name never does), whose last component is the name. The
    /// path is the very string the memcg's `path` shares, so a tracked cgroup
    /// costs one path string, not a name plus a path.
    label: Arc<str>,
    /// Address of the cgroup's memcg, 0 when none is tracked.
    memcg: u64,
}

impl Node {
    fn has_path(&self) -> bool {
        self.label.starts_with('/')
    }

    fn name(&self) -> &str {
        if self.has_path() {
            // The root's path `/` gives its empty name.
            &self.label[self.label.rfind('/').map_or(0, |i| i + 1)..]
        } else {
            &self.label
        }
    }

    fn known(&self) -> bool {
        self.parent != UNKNOWN
    }
}

/// Cgroup nodes by key. Paths are relative to the hierarchy root (`/a/b`).
#[derive(Default, Debug)]
pub struct CgroupTree {
    nodes: KeyMap<CgroupKey, Node>,
    /// Nodes that only hold a memcg (`UNKNOWN` parent).
    unknown: usize,
}

/// Deepest path rebuilt; deeper (or cyclic) chains are cut with `…`.
const MAX_DEPTH: usize = 64;

/// A name as stored: the kernel never puts `/` in a cgroup name, and a label
/// starting with `/` means a path, so a damaged record's `/` becomes `∕`.
fn clean(name: &str) -> std::borrow::Cow<'_, str> {
    if name.contains('/') {
        name.replace('/', "\u{2215}").into()
    } else {
        name.into()
    }
}

impl CgroupTree {
    /// Adds or updates a node. A root has `parent == 0`.
    pub fn insert(&mut self, key: CgroupKey, parent: u64, name: &str) {
        let parent = parent.min(UNKNOWN - 1);
        match self.nodes.get_mut(&key) {
            Some(node) => {
                if node.parent != parent || node.name() != name {
                    if !node.known() {
                        self.unknown -= 1;
                    }
                    node.parent = parent;
                    node.label = clean(name).into();
                }
            }
            None => {
                self.nodes.insert(
                    key,
                    Node {
                        parent,
                        label: clean(name).into(),
                        memcg: 0,
                    },
                );
            }
        }
    }

    /// Whether the cgroup is known (seeded from cgroupfs or seen in an event).
    pub fn contains(&self, key: CgroupKey) -> bool {
        self.nodes.get(&key).is_some_and(Node::known)
    }

    pub fn remove(&mut self, key: CgroupKey) {
        if let Some(n) = self.nodes.remove(&key) {
            if !n.known() {
                self.unknown -= 1;
            }
        }
    }

    /// Known cgroups.
    pub fn len(&self) -> usize {
        self.nodes.len() - self.unknown
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The memcg recorded for a cgroup.
    pub fn memcg(&self, key: CgroupKey) -> Option<u64> {
        self.nodes.get(&key).map(|n| n.memcg).filter(|&a| a != 0)
    }

    /// Records the cgroup's memcg (a node that holds only it if the cgroup
    /// itself is not known).
    pub fn set_memcg(&mut self, key: CgroupKey, addr: u64) {
        match self.nodes.get_mut(&key) {
            Some(n) => n.memcg = addr,
            None => {
                self.unknown += 1;
                self.nodes.insert(
                    key,
                    Node {
                        parent: UNKNOWN,
                        label: Arc::from(""),
                        memcg: addr,
                    },
                );
            }
        }
    }

    /// Full path of a cgroup, cached once complete. Unknown ancestors show as
    /// `?<id>` so a partial path is still useful (and is not cached).
    pub fn path(&mut self, key: CgroupKey) -> Arc<str> {
        if let Some(n) = self.nodes.get(&key).filter(|n| n.known() && n.has_path()) {
            return n.label.clone();
        }
        let (path, complete) = self.build(key);
        let path: Arc<str> = path.into();
        if complete {
            if let Some(n) = self.nodes.get_mut(&key) {
                n.label = path.clone();
            }
        }
        path
    }

    fn build(&self, key: CgroupKey) -> (String, bool) {
        let mut complete = true;
        let (hier, mut id) = key;
        let mut parts: Vec<String> = Vec::new();
        for _ in 0..MAX_DEPTH {
            match self.nodes.get(&(hier, id)).filter(|n| n.known()) {
                Some(n) if n.parent == 0 => break, // hierarchy root
                Some(n) => {
                    parts.push(n.name().to_string());
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

    #[test]
    fn a_cached_path_stands_for_the_name() {
        let mut t = CgroupTree::default();
        t.insert((4, 1), 0, "");
        t.insert((4, 10), 1, "kubepods");
        t.insert((4, 11), 10, "pod1");
        let p = t.path((4, 11));
        assert!(Arc::ptr_eq(&p, &t.path((4, 11))), "cached, shared");
        assert_eq!(t.nodes[&(4, 11)].name(), "pod1");
        assert_eq!(t.nodes[&(4, 1)].name(), "");
        t.path((4, 1));
        assert_eq!(t.nodes[&(4, 1)].name(), "", "the root's path is /");
        // The same name again keeps the cached path; a new one replaces it.
        t.insert((4, 11), 10, "pod1");
        assert!(Arc::ptr_eq(&p, &t.path((4, 11))));
        t.insert((4, 11), 10, "pod2");
        assert_eq!(&*t.path((4, 11)), "/kubepods/pod2");
        // A memcg's node; a cgroup known only by its memcg has no path.
        t.set_memcg((4, 11), 0xa000);
        assert_eq!(t.memcg((4, 11)), Some(0xa000));
        t.set_memcg((4, 99), 0xb000);
        assert!(!t.contains((4, 99)));
        assert_eq!(t.len(), 3);
        assert_eq!(&*t.path((4, 99)), "/?99");
        t.insert((4, 99), 10, "late");
        assert_eq!(&*t.path((4, 99)), "/kubepods/late");
        assert_eq!((t.len(), t.memcg((4, 99))), (4, Some(0xb000)));
        t.remove((4, 99));
        assert_eq!(t.len(), 3);
        // A damaged name cannot pass for a path.
        t.insert((4, 12), 10, "/x");
        assert_eq!(&*t.path((4, 12)), "/kubepods/\u{2215}x");
    }
}
