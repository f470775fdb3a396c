//! Finds the memory-controller hierarchies (cgroup v1 `memory`, cgroup v2 with
//! `memory` in `cgroup.controllers`) and scans their directories, to seed the
//! cgroup tree with the cgroups that existed before kmem-trace started.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::lifecycle::CgroupKey;

/// Errors of reading cgroupfs.
#[derive(Debug, thiserror::Error)]
pub enum CgroupfsError {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("no memory cgroup controller is mounted (looked in {0}); mount cgroup v1 `memory` or cgroup2 with the memory controller")]
    NoMemoryController(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CgroupVersion {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

impl CgroupVersion {
    /// `v1` or `v2`, as serialized.
    pub fn name(self) -> &'static str {
        match self {
            CgroupVersion::V1 => "v1",
            CgroupVersion::V2 => "v2",
        }
    }
}

/// A mounted hierarchy that has the memory controller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemoryHierarchy {
    pub version: CgroupVersion,
    /// Mount point as seen from `root`.
    pub mount: PathBuf,
    /// `cgroup_root.hierarchy_id` (v2 is 0).
    pub hierarchy_id: u32,
}

/// One cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dir {
    pub key: CgroupKey,
    pub parent: u64,
    pub name: String,
    /// Relative to the hierarchy root, `/` for the root.
    pub path: String,
    pub level: u32,
    /// The cgroup has a memcg: always on v1; on v2 the root and the
    /// directories whose parent enables `+memory` in `cgroup.subtree_control`
    /// (they have a `memory.current`). A v2 directory without it is
    /// memcg-less: its memcg, if it had one, went with a `-memory` toggle.
    pub memory: bool,
}

fn io(path: &Path, source: std::io::Error) -> CgroupfsError {
    CgroupfsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One entry of a mountinfo file: (mount point, fs type, super options).
pub fn parse_mountinfo(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let mount = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?;
            let _source = post.next()?;
            let opts = post.next().unwrap_or("");
            Some((unescape(mount), fstype.to_string(), opts.to_string()))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The memory controller's v1 hierarchy id from `/proc/cgroups` (0 if it is on v2).
pub fn memory_hierarchy_id(proc_cgroups: &str) -> Option<u32> {
    proc_cgroups.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == "memory").then_some(())?;
        f.next()?.parse().ok()
    })
}

/// Which cgroup version holds the memory controller, from `/proc/cgroups`
/// under `proc_root` (its hierarchy id is 0 on v2); `None` when unreadable.
pub fn memory_version(proc_root: &Path) -> Option<CgroupVersion> {
    let text = fs::read_to_string(proc_root.join("cgroups")).ok()?;
    memory_hierarchy_id(&text).map(|id| {
        if id == 0 {
            CgroupVersion::V2
        } else {
            CgroupVersion::V1
        }
    })
}

/// Memory hierarchies mounted under `root` (`/` normally; a host mount for
/// `--host-root`, where PID 1's mount table is read).
pub fn memory_hierarchies(root: &Path) -> Result<Vec<MemoryHierarchy>, CgroupfsError> {
    let own = root == Path::new("/");
    let mi_path = if own {
        PathBuf::from("/proc/self/mountinfo")
    } else {
        root.join("proc/1/mountinfo")
    };
    let mountinfo = fs::read_to_string(&mi_path).map_err(|e| io(&mi_path, e))?;
    let cg_path = root.join("proc/cgroups");
    let v1_id = fs::read_to_string(&cg_path)
        .ok()
        .and_then(|t| memory_hierarchy_id(&t));
    let mut out = Vec::new();
    for (mount, fstype, opts) in parse_mountinfo(&mountinfo) {
        let local = root.join(mount.trim_start_matches('/'));
        match fstype.as_str() {
            "cgroup" if opts.split(',').any(|o| o == "memory") => {
                if out
                    .iter()
                    .any(|h: &MemoryHierarchy| h.version == CgroupVersion::V1)
                {
                    continue; // the same hierarchy mounted twice
                }
                out.push(MemoryHierarchy {
                    version: CgroupVersion::V1,
                    mount: local,
                    hierarchy_id: v1_id.unwrap_or(0),
                });
            }
            "cgroup2" => {
                let ctrl = fs::read_to_string(local.join("cgroup.controllers")).unwrap_or_default();
                if ctrl.split_whitespace().any(|c| c == "memory")
                    && !out
                        .iter()
                        .any(|h: &MemoryHierarchy| h.version == CgroupVersion::V2)
                {
                    out.push(MemoryHierarchy {
                        version: CgroupVersion::V2,
                        mount: local,
                        hierarchy_id: 0,
                    });
                }
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(CgroupfsError::NoMemoryController(
            mi_path.display().to_string(),
        ));
    }
    Ok(out)
}

/// The hierarchy to create memory cgroups in: the v1 `memory` hierarchy when
/// mounted, else cgroup2 with the memory controller.
pub fn preferred_memory_hierarchy(root: &Path) -> Result<MemoryHierarchy, CgroupfsError> {
    let mut all = memory_hierarchies(root)?;
    all.sort_by_key(|h| h.version != CgroupVersion::V1);
    Ok(all.swap_remove(0))
}

/// Whether a (non-root) cgroup directory has a memcg (see [`Dir::memory`]).
pub fn has_memcg(version: CgroupVersion, dir: &Path) -> bool {
    version == CgroupVersion::V1 || dir.join("memory.current").exists()
}

/// Every directory of a hierarchy, parents before children. Directories that
/// vanish during the walk are skipped.
pub fn scan(h: &MemoryHierarchy) -> Result<Vec<Dir>, CgroupfsError> {
    let root_meta = fs::metadata(&h.mount).map_err(|e| io(&h.mount, e))?;
    let mut out = vec![Dir {
        key: (h.hierarchy_id, root_meta.ino()),
        parent: 0,
        name: String::new(),
        path: "/".into(),
        level: 0,
        memory: true,
    }];
    let mut stack = vec![(h.mount.clone(), root_meta.ino(), String::new(), 0u32)];
    while let Some((dir, ino, rel, level)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let name = e.file_name().to_string_lossy().into_owned();
            let path = format!("{rel}/{name}");
            out.push(Dir {
                key: (h.hierarchy_id, meta.ino()),
                parent: ino,
                name: name.clone(),
                path: path.clone(),
                level: level + 1,
                memory: has_memcg(h.version, &e.path()),
            });
            stack.push((e.path(), meta.ino(), path, level + 1));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 31 0:22 / /sys rw,nosuid - sysfs sysfs rw
33 25 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
37 33 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 33 0:33 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 33 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 33 0:36 / /mnt/with\\040space rw - cgroup cgroup rw,memory
";

    #[test]
    fn finds_the_memory_mount() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 6);
        assert_eq!(
            m[2],
            (
                "/sys/fs/cgroup/memory".into(),
                "cgroup".into(),
                "rw,memory".into()
            )
        );
        assert_eq!(m[5].0, "/mnt/with space");
    }

    #[test]
    fn reads_the_hierarchy_id() {
        let pc =
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\nmemory\t4\t45\t1\n";
        assert_eq!(memory_hierarchy_id(pc), Some(4));
        assert_eq!(memory_hierarchy_id("garbage"), None);
    }

    #[test]
    fn scans_a_directory_tree() {
        let dir = std::env::temp_dir().join(format!("kmem-trace-scan-{}", std::process::id()));
        fs::create_dir_all(dir.join("kubepods/burstable/pod1")).unwrap();
        fs::write(dir.join("kubepods/memory.stat"), "x").unwrap();
        let h = MemoryHierarchy {
            version: CgroupVersion::V1,
            mount: dir.clone(),
            hierarchy_id: 4,
        };
        let dirs = scan(&h).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let paths: Vec<&str> = dirs.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "/",
                "/kubepods",
                "/kubepods/burstable",
                "/kubepods/burstable/pod1"
            ]
        );
        assert_eq!(dirs[3].parent, dirs[2].key.1);
        assert_eq!(dirs[3].level, 3);
        assert!(
            dirs.iter().all(|d| d.memory),
            "v1: every cgroup has a memcg"
        );
    }

    #[test]
    fn v2_directories_without_the_memory_controller_are_memcg_less() {
        let dir = std::env::temp_dir().join(format!("kmem-trace-scan2-{}", std::process::id()));
        fs::create_dir_all(dir.join("with/without")).unwrap();
        fs::write(dir.join("with/memory.current"), "0").unwrap();
        let h = MemoryHierarchy {
            version: CgroupVersion::V2,
            mount: dir.clone(),
            hierarchy_id: 0,
        };
        let dirs = scan(&h).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let memory: Vec<(&str, bool)> = dirs.iter().map(|d| (d.path.as_str(), d.memory)).collect();
        assert_eq!(
            memory,
            [("/", true), ("/with", true), ("/with/without", false)]
        );
    }
}
