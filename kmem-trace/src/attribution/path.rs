//! Owner of a cgroup from its path alone: Kubernetes pods and containers under
//! the kubelet's cgroupfs and systemd drivers, plain containers (Docker,
//! Podman, CRI runtimes outside Kubernetes), podman pods and conmon monitors,
//! systemd units and slices, else the path. The kubepods layout is found anywhere in the path, not only at the
//! root (kubelet `--cgroup-root`, kind nodes, nested test parents).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Kubernetes QoS class, from the kubepods level the pod sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Qos {
    Guaranteed,
    Burstable,
    #[serde(rename = "besteffort")]
    BestEffort,
}

impl Qos {
    pub fn name(self) -> &'static str {
        match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        }
    }
}

/// Container runtime, from the scope prefix (`docker-`, `cri-containerd-`,
/// `crio-`, `libpod-`) or the containerd `:cri-containerd:` form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    /// Podman (`libpod-<id>.scope`).
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
        }
    }
}

/// A pod's cgroup, or a container's inside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPath {
    pub qos: Qos,
    /// Normalised to dashes and lower case (the systemd driver writes `_`).
    /// Shared by the pod's memcgs (the attribution stage's `SharedStrs`).
    pub pod_uid: Arc<str>,
    /// `None` for the pod-level cgroup itself. `Box<str>` rather than
    /// `String`: 8 bytes less, for up to 65,535 tracked memcgs.
    pub container_id: Option<Box<str>>,
    /// Known when the scope name or the containerd form names it.
    pub runtime: Option<Runtime>,
}

/// What a [`Owner::RuntimeGroup`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeRole {
    /// A pod's cgroup, parent of its containers'.
    Pod,
    /// The conmon container monitors.
    Conmon,
}

impl RuntimeRole {
    pub fn name(self) -> &'static str {
        match self {
            RuntimeRole::Pod => "pod",
            RuntimeRole::Conmon => "conmon",
        }
    }
}

/// Who a cgroup belongs to, as far as its path tells.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Owner {
    Pod(PodPath),
    /// A container outside Kubernetes (`/docker/<id>`, `docker-<id>.scope`, ...).
    Container {
        runtime: Runtime,
        container_id: Box<str>,
        /// The podman pod it runs in (`/libpod_parent/<pod-id>/libpod-<id>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod_id: Option<Box<str>>,
    },
    /// A runtime's own cgroup that is no container: a podman pod's cgroup
    /// (`/libpod_parent/<pod-id>`, `machine-libpod_pod_<pod-id>.slice`) or a
    /// conmon monitor's (`/libpod_parent/conmon`, `libpod-conmon-<id>.scope`).
    RuntimeGroup {
        runtime: Runtime,
        /// `pod` or `conmon`.
        role: RuntimeRole,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod_id: Option<Box<str>>,
        /// The container a per-container conmon scope watches.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container_id: Option<Box<str>>,
    },
    /// A systemd unit or slice: the innermost one in the path.
    Systemd {
        unit: Arc<str>,
    },
    /// Nothing recognised: the path itself (the memcg's own path string).
    Path {
        path: Arc<str>,
    },
}

impl Owner {
    /// The container ID, for a container of a pod or a plain container.
    pub fn container_id(&self) -> Option<&str> {
        match self {
            Owner::Pod(p) => p.container_id.as_deref(),
            Owner::Container { container_id, .. } => Some(container_id),
            _ => None,
        }
    }

    pub fn runtime(&self) -> Option<Runtime> {
        match self {
            Owner::Pod(p) => p.runtime,
            Owner::Container { runtime, .. } | Owner::RuntimeGroup { runtime, .. } => {
                Some(*runtime)
            }
            _ => None,
        }
    }

    pub fn pod_uid(&self) -> Option<&str> {
        match self {
            Owner::Pod(p) => Some(&p.pod_uid),
            _ => None,
        }
    }

    /// The podman pod a container or runtime cgroup belongs to.
    pub fn podman_pod_id(&self) -> Option<&str> {
        match self {
            Owner::Container { pod_id, .. } | Owner::RuntimeGroup { pod_id, .. } => {
                pod_id.as_deref()
            }
            _ => None,
        }
    }

    /// `pod`, `container`, `runtime`, `systemd` or `path`.
    pub fn kind(&self) -> &'static str {
        match self {
            Owner::Pod(_) => "pod",
            Owner::Container { .. } => "container",
            Owner::RuntimeGroup { .. } => "runtime",
            Owner::Systemd { .. } => "systemd",
            Owner::Path { .. } => "path",
        }
    }
}

/// The owner of the cgroup at `path` (relative to its hierarchy root).
pub fn parse(path: &str) -> Owner {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if let Some(pod) = kube(&parts) {
        return Owner::Pod(pod);
    }
    if let Some(owner) = podman(&parts) {
        return owner;
    }
    if let Some((runtime, container_id)) = plain_container(&parts) {
        return Owner::Container {
            runtime,
            container_id: container_id.into(),
            pod_id: None,
        };
    }
    if let Some(unit) = parts.iter().rev().find(|p| is_unit(p)) {
        return Owner::Systemd {
            unit: (*unit).into(),
        };
    }
    Owner::Path {
        path: if path.is_empty() { "/" } else { path }.into(),
    }
}

/// Finds the pod level anywhere in the path and the container below it.
fn kube(parts: &[&str]) -> Option<PodPath> {
    for (i, part) in parts.iter().enumerate() {
        // containerd with the systemd driver but its own cgroup placement:
        // `system.slice/containerd.service/kubepods-burstable-pod<uid>.slice:cri-containerd:<id>`.
        if let Some((slice, rest)) = part.split_once(':') {
            if let Some((qos, uid)) = systemd_pod_slice(slice) {
                let (runtime, id) = colon_container(rest)?;
                return Some(PodPath {
                    qos,
                    pod_uid: uid.into(),
                    container_id: Some(id.into()),
                    runtime,
                });
            }
            continue;
        }
        let found = systemd_pod_slice(part).or_else(|| cgroupfs_pod(parts, i));
        if let Some((qos, pod_uid)) = found {
            let (container_id, runtime) = match parts.get(i + 1) {
                Some(c) => {
                    let (rt, id) = container_part(c);
                    (Some(id.into()), rt)
                }
                None => (None, None),
            };
            return Some(PodPath {
                qos,
                pod_uid: pod_uid.into(),
                container_id,
                runtime,
            });
        }
    }
    None
}

/// `kubepods[-<qos>]-pod<uid>.slice` (systemd driver; `kubelet-kubepods-...` too).
fn systemd_pod_slice(part: &str) -> Option<(Qos, String)> {
    let stem = part.strip_suffix(".slice")?;
    if !stem.contains("kubepods") {
        return None;
    }
    let at = stem.rfind("-pod")?;
    let uid = pod_uid(&stem[at + 4..])?;
    let prefix = &stem[..at];
    let qos = if prefix.ends_with("-burstable") {
        Qos::Burstable
    } else if prefix.ends_with("-besteffort") {
        Qos::BestEffort
    } else {
        Qos::Guaranteed
    };
    Some((qos, uid))
}

/// `kubepods/{burstable,besteffort}/pod<uid>` or `kubepods/pod<uid>` (cgroupfs driver).
fn cgroupfs_pod(parts: &[&str], i: usize) -> Option<(Qos, String)> {
    let uid = pod_uid(parts[i].strip_prefix("pod")?)?;
    let parent = *parts.get(i.checked_sub(1)?)?;
    let grand = i.checked_sub(2).and_then(|g| parts.get(g)).copied();
    let qos = match (parent, grand) {
        ("burstable", Some(g)) if is_kubepods(g) => Qos::Burstable,
        ("besteffort", Some(g)) if is_kubepods(g) => Qos::BestEffort,
        (p, _) if is_kubepods(p) => Qos::Guaranteed,
        _ => return None,
    };
    Some((qos, uid))
}

/// The kubepods root of the cgroupfs driver (`kubepods`, or `kubepods.slice`
/// when only the top level follows systemd naming).
fn is_kubepods(p: &str) -> bool {
    p == "kubepods" || p == "kubepods.slice"
}

/// A pod UID: a UUID with dashes (cgroupfs) or underscores (systemd), or the
/// 32-hex config hash static pods get. Normalised to dashes, lower case.
fn pod_uid(s: &str) -> Option<String> {
    if s.len() < 8
        || !s
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'-' || b == b'_')
    {
        return None;
    }
    Some(s.replace('_', "-").to_ascii_lowercase())
}

/// A container level below a pod: `<runtime>-<id>.scope` or a bare ID.
fn container_part(part: &str) -> (Option<Runtime>, String) {
    if let Some((rt, id)) = scope(part) {
        return (Some(rt), id);
    }
    // CRI-O under the cgroupfs driver names its cgroups `crio-<id>` without `.scope`.
    if let Some(id) = part
        .strip_prefix("crio-conmon-")
        .or_else(|| part.strip_prefix("crio-"))
    {
        return (Some(Runtime::Crio), id.to_string());
    }
    (None, part.to_string())
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`
/// (`crio-conmon-<id>.scope` is that container's monitor), `libpod-<id>.scope`.
fn scope(part: &str) -> Option<(Runtime, String)> {
    let stem = part.strip_suffix(".scope")?;
    const PREFIXES: [(&str, Runtime); 5] = [
        ("cri-containerd-", Runtime::Containerd),
        ("docker-", Runtime::Docker),
        ("crio-conmon-", Runtime::Crio),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ];
    for (prefix, rt) in PREFIXES {
        if let Some(id) = stem.strip_prefix(prefix) {
            if is_container_id(id) {
                return Some((rt, id.to_string()));
            }
        }
    }
    None
}

/// The `cri-containerd:<id>` (or `docker:<id>`, `crio:<id>`) tail of the colon form.
fn colon_container(rest: &str) -> Option<(Option<Runtime>, String)> {
    let (rt, id) = rest.split_once(':')?;
    let runtime = match rt {
        "cri-containerd" => Some(Runtime::Containerd),
        "docker" => Some(Runtime::Docker),
        "crio" => Some(Runtime::Crio),
        _ => None,
    };
    (!id.is_empty()).then(|| (runtime, id.to_string()))
}

/// Plain containers: `/docker/<id>` (Docker's cgroupfs driver) or a runtime
/// scope anywhere (`system.slice/docker-<id>.scope`, `machine.slice/libpod-<id>.scope`).
fn plain_container(parts: &[&str]) -> Option<(Runtime, String)> {
    for (i, part) in parts.iter().enumerate() {
        if *part == "docker" {
            if let Some(id) = parts.get(i + 1).filter(|id| is_container_id(id)) {
                return Some((Runtime::Docker, id.to_string()));
            }
        }
        if let Some(found) = scope(part) {
            return Some(found);
        }
    }
    None
}

/// Podman outside Kubernetes. cgroupfs manager: `/libpod_parent/libpod-<id>`,
/// pods `/libpod_parent/<pod-id>/libpod-<id>`, conmon monitors in
/// `/libpod_parent/conmon` and `/libpod_parent/<pod-id>/conmon` (seen with
/// podman 4.3). systemd manager: `machine.slice/libpod-<id>.scope`, pods
/// `machine.slice/machine-libpod_pod_<pod-id>.slice/libpod-<id>.scope`,
/// conmon `libpod-conmon-<id>.scope`.
fn podman(parts: &[&str]) -> Option<Owner> {
    let podman = Runtime::Podman;
    let conmon = |pod_id: Option<&str>, container_id: Option<&str>| Owner::RuntimeGroup {
        runtime: podman,
        role: RuntimeRole::Conmon,
        pod_id: pod_id.map(Into::into),
        container_id: container_id.map(Into::into),
    };
    let container = |pod_id: Option<&str>, id: &str| Owner::Container {
        runtime: podman,
        container_id: id.into(),
        pod_id: pod_id.map(Into::into),
    };
    let pod = |pod_id: &str| Owner::RuntimeGroup {
        runtime: podman,
        role: RuntimeRole::Pod,
        pod_id: Some(pod_id.into()),
        container_id: None,
    };
    // Below the pod (or libpod_parent) level: a container, a conmon, or nothing.
    let below = |pod_id: Option<&str>, next: Option<&&str>| -> Option<Owner> {
        let next = *next?;
        if next == "conmon" {
            return Some(conmon(pod_id, None));
        }
        let stem = next.strip_suffix(".scope").unwrap_or(next);
        if let Some(id) = stem.strip_prefix("libpod-conmon-") {
            return is_container_id(id).then(|| conmon(pod_id, Some(id)));
        }
        let id = stem.strip_prefix("libpod-")?;
        is_container_id(id).then(|| container(pod_id, id))
    };
    for (i, part) in parts.iter().enumerate() {
        if *part == "libpod_parent" {
            let next = parts.get(i + 1).copied()?;
            if is_container_id(next) {
                return below(Some(next), parts.get(i + 2)).or_else(|| Some(pod(next)));
            }
            return below(None, parts.get(i + 1));
        }
        if let Some(pod_id) = part
            .strip_prefix("machine-libpod_pod_")
            .and_then(|p| p.strip_suffix(".slice"))
            .filter(|p| is_container_id(p))
        {
            return below(Some(pod_id), parts.get(i + 1)).or_else(|| Some(pod(pod_id)));
        }
        if let Some(id) = part
            .strip_prefix("libpod-conmon-")
            .and_then(|p| p.strip_suffix(".scope"))
            .filter(|p| is_container_id(p))
        {
            return Some(conmon(None, Some(id)));
        }
    }
    None
}

/// Container IDs are hex, 64 digits for every runtime here; 12 (short IDs) at least.
fn is_container_id(s: &str) -> bool {
    (12..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A systemd unit or slice name.
fn is_unit(p: &str) -> bool {
    const SUFFIXES: [&str; 6] = [".service", ".scope", ".slice", ".socket", ".mount", ".swap"];
    SUFFIXES.iter().any(|s| p.len() > s.len() && p.ends_with(s))
}

#[cfg(test)]
#[path = "path_tests.rs"]
mod tests;
