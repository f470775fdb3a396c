//! A Kubernetes pod without a cluster, as kmem-trace's attribution meets one:
//! a containerd task bundle with CRI annotations under a private runtime root,
//! and the kubelet's cgroupfs layout `kubepods/burstable/pod<uid>/<cid>` below
//! a test parent, whose container cgroup is left pinned by 16 MiB of tmpfs
//! when the pod is deleted.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::{Scratch, TestParent};

/// What the container's CRI annotations name.
pub struct PodNames {
    pub pod: &'static str,
    pub namespace: &'static str,
    pub container: &'static str,
    pub image: &'static str,
}

/// One pod's session: a scratch directory holding the runtime root (`k8s.io`)
/// and the history database, fresh pod and container IDs, and the
/// container's bundle.
pub struct PodSession {
    pub scratch: Scratch,
    /// `--runtime-root` of the tracer.
    pub runtime: PathBuf,
    /// `--db` of the tracer.
    pub db: PathBuf,
    pub uid: String,
    /// Container ID (64 hex digits): the name of the container's cgroup.
    pub cid: String,
    bundle: PathBuf,
}

impl PodSession {
    /// Scratch directory `<tmp>/<parent's name>`, and the container's bundle
    /// as the CRI plugin leaves it for a running container.
    pub fn new(parent: &TestParent, names: &PodNames) -> Result<PodSession> {
        let scratch = Scratch::new(std::env::temp_dir().join(&parent.name))?;
        let runtime = scratch.path().join("k8s.io");
        let db = scratch.path().join("history.db");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let uid = format!(
            "{:08x}-4d1c-4c35-9b8e-{:012x}",
            std::process::id(),
            nanos & 0xffff_ffff_ffff
        );
        let cid = format!("{:064x}", nanos ^ 0x5eed);
        let sandbox = format!("{:064x}", nanos ^ 0xbeef);
        let bundle = runtime.join(&cid);
        fs::create_dir_all(bundle.join("rootfs"))
            .with_context(|| format!("creating {}", bundle.display()))?;
        let spec = serde_json::json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/pinner"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": names.container,
                "io.kubernetes.cri.image-name": names.image,
                "io.kubernetes.cri.sandbox-id": sandbox,
                "io.kubernetes.cri.sandbox-name": names.pod,
                "io.kubernetes.cri.sandbox-namespace": names.namespace,
                "io.kubernetes.cri.sandbox-uid": uid,
            },
            "linux": {"cgroupsPath": format!("/kubepods/burstable/pod{uid}/{cid}")},
        });
        fs::write(bundle.join("config.json"), spec.to_string())?;
        fs::write(bundle.join("init.pid"), "1")?;
        Ok(PodSession {
            scratch,
            runtime,
            db,
            uid,
            cid,
            bundle,
        })
    }

    /// `watch --json --zombie-after 1s` with this history and runtime root.
    pub fn watch_args(&self) -> Vec<&str> {
        fn utf8(p: &Path) -> &str {
            p.to_str().expect("a UTF-8 temporary path")
        }
        vec![
            "watch",
            "--json",
            "--zombie-after",
            "1s",
            "--db",
            utf8(&self.db),
            "--runtime-root",
            utf8(&self.runtime),
        ]
    }

    /// Creates the pod's cgroups under `parent`; `sh` enters the container's by
    /// attach and forks `head`, which fills a tmpfs file with 16 MiB; then
    /// removes the cgroups bottom-up and the bundle, as deleting the pod does.
    /// Returns the pinning file (`parent` deletes it when dropped).
    pub fn pin_then_delete(&self, parent: &mut TestParent) -> Result<PathBuf> {
        let levels = [
            "kubepods".to_string(),
            "kubepods/burstable".to_string(),
            format!("kubepods/burstable/pod{}", self.uid),
            format!("kubepods/burstable/pod{}/{}", self.uid, self.cid),
        ];
        let dirs = levels
            .iter()
            .map(|l| parent.child(l))
            .collect::<Result<Vec<_>>>()?;
        let pin = PathBuf::from(format!("/dev/shm/{}-pin", parent.name));
        parent.track_file(&pin);
        let container = dirs.last().context("no container level")?;
        parent.run_in(
            container,
            &format!("head -c 16777216 /dev/zero > '{}'", pin.display()),
        )?;
        // A pod lives longer than the few milliseconds its resident took: the
        // tracer looks its bundle up on a worker thread (off the event path),
        // and a bundle deleted before that lookup ran could not name anything,
        // here as on a node. One second is far beyond the lookup's latency
        // (one small file read) even on a loaded CI machine.
        std::thread::sleep(std::time::Duration::from_secs(1));
        for d in dirs.iter().rev() {
            parent.rmdir(d)?;
        }
        fs::remove_dir_all(&self.bundle)
            .with_context(|| format!("removing {}", self.bundle.display()))?;
        Ok(pin)
    }
}
