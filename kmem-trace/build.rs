//! Builds the eBPF objects (`kmem-trace-ebpf`: the ring-buffer object, and
//! with its feature `perf` the old-kernel object) and leaves them in `OUT_DIR`
//! for `include_bytes!`. The eBPF build needs Debian's rustc (it ships the library
//! source `-Z build-std=core` compiles) and bpf-linker; `cargo xtask setup`
//! installs both. Without them the userspace crate still builds (check, clippy,
//! unit tests) around an empty object, and the binary says how to fix that.
//!
//! The objects are built for the architecture the binary is built for
//! (`CARGO_CFG_TARGET_ARCH`, so a cross build gets the target's objects): aya-ebpf
//! reads a kprobe's arguments and return value from `struct pt_regs`, whose
//! layout is per architecture, chosen by `--cfg bpf_target_arch`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const OBJECT: &str = "kmem-trace-ebpf.o";
const PERF_OBJECT: &str = "kmem-trace-ebpf-perf.o";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().expect("workspace root").to_path_buf();
    let dest = out_dir.join(OBJECT);
    let perf_dest = out_dir.join(PERF_OBJECT);

    for var in [
        "KMEM_TRACE_EBPF_OBJECT",
        "KMEM_TRACE_EBPF_PERF_OBJECT",
        "KMEM_TRACE_BPF_RUSTC",
        "KMEM_TRACE_SKIP_EBPF",
        "CARGO_CFG_TARGET_ARCH",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    for dir in ["kmem-trace-ebpf/src", "kmem-trace-common/src"] {
        rerun_tree(&root.join(dir));
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("kmem-trace-ebpf/Cargo.toml").display()
    );
    println!("cargo:rustc-check-cfg=cfg(kmem_trace_no_ebpf)");

    if let Ok(prebuilt) = env::var("KMEM_TRACE_EBPF_OBJECT") {
        fs::copy(&prebuilt, &dest)?;
        match env::var("KMEM_TRACE_EBPF_PERF_OBJECT") {
            Ok(perf) => fs::copy(&perf, &perf_dest).map(drop)?,
            Err(_) => fs::write(&perf_dest, [])?,
        }
        return Ok(());
    }
    if env::var_os("KMEM_TRACE_SKIP_EBPF").is_some() {
        return stub(&[&dest, &perf_dest], "KMEM_TRACE_SKIP_EBPF is set");
    }
    // A missing path makes cargo rerun this script every build, so installing
    // the toolchain later (`cargo xtask setup`) is picked up without a clean.
    println!("cargo:rerun-if-changed=/usr/bin/rustc");
    if let Some(home) = env::var_os("HOME") {
        println!(
            "cargo:rerun-if-changed={}",
            PathBuf::from(home).join(".cargo/bin/bpf-linker").display()
        );
    }
    let toolchain = match Toolchain::find() {
        Ok(t) => t,
        Err(why) => return stub(&[&dest, &perf_dest], &why),
    };
    let arch = BpfArch::of_target()?;
    // BTF (func info) is required by the verifier for bpf-to-bpf calls.
    let built = build(
        &root,
        &toolchain,
        &arch.target_dir("bpf"),
        &[],
        &format!("-C debuginfo=2 -C link-arg=--btf {}", arch.cfg()),
    )?;
    embed(&built, &dest)?;
    // The old-kernel object: no BTF of its own (4.18 cannot load func info;
    // it has no bpf-to-bpf calls), its own target directory so the two
    // builds' flags do not rebuild each other's `core`.
    let built = build(
        &root,
        &toolchain,
        &arch.target_dir("bpf-perf"),
        &["--features", "perf"],
        &format!("-C debuginfo=2 {}", arch.cfg()),
    )?;
    embed(&built, &perf_dest)?;
    Ok(())
}

/// The architecture whose kernel the objects are for: aya's `bpf_target_arch`
/// (the `target_arch` names, which aya uses as they are for x86_64 and aarch64).
struct BpfArch(String);

impl BpfArch {
    fn of_target() -> anyhow::Result<BpfArch> {
        Ok(BpfArch(env::var("CARGO_CFG_TARGET_ARCH")?))
    }

    /// Set explicitly, also for x86_64: aya-ebpf's build script otherwise
    /// takes the *build host's* architecture, wrong in every cross build.
    fn cfg(&self) -> String {
        format!("--cfg bpf_target_arch=\"{}\"", self.0)
    }

    /// `target/<base>` for x86_64 (the directories of before cross builds),
    /// `target/<base>-<arch>` otherwise, so that amd64 and arm64 builds do not
    /// rebuild each other's objects and `core`.
    fn target_dir(&self, base: &str) -> String {
        if self.0 == "x86_64" {
            base.to_string()
        } else {
            format!("{base}-{}", self.0)
        }
    }
}

/// One nested build of the eBPF crate into `target/<dir>`; the object's path.
fn build(
    root: &Path,
    toolchain: &Toolchain,
    dir: &str,
    args: &[&str],
    rustflags: &str,
) -> anyhow::Result<PathBuf> {
    let target_dir = root.join("target").join(dir);
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--package", "kmem-trace-ebpf", "--release"])
        .args(args)
        .args(["-Z", "build-std=core", "--target", "bpfel-unknown-none"])
        .arg("--target-dir")
        .arg(&target_dir);
    // Variables of the outer build must not leak into the nested one.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_")
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTFLAGS")
            || key == "RUSTDOC"
            || key == "RUSTUP_TOOLCHAIN"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.env("RUSTC", &toolchain.rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &toolchain.linker)
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", rustflags);
    let status = cmd.status()?;
    if !status.success() {
        anyhow::bail!(
            "building the eBPF programs ({}) failed ({status}); see the compiler output above",
            args.join(" ")
        );
    }
    Ok(target_dir.join("bpfel-unknown-none/release/kmem-trace-ebpf"))
}

/// Copies the object without its DWARF (`llvm-objcopy --strip-debug`) when
/// that tool is there. The DWARF only fed bpf-linker's BTF, which stays
/// (`.BTF`, `.BTF.ext`); the object is 2 MiB with it and 0.5 MiB without,
/// and what the loader touches of the embedded copy stays resident in the
/// tracer (docs/PERFORMANCE.md).
fn embed(built: &Path, dest: &Path) -> anyhow::Result<()> {
    let objcopy = find_in_path("llvm-objcopy").or_else(|| {
        fs::read_dir("/usr/lib")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin/llvm-objcopy"))
            .find(|p| p.is_file())
    });
    if let Some(objcopy) = objcopy {
        let ok = Command::new(&objcopy)
            .arg("--strip-debug")
            .arg(built)
            .arg(dest)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(());
        }
    }
    fs::copy(built, dest)?;
    Ok(())
}

/// Leaves empty objects; the binary reports it at start.
fn stub(dests: &[&Path], why: &str) -> anyhow::Result<()> {
    println!("cargo:warning=building kmem-trace without its eBPF programs ({why}); run `cargo xtask setup` to install the eBPF toolchain");
    println!("cargo:rustc-cfg=kmem_trace_no_ebpf");
    for dest in dests {
        fs::write(dest, [])?;
    }
    Ok(())
}

struct Toolchain {
    rustc: PathBuf,
    linker: PathBuf,
}

impl Toolchain {
    /// Debian's rustc with its library source, and bpf-linker.
    fn find() -> Result<Toolchain, String> {
        let rustc = env::var_os("KMEM_TRACE_BPF_RUSTC")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/rustc"));
        if !rustc.exists() {
            return Err(format!("{} not found", rustc.display()));
        }
        let sysroot = Command::new(&rustc)
            .args(["--print", "sysroot"])
            .output()
            .map_err(|e| format!("running {}: {e}", rustc.display()))?;
        let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
        let src = sysroot.join("lib/rustlib/src/rust/library/core");
        if !src.exists() {
            return Err(format!("no Rust library source at {}", src.display()));
        }
        let linker = find_in_path("bpf-linker")
            .or_else(|| {
                let home = env::var_os("CARGO_HOME")
                    .map(PathBuf::from)
                    .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
                let p = home.join("bin/bpf-linker");
                p.exists().then_some(p)
            })
            .ok_or_else(|| "bpf-linker not found".to_string())?;
        Ok(Toolchain { rustc, linker })
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn rerun_tree(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                rerun_tree(&p);
            } else {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
