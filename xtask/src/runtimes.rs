//! The `runtimes` step of `cargo xtask test`: real container runtimes from
//! Debian's packages (containerd with CRI, dockerd, podman with runc;
//! busybox-static for the image), driven by `tests/tests/runtimes.rs` on
//! private state directories.
//! The tests take the kernel lock themselves and clean up on failure.

use std::{path::Path, process::Command};

use anyhow::Result;

use crate::util::sh;

/// What the runtime tests start: containerd 1.6, Docker 20.10, podman 4.3
/// with runc (crun refuses this kind of hybrid cgroup host), and
/// busybox-static for the image.
pub const PACKAGES: &[&str] = &[
    "containerd",
    "docker.io",
    "podman",
    "runc",
    "busybox-static",
    "tar",
];

/// Installs the runtimes if missing and runs the runtime tests (about 40 s
/// here, plus the packages' install on a fresh machine).
pub fn run(root: &Path, cargo: &str) -> Result<()> {
    crate::setup::apt_install(PACKAGES, false)?;
    sh(Command::new(cargo)
        .current_dir(root)
        .env("KMEM_TRACE_RUNTIME_TESTS", "1")
        .args([
            "test",
            "-p",
            "kmem-trace-tests",
            "--test",
            "runtimes",
            "--",
            "--test-threads=1",
        ]))
}
