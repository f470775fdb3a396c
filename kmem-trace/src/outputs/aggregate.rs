//! Aggregates over the state for the live view, the metrics and the report:
//! memcgs per owner (namespace/pod/container) with their zombies and pinned
//! bytes, and zombies per namespace with bounded cardinality. Pure.

use std::collections::HashMap;

use serde::Serialize;

use super::{page_size, Snapshot};
use crate::{
    attribution::{Attribution, Owner},
    decode::Counters,
    lifecycle::{Memcg, State},
};

/// Namespace label of memcgs that belong to no Kubernetes pod.
pub const NS_NONE: &str = "none";
/// Namespace label of pod memcgs whose namespace is not known (no runtime metadata).
pub const NS_UNKNOWN: &str = "unknown";
/// The bucket that takes every namespace beyond the top N.
pub const NS_OTHER: &str = "other";

/// One owner's memcgs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OwnerRow {
    /// Kubernetes namespace, [`NS_UNKNOWN`] for a pod without metadata, or
    /// [`NS_NONE`] when the owner is no pod.
    pub namespace: String,
    /// Pod name (or `pod <uid>`); empty for non-pod owners.
    pub pod: String,
    /// Container name (or short ID), `(pod)` for pod-level cgroups; the unit,
    /// container or path for non-pod owners.
    pub container: String,
    /// `pod`, `container`, `systemd` or `path`.
    pub kind: &'static str,
    /// The pod's owning workload (`Deployment/web`) from its labels; empty when unknown.
    pub workload: String,
    pub live: u64,
    pub dying: u64,
    pub zombies: u64,
    /// Bytes charged to its dying memcgs (at offline, or as the census read them).
    pub pinned_bytes: u64,
    /// The cgroup path its memcgs share (their common ancestor), for
    /// filtering and grouping by path.
    pub path: String,
}

impl OwnerRow {
    /// `namespace/pod/container`, or the owner alone for non-pod owners.
    pub fn label(&self) -> String {
        owner_label(&self.namespace, &self.pod, &self.container)
    }
}

/// `namespace/pod/container` of [`owner_columns`], or the owner alone
/// (`container`) for owners that are no pod (empty `pod`).
pub fn owner_label(namespace: &str, pod: &str, container: &str) -> String {
    if pod.is_empty() {
        container.to_string()
    } else {
        format!("{namespace}/{pod}/{container}")
    }
}

/// The owner columns of an attribution: (namespace, pod, container).
pub fn owner_columns(a: &Attribution) -> (String, String, String) {
    let v = a.view();
    let short = |id: &str| id.chars().take(12).collect::<String>();
    match &a.owner {
        Owner::Pod(p) => {
            let ns = v.namespace.unwrap_or(NS_UNKNOWN).to_string();
            let pod = v
                .pod
                .map(str::to_string)
                .unwrap_or_else(|| format!("pod {}", short(&p.pod_uid)));
            let container = match (v.container, &p.container_id) {
                (Some(c), _) => c.to_string(),
                (None, Some(id)) => short(id),
                (None, None) => "(pod)".into(),
            };
            (ns, pod, container)
        }
        _ => (NS_NONE.into(), String::new(), a.label()),
    }
}

/// Namespace of an attribution for per-namespace counts: the first of
/// [`owner_columns`], without making the other two.
pub fn namespace_of(a: Option<&Attribution>) -> String {
    match a {
        Some(
            a @ Attribution {
                owner: Owner::Pod(_),
                ..
            },
        ) => a.view().namespace.unwrap_or(NS_UNKNOWN).to_string(),
        _ => NS_NONE.into(),
    }
}

/// Bytes a dying memcg holds, from its counters at offline or the census's.
pub fn pinned_bytes(m: &Memcg) -> Option<u64> {
    let off = m.at_offline();
    let c: Counters = if off.mem_pages.is_some() {
        off
    } else {
        m.census_counters().unwrap_or_default()
    };
    c.mem_pages.map(|p| p * page_size())
}

/// The longest common ancestor of two cgroup paths (whole components).
fn common_ancestor(a: &str, b: &str) -> usize {
    if a == b {
        return a.len();
    }
    let mut end = 0;
    for ((i, x), y) in a.char_indices().zip(b.chars()) {
        if x != y {
            return end;
        }
        if x == '/' {
            end = i;
        }
    }
    // One is a prefix of the other: whole only if the longer goes on with `/`.
    let (short, long) = if a.len() < b.len() { (a, b) } else { (b, a) };
    if long.as_bytes().get(short.len()) == Some(&b'/') {
        short.len()
    } else {
        end
    }
}

/// Memcgs per owner (attributed memcgs only), in no particular order.
pub fn owner_rows(s: &Snapshot<'_>) -> Vec<OwnerRow> {
    let after = s.lifecycle.config().zombie_after_ns;
    let mut rows: HashMap<(String, String, String), OwnerRow> = HashMap::new();
    for m in s.lifecycle.memcgs() {
        // Dying memcgs the attribution stage has not seen (found by the census
        // without a history) are still named from their path.
        let parsed;
        let a = match s.attribution.get(m.addr) {
            Some(a) => &**a,
            None if m.state == State::Dying && !m.path.is_empty() && !m.path.contains('?') => {
                parsed = Attribution::of_path(&m.path);
                &parsed
            }
            None => continue,
        };
        let row = rows
            .entry(owner_columns(a))
            .or_insert_with_key(|k| OwnerRow {
                namespace: k.0.clone(),
                pod: k.1.clone(),
                container: k.2.clone(),
                kind: a.owner.kind(),
                workload: a.view().workload.unwrap_or_default(),
                path: m.path.to_string(),
                ..OwnerRow::default()
            });
        let shared = common_ancestor(&row.path, &m.path);
        row.path.truncate(shared);
        match m.state {
            State::Live => row.live += 1,
            State::Dying => {
                row.dying += 1;
                row.zombies += m.is_zombie(s.now_ns, after) as u64;
                row.pinned_bytes += pinned_bytes(m).unwrap_or(0);
            }
            State::Freed => {}
        }
    }
    rows.into_values().collect()
}

/// Zombies per namespace: the `top` namespaces with the most zombies, every
/// other namespace summed into [`NS_OTHER`] (so a metric's label set stays
/// bounded however many pods leak). Namespaces are sorted by count, then name.
pub fn namespace_buckets(counts: &HashMap<String, u64>, top: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if v.len() > top {
        let other: u64 = v[top..].iter().map(|x| x.1).sum();
        v.truncate(top);
        match v.iter_mut().find(|x| x.0 == NS_OTHER) {
            Some(o) => o.1 += other,
            None => v.push((NS_OTHER.into(), other)),
        }
    }
    v
}

/// Zombies per namespace of the current state (every zombie counts, attributed or not).
pub fn zombies_by_namespace(s: &Snapshot<'_>) -> HashMap<String, u64> {
    let after = s.lifecycle.config().zombie_after_ns;
    let mut out: HashMap<String, u64> = HashMap::new();
    for m in s.lifecycle.dying() {
        if m.is_zombie(s.now_ns, after) {
            let ns = namespace_of(s.attribution.get(m.addr).map(|a| &**a));
            *out.entry(ns).or_default() += 1;
        }
    }
    out
}

/// Zombies per `namespace/Kind/name` workload of the current state: pods
/// without a known workload count as `<namespace>/unknown`, non-pods as
/// `none/none`. Namespaces hold no `/`, so the key splits back at the first.
pub fn zombies_by_workload(s: &Snapshot<'_>) -> HashMap<String, u64> {
    let after = s.lifecycle.config().zombie_after_ns;
    let mut out: HashMap<String, u64> = HashMap::new();
    for m in s.lifecycle.dying() {
        if m.is_zombie(s.now_ns, after) {
            let a = s.attribution.get(m.addr).map(|a| &**a);
            *out.entry(workload_key(a)).or_default() += 1;
        }
    }
    out
}

/// `namespace/Kind/name` of [`zombies_by_workload`].
pub fn workload_key(a: Option<&Attribution>) -> String {
    let ns = namespace_of(a);
    if ns == NS_NONE {
        return format!("{NS_NONE}/{NS_NONE}");
    }
    let w = a.and_then(|a| a.view().workload);
    format!("{ns}/{}", w.as_deref().unwrap_or(NS_UNKNOWN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_share_their_common_ancestor() {
        assert_eq!(common_ancestor("/a/b/c", "/a/b/c"), 6);
        assert_eq!(common_ancestor("/a/b/c", "/a/b/d"), 4);
        assert_eq!(common_ancestor("/a/b", "/a/b/c"), 4);
        assert_eq!(common_ancestor("/a/bc", "/a/b"), 2);
        assert_eq!(common_ancestor("/x", "/y"), 0);
    }

    #[test]
    fn namespaces_beyond_the_top_go_to_other() {
        let counts: HashMap<String, u64> = (0..20)
            .map(|i| (format!("ns{i:02}"), i as u64))
            .chain([("other".to_string(), 2)])
            .collect();
        let b = namespace_buckets(&counts, 5);
        assert_eq!(b.len(), 6, "{b:?}");
        assert_eq!(b[0], ("ns19".into(), 19));
        let other = b.iter().find(|x| x.0 == NS_OTHER).unwrap().1;
        // ns00 has no zombies and is left out; the rest beyond the top five sum up.
        assert_eq!(other, (1..15).sum::<u64>() + 2);
        let total: u64 = b.iter().map(|x| x.1).sum();
        assert_eq!(total, counts.values().sum::<u64>());
        assert!(namespace_buckets(&HashMap::new(), 3).is_empty());
    }

    #[test]
    fn owner_columns_name_pods_and_others() {
        let a = Attribution::of_path(
            "/kubepods/burstable/pod5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d/0123456789abcdef0123",
        );
        let (ns, pod, c) = owner_columns(&a);
        assert_eq!(ns, NS_UNKNOWN);
        assert_eq!(pod, "pod 5b2ae0e6-4d1");
        assert_eq!(c, "0123456789ab");
        assert_eq!(namespace_of(Some(&a)), NS_UNKNOWN);
        let s = Attribution::of_path("/system.slice/sshd.service");
        let (ns, pod, c) = owner_columns(&s);
        assert_eq!((ns.as_str(), pod.as_str()), (NS_NONE, ""));
        assert_eq!(c, "sshd.service");
        assert_eq!(namespace_of(Some(&s)), NS_NONE);
        assert_eq!(namespace_of(None), NS_NONE);
    }
}
