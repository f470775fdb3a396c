//! `cargo xtask image`: the kmem-trace container image, from statically
//! linked release binaries (amd64, and arm64 from the cross build), assembled
//! here as an OCI archive (no registry pull, no container tool needed) at
//! `target/image/kmem-trace.oci.tar`; `--verify` loads it into a throw-away
//! podman store and runs it, and reads every platform back with skopeo.

mod containerfile;
mod oci;
mod platforms;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{
    build::{self, Arch},
    util::{self, sh},
};

/// The reference the loaded image gets (the manifests' default image).
pub const REFERENCE: &str = "ghcr.io/kmem-trace/kmem-trace";

#[derive(Args)]
pub struct ImageArgs {
    /// Architectures, comma-separated (amd64,arm64). Default: amd64, and
    /// arm64 too where the cross toolchain is installed (`cargo xtask setup`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub arch: Vec<Arch>,
    /// Use this static binary instead of building one (one architecture only).
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

/// The architectures of this run: as asked (amd64 first, whose image the
/// docker `manifest.json` names), else amd64 plus arm64 when it can be built.
/// Both by default, because the image is the release artefact and arm64
/// nodes need theirs; where the cross toolchain is missing that is said, not
/// silently different.
fn archs(args: &ImageArgs) -> Result<Vec<Arch>> {
    let mut archs = args.arch.clone();
    archs.sort();
    archs.dedup();
    if archs.is_empty() {
        archs.push(Arch::Amd64);
        if args.binary.is_none() {
            match Arch::Arm64.missing_toolchain() {
                None => archs.push(Arch::Arm64),
                Some(why) => eprintln!("image: amd64 only: {why}"),
            }
        }
    }
    if args.binary.is_some() && archs.len() > 1 {
        bail!("--binary gives one architecture's binary; pass one --arch with it");
    }
    Ok(archs)
}

/// Builds the archive (and verifies it with podman if asked); returns its path.
pub fn run(args: &ImageArgs) -> Result<PathBuf> {
    let root = util::root();
    let archs = archs(args)?;
    let mut binaries = Vec::new();
    for &arch in &archs {
        let bin = match &args.binary {
            Some(b) => b.clone(),
            None => build::static_binaries(&root, arch)?.0,
        };
        let bin = if args.keep_debug {
            bin
        } else {
            strip_debug(&root, &bin, arch)?
        };
        let binary = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
        crate::cross_check::check_binary(&binary, arch).with_context(|| {
            format!(
                "{} is not a static {arch} binary (RUSTFLAGS='{}')",
                bin.display(),
                rustflags(&root)
            )
        })?;
        binaries.push((arch, binary));
    }
    let meta = meta(&root)?;
    let platforms: Vec<(Arch, &[u8])> = binaries.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    let (archive, digest) = oci::archive(&meta, &platforms);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/image/kmem-trace.oci.tar"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &archive).with_context(|| format!("writing {}", out.display()))?;
    println!("image: {} ({} bytes)", out.display(), archive.len());
    let archs_text: Vec<&str> = archs.iter().map(|a| a.debian()).collect();
    println!(
        "image: {} {digest} ({})",
        meta.reference,
        archs_text.join(", ")
    );
    println!("image: revision {}", meta.revision);
    if args.verify {
        verify(&out, &meta.reference)?;
        platforms::verify(&out, &archs)?;
    }
    Ok(out)
}

/// A copy of `bin` without debug info (symbols kept, so backtraces still
/// name functions), next to the archive (`kmem-trace`, `kmem-trace-arm64`).
/// `strip` output depends only on its input, so the digest stays reproducible.
fn strip_debug(root: &Path, bin: &Path, arch: Arch) -> Result<PathBuf> {
    let dir = root.join("target/image");
    std::fs::create_dir_all(&dir)?;
    let out = match arch {
        Arch::Amd64 => dir.join("kmem-trace"),
        _ => dir.join(format!("kmem-trace-{arch}")),
    };
    sh(Command::new(arch.strip())
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
