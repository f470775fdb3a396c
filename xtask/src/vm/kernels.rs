//! Debian kernels for the VM matrix: which ones (the newest ABI of a series and
//! flavour, found with apt), fetched with `apt-get download`, unpacked once into
//! the cache with just what a test VM needs — the bzImage and the modules that
//! give it a virtio disk with ext4, in load order.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::extra_suites;
use crate::util::{self, sh};

/// The default matrix: the newest ABI of each series, in each flavour.
/// 5.10 comes from Debian bullseye through `extra_suites`: the only series
/// before the cgroup iterator (6.1: census counts only) and before
/// `bpf_get_func_ret` (5.17: fexit reads the return value from its context).
pub const DEFAULT_SERIES: &[&str] = &["5.10", "6.1", "6.12"];
pub const DEFAULT_FLAVOURS: &[&str] = &["amd64", "cloud-amd64"];

/// Modules a test VM loads when the kernel has them as modules (`virtio_pci` and
/// `virtio_blk` for the data disk, `ext4` to mount it); built-ins are skipped.
const WANTED_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r`, e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// Decompressed modules, in load order.
    pub modules: Vec<PathBuf>,
}

/// Numbers in a release string, for ordering ABIs: `6.1.0-57` → [6, 1, 0, 57].
fn numbers(release: &str) -> Vec<u64> {
    release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// The newest release of `series` (`6.1`) in `flavour` (`cloud-amd64`) among
/// package names `linux-image-<release>`; signed images only (no `-unsigned`,
/// `-dbg`), and `amd64` does not match `cloud-amd64` or `rt-amd64`.
pub fn newest<'a>(
    names: impl Iterator<Item = &'a str>,
    series: &str,
    flavour: &str,
) -> Option<String> {
    names
        .filter_map(|n| n.strip_prefix("linux-image-"))
        .filter_map(|r| {
            let base = r.strip_suffix(&format!("-{flavour}"))?;
            let rest = base.strip_prefix(series)?;
            // `6.1` must not match `6.12...`; the base must be a plain version.
            let plain = rest.starts_with('.')
                && base
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
                && !base.ends_with("-cloud")
                && !base.ends_with("-rt");
            plain.then(|| r.to_string())
        })
        .max_by_key(|r| numbers(r))
}

/// Resolves a `--kernel` value: a release (`6.1.0-57-amd64`), a package name
/// (`linux-image-...`) or a series alias (`6.12`, `6.1-cloud`).
pub fn resolve(spec: &str, names: &[String]) -> Result<String> {
    let spec = spec.strip_prefix("linux-image-").unwrap_or(spec);
    if spec.ends_with("amd64") {
        return Ok(spec.to_string());
    }
    let (series, flavour) = match spec.split_once('-') {
        Some((s, f)) => (s, format!("{f}-amd64")),
        None => (spec, "amd64".to_string()),
    };
    newest(names.iter().map(String::as_str), series, &flavour).with_context(|| {
        format!("no Debian kernel package matches {spec:?} (series {series}, flavour {flavour}); apt-cache pkgnames linux-image- lists them")
    })
}

/// Package names `linux-image-*` apt knows, with those of the extra suites
/// (private apt states under `cache`).
pub fn package_names(cache: &Path) -> Result<Vec<String>> {
    let mut names = system_package_names()?;
    for (_, suite) in extra_suites::SUITES {
        names.extend(extra_suites::Suite::new(cache, suite).package_names()?);
    }
    Ok(names)
}

/// Package names `linux-image-*` the machine's apt knows; runs `apt-get update`
/// once if none.
fn system_package_names() -> Result<Vec<String>> {
    let list = || -> Result<Vec<String>> {
        let out = Command::new("apt-cache")
            .args(["pkgnames", "linux-image-"])
            .output()
            .context("running apt-cache (the VM matrix needs Debian's kernel packages)")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    };
    let names = list()?;
    if !names.is_empty() {
        return Ok(names);
    }
    util::apt(util::apt_get().args(["update", "-qq"]))?;
    list()
}

/// The default matrix, newest first within each series.
pub fn default_releases(names: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for series in DEFAULT_SERIES {
        for flavour in DEFAULT_FLAVOURS {
            out.push(
                newest(names.iter().map(String::as_str), series, flavour).with_context(|| {
                    format!("apt knows no linux-image-{series}*-{flavour} package")
                })?,
            );
        }
    }
    Ok(out)
}

/// Makes `release` ready in `cache` (download, unpack, pick modules) unless a
/// previous run did; returns what booting it needs.
pub fn prepare(cache: &Path, release: &str) -> Result<Kernel> {
    let dir = cache.join("kernels").join(release);
    let ready = dir.join("ready");
    if !ready.exists() {
        fetch(cache, release, &dir)?;
        fs::write(&ready, "")?;
    }
    let order = fs::read_to_string(dir.join("modules.order")).unwrap_or_default();
    let elf = dir.join("vmlinux");
    if !elf.exists() && !dir.join("no-vmlinux").exists() {
        match extract_vmlinux(&dir.join("vmlinuz"))? {
            Some(bytes) => fs::write(&elf, bytes)?,
            None => fs::write(dir.join("no-vmlinux"), "")?,
        }
    }
    Ok(Kernel {
        release: release.to_string(),
        vmlinuz: if elf.exists() {
            elf
        } else {
            dir.join("vmlinuz")
        },
        modules: order
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| dir.join("modules").join(l))
            .collect(),
    })
}

fn fetch(cache: &Path, release: &str, dir: &Path) -> Result<()> {
    let pkg = format!("linux-image-{release}");
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let find_deb = || -> Option<PathBuf> {
        fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
    };
    if find_deb().is_none() {
        eprintln!("vm-test: downloading {pkg}");
        match extra_suites::Suite::for_release(cache, release) {
            Some(suite) => suite.download(&pkg, &debs)?,
            None => sh(Command::new("apt-get")
                .current_dir(&debs)
                .args(["download", "-q", &pkg]))?,
        }
    }
    let deb = find_deb().with_context(|| format!("apt-get download left no {pkg} .deb"))?;
    let tmp = cache.join("kernels").join(format!(".{release}.unpack"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("modules"))?;
    fs::copy(
        tmp.join(format!("boot/vmlinuz-{release}")),
        dir.join("vmlinuz"),
    )
    .with_context(|| format!("{pkg} has no boot/vmlinuz-{release}"))?;
    let _ = fs::copy(
        tmp.join(format!("boot/config-{release}")),
        dir.join("config"),
    );
    let mods = pick_modules(&tmp, release, &dir.join("modules"))?;
    fs::write(dir.join("modules.order"), mods.join("\n"))?;
    fs::remove_dir_all(&tmp)?;
    // The unpacked tree is what is kept; the .deb can be fetched again.
    fs::remove_file(&deb)?;
    Ok(())
}

/// Runs depmod on the unpacked tree, asks modprobe for the load order of the
/// wanted modules, and copies them (decompressing `.ko.xz`/`.ko.zst`, which
/// busybox insmod cannot read) into `out`. Returns file names in load order.
fn pick_modules(root: &Path, release: &str, out: &Path) -> Result<Vec<String>> {
    let moddir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(release))
        .find(|d| d.exists())
        .with_context(|| format!("no modules directory for {release}"))?;
    // depmod and modprobe look under <base>/lib/modules/<release>.
    let base = moddir
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("modules path")?
        .to_path_buf();
    sh(Command::new("depmod").arg("-b").arg(&base).arg(release))?;
    let mut order: Vec<String> = Vec::new();
    for m in WANTED_MODULES {
        let o = Command::new("modprobe")
            .arg("-d")
            .arg(&base)
            .args(["-S", release, "--show-depends", m])
            .output()
            .context("running modprobe (package kmod)")?;
        if !o.status.success() {
            bail!(
                "modprobe --show-depends {m} for {release}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            // "insmod /path/x.ko.xz [params]" or "builtin x".
            let Some(path) = line.strip_prefix("insmod ") else {
                continue;
            };
            let path = PathBuf::from(path.split_whitespace().next().unwrap_or(""));
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .context("module file name")?;
            let plain = name
                .trim_end_matches(".xz")
                .trim_end_matches(".zst")
                .trim_end_matches(".gz")
                .to_string();
            // qemu's default CPU lacks SSE4.2: crc32c-intel refuses to load
            // (ENODEV), and crc32c_generic serves instead.
            if order.contains(&plain) || plain.starts_with("crc32c-intel") {
                continue;
            }
            decompress(&path, &out.join(&plain))?;
            order.push(plain);
        }
    }
    Ok(order)
}

/// The ELF `vmlinux` inside a bzImage whose payload is xz or zstd, like the
/// kernel's `scripts/extract-vmlinux`. qemu boots it directly through its PVH
/// entry (CONFIG_PVH), which saves the in-guest decompression: 2-3 s under TCG
/// for Debian's xz/zstd images. `None` for other payloads (lz4 is fast anyway).
fn extract_vmlinux(bzimage: &Path) -> Result<Option<Vec<u8>>> {
    let data = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let formats: [(&[u8], &str); 2] = [(b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")];
    for (magic, tool) in formats {
        let Some(at) = data.windows(magic.len()).position(|w| w == magic) else {
            continue;
        };
        let mut child = Command::new(tool)
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("running {tool}"))?;
        let mut stdin = child.stdin.take().context("stdin")?;
        let payload = data[at..].to_vec();
        // Trailing bytes after the stream make the tool complain; the ELF is whole.
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&payload);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        if out.stdout.starts_with(b"\x7fELF") {
            return Ok(Some(out.stdout));
        }
    }
    Ok(None)
}

fn decompress(src: &Path, dst: &Path) -> Result<()> {
    let tool = match src.extension().and_then(|e| e.to_str()) {
        Some("xz") => Some("xz"),
        Some("zst") => Some("zstd"),
        Some("gz") => Some("gzip"),
        _ => None,
    };
    match tool {
        None => {
            fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
        }
        Some(tool) => {
            let o = Command::new(tool)
                .arg("-dc")
                .arg(src)
                .output()
                .with_context(|| format!("running {tool}"))?;
            if !o.status.success() {
                bail!("{tool} -dc {}: {}", src.display(), o.status);
            }
            fs::write(dst, o.stdout)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &[
        "linux-image-6.1.0-9-amd64",
        "linux-image-6.1.0-57-amd64",
        "linux-image-6.1.0-57-amd64-dbg",
        "linux-image-6.1.0-57-amd64-unsigned",
        "linux-image-6.1.0-57-cloud-amd64",
        "linux-image-6.1.0-57-rt-amd64",
        "linux-image-6.1.0-48-cloud-amd64",
        "linux-image-6.12.9+deb12-amd64",
        "linux-image-6.12.117+deb12-amd64",
        "linux-image-6.12.117+deb12-cloud-amd64",
        "linux-image-amd64",
        "linux-image-cloud-amd64",
        // bullseye, through extra_suites
        "linux-image-5.10.0-46-amd64",
        "linux-image-5.10.0-45-amd64",
        "linux-image-5.10.0-46-cloud-amd64",
        "linux-image-5.10.0-46-rt-amd64-unsigned",
    ];

    fn names() -> Vec<String> {
        NAMES.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn newest_abi_per_series_and_flavour() {
        let n = || NAMES.iter().copied();
        assert_eq!(newest(n(), "6.1", "amd64").unwrap(), "6.1.0-57-amd64");
        assert_eq!(
            newest(n(), "6.1", "cloud-amd64").unwrap(),
            "6.1.0-57-cloud-amd64"
        );
        assert_eq!(
            newest(n(), "6.12", "amd64").unwrap(),
            "6.12.117+deb12-amd64"
        );
        assert_eq!(newest(n(), "5.10", "amd64").unwrap(), "5.10.0-46-amd64");
        assert_eq!(newest(n(), "4.19", "amd64"), None);
        assert_eq!(
            default_releases(&names()).unwrap(),
            vec![
                "5.10.0-46-amd64",
                "5.10.0-46-cloud-amd64",
                "6.1.0-57-amd64",
                "6.1.0-57-cloud-amd64",
                "6.12.117+deb12-amd64",
                "6.12.117+deb12-cloud-amd64"
            ]
        );
    }

    #[test]
    fn kernel_specs_resolve() {
        let n = names();
        assert_eq!(
            resolve("6.12-cloud", &n).unwrap(),
            "6.12.117+deb12-cloud-amd64"
        );
        assert_eq!(resolve("6.1", &n).unwrap(), "6.1.0-57-amd64");
        assert_eq!(
            resolve("linux-image-6.1.0-48-cloud-amd64", &n).unwrap(),
            "6.1.0-48-cloud-amd64"
        );
        assert!(resolve("4.19", &n).is_err());
    }
}
