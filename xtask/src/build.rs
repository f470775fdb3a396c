//! Static builds of kmem-trace and the VM guest per architecture (stand-in:
//! replaced by the cross-build module at merge).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Result};

use crate::util::{self, sh};

/// A CPU architecture kmem-trace is built and tested for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Debian's name (`dpkg --print-architecture`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Whether this is the machine's own architecture.
    pub fn is_host(self) -> bool {
        self.rust_arch() == std::env::consts::ARCH
    }

    /// Rust's `target_arch`.
    pub fn rust_arch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// qemu's full-system emulator for this architecture.
    pub fn qemu_system(self) -> String {
        format!("qemu-system-{}", self.rust_arch())
    }

    /// `strip` that understands this architecture's ELF.
    pub fn strip(self) -> &'static str {
        match self {
            Arch::Amd64 => "strip",
            Arch::Arm64 => "aarch64-linux-gnu-strip",
        }
    }

    /// Rust's target triple.
    pub fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }
}

/// The workspace's target directory (`CARGO_TARGET_DIR` or `target`).
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Static kmem-trace and guest binaries for `arch`.
pub fn static_binaries(root: &Path, arch: Arch) -> Result<(PathBuf, PathBuf)> {
    if arch != Arch::Amd64 {
        bail!("no cross build for {arch:?} yet");
    }
    let target = arch.triple();
    let mut c = Command::new(util::cargo());
    c.current_dir(root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--release", "--target", target])
        .args(["-p", "kmem-trace", "--bin", "kmem-trace"])
        .args(["-p", "kmem-trace-tests", "--bin", "kmem-trace-vm-guest"]);
    sh(&mut c)?;
    let dir = target_dir(root).join(target).join("release");
    Ok((dir.join("kmem-trace"), dir.join("kmem-trace-vm-guest")))
}
