//! `cargo xtask setup`: installs what building the eBPF programs needs, skipping
//! what is present. Debian's `rustc-web` ships rustc with its library source
//! (needed by `-Z build-std=core`); bpf-linker links the BPF object. The
//! arm64 cross build adds Debian's aarch64 gcc and static glibc.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};
use clap::Args;

use crate::util::{self, ok, privileged, sh, which};

/// Debian packages: rustc with library source, and the LLVM bpf-linker builds against.
pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "build-essential",
    "pkg-config",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

#[derive(Args)]
pub struct SetupArgs {
    /// Only report what is missing; install nothing.
    #[arg(long)]
    pub check: bool,
}

/// Packages in `pkgs` that dpkg does not list as installed.
fn missing_packages(pkgs: &[&str]) -> Vec<String> {
    pkgs.iter()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .map(|p| p.to_string())
        .collect()
}

/// Installs Debian packages that are missing (apt-get update only if needed).
pub fn apt_install(pkgs: &[&str], check: bool) -> Result<()> {
    let missing = missing_packages(pkgs);
    if missing.is_empty() {
        eprintln!("setup: packages present: {}", pkgs.join(" "));
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!(
            "this system has no apt-get. Install the equivalents of these Debian packages, then rerun: {}\n\
             (rustc >= 1.95 with its library source at $(rustc --print sysroot)/lib/rustlib/src/rust/library, \
             LLVM 22 development files, and `cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22`)",
            missing.join(" ")
        );
    }
    if check {
        bail!("missing packages: {}", missing.join(" "));
    }
    eprintln!("setup: installing {}", missing.join(" "));
    util::apt(util::apt_get().args(["update", "-qq"]))?;
    let mut install = util::apt_get();
    install
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing);
    util::apt(&mut install)
}

fn bpf_linker_present() -> bool {
    let home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let bin = which("bpf-linker").unwrap_or_else(|| home.join("bin/bpf-linker"));
    bin.exists() && ok(Command::new(&bin).arg("--version"))
}

pub fn run_setup(check: bool) -> Result<()> {
    apt_install(APT_PACKAGES, check)?;
    // The arm64 cross build (`cargo xtask build --arch arm64`, the image's arm64 half).
    apt_install(crate::build::CROSS_PACKAGES, check)?;
    if !Path::new("/usr/lib/rustlib/src/rust/library/core").exists() {
        bail!("rust-web-src is installed but /usr/lib/rustlib/src/rust/library is missing; reinstall rust-web-src");
    }
    if bpf_linker_present() {
        eprintln!("setup: bpf-linker present");
    } else if check {
        bail!("bpf-linker is missing");
    } else {
        eprintln!(
            "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let mut c = Command::new(util::cargo());
        c.env("LLVM_PREFIX", LLVM_PREFIX)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"]);
        sh(&mut c)?;
    }
    eprintln!("setup: eBPF toolchain ready");
    Ok(())
}

pub fn run(args: &SetupArgs) -> Result<()> {
    run_setup(args.check)
}

/// Set up, build release, run `kmem-trace watch`.
pub fn watch(args: &[String]) -> Result<()> {
    run_setup(false)?;
    let root = util::root();
    let mut build = Command::new(util::cargo());
    build
        .current_dir(&root)
        .args(["build", "--release", "-p", "kmem-trace"]);
    sh(&mut build)?;
    let bin = root.join("target/release/kmem-trace");
    let mut watch = privileged(&bin.to_string_lossy());
    watch.arg("watch").args(args);
    sh(&mut watch)
}
