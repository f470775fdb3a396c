//! `cargo xtask test`: the project's whole test suite, the same on a laptop and
//! in CI (`.ci/run`). Root-only tests run for real when root; elsewhere the
//! suite re-runs itself under sudo for them.

use std::process::Command;

use anyhow::Result;
use clap::Args;

use crate::util::{self, sh};

#[derive(Args)]
pub struct TestArgs {
    /// Skip steps by name (fmt, clippy, doc, promtool, unit, fuzz, cross, runtimes, deploy, vm).
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

/// Tools the tests call: bpftool lists loaded programs and links, setpriv and
/// unshare (util-linux) run the binary unprivileged and in a private mount namespace;
/// tmux drives the live view, chromium renders the HTML report, prometheus
/// (promtool and the server) tests the alert rules and scrapes `serve`.
/// python3-venv makes the PyPI linters' venv for the manifests (Debian's
/// kubectl is unpacked from its .deb by deploy-check, not installed);
/// skopeo reads the multi-architecture image back per platform.
const TEST_PACKAGES: &[&str] = &[
    "bpftool",
    "util-linux",
    "tmux",
    "chromium",
    "prometheus",
    "python3-venv",
    "skopeo",
];

/// The `runtimes` step's real container runtimes (driven by
/// `tests/tests/runtimes.rs` on private state directories; the tests take the
/// kernel lock themselves and clean up on failure): containerd 1.6 with CRI,
/// Docker 20.10, podman 4.3 with runc (crun refuses this kind of hybrid cgroup
/// host), and busybox-static for the image.
const RUNTIME_PACKAGES: &[&str] = &[
    "containerd",
    "docker.io",
    "podman",
    "runc",
    "busybox-static",
    "tar",
];

pub fn run(args: &TestArgs) -> Result<()> {
    if !util::is_root() {
        return rerun_as_root(args);
    }
    // Every Debian package of the whole suite, installed once before steps run
    // side by side (the VM matrix and its runner test each check for qemu):
    // two apt-get installs at once lose the dpkg lock.
    let all: Vec<&str> = crate::setup::APT_PACKAGES
        .iter()
        .chain(crate::build::CROSS_PACKAGES)
        .chain(TEST_PACKAGES)
        .chain(crate::vm::PACKAGES)
        .chain(RUNTIME_PACKAGES)
        .copied()
        .collect();
    crate::setup::apt_install(&all, false)?;
    crate::setup::run_setup(false)?;
    let root = util::root();
    let skip = |s: &str| args.skip.iter().any(|x| x == s);
    let cargo = || {
        let mut c = Command::new(util::cargo());
        c.current_dir(&root);
        c
    };
    if !skip("fmt") {
        sh(cargo().args(["fmt", "--all", "--", "--check"]))?;
    }
    if !skip("clippy") {
        sh(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    if !skip("doc") {
        sh(cargo()
            .env("RUSTDOCFLAGS", "-D warnings")
            .args(["doc", "--workspace", "--no-deps"]))?;
    }
    if !skip("promtool") {
        // The alert rules of deploy/prometheus and their unit tests.
        let rules = root.join("deploy/prometheus");
        sh(Command::new("promtool")
            .current_dir(&rules)
            .args(["check", "rules", "rules.yml"]))?;
        sh(Command::new("promtool")
            .current_dir(&rules)
            .args(["test", "rules", "rules_test.yml"]))?;
    }
    if !skip("unit") {
        // Integration tests touch the kernel (cgroups, BPF): one at a time.
        sh(cargo().args(["test", "--workspace", "--", "--test-threads=1"]))?;
    }
    if !skip("fuzz") {
        // Ten million generated inputs through decode and the lifecycle.
        sh(cargo().args([
            "test",
            "--release",
            "-p",
            "kmem-trace-tests",
            "--test",
            "fuzz",
        ]))?;
    }
    if !skip("cross") {
        // The arm64 build: aarch64 static binaries, and each architecture's
        // eBPF objects reading pt_regs its own way (no kernel touched).
        crate::cross_check::run(&root)?;
    }
    // The image (built, loaded and run by podman) serves the runtimes step
    // (the image beside a real containerd) and the deploy step (the soak).
    let image = (!skip("runtimes") || !skip("deploy"))
        .then(|| {
            crate::image::run(&crate::image::ImageArgs {
                // amd64, and arm64 where the cross toolchain is (setup installs it).
                arch: Vec::new(),
                binary: None,
                out: None,
                keep_debug: false,
                verify: true,
            })
        })
        .transpose()?;
    if !skip("runtimes") {
        // About 90 s here.
        let mut c = cargo();
        c.env("KMEM_TRACE_RUNTIME_TESTS", "1");
        if let Some(archive) = &image {
            c.env("KMEM_TRACE_IMAGE", archive);
        }
        sh(c.args([
            "test",
            "-p",
            "kmem-trace-tests",
            "--test",
            "runtimes",
            "--test",
            "image_runtime",
            "--",
            "--test-threads=1",
        ]))?;
    }
    if !skip("deploy") {
        // The manifests (kustomize, schemas, checkov, policy) and a 3-minute
        // soak of the image under the manifest's capabilities and limits.
        crate::deploy_check::run()?;
        crate::soak::run(&crate::soak::SoakArgs {
            minutes: 3,
            image: image.clone(),
        })?;
    }
    if !skip("vm") {
        // The VM kernel matrix (xtask/src/vm) and the test that a broken cell fails it.
        crate::vm::ci()?;
    }
    eprintln!("xtask test: all steps passed");
    Ok(())
}

/// The root integration tests and the VM matrix need root: run the whole suite
/// under sudo, keeping the caller's toolchain on PATH (files it builds in
/// target/ are then owned by root).
fn rerun_as_root(args: &TestArgs) -> Result<()> {
    eprintln!("xtask test: the suite needs root (cgroups, BPF); running it with sudo");
    let mut c = Command::new("sudo");
    c.arg("--preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME,RUSTUP_TOOLCHAIN,CARGO")
        .arg(std::env::current_exe()?)
        .arg("test");
    if !args.skip.is_empty() {
        c.arg("--skip").arg(args.skip.join(","));
    }
    sh(&mut c)
}
