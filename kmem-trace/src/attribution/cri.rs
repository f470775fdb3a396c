//! Container metadata from the runtime itself over its CRI socket (containerd,
//! CRI-O): the container's and its sandbox's names, namespace, UID, image,
//! labels and annotations, including the pod's labels, which no runtime file
//! of containerd keeps. Runs on the lookup worker ([`super::worker`]), never on
//! the event path; a slow or absent socket only costs that worker time, and
//! the runtime files stay the fallback ([`Chain`]).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerFilter, ListContainersRequest,
    PodSandboxStatusRequest,
};
use tonic::transport::{Endpoint, Uri};

use super::{workload, ContainerMeta, MetaLookup, Runtime, RuntimeRoots};

/// The CRI sockets looked for when none is given.
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
];

/// Longest wait for one runtime's answer.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the runtimes at `sockets` (those that exist) over CRI.
pub struct CriLookup {
    sockets: Vec<PathBuf>,
}

impl CriLookup {
    /// `sockets`, or the defaults when empty.
    pub fn new(sockets: &[PathBuf]) -> CriLookup {
        CriLookup {
            sockets: if sockets.is_empty() {
                DEFAULT_SOCKETS.iter().map(PathBuf::from).collect()
            } else {
                sockets.to_vec()
            },
        }
    }
}

impl MetaLookup for CriLookup {
    fn lookup(&self, id: &str, _hint: Option<Runtime>) -> Option<ContainerMeta> {
        let sockets: Vec<&PathBuf> = self.sockets.iter().filter(|s| s.exists()).collect();
        if sockets.is_empty() {
            return None;
        }
        // On a thread of its own: the caller may itself run inside a tokio
        // runtime (start-up), where another runtime cannot block.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                for s in sockets {
                    match rt.block_on(async { tokio::time::timeout(TIMEOUT, ask(s, id)).await }) {
                        Ok(Ok(Some(m))) => return Some(m),
                        Ok(Ok(None)) => {}
                        Ok(Err(e)) => log::debug!("CRI {}: {e}", s.display()),
                        Err(_) => log::debug!("CRI {}: no answer in {TIMEOUT:?}", s.display()),
                    }
                }
                None
            })
            .join()
            .ok()
            .flatten()
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Container `id` (or sandbox `id`) and its sandbox, from one runtime.
async fn ask(socket: &Path, id: &str) -> Result<Option<ContainerMeta>, BoxError> {
    let path = socket.to_path_buf();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?;
    let mut cri = RuntimeServiceClient::new(channel);
    let containers = cri
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                id: id.to_string(),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    let container = containers.into_iter().find(|c| c.id == id);
    let sandbox_id = container
        .as_ref()
        .map_or(id.to_string(), |c| c.pod_sandbox_id.clone());
    let sandbox = match cri
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: sandbox_id,
            verbose: false,
        })
        .await
    {
        Ok(r) => r.into_inner().status,
        // Not a sandbox of this runtime (and, without a container, not ours).
        Err(_) if container.is_none() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let crio = socket.to_string_lossy().contains("crio");
    let mut m = ContainerMeta {
        source: Some(if crio {
            Runtime::Crio
        } else {
            Runtime::Containerd
        }),
        ..ContainerMeta::default()
    };
    if let Some(s) = &sandbox {
        if let Some(md) = &s.metadata {
            m.pod_name = nonempty(&md.name);
            m.namespace = nonempty(&md.namespace);
            m.pod_uid = nonempty(&md.uid);
            m.workload = workload::from_labels(&md.name, &s.labels);
        }
    }
    match &container {
        Some(c) => {
            m.container_name = c.metadata.as_ref().and_then(|md| nonempty(&md.name));
            m.image = c
                .image
                .as_ref()
                .and_then(|i| nonempty(&i.image))
                .or_else(|| nonempty(&c.image_ref));
            m.container_type = Some("container".into());
        }
        None => m.container_type = Some("sandbox".into()),
    }
    Ok(Some(m))
}

fn nonempty(s: &str) -> Option<Arc<str>> {
    (!s.is_empty()).then(|| Arc::from(s))
}

/// The CRI first, then the runtime files; what one lacks the other may fill
/// (the files have the image name as the user wrote it, the CRI the labels).
pub struct Chain {
    pub cri: CriLookup,
    pub files: RuntimeRoots,
}

impl MetaLookup for Chain {
    fn lookup(&self, id: &str, hint: Option<Runtime>) -> Option<ContainerMeta> {
        let files = self.files.lookup(id, hint);
        // Docker and podman have no CRI; their files say everything.
        if matches!(hint, Some(Runtime::Docker | Runtime::Podman))
            || files
                .as_ref()
                .is_some_and(|f| matches!(f.source, Some(Runtime::Docker | Runtime::Podman)))
        {
            return files;
        }
        let Some(mut m) = self.cri.lookup(id, hint) else {
            return files;
        };
        if let Some(f) = files {
            m.source = f.source.or(m.source);
            let fill = |a: &mut Option<Arc<str>>, b: Option<Arc<str>>| {
                if a.is_none() {
                    *a = b;
                }
            };
            fill(&mut m.image, f.image);
            fill(&mut m.pod_name, f.pod_name);
            fill(&mut m.namespace, f.namespace);
            fill(&mut m.pod_uid, f.pod_uid);
            fill(&mut m.container_name, f.container_name);
            if m.workload.is_none() {
                m.workload = f.workload;
            }
        }
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_sockets_fall_back_to_the_files() {
        let t = std::time::Instant::now();
        let cri = CriLookup::new(&[PathBuf::from("/nonexistent/cri.sock")]);
        assert_eq!(cri.lookup("abc", None), None);
        assert!(t.elapsed() < TIMEOUT, "an absent socket is not waited for");
        assert_eq!(CriLookup::new(&[]).sockets.len(), DEFAULT_SOCKETS.len());
        let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/runtime");
        let chain = Chain {
            cri,
            files: RuntimeRoots::new(&[fixtures.join("docker/containers")]),
        };
        let m = chain
            .lookup(
                "7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f",
                Some(Runtime::Docker),
            )
            .unwrap();
        assert_eq!(m.pod_name.as_deref(), Some("redis-0"));
        assert_eq!(chain.lookup("0000000000000000", None), None);
    }
}
