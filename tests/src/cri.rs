//! containerd 1.6 with its CRI plugin on private state directories, an image
//! imported from a hand-made OCI archive (busybox-static, `/pause` as its
//! command), and a CRI client that plays kubelet (`RunPodSandbox` with the
//! pod's cgroup parent and labels, `CreateContainer`, `StartContainer`,
//! `StopPodSandbox`, `RemovePodSandbox`). Stopped and cleaned up on drop.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Endpoint, Uri};

use crate::runtimes::run;

/// The image name kubelet would pass.
pub const IMAGE: &str = "docker.io/library/kt-busybox:1";

/// A running containerd.
pub struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd with the CRI plugin under `dir` (host network only,
    /// native snapshotter, runc, `restrict_oom_score_adj`: this host has no
    /// CAP_SYS_RESOURCE) and imports [`IMAGE`] built from `rootfs_tar`.
    pub fn start(dir: &Path, rootfs_tar: &Path) -> Result<Containerd> {
        let dir = dir.join("containerd");
        fs::create_dir_all(&dir)?;
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_cgroup = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
"#
        );
        fs::write(dir.join("config.toml"), config)?;
        let log = fs::File::create(dir.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting containerd (install containerd)")?;
        let c = Containerd {
            dir,
            child: Some(child),
        };
        let up = (0..150).any(|_| {
            std::thread::sleep(Duration::from_millis(200));
            c.ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !up {
            bail!("containerd did not come up: {}", c.log());
        }
        let archive = oci_archive(&c.dir, rootfs_tar)?;
        run(c
            .ctr()
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&archive))?;
        Ok(c)
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address <our socket>`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(self.socket());
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Where the task bundles (`<id>/config.json`) live: kmem-trace's runtime root.
    pub fn bundles(&self) -> PathBuf {
        self.dir.join("state/io.containerd.runtime.v2.task/k8s.io")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks left by a failed test: kill them and their shims by PID.
        if let Ok(out) = run(self.ctr().args(["-n", "k8s.io", "tasks", "ls", "-q"])) {
            for id in out.lines() {
                let _ = self
                    .ctr()
                    .args(["-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id])
                    .output();
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill of the containerd we spawned.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        // Shims we caused, found by our socket in their command line.
        let ours = self.socket().display().to_string();
        if let Ok(procs) = fs::read_dir("/proc") {
            for p in procs.flatten() {
                let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmd = fs::read(p.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.starts_with("/usr/bin/containerd-shim") && cmd.contains(&ours) {
                    // SAFETY: kill by PID of a shim of our containerd.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        // Sandbox /dev/shm mounts under the state directory.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = self.dir.display().to_string();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(1)) {
            if m.starts_with(&prefix) {
                let _ = Command::new("umount").arg("-l").arg(m).output();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// An OCI image archive of one layer (`rootfs_tar`) whose command is `/pause`,
/// named [`IMAGE`] for `ctr images import`.
fn oci_archive(dir: &Path, rootfs_tar: &Path) -> Result<PathBuf> {
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let tmp = blobs.join("tmp");
        fs::write(&tmp, bytes)?;
        let sum = run(Command::new("sha256sum").arg(&tmp))?;
        let hex = sum
            .split_whitespace()
            .next()
            .context("sha256sum")?
            .to_string();
        fs::rename(&tmp, blobs.join(&hex))?;
        Ok((format!("sha256:{hex}"), bytes.len()))
    };
    let (layer, layer_size) = put(&fs::read(rootfs_tar)?)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/pause"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [layer]},
    });
    let (config, config_size) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
    });
    let (manifest, manifest_size) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest, "size": manifest_size,
            "annotations": {"io.containerd.image.name": IMAGE, "org.opencontainers.image.ref.name": "1"},
        }],
    });
    fs::write(layout.join("index.json"), index.to_string())?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .args(["oci-layout", "index.json", "blobs"]))?;
    Ok(archive)
}

/// What kubelet knows of a pod.
pub struct Pod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
    pub labels: &'a [(&'a str, &'a str)],
    /// kubelet's cgroupfs parent, `.../kubepods/burstable/pod<uid>`.
    pub cgroup_parent: &'a str,
}

/// Runs the pod's sandbox and one app container (`command`, with `host_dir`
/// mounted at `/pin`) to completion, then stops and removes the pod, as
/// kubelet does when the pod is deleted. Returns (sandbox id, container id).
pub fn run_pod(
    socket: &Path,
    pod: &Pod<'_>,
    container: &str,
    command: &[&str],
    host_dir: &Path,
) -> Result<(String, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .context("connecting to containerd's CRI socket")?;
        let mut cri = RuntimeServiceClient::new(channel);
        let labels: HashMap<String, String> = pod
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.name.into(),
                uid: pod.uid.into(),
                namespace: pod.namespace.into(),
                attempt: 0,
            }),
            labels: labels.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: pod.cgroup_parent.into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        pid: NamespaceMode::Container as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(sandbox_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        let mut clabels = HashMap::new();
        clabels.insert(
            "io.kubernetes.container.name".to_string(),
            container.to_string(),
        );
        let created = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: sandbox.clone(),
                config: Some(ContainerConfig {
                    metadata: Some(ContainerMetadata {
                        name: container.into(),
                        attempt: 0,
                    }),
                    image: Some(ImageSpec {
                        image: IMAGE.into(),
                        ..Default::default()
                    }),
                    command: command.iter().map(|s| s.to_string()).collect(),
                    mounts: vec![Mount {
                        container_path: "/pin".into(),
                        host_path: host_dir.display().to_string(),
                        ..Default::default()
                    }],
                    labels: clabels,
                    ..Default::default()
                }),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: created.clone(),
        })
        .await
        .context("StartContainer")?;
        let mut exited = false;
        for _ in 0..100 {
            let st = cri
                .container_status(ContainerStatusRequest {
                    container_id: created.clone(),
                    verbose: false,
                })
                .await
                .context("ContainerStatus")?
                .into_inner();
            if st
                .status
                .is_some_and(|s| s.state == ContainerState::ContainerExited as i32)
            {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !exited {
            bail!("the app container did not finish in 10 s");
        }
        // Give the tracer a moment with the container's files in place.
        tokio::time::sleep(Duration::from_secs(2)).await;
        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .context("StopPodSandbox")?;
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: sandbox.clone(),
        })
        .await
        .context("RemovePodSandbox")?;
        Ok((sandbox, created))
    })
}
