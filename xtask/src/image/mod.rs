//! `cargo xtask image`: the kmem-trace container image, from a statically
//! linked release binary, assembled here as an OCI archive (no registry pull,
//! no container tool needed) at `target/image/kmem-trace.oci.tar`; `--verify`
//! loads it into a throw-away podman store and runs it.

mod containerfile;
mod oci;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::util::{self, sh};

/// The reference the loaded image gets (the manifests' default image).
pub const REFERENCE: &str = "ghcr.io/kmem-trace/kmem-trace";
/// The static build's target (musl is not installable here; glibc crt-static is).
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

#[derive(Args)]
pub struct ImageArgs {
    /// Use this static binary instead of building one.
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Where to write the archive (default target/image/kmem-trace.oci.tar).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the debug info (by default it is stripped: `strip --strip-debug`).
    #[arg(long)]
    pub keep_debug: bool,
    /// Then load it with podman (private store under /tmp) and run `--version`.
    #[arg(long)]
    pub verify: bool,
}

/// RUSTFLAGS of the static build: crt-static, and the checkout's and cargo
/// home's paths remapped so the binary does not depend on where it was built.
pub fn rustflags(root: &Path) -> String {
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo")
        });
    format!(
        "-C target-feature=+crt-static --remap-path-prefix={}=/build --remap-path-prefix={}=/cargo",
        root.display(),
        home.display()
    )
}

/// Builds the static binary; returns its path.
pub fn build_static(root: &Path) -> Result<PathBuf> {
    let mut c = Command::new(util::cargo());
    c.current_dir(root).env("RUSTFLAGS", rustflags(root)).args([
        "build",
        "--release",
        "--target",
        TARGET,
        "-p",
        "kmem-trace",
    ]);
    sh(&mut c)?;
    Ok(root.join("target").join(TARGET).join("release/kmem-trace"))
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// The image metadata of this checkout: the commit (with `-dirty` when the
/// tree has changes) and its time, or SOURCE_DATE_EPOCH when set.
pub fn meta(root: &Path) -> Result<oci::Meta> {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let mut revision = git(root, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    if git(root, &["status", "--porcelain", "--untracked-files=no"]).is_some() {
        revision.push_str("-dirty");
    }
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s.parse().context("SOURCE_DATE_EPOCH is not a number")?,
        Err(_) => git(root, &["log", "-1", "--format=%ct"])
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
    };
    Ok(oci::Meta {
        reference: format!("{REFERENCE}:{version}"),
        version,
        revision,
        source: env!("CARGO_PKG_REPOSITORY").to_string(),
        licenses: env!("CARGO_PKG_LICENSE").to_string(),
        epoch,
    })
}

/// True when `bin` is a 64-bit ELF without a program interpreter (PT_INTERP),
/// i.e. statically linked (glibc's static-pie still names ld-linux in its
/// strings, so the program headers are read, not the bytes searched).
fn is_static(bin: &[u8]) -> bool {
    let u = |at: usize, n: usize| -> Option<u64> {
        let b = bin.get(at..at + n)?;
        Some(b.iter().rev().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    };
    if !bin.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u(0x20, 8), u(0x36, 2), u(0x38, 2)) else {
        return false;
    };
    const PT_INTERP: u64 = 3;
    (0..phnum).all(|i| {
        let at = (phoff + i * phentsize) as usize;
        u(at, 4).is_some_and(|t| t != PT_INTERP)
    })
}

/// Builds the archive (and verifies it with podman if asked); returns its path.
pub fn run(args: &ImageArgs) -> Result<PathBuf> {
    let root = util::root();
    let bin = match &args.binary {
        Some(b) => b.clone(),
        None => build_static(&root)?,
    };
    let bin = if args.keep_debug {
        bin
    } else {
        strip_debug(&root, &bin)?
    };
    let binary = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if !is_static(&binary) {
        bail!(
            "{} is dynamically linked; build it with RUSTFLAGS='{}'",
            bin.display(),
            rustflags(&root)
        );
    }
    let meta = meta(&root)?;
    let (archive, digest) = oci::archive(&meta, &binary);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/image/kmem-trace.oci.tar"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &archive).with_context(|| format!("writing {}", out.display()))?;
    println!("image: {} ({} bytes)", out.display(), archive.len());
    println!("image: {} manifest {digest}", meta.reference);
    println!("image: revision {}", meta.revision);
    if args.verify {
        verify(&out, &meta.reference)?;
    }
    Ok(out)
}

/// A copy of `bin` without debug info (symbols kept, so backtraces still
/// name functions), next to the archive. `strip` output depends only on its
/// input, so the digest stays reproducible.
fn strip_debug(root: &Path, bin: &Path) -> Result<PathBuf> {
    let dir = root.join("target/image");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("kmem-trace");
    sh(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(bin))?;
    Ok(out)
}

/// podman with a private store under `dir` and the flags this host needs
/// (no systemd, no journald, runc).
pub fn podman(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args([
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            "--runtime",
            "runc",
        ]);
    c
}

/// What podman's cgroupfs manager leaves on the host outside its store: the
/// `libpod_parent` cgroups (with `conmon` below) in every v1 hierarchy, and
/// its shm lock file. Taken before podman runs; on drop, removes those that
/// were not there before (retrying while conmon leaves its cgroup).
pub struct PodmanLeftovers {
    made: Vec<PathBuf>,
}

impl PodmanLeftovers {
    const LOCK: &'static str = "/dev/shm/libpod_lock";

    fn parents() -> Vec<PathBuf> {
        std::fs::read_dir("/sys/fs/cgroup")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path().join("libpod_parent"))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn take() -> PodmanLeftovers {
        let mut made: Vec<PathBuf> = Self::parents()
            .into_iter()
            .filter(|p| !p.exists())
            .collect();
        if !Path::new(Self::LOCK).exists() {
            made.push(PathBuf::from(Self::LOCK));
        }
        PodmanLeftovers { made }
    }
}

impl Drop for PodmanLeftovers {
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for p in &self.made {
            if p.as_os_str() == Self::LOCK {
                let _ = std::fs::remove_file(p);
                continue;
            }
            while p.exists() {
                let _ = std::fs::remove_dir(p.join("conmon"));
                if std::fs::remove_dir(p).is_ok() || std::time::Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    }
}

/// Loads the archive into a throw-away podman store and runs `--version`.
fn verify(archive: &Path, reference: &str) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("kmem-trace-image-{}", std::process::id()));
    let _leftovers = PodmanLeftovers::take();
    let result = (|| {
        sh(podman(&dir).arg("load").arg("-i").arg(archive))?;
        let out = podman(&dir)
            .args(["run", "--rm", "--network=none"])
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args([reference, "--version"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !text.starts_with("kmem-trace ") {
            bail!(
                "podman run {reference} --version: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("image: podman run {reference} --version: {}", text.trim());
        Ok(())
    })();
    // The store holds overlay mounts only while containers run; --rm ended them.
    let _ = podman(&dir).args(["system", "reset", "--force"]).output();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
