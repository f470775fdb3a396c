//! Debian kernels for the VM matrix: which ones (the newest ABI of a series and
//! flavour, found in the suites' package lists), fetched with `apt-get
//! download` in either layout (one `linux-image-<release>` package with
//! `boot/vmlinuz-<release>`, or from trixie on a small `linux-image` depending on
//! `linux-binary-<release>` with `usr/lib/modules/<release>/vmlinuz` and
//! `linux-modules-<release>`; signed or `-unsigned`), unpacked once into the
//! cache with just what a test VM needs: the kernel and the modules that give it
//! a virtio disk with ext4, in load order. Per architecture: arm64 kernels
//! come from the same suites through their own apt states.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::suites::{self, Suite};
use crate::{build::Arch, util::sh};

/// The default matrix: the newest ABI of each series, in each flavour, and the
/// newest series of [`suites::BACKPORTS`]. 5.10 comes from Debian bullseye: the
/// only series before the cgroup iterator (6.1: census counts only) and before
/// `bpf_get_func_ret` (5.17: fexit reads the return value from its context).
pub const DEFAULT_SERIES: &[&str] = &["5.10", "6.1", "6.12"];

/// The default matrix's flavours of `arch`: generic and cloud (`amd64`,
/// `cloud-amd64`; `arm64`, `cloud-arm64`).
pub fn default_flavours(arch: Arch) -> Vec<String> {
    vec![
        arch.debian().to_string(),
        format!("cloud-{}", arch.debian()),
    ]
}

/// Modules a test VM loads when the kernel has them as modules (`virtio_pci` and
/// `virtio_blk` for the data disk, `ext4` to mount it); built-ins are skipped.
const WANTED_MODULES: &[&str] = &["virtio_pci", "virtio_blk", "ext4"];

/// A kernel ready to boot.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// `uname -r`, e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    pub arch: Arch,
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

/// The kernel release a package name carries: `linux-image-<r>`,
/// `linux-image-<r>-unsigned`, `linux-binary-<r>`, `linux-binary-unsigned-<r>`;
/// `None` for meta packages (`linux-image-amd64`) and `-dbg` symbols.
pub fn release_of(name: &str) -> Option<&str> {
    let r = if let Some(r) = name.strip_prefix("linux-image-") {
        r.strip_suffix("-unsigned").unwrap_or(r)
    } else if let Some(r) = name.strip_prefix("linux-binary-") {
        r.strip_prefix("unsigned-").unwrap_or(r)
    } else {
        return None;
    };
    (r.starts_with(|c: char| c.is_ascii_digit()) && !r.ends_with("-dbg")).then_some(r)
}

/// A release's series: `7.3.4+deb13-cloud-amd64` → `7.3`.
fn series_of(release: &str) -> Option<String> {
    let n = numbers(release);
    Some(format!("{}.{}", n.first()?, n.get(1)?))
}

/// The newest release of `series` (`6.1`) in `flavour` (`cloud-amd64`) among
/// kernel package names; `amd64` does not match `cloud-amd64` or `rt-amd64`.
pub fn newest<'a>(
    names: impl Iterator<Item = &'a str>,
    series: &str,
    flavour: &str,
) -> Option<String> {
    names
        .filter_map(release_of)
        .filter(|r| {
            let Some(base) = r.strip_suffix(&format!("-{flavour}")) else {
                return false;
            };
            // `6.1` must not match `6.12...`; the base must be a plain version.
            base.strip_prefix(series)
                .is_some_and(|rest| rest.starts_with('.'))
                && base
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+'))
                && !base.ends_with("-cloud")
                && !base.ends_with("-rt")
        })
        .max_by_key(|r| numbers(r))
        .map(str::to_string)
}

/// Kernel package names of one architecture and the suite listing each.
pub struct Catalog {
    entries: Vec<(String, &'static str)>,
    arch: Arch,
}

impl Catalog {
    /// No suite's lists (a run of the host row alone).
    pub fn empty(arch: Arch) -> Catalog {
        Catalog {
            entries: Vec::new(),
            arch,
        }
    }

    /// The package lists of `suites` (names from [`suites::ALL`]) for `arch`,
    /// fetched into private apt states under `cache` when stale.
    pub fn load(cache: &Path, names: &[&str], arch: Arch) -> Result<Catalog> {
        let mut entries = Vec::new();
        for name in names {
            let suite =
                Suite::named(cache, name, arch).with_context(|| format!("no suite {name}"))?;
            for pkg in suite.package_names()? {
                entries.push((pkg, suite.name()));
            }
        }
        Ok(Catalog { entries, arch })
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }

    /// Where `release` comes from: its suite and the packages to download, the
    /// signed image first (its dependencies are added by [`fetch`]).
    fn source(&self, release: &str) -> Option<(&'static str, Vec<String>)> {
        self.sources(release).into_iter().next()
    }

    /// Every layout of `release` some suite lists, in [`Catalog::source`]'s
    /// order: a listed package can still fail to download (bullseye-security
    /// lists the signed 5.10.0-46 cloud-arm64 image, its pool answers 404), and
    /// the unsigned one holds the same kernel.
    fn sources(&self, release: &str) -> Vec<(&'static str, Vec<String>)> {
        let choices = [
            vec![format!("linux-image-{release}")],
            vec![format!("linux-image-{release}-unsigned")],
            vec![
                format!("linux-binary-{release}"),
                format!("linux-modules-{release}"),
                format!("linux-base-{release}"),
            ],
            vec![
                format!("linux-binary-unsigned-{release}"),
                format!("linux-modules-{release}"),
                format!("linux-base-{release}"),
            ],
        ];
        choices
            .into_iter()
            .filter_map(|pkgs| {
                self.entries
                    .iter()
                    .rev() // the newest suite listing it
                    .find(|(n, _)| *n == pkgs[0])
                    .map(|(_, s)| (*s, pkgs))
            })
            .collect()
    }

    /// Releases of `release`'s series and flavour older than it, newest first.
    fn older(&self, release: &str) -> Vec<String> {
        let Some(series) = series_of(release) else {
            return Vec::new();
        };
        let flavour = release.rsplit_once('-').map_or("", |(_, f)| f);
        let flavour = if release.contains(&format!("-cloud-{flavour}")) {
            format!("cloud-{flavour}")
        } else {
            flavour.to_string()
        };
        let mut all: Vec<String> = self
            .names()
            .filter(|n| newest(std::iter::once(*n), &series, &flavour).is_some())
            .filter_map(release_of)
            .filter(|r| numbers(r) < numbers(release))
            .map(str::to_string)
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(numbers(r)));
        all.dedup();
        all
    }

    /// Resolves a `--kernel` value: a release (`6.1.0-57-amd64`), a package
    /// name (`linux-image-...`) or a series alias (`6.12`, `7.3-cloud`).
    pub fn resolve(&self, spec: &str) -> Result<String> {
        let arch = self.arch.debian();
        let exact = release_of(spec).or_else(|| names_a_release(spec).then_some(spec));
        if let Some(r) = exact.filter(|r| !r.ends_with(arch)) {
            bail!("{r} is not an {arch} kernel: --arch chooses the architecture (default amd64)");
        }
        if let Some(r) = exact {
            if self.source(r).is_none() {
                bail!(
                    "no Debian suite ({}) has kernel {r}; a series alias such as {} picks the newest",
                    suites::ALL.iter().map(|s| s.name).collect::<Vec<_>>().join(", "),
                    series_of(r).unwrap_or_else(|| "6.12".into())
                );
            }
            return Ok(r.to_string());
        }
        let (series, flavour) = match spec.split_once('-') {
            Some((s, f)) => (s, format!("{f}-{arch}")),
            None => (spec, arch.to_string()),
        };
        newest(self.names(), series, &flavour).with_context(|| {
            format!("no Debian kernel package matches {spec:?} (series {series}, flavour {flavour}) in any suite")
        })
    }

    /// The default matrix, newest first within each series: [`DEFAULT_SERIES`]
    /// and the newest series of [`suites::BACKPORTS`], in `flavours` (empty:
    /// [`default_flavours`]).
    pub fn default_releases(&self, flavours: &[String]) -> Result<Vec<String>> {
        let flavours: Vec<String> = if flavours.is_empty() {
            default_flavours(self.arch)
        } else {
            flavours.to_vec()
        };
        let backports = self
            .entries
            .iter()
            .filter(|(_, s)| *s == suites::BACKPORTS)
            .filter_map(|(n, _)| release_of(n))
            .max_by_key(|r| numbers(r))
            .and_then(series_of);
        let series: BTreeSet<String> = DEFAULT_SERIES
            .iter()
            .map(|s| s.to_string())
            .chain(backports)
            .collect();
        let mut series: Vec<String> = series.into_iter().collect();
        series.sort_by_key(|s| numbers(s));
        let mut out = Vec::new();
        for series in &series {
            for flavour in &flavours {
                out.push(newest(self.names(), series, flavour).with_context(|| {
                    format!("no Debian suite has a linux-image-{series}*-{flavour} package")
                })?);
            }
        }
        Ok(out)
    }
}

/// Whether a `--kernel` value names one release (not a series alias).
pub fn names_a_release(spec: &str) -> bool {
    release_of(spec).is_some() || spec.ends_with("amd64") || spec.ends_with("arm64")
}

/// How many older ABIs of a series [`prepare_newest`] tries: a 404 costs
/// about a second, and here bullseye's arm64 5.10 needs 14 steps down (-46 to
/// -43 are security-only and not served, -32 is bullseye's own).
const OLDER_TRIES: usize = 16;

/// [`prepare`], and where `release` stood for its series (an alias, the
/// default matrix) and cannot be fetched, older ABIs of the same
/// series and flavour: the registry here lists bullseye-security's arm64
/// kernels (5.10.0-43 to -46) but its pool answers 404 for all of them, while
/// bullseye's own 5.10.0-32 downloads. The run names the kernel it booted.
pub fn prepare_newest(
    cache: &Path,
    catalog: &Catalog,
    release: &str,
    may_fall_back: bool,
) -> Result<Kernel> {
    let first = match prepare(cache, catalog, release) {
        Ok(k) => return Ok(k),
        Err(e) if may_fall_back => e,
        Err(e) => return Err(e),
    };
    for older in catalog.older(release).into_iter().take(OLDER_TRIES) {
        eprintln!("vm-test: {release} cannot be fetched ({first:#}); trying {older}");
        if let Ok(k) = prepare(cache, catalog, &older) {
            return Ok(k);
        }
    }
    Err(first)
}

/// Makes `release` ready in `cache` (download, unpack, pick modules) unless a
/// previous run did; returns what booting it needs.
pub fn prepare(cache: &Path, catalog: &Catalog, release: &str) -> Result<Kernel> {
    let dir = cache.join("kernels").join(release);
    let ready = dir.join("ready");
    if !ready.exists() {
        fetch(cache, catalog, release, &dir)?;
        fs::write(&ready, "")?;
    }
    let order = fs::read_to_string(dir.join("modules.order")).unwrap_or_default();
    let elf = dir.join("vmlinux");
    // arm64's vmlinuz is an Image (gzip-compressed before trixie), which qemu
    // loads itself; only the x86 bzImage hides an ELF worth unpacking.
    if catalog.arch == Arch::Amd64 && !elf.exists() && !dir.join("no-vmlinux").exists() {
        match extract_vmlinux(&dir.join("vmlinuz"))? {
            Some(bytes) => fs::write(&elf, bytes)?,
            None => fs::write(dir.join("no-vmlinux"), "")?,
        }
    }
    Ok(Kernel {
        release: release.to_string(),
        arch: catalog.arch,
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

fn fetch(cache: &Path, catalog: &Catalog, release: &str, dir: &Path) -> Result<()> {
    let tmp = cache.join("kernels").join(format!(".{release}.unpack"));
    let mut failed = None;
    let mut downloaded = None;
    for (suite_name, pkgs) in catalog.sources(release) {
        if let Some(e) = &failed {
            eprintln!("vm-test: {e:#}; trying {}", pkgs[0]);
        }
        match unpack_layout(cache, catalog.arch, suite_name, pkgs, &tmp) {
            Ok(done) => {
                downloaded = Some(done);
                break;
            }
            Err(e) => failed = Some(e),
        }
    }
    let (pkgs, downloaded) = match (downloaded, failed) {
        (Some(d), _) => d,
        (None, Some(e)) => return Err(e),
        (None, None) => bail!("no Debian suite has kernel {release}"),
    };
    install(&tmp, release, &pkgs, dir)?;
    // The unpacked tree is what is kept; the .debs can be fetched again.
    for deb in downloaded {
        fs::remove_file(deb)?;
    }
    Ok(())
}

/// Downloads one layout's packages (with the split layout's dependencies)
/// and unpacks them into `tmp`; the packages and their .debs.
fn unpack_layout(
    cache: &Path,
    arch: Arch,
    suite_name: &'static str,
    mut pkgs: Vec<String>,
    tmp: &Path,
) -> Result<(Vec<String>, Vec<PathBuf>)> {
    let release = release_of(&pkgs[0]).context("kernel package")?.to_string();
    let suite = Suite::named(cache, suite_name, arch).context("suite")?;
    // The split layout: the image package only depends on the kernel
    // (linux-binary), its modules (linux-modules) and the files depmod needs
    // to know the built-in modules, System.map and config (linux-base).
    for dep in suite.depends(&pkgs[0])? {
        let split = ["linux-binary-", "linux-modules-", "linux-base-"]
            .iter()
            .any(|p| dep.starts_with(p));
        if split && dep.ends_with(release.as_str()) && !pkgs.contains(&dep) {
            pkgs.push(dep);
        }
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let _ = fs::remove_dir_all(tmp);
    fs::create_dir_all(tmp)?;
    let mut downloaded = Vec::new();
    for pkg in &pkgs {
        downloaded.push(suite.unpack(pkg, &debs, tmp)?);
    }
    Ok((pkgs, downloaded))
}

/// Keeps what a VM needs of the unpacked `tmp` in `dir`: the kernel, its
/// config and the wanted modules in load order.
fn install(tmp: &Path, release: &str, pkgs: &[String], dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("modules"))?;
    let found = |names: &[String]| names.iter().map(|n| tmp.join(n)).find(|p| p.exists());
    let moddir = format!("usr/lib/modules/{release}");
    let vmlinuz = found(&[
        format!("boot/vmlinuz-{release}"),
        format!("{moddir}/vmlinuz"),
        format!("lib/modules/{release}/vmlinuz"),
    ])
    .with_context(|| {
        format!(
            "{} hold no kernel (boot/vmlinuz-{release} or {moddir}/vmlinuz)",
            pkgs.join(" + ")
        )
    })?;
    fs::copy(&vmlinuz, dir.join("vmlinuz"))?;
    if let Some(config) = found(&[format!("boot/config-{release}"), format!("{moddir}/config")]) {
        fs::copy(config, dir.join("config"))?;
    }
    let mods = pick_modules(tmp, release, &dir.join("modules"))?;
    fs::write(dir.join("modules.order"), mods.join("\n"))?;
    fs::remove_dir_all(tmp)?;
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

    /// Names as the suites list them (`apt-cache search --names-only`).
    const LISTED: &[(&str, &str)] = &[
        ("linux-image-5.10.0-46-amd64", "bullseye"),
        ("linux-image-5.10.0-45-amd64", "bullseye"),
        ("linux-image-5.10.0-46-cloud-amd64", "bullseye"),
        ("linux-image-5.10.0-46-rt-amd64-unsigned", "bullseye"),
        ("linux-image-6.1.0-9-amd64", "bookworm"),
        ("linux-image-6.1.0-57-amd64", "bookworm"),
        ("linux-image-6.1.0-57-amd64-dbg", "bookworm"),
        ("linux-image-6.1.0-57-amd64-unsigned", "bookworm"),
        ("linux-image-6.1.0-57-cloud-amd64", "bookworm"),
        ("linux-image-6.1.0-57-rt-amd64", "bookworm"),
        ("linux-image-6.1.0-48-cloud-amd64", "bookworm"),
        ("linux-image-6.1.0-58-cloud-amd64-unsigned", "bookworm"),
        ("linux-image-6.12.9+deb12-amd64", "bookworm"),
        ("linux-image-6.12.117+deb12-amd64", "bookworm"),
        ("linux-image-6.12.117+deb12-cloud-amd64", "bookworm"),
        ("linux-image-amd64", "bookworm"),
        ("linux-image-cloud-amd64", "bookworm"),
        ("linux-image-6.12.57+deb13-amd64", "trixie"),
        ("linux-image-6.12.57+deb13-cloud-amd64", "trixie"),
        ("linux-binary-6.12.57+deb13-cloud-amd64", "trixie"),
        ("linux-image-7.0.10+deb13-amd64", "trixie-backports"),
        ("linux-image-7.3.4+deb13-amd64", "trixie-backports"),
        ("linux-image-7.3.4+deb13-cloud-amd64", "trixie-backports"),
        (
            "linux-image-7.3.4+deb13-cloud-amd64-dbg",
            "trixie-backports",
        ),
        ("linux-binary-7.3.4+deb13-cloud-amd64", "trixie-backports"),
        ("linux-binary-unsigned-7.2.13+deb14-cloud-amd64", "sid"),
    ];

    fn catalog() -> Catalog {
        Catalog {
            entries: LISTED.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            arch: Arch::Amd64,
        }
    }

    /// trixie's arm64 lists (apt-cache search in an arm64 state, 2026-12-07).
    fn arm64() -> Catalog {
        let listed = [
            ("linux-image-6.12.117+deb13-cloud-arm64", "trixie"),
            ("linux-image-6.12.117+deb13-cloud-arm64-unsigned", "trixie"),
            ("linux-image-6.12.111+deb13-cloud-arm64-dbg", "trixie"),
            ("linux-image-6.12.117+deb13-arm64", "trixie"),
            ("linux-image-cloud-arm64", "trixie"),
        ];
        Catalog {
            entries: listed.iter().map(|(n, s)| (n.to_string(), *s)).collect(),
            arch: Arch::Arm64,
        }
    }

    #[test]
    fn older_abis_of_the_same_series_and_flavour() {
        let c = catalog();
        assert_eq!(c.older("5.10.0-46-amd64"), ["5.10.0-45-amd64"]);
        assert_eq!(
            c.older("6.1.0-58-cloud-amd64"),
            ["6.1.0-57-cloud-amd64", "6.1.0-48-cloud-amd64"]
        );
        assert!(c.older("6.1.0-9-amd64").is_empty());
        assert!(names_a_release("6.1.0-57-amd64"));
        assert!(names_a_release("linux-image-6.1.0-57-amd64"));
        assert!(!names_a_release("6.12-cloud"));
    }

    #[test]
    fn arm64_specs_resolve_in_their_own_lists() {
        let c = arm64();
        assert_eq!(
            c.resolve("6.12-cloud").unwrap(),
            "6.12.117+deb13-cloud-arm64"
        );
        assert_eq!(c.resolve("6.12").unwrap(), "6.12.117+deb13-arm64");
        let wrong = c.resolve("6.12.117+deb13-cloud-amd64").unwrap_err();
        assert!(wrong.to_string().contains("--arch"), "{wrong}");
        assert!(catalog().resolve("6.12.117+deb13-cloud-arm64").is_err());
        assert_eq!(default_flavours(Arch::Arm64), ["arm64", "cloud-arm64"]);
    }

    #[test]
    fn releases_of_package_names() {
        let r = release_of;
        assert_eq!(r("linux-image-6.1.0-57-amd64"), Some("6.1.0-57-amd64"));
        assert_eq!(
            r("linux-image-6.1.0-57-amd64-unsigned"),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            r("linux-binary-unsigned-7.2.13+deb14-amd64"),
            Some("7.2.13+deb14-amd64")
        );
        assert_eq!(
            r("linux-binary-7.3.4+deb13-amd64"),
            Some("7.3.4+deb13-amd64")
        );
        assert_eq!(r("linux-image-6.1.0-57-amd64-dbg"), None);
        assert_eq!(r("linux-image-cloud-amd64"), None);
        assert_eq!(r("linux-modules-7.3.4+deb13-amd64"), None);
        assert_eq!(series_of("7.3.4+deb13-cloud-amd64").unwrap(), "7.3");
    }

    #[test]
    fn newest_abi_per_series_and_flavour() {
        let c = catalog();
        let n = || c.names();
        assert_eq!(newest(n(), "6.1", "amd64").unwrap(), "6.1.0-57-amd64");
        assert_eq!(
            newest(n(), "6.1", "cloud-amd64").unwrap(),
            "6.1.0-58-cloud-amd64"
        );
        assert_eq!(
            newest(n(), "6.12", "amd64").unwrap(),
            "6.12.117+deb12-amd64"
        );
        assert_eq!(newest(n(), "5.10", "amd64").unwrap(), "5.10.0-46-amd64");
        assert_eq!(newest(n(), "4.19", "amd64"), None);
        assert_eq!(
            c.default_releases(&[]).unwrap(),
            vec![
                "5.10.0-46-amd64",
                "5.10.0-46-cloud-amd64",
                "6.1.0-57-amd64",
                "6.1.0-58-cloud-amd64",
                "6.12.117+deb12-amd64",
                "6.12.117+deb12-cloud-amd64",
                "7.3.4+deb13-amd64",
                "7.3.4+deb13-cloud-amd64",
            ]
        );
    }

    #[test]
    fn the_ci_subset_is_one_cloud_kernel_per_series() {
        let ci = catalog()
            .default_releases(&["cloud-amd64".to_string()])
            .unwrap();
        assert_eq!(
            ci,
            vec![
                "5.10.0-46-cloud-amd64",
                "6.1.0-58-cloud-amd64",
                "6.12.117+deb12-cloud-amd64",
                "7.3.4+deb13-cloud-amd64"
            ]
        );
    }

    #[test]
    fn kernel_specs_resolve() {
        let c = catalog();
        assert_eq!(
            c.resolve("6.12-cloud").unwrap(),
            "6.12.117+deb12-cloud-amd64"
        );
        assert_eq!(c.resolve("6.1").unwrap(), "6.1.0-57-amd64");
        assert_eq!(c.resolve("7.3-cloud").unwrap(), "7.3.4+deb13-cloud-amd64");
        assert_eq!(c.resolve("7.2-cloud").unwrap(), "7.2.13+deb14-cloud-amd64");
        assert_eq!(
            c.resolve("linux-image-6.1.0-48-cloud-amd64").unwrap(),
            "6.1.0-48-cloud-amd64"
        );
        assert_eq!(
            c.resolve("6.12.57+deb13-amd64").unwrap(),
            "6.12.57+deb13-amd64"
        );
        assert!(c.resolve("4.19").is_err());
        assert!(c.resolve("6.1.0-1-amd64").is_err());
    }

    #[test]
    fn each_layout_has_its_packages() {
        let c = catalog();
        // Signed first, then the unsigned fallback when the first fails to
        // download (bullseye-security's arm64 pool, 2026-12-07).
        let all: Vec<String> = c
            .sources("6.1.0-57-amd64")
            .into_iter()
            .map(|(_, p)| p[0].clone())
            .collect();
        assert_eq!(
            all,
            [
                "linux-image-6.1.0-57-amd64",
                "linux-image-6.1.0-57-amd64-unsigned"
            ]
        );
        let s = |r: &str| c.source(r).unwrap();
        assert_eq!(
            s("6.1.0-57-amd64"),
            ("bookworm", vec!["linux-image-6.1.0-57-amd64".to_string()])
        );
        assert_eq!(
            s("6.1.0-58-cloud-amd64"),
            (
                "bookworm",
                vec!["linux-image-6.1.0-58-cloud-amd64-unsigned".to_string()]
            )
        );
        // The split layout: the image's dependencies come from apt (fetch).
        assert_eq!(s("7.3.4+deb13-cloud-amd64").0, "trixie-backports");
        assert_eq!(
            s("7.2.13+deb14-cloud-amd64"),
            (
                "sid",
                vec![
                    "linux-binary-unsigned-7.2.13+deb14-cloud-amd64".to_string(),
                    "linux-modules-7.2.13+deb14-cloud-amd64".to_string(),
                    "linux-base-7.2.13+deb14-cloud-amd64".to_string()
                ]
            )
        );
    }
}
