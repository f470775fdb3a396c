//! Who a memcg belongs to: the stage after the lifecycle. The owner comes from
//! the memcg's own cgroup path ([`path`]) and, for containers, from the
//! runtime's metadata read while the container still exists ([`runtime`]), not
//! from the namespaces of the task that made the cgroup (runc, kubelet or
//! systemd on the host). Attributions are cached per memcg so the store and the
//! outputs can name the owner long after the pod is gone.

pub mod cri;
pub mod path;
pub mod runtime;
mod share;
pub mod worker;
pub mod workload;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::lifecycle::KeyMap;

use serde::{Deserialize, Serialize};

pub use path::{Owner, PodPath, Qos, Runtime, RuntimeRole};
pub use runtime::{ContainerMeta, RuntimeRoots};
use share::SharedStrs;
pub use workload::{Workload, WorkloadKind};

use crate::lifecycle::{Applied, Lifecycle, State};

/// Errors of the attribution stage (only its configuration can fail).
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("--runtime-root {0} is not a directory; pass the directory that holds one subdirectory per container ID")]
    NotADirectory(String),
}

/// A memcg's owner: what its path says, and the container metadata if any
/// (boxed: most memcgs have none, and a node tracks up to 65,535 of them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribution {
    pub owner: Owner,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<ContainerMeta>>,
}

/// The owner flattened for JSON output and the history's columns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OwnerView<'a> {
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<&'a str>,
    /// The pod's owning workload, `Deployment/web` (from the pod's labels).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<&'a str>,
}

impl Attribution {
    /// From the path alone (no metadata).
    pub fn of_path(path: &str) -> Attribution {
        Attribution {
            owner: path::parse(path),
            meta: None,
        }
    }

    pub fn view(&self) -> OwnerView<'_> {
        OwnerView {
            workload: self
                .meta
                .as_ref()
                .and_then(|m| m.workload.as_ref())
                .map(Workload::label),
            ..self.names()
        }
    }

    /// [`Attribution::view`] without the workload, whose label is a new
    /// string: [`Attribution::label`] (once per printed event) needs none.
    fn names(&self) -> OwnerView<'_> {
        let meta = self.meta.as_deref();
        let m = |f: fn(&ContainerMeta) -> &Option<Arc<str>>| meta.and_then(|m| f(m).as_deref());
        let mut v = OwnerView {
            kind: self.owner.kind(),
            namespace: m(|m| &m.namespace),
            pod: m(|m| &m.pod_name),
            container: m(|m| &m.container_name),
            image: m(|m| &m.image),
            container_id: self.owner.container_id(),
            runtime: self
                .owner
                .runtime()
                .or(meta.and_then(|m| m.source))
                .map(Runtime::name),
            ..OwnerView::default()
        };
        match &self.owner {
            Owner::Pod(p) => {
                v.pod_uid = Some(&p.pod_uid);
                v.qos = Some(p.qos.name());
            }
            Owner::Systemd { unit } => v.unit = Some(unit),
            Owner::Path { path } => v.path = Some(path),
            Owner::Container { pod_id, .. } => v.pod_uid = pod_id.as_deref(),
            Owner::RuntimeGroup { pod_id, .. } => {
                v.pod_uid = pod_id.as_deref();
                v.pod = v.pod.filter(|_| pod_id.is_some());
            }
        }
        if v.container_id.is_none() {
            // A pod-level cgroup: its metadata came from one of its containers.
            v.container = None;
            v.image = None;
            v.runtime = self.owner.runtime().map(Runtime::name);
        }
        v
    }

    /// Short human label: `shop/web-7d4b9/nginx`, `pod 5b2ae0e6…/4c1f0e5b9d2a`,
    /// `docker 4c1f0e5b9d2a`, `sshd.service`, or the path.
    pub fn label(&self) -> String {
        let v = self.names();
        let short = |id: &str| id.chars().take(12).collect::<String>();
        match &self.owner {
            Owner::Pod(p) => {
                let pod = match (v.namespace, v.pod) {
                    (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
                    _ => format!("pod {}", p.pod_uid),
                };
                match (v.container, &p.container_id) {
                    (Some(c), _) => format!("{pod}/{c}"),
                    (None, Some(id)) => format!("{pod}/{}", short(id)),
                    (None, None) => pod,
                }
            }
            Owner::Container {
                runtime,
                container_id,
                pod_id,
            } => {
                let name = v
                    .container
                    .map_or_else(|| short(container_id), str::to_string);
                match (v.pod, pod_id) {
                    (Some(pod), _) => format!("{} {pod}/{name}", runtime.name()),
                    (None, Some(p)) => format!("{} pod {}/{name}", runtime.name(), short(p)),
                    (None, None) => format!("{} {name}", runtime.name()),
                }
            }
            Owner::RuntimeGroup {
                runtime,
                role,
                pod_id,
                container_id,
            } => {
                let mut l = runtime.name().to_string();
                match (v.pod, pod_id) {
                    (Some(pod), _) => l = format!("{l} pod {pod}"),
                    (None, Some(p)) => l = format!("{l} pod {}", short(p)),
                    (None, None) => {}
                }
                if *role == path::RuntimeRole::Conmon {
                    l.push_str(" conmon");
                }
                if let Some(id) = container_id {
                    l = format!("{l} {}", short(id));
                }
                l
            }
            Owner::Systemd { unit } => unit.to_string(),
            Owner::Path { path } => path.to_string(),
        }
    }
}

/// Looks up container metadata; [`RuntimeRoots`] reads the runtimes' files.
pub trait MetaLookup: Send + Sync {
    fn lookup(&self, id: &str, hint: Option<Runtime>) -> Option<ContainerMeta>;
}

impl MetaLookup for RuntimeRoots {
    fn lookup(&self, id: &str, hint: Option<Runtime>) -> Option<ContainerMeta> {
        RuntimeRoots::lookup(self, id, hint)
    }
}

/// Runtime roots from `--runtime-root` (the defaults when none was given);
/// an explicit root that is not a directory is a usage error.
pub fn runtime_roots(explicit: &[std::path::PathBuf]) -> Result<RuntimeRoots, AttributionError> {
    for r in explicit {
        if !r.is_dir() {
            return Err(AttributionError::NotADirectory(r.display().to_string()));
        }
    }
    Ok(RuntimeRoots::new(explicit))
}

/// Memcgs per owner kind, for the watch header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OwnerCounts {
    /// `(kind, memcgs, of them dying)`, in a fixed order.
    pub kinds: Vec<(&'static str, u64, u64)>,
    /// Distinct pods that have at least one dying memcg.
    pub pods_with_dying: u64,
}

/// Lookup statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AttributionStats {
    pub lookups: u64,
    pub found: u64,
}

struct Entry {
    path: Arc<str>,
    attr: Arc<Attribution>,
}

/// Most pods remembered for their pod-level cgroups.
const MAX_PODS: usize = 16384;

/// The attribution stage: one [`Attribution`] per memcg, made when its path is
/// first known and kept until it is freed.
pub struct Attributor {
    lookup: Arc<dyn MetaLookup>,
    /// Lookups for memcgs seen in events run here, off the event path.
    worker: Option<worker::MetaWorker>,
    /// Container ID → memcgs waiting for the worker's answer.
    pending: HashMap<Box<str>, Vec<u64>>,
    /// By memcg address (the lifecycle's fast hasher: looked up for every event).
    by_addr: KeyMap<u64, Entry>,
    /// Pod-level memcgs attributed without their pod's metadata, to name
    /// when a container teaches it (a superset: entries are rechecked then).
    pod_level_waiting: HashSet<u64>,
    /// Pod UID → pod metadata learned from its containers, for the pod-level
    /// cgroup (created before any container, so it has no metadata of its own).
    pods: HashMap<Arc<str>, ContainerMeta>,
    /// Strings equal across attributions, kept once.
    strings: SharedStrs,
    pub stats: AttributionStats,
}

impl Attributor {
    /// Looks metadata up synchronously (replays, tests).
    pub fn new(lookup: Box<dyn MetaLookup>) -> Attributor {
        Attributor::with(Arc::from(lookup), None)
    }

    /// Looks metadata up for events on a worker thread ([`worker`]): the
    /// attribution is first path-only, [`Attributor::poll`] completes it.
    /// Start-up lookups ([`Attributor::attribute_path`]) stay synchronous.
    /// Falls back to synchronous lookups when the thread cannot start.
    pub fn background(lookup: Arc<dyn MetaLookup>) -> Attributor {
        let worker = worker::MetaWorker::spawn(lookup.clone())
            .inspect_err(|e| {
                log::warn!("container metadata worker: {e}; looking up on the event thread")
            })
            .ok();
        Attributor::with(lookup, worker)
    }

    fn with(lookup: Arc<dyn MetaLookup>, worker: Option<worker::MetaWorker>) -> Attributor {
        Attributor {
            lookup,
            worker,
            pending: HashMap::new(),
            by_addr: KeyMap::default(),
            pod_level_waiting: HashSet::new(),
            pods: HashMap::new(),
            strings: SharedStrs::default(),
            stats: AttributionStats::default(),
        }
    }

    /// Completes the attributions whose metadata arrived from the worker;
    /// returns the memcgs whose attribution changed. Never blocks.
    pub fn poll(&mut self) -> Vec<u64> {
        let answers = self.worker.as_mut().map(|w| w.poll()).unwrap_or_default();
        self.apply_answers(answers)
    }

    /// Waits for the worker's pending answers and applies them (tests; the
    /// worker is gone afterwards and later lookups are synchronous).
    pub fn settle(&mut self) -> Vec<u64> {
        let answers = self
            .worker
            .take()
            .map(|mut w| w.drain())
            .unwrap_or_default();
        self.apply_answers(answers)
    }

    /// Lookups dropped because the worker's queue was full.
    pub fn lookups_dropped(&self) -> u64 {
        self.worker.as_ref().map_or(0, |w| w.dropped)
    }

    fn apply_answers(&mut self, answers: Vec<worker::Answer>) -> Vec<u64> {
        let mut changed = Vec::new();
        let pods_before = self.pods.len();
        for (id, meta) in answers {
            self.stats.lookups += 1;
            self.stats.found += meta.is_some() as u64;
            let (Some(addrs), Some(meta)) = (self.pending.remove(&id), meta) else {
                continue;
            };
            for addr in addrs {
                if self.complete(addr, &id, &meta) {
                    changed.push(addr);
                }
            }
        }
        if self.pods.len() != pods_before {
            // New pods were learned: name their pod-level memcgs now (they may
            // see no other event before they are zombies). Only the waiting
            // ones are looked at, not every memcg: this runs on the event thread.
            let by_addr = &self.by_addr;
            self.pod_level_waiting
                .retain(|a| by_addr.get(a).is_some_and(|e| waits_for_pod(&e.attr)));
            let ready: Vec<(u64, Arc<Attribution>)> = self
                .pod_level_waiting
                .iter()
                .filter_map(|a| Some((*a, self.by_addr.get(a)?.attr.clone())))
                .filter(|(_, attr)| {
                    attr.owner
                        .pod_uid()
                        .is_some_and(|u| self.pods.contains_key(u))
                })
                .collect();
            for (addr, attr) in ready {
                self.pod_level_waiting.remove(&addr);
                self.upgrade_pod_level(addr, attr);
                changed.push(addr);
            }
        }
        changed
    }

    /// Gives memcg `addr`, still attributed to container `id` without
    /// metadata, the metadata that arrived.
    fn complete(&mut self, addr: u64, id: &str, meta: &ContainerMeta) -> bool {
        let Some(e) = self.by_addr.get(&addr) else {
            return false;
        };
        if e.attr.owner.container_id() != Some(id) || e.attr.meta.is_some() {
            return false;
        }
        let path = e.path.clone();
        let mut attr = Attribution {
            owner: e.attr.owner.clone(),
            meta: Some(Box::new(meta.clone())),
        };
        self.share(&mut attr, &path);
        self.learn_pod(&attr);
        match self.by_addr.get_mut(&addr) {
            Some(e) => {
                e.attr = Arc::new(attr);
                true
            }
            None => false,
        }
    }

    /// Path-only attribution (replays: the runtimes' files are not the ones of then).
    pub fn paths_only() -> Attributor {
        Attributor::new(Box::new(RuntimeRoots::none()))
    }

    /// The attribution of the memcg an event was about. Made (and container
    /// metadata read) when the memcg's path is first complete; dropped once the
    /// memcg is freed (the returned value still names it).
    pub fn observe(&mut self, applied: &Applied) -> Option<Arc<Attribution>> {
        let addr = applied.addr?;
        let freed = applied.freed.is_some();
        let path = applied.path.as_ref().filter(|p| complete(p));
        let attr = match (self.by_addr.get(&addr), path) {
            (Some(e), Some(p)) if e.path != *p => Some(self.attribute(addr, p.clone(), true)),
            (Some(e), _) => {
                let attr = e.attr.clone();
                Some(self.upgrade_pod_level(addr, attr))
            }
            (None, Some(p)) => Some(self.attribute(addr, p.clone(), true)),
            (None, None) => None,
        };
        if freed {
            self.by_addr.remove(&addr);
            self.pod_level_waiting.remove(&addr);
        }
        attr
    }

    /// Attributes a memcg known from elsewhere (a census at start): reads
    /// container metadata now, while the container may still exist.
    pub fn attribute_path(&mut self, addr: u64, path: &Arc<str>) -> Option<Arc<Attribution>> {
        if !complete(path) {
            return None;
        }
        match self.by_addr.get(&addr) {
            Some(e) if e.path == *path => Some(e.attr.clone()),
            _ => Some(self.attribute(addr, path.clone(), false)),
        }
    }

    /// The cached attribution of a memcg.
    pub fn get(&self, addr: u64) -> Option<&Arc<Attribution>> {
        self.by_addr.get(&addr).map(|e| &e.attr)
    }

    /// Drops the attribution of a memcg freed unseen (found gone by a
    /// recheck), as [`Attributor::observe`] does for a free, and returns it.
    pub fn forget(&mut self, addr: u64) -> Option<Arc<Attribution>> {
        self.pod_level_waiting.remove(&addr);
        self.by_addr.remove(&addr).map(|e| e.attr)
    }

    /// Restores an attribution kept in the history (after a restart).
    pub fn seed(&mut self, addr: u64, path: Arc<str>, mut attr: Attribution) {
        self.share(&mut attr, &path);
        self.learn_pod(&attr);
        self.insert(addr, path, Arc::new(attr));
    }

    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// `background`: ask the worker (if any) instead of reading now.
    fn attribute(&mut self, addr: u64, path: Arc<str>, background: bool) -> Arc<Attribution> {
        let owner = path::parse(&path);
        let meta = match (owner.container_id(), self.worker.as_mut()) {
            (Some(id), Some(w)) if background => {
                if w.request(id, owner.runtime()) {
                    self.pending.entry(id.into()).or_default().push(addr);
                }
                None
            }
            (Some(id), _) => {
                self.stats.lookups += 1;
                let m = self.lookup.lookup(id, owner.runtime());
                self.stats.found += m.is_some() as u64;
                m.map(Box::new)
            }
            (None, _) => owner
                .pod_uid()
                .and_then(|uid| self.pods.get(uid).cloned())
                .map(Box::new),
        };
        let mut attr = Attribution { owner, meta };
        self.share(&mut attr, &path);
        self.learn_pod(&attr);
        let attr = Arc::new(attr);
        self.insert(addr, path, attr.clone());
        attr
    }

    fn insert(&mut self, addr: u64, path: Arc<str>, attr: Arc<Attribution>) {
        if waits_for_pod(&attr) {
            self.pod_level_waiting.insert(addr);
        }
        self.by_addr.insert(addr, Entry { path, attr });
    }

    /// A pod-level memcg attributed before any container of its pod: take the
    /// pod's name and namespace once a container taught them.
    fn upgrade_pod_level(&mut self, addr: u64, attr: Arc<Attribution>) -> Arc<Attribution> {
        if attr.meta.is_some() || attr.owner.container_id().is_some() {
            return attr;
        }
        let Some(meta) = attr.owner.pod_uid().and_then(|u| self.pods.get(u)) else {
            return attr;
        };
        let better = Arc::new(Attribution {
            owner: attr.owner.clone(),
            meta: Some(Box::new(meta.clone())),
        });
        if let Some(e) = self.by_addr.get_mut(&addr) {
            e.attr = better.clone();
        }
        better
    }

    /// Swaps the attribution's strings for equal ones already kept (see
    /// [`SharedStrs`]); an unrecognised path's owner is the memcg's own path.
    fn share(&mut self, attr: &mut Attribution, path: &Arc<str>) {
        match &mut attr.owner {
            Owner::Pod(p) => self.strings.share(&mut p.pod_uid),
            Owner::Systemd { unit } => self.strings.share(unit),
            Owner::Path { path: p } if **p == **path => *p = path.clone(),
            Owner::Path { .. } | Owner::Container { .. } | Owner::RuntimeGroup { .. } => {}
        }
        if let Some(m) = attr.meta.as_deref_mut() {
            for s in m.strings_mut() {
                self.strings.share_opt(s);
            }
        }
    }

    fn learn_pod(&mut self, attr: &Attribution) {
        let (Owner::Pod(p), Some(meta)) = (&attr.owner, attr.meta.as_ref()) else {
            return;
        };
        let uid = &p.pod_uid;
        if meta.pod_name.is_none() || self.pods.contains_key(uid) {
            return;
        }
        if self.pods.len() >= MAX_PODS {
            self.pods.clear();
        }
        self.pods.insert(
            uid.clone(),
            ContainerMeta {
                source: meta.source,
                pod_name: meta.pod_name.clone(),
                namespace: meta.namespace.clone(),
                pod_uid: Some(uid.clone()),
                workload: meta.workload.clone(),
                ..ContainerMeta::default()
            },
        );
    }

    /// Memcgs per owner kind (live and dying), for headers.
    pub fn counts(&self, lc: &Lifecycle) -> OwnerCounts {
        const KINDS: [&str; 4] = ["pod", "container", "systemd", "path"];
        let mut kinds: Vec<(&'static str, u64, u64)> = KINDS.iter().map(|k| (*k, 0, 0)).collect();
        let mut dying_pods: Vec<&str> = Vec::new();
        for (addr, e) in &self.by_addr {
            let Some(m) = lc.get(*addr) else { continue };
            let dying = m.state == State::Dying;
            let kind = e.attr.owner.kind();
            if let Some(k) = kinds.iter_mut().find(|k| k.0 == kind) {
                k.1 += 1;
                k.2 += dying as u64;
            }
            if dying {
                if let Some(uid) = e.attr.owner.pod_uid() {
                    dying_pods.push(uid);
                }
            }
        }
        dying_pods.sort_unstable();
        dying_pods.dedup();
        OwnerCounts {
            kinds,
            pods_with_dying: dying_pods.len() as u64,
        }
    }
}

/// A pod-level memcg (no container) still without its pod's metadata.
fn waits_for_pod(attr: &Attribution) -> bool {
    attr.meta.is_none() && attr.owner.container_id().is_none() && attr.owner.pod_uid().is_some()
}

/// Paths with unknown ancestors (`?<id>`) are not attributed yet.
fn complete(p: &str) -> bool {
    !p.is_empty() && !p.contains('?')
}

impl OwnerCounts {
    /// `owners pod 12 (3 dying), systemd 30, path 5; 2 pods with zombies`.
    pub fn render(&self) -> String {
        let parts: Vec<String> = self
            .kinds
            .iter()
            .filter(|k| k.1 > 0)
            .map(|(k, n, d)| {
                if *d > 0 {
                    format!("{k} {n} ({d} dying)")
                } else {
                    format!("{k} {n}")
                }
            })
            .collect();
        if parts.is_empty() {
            return String::new();
        }
        let mut s = format!("owners {}", parts.join(", "));
        if self.pods_with_dying > 0 {
            s.push_str(&format!(
                "; {} pods with dying memcgs",
                self.pods_with_dying
            ));
        }
        s
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
