//! Real container runtimes for the runtime tests, each on private state
//! directories: dockerd (cgroupfs driver) and podman (cgroupfs manager, runc).
//! Everything they start is stopped, and their containers removed, when the
//! handle is dropped, also on panic. Settings this host needs (no
//! CAP_SYS_RESOURCE: explicit ulimits for podman; crun refuses the hybrid
//! cgroup host, runc works) are in NOTES.md §6.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::wait_for;

/// The runtime tests run when `cargo xtask test` asks for them (its
/// `runtimes` step sets this), else they say why they are skipped.
pub fn wanted(test: &str) -> bool {
    if std::env::var_os("KMEM_TRACE_RUNTIME_TESTS").is_some() {
        return crate::require_root(test);
    }
    eprintln!("skipped {test}: the real-runtime tests run in `cargo xtask test`'s runtimes step (KMEM_TRACE_RUNTIME_TESTS=1)");
    false
}

/// Runs `cmd`, failing with its output when it fails; returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A tarball of a root filesystem with busybox-static and the applets the
/// tests run: the image every runtime imports (no registry).
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("rootfs");
    fs::create_dir_all(root.join("bin"))?;
    fs::create_dir_all(root.join("pin"))?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no busybox; install busybox-static")?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in ["sh", "head", "sleep", "true", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    // A podman pod's infra process.
    fs::write(root.join("pause"), "#!/bin/sh\nexec sleep 3600\n")?;
    run(Command::new("chmod").arg("755").arg(root.join("pause")))?;
    let tar = dir.join("rootfs.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg("."))?;
    Ok(tar)
}

/// Whether a process runs whose command line contains `needle`.
fn running_with(needle: &str) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|p| {
        p.file_name()
            .to_string_lossy()
            .parse::<u32>()
            .is_ok_and(|pid| pid != std::process::id())
            && fs::read(p.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

/// Stops a daemon we started: SIGTERM, then SIGKILL after `grace`.
fn stop(child: &mut Child, grace: Duration) {
    // SAFETY: kill of a PID we spawned and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let end = Instant::now() + grace;
    while Instant::now() < end {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// dockerd with its own data root, exec root and socket.
pub struct Dockerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd (cgroupfs driver, no networking, vfs storage) under `dir`.
    pub fn start(dir: &Path) -> Result<Dockerd> {
        let dir = dir.join("docker");
        fs::create_dir_all(&dir)?;
        let log = fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .args([
                "--exec-opt",
                "native.cgroupdriver=cgroupfs",
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver=vfs",
                "--containerd-namespace",
                "kmem-trace-test",
                "--containerd-plugins-namespace",
                "kmem-trace-test-plugins",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting dockerd (install docker.io)")?;
        let d = Dockerd {
            dir,
            child: Some(child),
        };
        if !wait_for(Duration::from_secs(60), || {
            d.cmd()
                .arg("info")
                .output()
                .is_ok_and(|o| o.status.success())
        }) {
            bail!(
                "dockerd did not come up: {}",
                fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default()
            );
        }
        Ok(d)
    }

    /// `docker -H <our socket>`.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()));
        c
    }

    /// Where it keeps `<id>/config.v2.json`: the runtime root kmem-trace reads.
    pub fn containers_dir(&self) -> PathBuf {
        self.dir.join("data/containers")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(ids) = run(self.cmd().args(["ps", "-aq"])) {
            for id in ids.lines() {
                let _ = self.cmd().args(["rm", "-f", id]).output();
            }
        }
        if let Some(mut c) = self.child.take() {
            stop(&mut c, Duration::from_secs(20));
        }
        // The vfs layers are plain directories; the exec root may hold mounts
        // of a container that did not stop: leave those rather than fail.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// podman with its own storage (overlay, its default), run root and configuration.
/// Removes on drop what podman leaves on the host outside them when it was
/// not there before: `libpod_parent` cgroups (cgroupfs manager) and its shm
/// lock file.
pub struct Podman {
    dir: PathBuf,
    /// The `libpod_parent` cgroups this store's containers made.
    made_parents: Vec<PathBuf>,
    made_lock: bool,
}

/// Where podman's cgroupfs manager puts containers: `libpod_parent` in every
/// hierarchy (each v1 controller, the named systemd one, the unified one), not
/// only the memory controller's.
fn libpod_parents() -> Vec<PathBuf> {
    fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("libpod_parent"))
                .collect()
        })
        .unwrap_or_default()
}
const LIBPOD_LOCK: &str = "/dev/shm/libpod_lock";

impl Podman {
    pub fn new(dir: &Path) -> Result<Podman> {
        let dir = dir.join("podman");
        fs::create_dir_all(dir.join("tmp"))?;
        fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n",
        )?;
        Ok(Podman {
            dir,
            made_parents: libpod_parents()
                .into_iter()
                .filter(|p| !p.exists())
                .collect(),
            made_lock: !Path::new(LIBPOD_LOCK).exists(),
        })
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"));
        c
    }

    /// The store's `overlay-containers`: the runtime root kmem-trace reads.
    pub fn containers_dir(&self) -> PathBuf {
        self.dir.join("root/overlay-containers")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-af", "-t", "0"]).output();
        let _ = self.cmd().args(["pod", "rm", "-af"]).output();
        // conmon runs `podman ... container cleanup` when a container exits:
        // wait for those (they name our root) before removing what they use.
        let ours = self.dir.display().to_string();
        wait_for(Duration::from_secs(20), || !running_with(&ours));
        let _ = fs::remove_dir_all(&self.dir);
        if !self.made_parents.is_empty() {
            // conmon processes leave their cgroup a moment after `rm`.
            let busy = || {
                self.made_parents.iter().any(|p| {
                    ["", "conmon"].iter().any(|d| {
                        let f = p.join(d).join("cgroup.procs");
                        !fs::read_to_string(f).unwrap_or_default().trim().is_empty()
                    })
                })
            };
            wait_for(Duration::from_secs(20), || !busy());
            for p in &self.made_parents {
                crate::remove_tree(p);
            }
        }
        if self.made_lock {
            let _ = fs::remove_file(LIBPOD_LOCK);
        }
    }
}
