//! `cargo xtask build --arch amd64|arm64`: the statically linked release
//! binaries, `kmem-trace` and the VM matrix's guest `kmem-trace-vm-guest`,
//! for one architecture, with eBPF objects built for that architecture's
//! `pt_regs` (kmem-trace/build.rs follows the target's `target_arch`).
//!
//! amd64 builds with rustup's stable toolchain, as always. rustup here has
//! only the x86_64 standard library and cannot download another, so arm64
//! builds with Debian's rustc (`rustc-web`, the one that already builds the
//! eBPF objects) and its library source (`rust-web-src`): `RUSTC_BOOTSTRAP=1`
//! and `-Z build-std=std,panic_abort` compile the aarch64 standard library
//! from that source, Debian's `gcc-aarch64-linux-gnu` links against
//! `libc6-dev-arm64-cross`'s static glibc (`+crt-static`) and compiles
//! bundled SQLite (cc crate). Everything comes from Debian apt and crates.io;
//! Debian ships no precompiled aarch64 Rust std for an amd64 host (its
//! `libstd-rust-dev:arm64` would need `dpkg --add-architecture`).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::util::{self, sh, which};

/// Debian packages of the arm64 cross build (installed by `cargo xtask setup`).
pub const CROSS_PACKAGES: &[&str] = &["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"];

/// Debian's rustc and cargo (`rustc-web`, `cargo-web`) and the library source
/// `-Z build-std` compiles (`rust-web-src`).
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_STD_SRC: &str = "/usr/lib/rustlib/src/rust/library/std";
/// Static glibc of the aarch64 cross toolchain.
const ARM64_LIBC: &str = "/usr/aarch64-linux-gnu/lib/libc.a";

/// A CPU architecture the binaries and the image are built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    /// Debian's architecture name, also OCI's `platform.architecture` (GOARCH).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target triple of the static build.
    pub const fn triple(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Rust's `target_arch`, which is also aya's `bpf_target_arch`, `uname -m`
    /// and the suffix of qemu's system emulator.
    pub fn rust_arch(self) -> &'static str {
        match self {
            Arch::Amd64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// Whether this is the machine's own architecture (the VM matrix's host
    /// row runs only in a matrix of it).
    pub fn is_host(self) -> bool {
        self.rust_arch() == std::env::consts::ARCH
    }

    /// qemu's full-system emulator for this architecture.
    pub fn qemu_system(self) -> String {
        format!("qemu-system-{}", self.rust_arch())
    }

    /// The ELF `e_machine` of this architecture's binaries.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::Amd64 => object::elf::EM_X86_64,
            Arch::Arm64 => object::elf::EM_AARCH64,
        }
    }

    /// `strip` that understands this architecture's ELF (Debian's host
    /// binutils only know x86).
    pub fn strip(self) -> &'static str {
        match self {
            Arch::Amd64 => "strip",
            Arch::Arm64 => "aarch64-linux-gnu-strip",
        }
    }

    /// The unstripped eBPF object kmem-trace/build.rs built for this
    /// architecture (`perf`: the old-kernel object); its target directories
    /// are `target/bpf[-perf]` for x86_64 and `target/bpf[-perf]-<arch>` else.
    pub fn bpf_object(self, root: &Path, perf: bool) -> PathBuf {
        let base = if perf { "bpf-perf" } else { "bpf" };
        let dir = match self {
            Arch::Amd64 => base.to_string(),
            Arch::Arm64 => format!("{base}-{}", self.rust_arch()),
        };
        root.join("target")
            .join(dir)
            .join("bpfel-unknown-none/release/kmem-trace-ebpf")
    }

    /// Why this architecture's static build cannot run here (`cargo xtask
    /// setup` installs what it needs), or None.
    pub fn missing_toolchain(self) -> Option<String> {
        if self == Arch::Amd64 {
            return None;
        }
        let mut missing = Vec::new();
        if which("aarch64-linux-gnu-gcc").is_none() {
            missing.push("aarch64-linux-gnu-gcc (gcc-aarch64-linux-gnu)".to_string());
        }
        for (path, package) in [
            (ARM64_LIBC, "libc6-dev-arm64-cross"),
            (DEBIAN_RUSTC, "rustc-web"),
            (DEBIAN_CARGO, "cargo-web"),
            (DEBIAN_STD_SRC, "rust-web-src"),
        ] {
            if !Path::new(path).exists() {
                missing.push(format!("{path} ({package})"));
            }
        }
        (!missing.is_empty()).then(|| {
            format!(
                "the arm64 cross toolchain is missing: {}; run `cargo xtask setup`",
                missing.join(", ")
            )
        })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.debian())
    }
}

#[derive(Args)]
pub struct BuildArgs {
    /// The architecture to build for.
    #[arg(long, value_enum, default_value_t = Arch::Amd64)]
    pub arch: Arch,
}

/// `cargo xtask build`: builds both binaries and prints where they are.
pub fn run(args: &BuildArgs) -> Result<()> {
    let root = util::root();
    let started = Instant::now();
    let (kmem_trace, guest) = static_binaries(&root, args.arch)?;
    eprintln!(
        "build: {} binaries in {:.1} s",
        args.arch,
        started.elapsed().as_secs_f64()
    );
    for bin in [kmem_trace, guest] {
        let size = std::fs::metadata(&bin).map(|m| m.len()).unwrap_or(0);
        println!("{} ({size} bytes)", bin.display());
    }
    Ok(())
}

/// Builds the statically linked release `kmem-trace` and `kmem-trace-vm-guest`
/// for `arch`; their paths, in that order. The image takes the first: one
/// invocation for every user (image, VM matrix, the test suite's cross step),
/// as a build of `kmem-trace` alone unifies its dependencies' features
/// differently, and alternating the two rebuilt them (the arm64 one was seen
/// rebuilding std as well).
pub fn static_binaries(root: &Path, arch: Arch) -> Result<(PathBuf, PathBuf)> {
    let dir = build(
        root,
        arch,
        &[
            ("kmem-trace", "kmem-trace"),
            ("kmem-trace-tests", "kmem-trace-vm-guest"),
        ],
    )?;
    Ok((dir.join("kmem-trace"), dir.join("kmem-trace-vm-guest")))
}

/// The target directory of the host's own builds.
pub fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// One `cargo build --release` of `bins` (package, binary) for `arch`; the
/// directory the binaries land in.
fn build(root: &Path, arch: Arch, bins: &[(&str, &str)]) -> Result<PathBuf> {
    let (mut c, target_dir) = match arch {
        Arch::Amd64 => (Command::new(util::cargo()), target_dir(root)),
        Arch::Arm64 => {
            if let Some(why) = arch.missing_toolchain() {
                bail!("{why}");
            }
            // Its own directory: another compiler and another std, which would
            // otherwise invalidate the host build's artefacts and its lock.
            (cross_cargo(root), target_dir(root).join("cross"))
        }
    };
    // The image's flags (crt-static, source paths remapped), so the image
    // and the VM matrix share one build instead of rebuilding each other.
    c.current_dir(root)
        .env("RUSTFLAGS", crate::image::rustflags(root))
        .args(["build", "--release", "--target", arch.triple()])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, bin) in bins {
        c.args(["-p", package, "--bin", bin]);
    }
    sh(&mut c)?;
    Ok(target_dir.join(arch.triple()).join("release"))
}

/// Debian's cargo driving Debian's rustc over the aarch64 standard library
/// built from source, gcc-aarch64-linux-gnu linking and compiling C.
fn cross_cargo(root: &Path) -> Command {
    let mut c = Command::new(DEBIAN_CARGO);
    // The outer cargo's (rustup's) variables must not reach this one: a
    // RUSTC or CARGO_ENCODED_RUSTFLAGS from it would win over the ones below.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let keep = key == "CARGO_HOME" || key == "CARGO_TARGET_DIR";
        if !keep
            && (key.starts_with("CARGO_")
                || key.starts_with("RUSTC")
                || key.starts_with("RUSTFLAGS")
                || key.starts_with("RUSTDOC")
                || key.starts_with("RUSTUP_"))
        {
            c.env_remove(key.as_ref());
        }
    }
    let gcc = "aarch64-linux-gnu-gcc";
    c.current_dir(root)
        .env("RUSTC", DEBIAN_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", gcc)
        .env("CC_aarch64_unknown_linux_gnu", gcc)
        .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar")
        // The aarch64 standard library compiled from rust-web-src.
        .args(["-Z", "build-std=std,panic_abort"]);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names() {
        assert_eq!(Arch::Arm64.debian(), "arm64");
        assert_eq!(Arch::Arm64.triple(), "aarch64-unknown-linux-gnu");
        assert_eq!(Arch::Arm64.qemu_system(), "qemu-system-aarch64");
        assert_eq!(Arch::Amd64.qemu_system(), "qemu-system-x86_64");
        assert_eq!(Arch::Amd64.to_string(), "amd64");
        let root = Path::new("/r");
        assert_eq!(
            Arch::Arm64.bpf_object(root, true),
            Path::new("/r/target/bpf-perf-aarch64/bpfel-unknown-none/release/kmem-trace-ebpf")
        );
        assert_eq!(
            Arch::Amd64.bpf_object(root, false),
            Path::new("/r/target/bpf/bpfel-unknown-none/release/kmem-trace-ebpf")
        );
        assert_eq!(Arch::Amd64.missing_toolchain(), None);
    }
}
