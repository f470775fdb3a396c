//! `kmem-trace btf`: shows the layout kmem-trace resolves from a BTF (the
//! kernel's, a BTFHub file or archive) and, with `--minimize`, writes the few KB
//! of it kmem-trace reads, for nodes whose kernel has no
//! `/sys/kernel/btf/vmlinux` (`--btf FILE` there).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::btf::{BtfError, KernelBtf};
use crate::cli::BtfArgs;

/// Errors of `kmem-trace btf`.
#[derive(Debug, thiserror::Error)]
pub enum BtfCmdError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("cannot write {path}: {source}; choose a writable -o path")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the layout: {0}")]
    Print(#[from] std::io::Error),
}

/// Runs `kmem-trace btf`.
pub fn command(args: &BtfArgs) -> Result<(), BtfCmdError> {
    let btf = KernelBtf::load(args.btf.as_deref())?;
    let mut out = std::io::stdout().lock();
    match (&args.output, args.minimize) {
        (Some(path), true) => {
            let small = btf.minimize()?;
            std::fs::write(path, &small).map_err(|source| BtfCmdError::Write {
                path: path.clone(),
                source,
            })?;
            writeln!(out, "{}", summary(&btf.path, path, small.len()))?;
        }
        _ => {
            let memory = crate::cgroupfs::memory_version(Path::new("/proc"));
            let (_, resolved) = btf.layout_for(memory)?;
            writeln!(
                out,
                "layout from {} (memory controller on {}):",
                btf.path.display(),
                memory.map_or("an unknown hierarchy", |h| h.name())
            )?;
            for r in resolved {
                let off = r.offset.map_or("-".to_string(), |o| o.to_string());
                writeln!(out, "  {:<24} {:>6}  {}", r.field, off, r.found)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The line `--minimize` prints: sizes, and where the file goes.
fn summary(from: &Path, to: &Path, len: usize) -> String {
    let full = std::fs::metadata(from).map(|m| m.len()).ok();
    let release = super::kernel::release();
    let of = match full {
        Some(n) => format!(" of {n} bytes"),
        None => String::new(),
    };
    let kernel = if from == Path::new("/sys/kernel/btf/vmlinux") {
        format!("kernel {release}")
    } else {
        "the kernel of that BTF".to_string()
    };
    format!(
        "wrote {}: {len} bytes, minimized from {}{of}, resolving the same layout; pass it with --btf {} on nodes running {kernel}",
        to.display(),
        from.display(),
        to.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::CgroupVersion;
    use crate::probes::btf::tests::{kernel_like, Variant};

    /// `btf --minimize --btf IN.btf.tar.xz -o OUT`: the file written resolves
    /// like its source; an unwritable OUT is an error that says what to do.
    #[test]
    fn minimize_writes_a_file_that_resolves_the_same() {
        let dir = std::env::temp_dir().join(format!("kmem-trace-btfcmd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = kernel_like(Variant {
            swap_separate: true,
            multi_cu: true,
            ..Variant::default()
        });
        let input = dir.join("4.18.0-test.btf.tar.xz");
        let xz = crate::probes::btf_archive::tests::archive(&[("4.18.0-test.btf", &raw)]);
        std::fs::write(&input, xz).unwrap();
        let out = dir.join("4.18.0-test.btf");
        let args = BtfArgs {
            minimize: true,
            btf: Some(input.clone()),
            output: Some(out.clone()),
        };
        command(&args).unwrap();
        let small = KernelBtf::load(Some(&out)).unwrap();
        let full = KernelBtf::from_bytes(&raw).unwrap();
        for h in [Some(CgroupVersion::V1), Some(CgroupVersion::V2)] {
            assert_eq!(small.layout_for(h).unwrap(), full.layout_for(h).unwrap());
        }
        let bad = BtfArgs {
            output: Some(dir.join("missing-dir/out.btf")),
            ..args
        };
        let e = command(&bad).unwrap_err().to_string();
        assert!(e.starts_with("cannot write "), "{e}");
        assert!(e.ends_with("; choose a writable -o path"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
