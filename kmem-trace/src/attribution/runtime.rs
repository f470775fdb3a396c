//! Container metadata from what the runtime keeps on disk while a container
//! lives: containerd's task bundle `config.json` (CRI annotations), CRI-O's
//! `userdata/config.json` (kubelet annotations), podman's (same layout, its
//! names and image in the store's `containers.json`) and Docker's
//! `config.v2.json` (labels). Read once when a memcg is created: the files go away with the
//! container, long before a zombie memcg is found.

use std::{
    fs::File,
    io::Read,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{path::Runtime, workload::Workload};

/// Where a runtime keeps per-container state, `<root>/<id>/...`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `<root>/<id>/config.json`, OCI spec with `io.kubernetes.cri.*` annotations.
    ContainerdBundle,
    /// `<root>/<id>/userdata/config.json`, OCI spec with `io.kubernetes.*`
    /// annotations (CRI-O), or `io.container.manager: libpod` (podman: names
    /// and image in `<root>/containers.json`).
    CrioUserdata,
    /// `<root>/<id>/config.v2.json`, Docker's container config with labels.
    DockerConfig,
}

impl Layout {
    pub const ALL: [Layout; 3] = [
        Layout::ContainerdBundle,
        Layout::CrioUserdata,
        Layout::DockerConfig,
    ];

    fn file(self, root: &Path, id: &str) -> PathBuf {
        match self {
            Layout::ContainerdBundle => root.join(id).join("config.json"),
            Layout::CrioUserdata => root.join(id).join("userdata/config.json"),
            Layout::DockerConfig => root.join(id).join("config.v2.json"),
        }
    }

    fn runtime(self) -> Runtime {
        match self {
            Layout::ContainerdBundle => Runtime::Containerd,
            Layout::CrioUserdata => Runtime::Crio,
            Layout::DockerConfig => Runtime::Docker,
        }
    }
}

/// The default runtime roots, most common first.
pub const DEFAULT_ROOTS: &[&str] = &[
    "/run/containerd/io.containerd.runtime.v2.task/k8s.io",
    "/run/containers/storage/overlay-containers",
    "/var/lib/docker/containers",
    // podman (rootful graph root)
    "/var/lib/containers/storage/overlay-containers",
    // containerd 1.2-1.4 with the v1 linux runtime
    "/run/containerd/io.containerd.runtime.v1.linux/k8s.io",
];

/// What kmem-trace records about a container. The strings are `Arc<str>`:
/// the attribution stage shares equal ones (a pod's name, namespace and UID
/// in each of its memcgs, an image in every container that runs it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    /// Which runtime's files it came from.
    pub source: Option<Runtime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<Arc<str>>,
    /// The container's name in the pod (or Docker's container name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<Arc<str>>,
    /// `sandbox` for a pod's pause container, `container` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_type: Option<Arc<str>>,
    /// The pod's owning workload, from the pod's labels (`None`: unknown,
    /// e.g. containerd keeps no pod labels on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}

impl ContainerMeta {
    /// Every string, to share them.
    pub fn strings_mut(&mut self) -> [&mut Option<Arc<str>>; 6] {
        [
            &mut self.pod_name,
            &mut self.namespace,
            &mut self.pod_uid,
            &mut self.container_name,
            &mut self.image,
            &mut self.container_type,
        ]
    }
}

/// The runtime roots to look in.
#[derive(Clone, Debug, Default)]
pub struct RuntimeRoots {
    roots: Vec<PathBuf>,
}

/// Biggest file read (a bundle's config.json is some 10-50 KiB).
const MAX_FILE: u64 = 8 << 20;

impl RuntimeRoots {
    /// `roots`, or the defaults when empty.
    pub fn new(roots: &[PathBuf]) -> RuntimeRoots {
        if roots.is_empty() {
            Self::defaults()
        } else {
            RuntimeRoots {
                roots: roots.to_vec(),
            }
        }
    }

    pub fn defaults() -> RuntimeRoots {
        RuntimeRoots {
            roots: DEFAULT_ROOTS.iter().map(PathBuf::from).collect(),
        }
    }

    /// No roots: metadata is never looked up (replay).
    pub fn none() -> RuntimeRoots {
        RuntimeRoots { roots: Vec::new() }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Metadata of container `id`, from the first root and layout that has it.
    /// `hint` puts that runtime's layout first. Files that are missing,
    /// unreadable or malformed are skipped: metadata is best effort.
    pub fn lookup(&self, id: &str, hint: Option<Runtime>) -> Option<ContainerMeta> {
        if !safe_id(id) {
            return None;
        }
        let mut layouts = Layout::ALL;
        if let Some(h) = hint {
            layouts.sort_by_key(|l| l.runtime() != h);
        }
        for root in &self.roots {
            for layout in layouts {
                let file = layout.file(root, id);
                let Some(v) = read_json(&file) else { continue };
                let meta = match layout {
                    Layout::CrioUserdata if is_podman(&v) => from_podman(
                        &v,
                        read_json(&root.join("containers.json")).as_ref(),
                        id,
                        root,
                    ),
                    Layout::ContainerdBundle | Layout::CrioUserdata => from_oci_spec(&v),
                    Layout::DockerConfig => from_docker_config(&v),
                };
                if let Some(mut m) = meta {
                    if m.workload.is_none() {
                        m.workload = sandbox_workload(layout, root, &v, &m);
                    }
                    m.source.get_or_insert(layout.runtime());
                    return Some(m);
                }
            }
        }
        None
    }
}

/// Container IDs name directories: refuse anything that could leave the root.
fn safe_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn read_json(file: &Path) -> Option<Value> {
    let f = File::open(file).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_FILE).read_to_end(&mut buf).ok()?;
    match serde_json::from_slice(&buf) {
        Ok(v) => Some(v),
        Err(e) => {
            log::debug!("{}: not JSON ({e}); no container metadata", file.display());
            None
        }
    }
}

fn s(v: &Value, key: &str) -> Option<Arc<str>> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(Arc::from)
}

/// An OCI runtime spec's annotations: containerd's CRI plugin writes
/// `io.kubernetes.cri.*`, CRI-O the kubelet's `io.kubernetes.pod.*` /
/// `io.kubernetes.container.*` plus `io.kubernetes.cri-o.*`.
fn from_oci_spec(spec: &Value) -> Option<ContainerMeta> {
    let a = spec.get("annotations")?;
    let m = ContainerMeta {
        source: None,
        pod_name: s(a, "io.kubernetes.cri.sandbox-name").or_else(|| s(a, "io.kubernetes.pod.name")),
        namespace: s(a, "io.kubernetes.cri.sandbox-namespace")
            .or_else(|| s(a, "io.kubernetes.pod.namespace")),
        pod_uid: s(a, "io.kubernetes.cri.sandbox-uid").or_else(|| s(a, "io.kubernetes.pod.uid")),
        container_name: s(a, "io.kubernetes.cri.container-name")
            .or_else(|| s(a, "io.kubernetes.container.name")),
        image: s(a, "io.kubernetes.cri.image-name")
            .or_else(|| s(a, "io.kubernetes.cri-o.ImageName"))
            .or_else(|| s(a, "io.kubernetes.cri-o.Image")),
        container_type: s(a, "io.kubernetes.cri.container-type")
            .or_else(|| s(a, "io.kubernetes.cri-o.ContainerType")),
        workload: None,
    };
    (m.pod_name.is_some() || m.container_name.is_some() || m.image.is_some()).then_some(m)
}

/// The workload from the pod's labels, which the runtimes keep on the pod's
/// sandbox: Docker (dockershim, cri-dockerd) as the sandbox container's labels,
/// CRI-O in its `io.kubernetes.cri-o.Labels` annotation. An app container names
/// its sandbox (`io.kubernetes.sandbox.id`, `io.kubernetes.cri-o.SandboxID`).
fn sandbox_workload(layout: Layout, root: &Path, v: &Value, m: &ContainerMeta) -> Option<Workload> {
    let pod = m.pod_name.as_deref()?;
    let (labels, sandbox) = match layout {
        Layout::DockerConfig => {
            let labels = v.get("Config")?.get("Labels")?;
            let kind = labels
                .get("io.kubernetes.docker.type")
                .and_then(Value::as_str);
            let sandbox = labels
                .get("io.kubernetes.sandbox.id")
                .and_then(Value::as_str);
            (kind == Some("podsandbox"))
                .then_some(labels)
                .map_or_else(|| (None, sandbox), |l| (Some(l.clone()), None))
        }
        Layout::CrioUserdata => {
            let a = v.get("annotations")?;
            let sandbox = a
                .get("io.kubernetes.cri-o.SandboxID")
                .and_then(Value::as_str);
            let is_sandbox = a
                .get("io.kubernetes.cri-o.ContainerType")
                .and_then(Value::as_str)
                == Some("sandbox");
            if is_sandbox {
                (crio_labels(a), None)
            } else {
                (None, sandbox)
            }
        }
        Layout::ContainerdBundle => return None,
    };
    let labels = match (labels, sandbox) {
        (Some(l), _) => l,
        (None, Some(id)) if safe_id(id) => {
            let sv = read_json(&layout.file(root, id))?;
            match layout {
                Layout::DockerConfig => sv.get("Config")?.get("Labels")?.clone(),
                _ => crio_labels(sv.get("annotations")?)?,
            }
        }
        _ => return None,
    };
    let map: std::collections::HashMap<String, String> = labels
        .as_object()?
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect();
    super::workload::from_labels(pod, &map)
}

/// CRI-O's `io.kubernetes.cri-o.Labels`: the labels as a JSON string.
fn crio_labels(annotations: &Value) -> Option<Value> {
    let text = annotations.get("io.kubernetes.cri-o.Labels")?.as_str()?;
    serde_json::from_str(text).ok()
}

/// A podman container's OCI spec (`io.container.manager: libpod`).
fn is_podman(spec: &Value) -> bool {
    spec.get("annotations")
        .and_then(|a| a.get("io.container.manager"))
        .and_then(Value::as_str)
        == Some("libpod")
}

/// Podman: the spec has no names; the store's `containers.json` (containers/
/// storage) has the name and, in its `metadata` string, the image name. A
/// container in a pod runs in the pod's cgroup (`/libpod_parent/<pod-id>/...`
/// or `machine-libpod_pod_<pod-id>.slice`) and shares the UTS namespace of the
/// pod's infra container (`<pod-id:12>-infra` in the store), whose hostname
/// podman sets to the pod's name (podman 4.3; `podman pod create --hostname`
/// would change it).
fn from_podman(
    spec: &Value,
    store: Option<&Value>,
    id: &str,
    root: &Path,
) -> Option<ContainerMeta> {
    let entries = store.and_then(Value::as_array);
    let entry = |f: &dyn Fn(&Value) -> bool| entries.and_then(|cs| cs.iter().find(|c| f(c)));
    let name_of = |e: &Value| {
        e.get("names")?
            .as_array()?
            .first()?
            .as_str()
            .filter(|n| !n.is_empty())
            .map(Arc::from)
    };
    let this = entry(&|c| c.get("id").and_then(Value::as_str) == Some(id));
    let image = this
        .and_then(|e| e.get("metadata")?.as_str())
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .and_then(|m| s(&m, "image-name"));
    let cgroup = spec
        .get("linux")
        .and_then(|l| l.get("cgroupsPath"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let owner = super::path::parse(cgroup.split(':').next().unwrap_or(cgroup));
    let pod_name = owner.podman_pod_id().and_then(|pod| {
        let short = pod.get(..12)?;
        let infra_name = format!("{short}-infra");
        let infra = entry(&|c| name_of(c).as_deref() == Some(infra_name.as_str()))?;
        let infra_id = infra.get("id")?.as_str()?;
        if !safe_id(infra_id) {
            return None;
        }
        let cfg = read_json(&Layout::CrioUserdata.file(root, infra_id))?;
        s(&cfg, "hostname")
    });
    Some(ContainerMeta {
        source: Some(Runtime::Podman),
        pod_name,
        container_name: this.and_then(name_of),
        image,
        container_type: Some("container".into()),
        ..ContainerMeta::default()
    })
}

/// Docker's `config.v2.json`: kubelet (dockershim / cri-dockerd) labels, else
/// the plain container's name and image.
fn from_docker_config(cfg: &Value) -> Option<ContainerMeta> {
    let config = cfg.get("Config")?;
    let empty = Value::Null;
    let labels = config.get("Labels").unwrap_or(&empty);
    let name = s(cfg, "Name").map(|n| Arc::from(n.trim_start_matches('/')));
    let kube_name = s(labels, "io.kubernetes.container.name");
    let container_type = s(labels, "io.kubernetes.docker.type");
    Some(ContainerMeta {
        source: Some(Runtime::Docker),
        pod_name: s(labels, "io.kubernetes.pod.name"),
        namespace: s(labels, "io.kubernetes.pod.namespace"),
        pod_uid: s(labels, "io.kubernetes.pod.uid"),
        container_name: kube_name.or(name),
        image: s(config, "Image"),
        container_type,
        workload: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/runtime")
    }

    const CONTAINERD_ID: &str = "9c1e54b1a6a5b2f2d9c6e1f0b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6";
    const SANDBOX_ID: &str = "1f2e3d4c5b6a79880716a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
    const CRIO_ID: &str = "3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081920";
    const DOCKER_K8S_ID: &str = "7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f";
    const DOCKER_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    fn roots(sub: &[&str]) -> RuntimeRoots {
        RuntimeRoots::new(&sub.iter().map(|s| fixtures().join(s)).collect::<Vec<_>>())
    }

    #[test]
    fn containerd_bundle_annotations() {
        let r = roots(&["containerd/io.containerd.runtime.v2.task/k8s.io"]);
        let m = r.lookup(CONTAINERD_ID, Some(Runtime::Containerd)).unwrap();
        assert_eq!(m.source, Some(Runtime::Containerd));
        assert_eq!(m.pod_name.as_deref(), Some("web-7d4b9c8f6-x2x9k"));
        assert_eq!(m.namespace.as_deref(), Some("shop"));
        assert_eq!(
            m.pod_uid.as_deref(),
            Some("5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d")
        );
        assert_eq!(m.container_name.as_deref(), Some("nginx"));
        assert_eq!(m.image.as_deref(), Some("docker.io/library/nginx:1.25.3"));
        assert_eq!(m.container_type.as_deref(), Some("container"));
        // containerd keeps no pod labels on disk: the workload is unknown.
        assert_eq!(m.workload, None);
        // The pod's sandbox (pause) container: pod, no container name.
        let s = r.lookup(SANDBOX_ID, None).unwrap();
        assert_eq!(s.pod_name.as_deref(), Some("web-7d4b9c8f6-x2x9k"));
        assert_eq!(s.container_name, None);
        assert_eq!(s.container_type.as_deref(), Some("sandbox"));
    }

    #[test]
    fn crio_userdata_annotations() {
        let r = roots(&["containers/storage/overlay-containers"]);
        let m = r.lookup(CRIO_ID, None).unwrap();
        assert_eq!(m.source, Some(Runtime::Crio));
        assert_eq!(m.pod_name.as_deref(), Some("coredns-5dd5756b68-7xkqz"));
        assert_eq!(m.namespace.as_deref(), Some("kube-system"));
        assert_eq!(m.container_name.as_deref(), Some("coredns"));
        assert_eq!(
            m.image.as_deref(),
            Some("registry.k8s.io/coredns/coredns:v1.10.1")
        );
        // The pod's labels are on its sandbox: a Deployment's pod.
        assert_eq!(
            m.workload.as_ref().map(Workload::label).as_deref(),
            Some("Deployment/coredns")
        );
    }

    #[test]
    fn docker_labels_and_plain_containers() {
        let r = roots(&["docker/containers"]);
        let m = r.lookup(DOCKER_K8S_ID, Some(Runtime::Docker)).unwrap();
        assert_eq!(m.pod_name.as_deref(), Some("redis-0"));
        assert_eq!(m.namespace.as_deref(), Some("cache"));
        assert_eq!(m.container_name.as_deref(), Some("redis"));
        assert_eq!(m.image.as_deref(), Some("redis:7.2"));
        // dockershim keeps the pod's labels on the sandbox container.
        assert_eq!(
            m.workload.as_ref().map(Workload::label).as_deref(),
            Some("StatefulSet/redis")
        );
        let p = r.lookup(DOCKER_ID, None).unwrap();
        assert_eq!(p.workload, None);
        assert_eq!(p.pod_name, None);
        assert_eq!(p.container_name.as_deref(), Some("build-cache"));
        assert_eq!(p.image.as_deref(), Some("alpine:3.19"));
    }

    #[test]
    fn every_root_is_searched_and_misses_are_none() {
        let r = roots(&[
            "docker/containers",
            "containers/storage/overlay-containers",
            "containerd/io.containerd.runtime.v2.task/k8s.io",
        ]);
        assert!(r.lookup(CONTAINERD_ID, None).is_some());
        assert!(r.lookup(CRIO_ID, Some(Runtime::Docker)).is_some());
        assert_eq!(r.lookup("0000000000000000", None), None);
        // malformed JSON and path tricks are misses, never errors
        assert_eq!(r.lookup("broken", None), None);
        assert_eq!(r.lookup("../k8s.io", None), None);
        assert_eq!(r.lookup("", None), None);
        assert_eq!(RuntimeRoots::none().lookup(CONTAINERD_ID, None), None);
    }

    #[test]
    fn podman_store_names_image_and_pod() {
        const PLAIN: &str = "9595d78747846c50f62ab629edc4294adf869d18b6354ccd7a36d868f44a6f0d";
        const IN_POD: &str = "5c97d61827e24358de6d803544737fbc28575e61ca02eab71f0c798d741d2c18";
        let r = roots(&["docker/containers", "podman/overlay-containers"]);
        let p = r.lookup(PLAIN, Some(Runtime::Podman)).unwrap();
        assert_eq!(p.source, Some(Runtime::Podman));
        assert_eq!(p.container_name.as_deref(), Some("kt-plain"));
        assert_eq!(p.image.as_deref(), Some("localhost/kt-busybox:1"));
        // Outside a pod the hostname is the short ID, not a pod.
        assert_eq!(p.pod_name, None);
        let q = r.lookup(IN_POD, None).unwrap();
        assert_eq!(q.container_name.as_deref(), Some("kt-inpod"));
        assert_eq!(q.pod_name.as_deref(), Some("kt-pod"));
        assert_eq!(q.namespace, None);
    }

    #[test]
    fn defaults_when_no_roots_given() {
        assert_eq!(RuntimeRoots::new(&[]).roots().len(), DEFAULT_ROOTS.len());
    }
}
