//! Debian's kernel packages, from every suite deb.debian.org serves (bullseye's
//! 5.10 to experimental; buster is archived), each through a private apt state
//! under the VM cache, so the machine's own sources, lists and installed
//! packages are left alone and any Debian release of 5.10 or newer can be
//! fetched from any Debian or Ubuntu host. A state is per architecture (arm64
//! kernels and busybox come from the same suites), without touching the host's
//! dpkg architectures.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use crate::{
    build::Arch,
    util::{apt, apt_get, sh},
};

/// A Debian suite: its name and whether it has a `-security` suite.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SuiteName {
    pub name: &'static str,
    security: bool,
}

const fn suite(name: &'static str, security: bool) -> SuiteName {
    SuiteName { name, security }
}

/// Every suite the registry serves kernels from, oldest first.
pub const ALL: &[SuiteName] = &[
    suite("bullseye", true),
    suite("bookworm", true),
    suite("trixie", true),
    suite("trixie-backports", false),
    suite("sid", false),
    suite("experimental", false),
];

/// The suites the default matrix needs: 5.10 (bullseye), 6.1 (bookworm), 6.12
/// (bookworm's backported ABI and trixie) and the newest series backports carry.
pub const DEFAULT: &[&str] = &["bullseye", "bookworm", "trixie", "trixie-backports"];

/// The suite whose newest series joins the default matrix.
pub const BACKPORTS: &str = "trixie-backports";

/// Package lists older than this are fetched again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A private apt state for one suite and architecture: `vm-cache/apt-<suite>/`
/// (amd64) or `vm-cache/apt-<suite>-<arch>/`.
pub struct Suite {
    dir: PathBuf,
    suite: SuiteName,
    arch: Arch,
}

impl Suite {
    pub fn new(cache: &Path, suite: SuiteName, arch: Arch) -> Suite {
        let dir = match arch {
            Arch::Amd64 => format!("apt-{}", suite.name),
            other => format!("apt-{}-{}", suite.name, other.debian()),
        };
        Suite {
            dir: cache.join(dir),
            suite,
            arch,
        }
    }

    /// The suite called `name`.
    pub fn named(cache: &Path, name: &str, arch: Arch) -> Option<Suite> {
        ALL.iter()
            .find(|s| s.name == name)
            .map(|s| Suite::new(cache, *s, arch))
    }

    pub fn name(&self) -> &'static str {
        self.suite.name
    }

    /// `-o` options pointing apt at this state only.
    fn options(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={d}/sources.list"),
            "-oDir::Etc::SourceParts=/dev/null".into(),
            format!("-oDir::State::Lists={d}/lists"),
            format!("-oDir::Cache={d}/cache"),
            "-oDir::State::status=/dev/null".into(),
            // Downloads go to the cache directory, which `_apt` cannot write.
            "-oAPT::Sandbox::User=root".into(),
            // Only this architecture's lists: the host's dpkg is not asked.
            format!("-oAPT::Architecture={}", self.arch.debian()),
            format!("-oAPT::Architectures={}", self.arch.debian()),
        ]
    }

    /// The state's `sources.list`.
    fn sources(&self) -> String {
        let s = self.suite.name;
        let mut text = format!("deb http://deb.debian.org/debian {s} main\n");
        if self.suite.security {
            text.push_str(&format!(
                "deb http://deb.debian.org/debian-security {s}-security main\n"
            ));
        }
        text
    }

    /// Writes the sources and fetches the package lists when missing or stale;
    /// returns the state's lock, held while the caller reads the lists.
    fn update(&self) -> Result<fs::File> {
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(self.dir.join(d))?;
        }
        // The matrix and the runner test resolve kernels at the same time; apt
        // does not wait for its lists lock, it fails ("Could not get lock").
        // This lock keeps the lists while they are read; the apt calls also
        // take `util::APT_LOCK` (two suites' updates at once would be two apt
        // calls at once).
        let lock = fs::File::create(self.dir.join(".lock"))?;
        lock.lock()
            .with_context(|| format!("locking {}", self.dir.display()))?;
        let sources = self.sources();
        let stamp = self.dir.join("updated");
        let same_sources =
            fs::read_to_string(self.dir.join("sources.list")).is_ok_and(|s| s == sources);
        let fresh = same_sources
            && fs::metadata(&stamp)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .is_some_and(|age| age < LISTS_MAX_AGE);
        if !fresh {
            fs::write(self.dir.join("sources.list"), sources)?;
            apt(apt_get().args(self.options()).args(["update", "-qq"]))
                .with_context(|| format!("fetching Debian {}'s package lists", self.name()))?;
            fs::write(&stamp, "")?;
        }
        Ok(lock)
    }

    /// Kernel package names (`linux-image-*`, `linux-binary-*`) that have a
    /// package record in this suite: `apt-cache pkgnames` would also list names
    /// only mentioned in dependencies, which have no candidate to download.
    pub fn package_names(&self) -> Result<Vec<String>> {
        let _lock = self.update()?;
        let out = Command::new("apt-cache")
            .args(self.options())
            .args(["search", "--names-only", "^linux-(image|binary)-"])
            .output()
            .context("running apt-cache")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// The `Depends` of package `pkg` in this suite, package names only.
    pub fn depends(&self, pkg: &str) -> Result<Vec<String>> {
        let _lock = self.update()?;
        let out = Command::new("apt-cache")
            .args(self.options())
            .args(["show", "--no-all-versions", pkg])
            .output()
            .context("running apt-cache")?;
        Ok(parse_depends(&String::from_utf8_lossy(&out.stdout)))
    }

    /// `pkg`'s .deb in `debs` (downloaded from this suite unless a previous
    /// call left it there) unpacked into `into`; the .deb's path.
    pub fn unpack(&self, pkg: &str, debs: &Path, into: &Path) -> Result<PathBuf> {
        if find_deb(debs, pkg).is_none() {
            eprintln!("vm-test: downloading {pkg} (Debian {})", self.name());
            self.download(pkg, debs)?;
        }
        let deb =
            find_deb(debs, pkg).with_context(|| format!("apt-get download left no {pkg} .deb"))?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(into))?;
        Ok(deb)
    }

    /// `apt-get download PKG` into `dir` from this suite.
    pub fn download(&self, pkg: &str, dir: &Path) -> Result<()> {
        let _lock = self.update()?;
        apt(apt_get()
            .current_dir(dir)
            .args(self.options())
            .args(["download", "-q", pkg]))
        .with_context(|| format!("downloading {pkg} from Debian {}", self.name()))
    }
}

/// The `.deb` of `pkg` in `debs`, if downloaded.
fn find_deb(debs: &Path, pkg: &str) -> Option<PathBuf> {
    fs::read_dir(debs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
}

/// Package names in the `Depends:` field of an `apt-cache show` record
/// (alternatives and version constraints dropped).
fn parse_depends(record: &str) -> Vec<String> {
    record
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .unwrap_or("")
        .split([',', '|'])
        .filter_map(|d| d.split_whitespace().next())
        .map(|d| d.split(':').next().unwrap_or(d).to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_states_per_suite() {
        let c = Path::new("/c");
        let s = Suite::named(c, "bullseye", Arch::Amd64).expect("bullseye");
        assert_eq!(s.dir, Path::new("/c/apt-bullseye"));
        let a = Suite::named(c, "trixie", Arch::Arm64).expect("trixie");
        assert_eq!(a.dir, Path::new("/c/apt-trixie-arm64"));
        assert!(a
            .options()
            .contains(&"-oAPT::Architectures=arm64".to_string()));
        assert!(s
            .options()
            .contains(&"-oAPT::Architecture=amd64".to_string()));
        assert!(s.sources().contains("bullseye-security"));
        assert!(!Suite::named(c, "sid", Arch::Amd64)
            .unwrap()
            .sources()
            .contains("security"));
        assert!(Suite::named(c, "buster", Arch::Amd64).is_none());
        assert!(s
            .options()
            .contains(&"-oDir::State::Lists=/c/apt-bullseye/lists".to_string()));
        for d in DEFAULT.iter().chain([&BACKPORTS]) {
            assert!(Suite::named(c, d, Arch::Arm64).is_some(), "{d}");
        }
    }

    #[test]
    fn depends_of_a_split_image() {
        // apt-cache show linux-image-7.3.4+deb13-cloud-amd64 (trixie-backports).
        let rec = "Package: linux-image-7.3.4+deb13-cloud-amd64\n\
            Version: 7.3.4-1~bpo13+1\n\
            Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, \
            linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), \
            linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), \
            linux-modules-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)\n";
        let d = parse_depends(rec);
        assert!(d.contains(&"linux-binary-7.3.4+deb13-cloud-amd64".to_string()));
        assert!(d.contains(&"linux-modules-7.3.4+deb13-cloud-amd64".to_string()));
        assert!(d.contains(&"dracut".to_string()));
        assert!(parse_depends("Package: x\n").is_empty());
    }
}
