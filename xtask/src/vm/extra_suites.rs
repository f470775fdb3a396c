//! Debian kernels from suites the machine's apt sources do not list (bullseye's
//! 5.10, the oldest Debian kernel still on deb.debian.org: buster is archived),
//! through a private apt state under the VM cache, so the machine's own sources,
//! lists and installed packages are left alone.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};

use crate::util::{apt_get, sh};

/// (kernel series, Debian suite) taken from a private apt state.
pub const SUITES: &[(&str, &str)] = &[("5.10", "bullseye")];

/// Package lists older than this are fetched again.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A private apt state for one suite: `vm-cache/apt-<suite>/`.
pub struct Suite {
    dir: PathBuf,
    suite: &'static str,
}

impl Suite {
    pub fn new(cache: &Path, suite: &'static str) -> Suite {
        Suite {
            dir: cache.join(format!("apt-{suite}")),
            suite,
        }
    }

    /// The suite whose kernels have this release (`5.10.0-46-amd64`), if any.
    pub fn for_release(cache: &Path, release: &str) -> Option<Suite> {
        SUITES
            .iter()
            .find(|(series, _)| {
                release
                    .strip_prefix(series)
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('-'))
            })
            .map(|(_, suite)| Suite::new(cache, suite))
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
        ]
    }

    /// Writes the sources and fetches the package lists when missing or stale;
    /// returns the state's lock, held while the caller reads the lists.
    fn update(&self) -> Result<fs::File> {
        for d in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(self.dir.join(d))?;
        }
        let sources = format!(
            "deb http://deb.debian.org/debian {s} main\n\
             deb http://deb.debian.org/debian-security {s}-security main\n",
            s = self.suite
        );
        // The matrix and the runner test resolve kernels at the same time; apt
        // does not wait for its lists lock, it fails ("Could not get lock").
        let lock = fs::File::create(self.dir.join(".lock"))?;
        lock.lock()
            .with_context(|| format!("locking {}", self.dir.display()))?;
        fs::write(self.dir.join("sources.list"), sources)?;
        let stamp = self.dir.join("updated");
        let fresh = fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age < LISTS_MAX_AGE);
        if !fresh {
            sh(apt_get().args(self.options()).args(["update", "-qq"]))
                .with_context(|| format!("fetching Debian {}'s package lists", self.suite))?;
            fs::write(&stamp, "")?;
        }
        Ok(lock)
    }

    /// Package names `linux-image-*` of this suite.
    pub fn package_names(&self) -> Result<Vec<String>> {
        let _lock = self.update()?;
        let out = Command::new("apt-cache")
            .args(self.options())
            .args(["pkgnames", "linux-image-"])
            .output()
            .context("running apt-cache")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }

    /// `apt-get download PKG` into `dir` from this suite.
    pub fn download(&self, pkg: &str, dir: &Path) -> Result<()> {
        let _lock = self.update()?;
        sh(apt_get()
            .current_dir(dir)
            .args(self.options())
            .args(["download", "-q", pkg]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_map_to_their_suite() {
        let c = Path::new("/c");
        let s = Suite::for_release(c, "5.10.0-46-cloud-amd64").expect("bullseye");
        assert_eq!(s.suite, "bullseye");
        assert_eq!(s.dir, Path::new("/c/apt-bullseye"));
        assert!(Suite::for_release(c, "6.1.0-57-amd64").is_none());
        assert!(Suite::for_release(c, "5.100.0-1-amd64").is_none());
        assert!(s
            .options()
            .contains(&"-oDir::State::Lists=/c/apt-bullseye/lists".to_string()));
    }
}
