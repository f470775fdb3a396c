//! Memcg counts from procfs and cgroupfs alone, on any kernel (3.10 too): how
//! many memcgs the kernel holds and how many of them are dying. This is the
//! "counts only" census where BPF iterators are unavailable, the reference the
//! BPF census is reconciled with, and what `doctor` reads.
//!
//! cgroup v1: `/proc/cgroups` counts every cgroup of the memory hierarchy
//! (`cgroup_root.nr_cgrps`, dropped only in `css_free_rwork_fn()`), dying ones
//! included, while cgroupfs shows only live directories: the difference is the
//! dying memcgs. cgroup v2: the root's `cgroup.stat` has `nr_dying_subsys_memory`
//! (6.11+) or, before, `nr_dying_descendants` (dying cgroups of any controller).

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::CensusError;
use crate::cgroupfs::{CgroupVersion, MemoryHierarchy};

/// Counts of one memory hierarchy, as procfs and cgroupfs tell them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelCounts {
    /// v1: memory `num_cgroups` of `/proc/cgroups` (every memcg, dying included).
    pub num_cgroups: Option<u64>,
    /// Live memcgs visible in cgroupfs (directories; on v2 those with the
    /// memory controller, plus the root).
    pub visible: u64,
    /// v2 root `cgroup.stat`.
    pub nr_descendants: Option<u64>,
    pub nr_dying_descendants: Option<u64>,
    /// v2 root `cgroup.stat`, 6.11+: live and dying memory csses (root included).
    pub nr_subsys_memory: Option<u64>,
    pub nr_dying_subsys_memory: Option<u64>,
}

/// Where a dying count comes from, for labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DyingBasis {
    /// `/proc/cgroups` num_cgroups minus visible directories (v1).
    NumCgroupsMinusVisible,
    /// v2 `nr_dying_subsys_memory` (exact).
    DyingSubsysMemory,
    /// v2 `nr_dying_descendants` (dying cgroups of any controller: an upper bound).
    DyingDescendants,
    /// The census's walk of the memcg tree (exact).
    Census,
}

impl DyingBasis {
    pub fn label(self) -> &'static str {
        match self {
            DyingBasis::NumCgroupsMinusVisible => {
                "memory num_cgroups of /proc/cgroups minus visible directories"
            }
            DyingBasis::DyingSubsysMemory => "nr_dying_subsys_memory of the root cgroup.stat",
            DyingBasis::DyingDescendants => {
                "nr_dying_descendants of the root cgroup.stat (all controllers: an upper bound)"
            }
            DyingBasis::Census => "the census of the memcg tree",
        }
    }
}

impl KernelCounts {
    /// Reads the counts of `h`; `root` is `/` or the host root (`--host-root`).
    pub fn read(root: &Path, h: &MemoryHierarchy) -> Result<KernelCounts, CensusError> {
        let mut c = KernelCounts::read_counters(root, h)?;
        c.visible = count_visible(h);
        Ok(c)
    }

    /// The kernel's counters only, without walking cgroupfs (`visible` is 0):
    /// cheap, where [`KernelCounts::read`] lists every cgroup directory (about
    /// 30 ms per 1,000 cgroups on cgroup v1).
    pub fn read_counters(root: &Path, h: &MemoryHierarchy) -> Result<KernelCounts, CensusError> {
        let mut c = KernelCounts::default();
        match h.version {
            CgroupVersion::V1 => {
                let p = root.join("proc/cgroups");
                let text = fs::read_to_string(&p).map_err(|source| CensusError::Io {
                    path: p.clone(),
                    source,
                })?;
                c.num_cgroups = parse_num_cgroups(&text);
            }
            CgroupVersion::V2 => {
                let p = h.mount.join("cgroup.stat");
                let text = fs::read_to_string(&p).map_err(|source| CensusError::Io {
                    path: p.clone(),
                    source,
                })?;
                let stat = parse_kv(&text);
                let get = |k: &str| stat.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
                c.nr_descendants = get("nr_descendants");
                c.nr_dying_descendants = get("nr_dying_descendants");
                c.nr_subsys_memory = get("nr_subsys_memory");
                c.nr_dying_subsys_memory = get("nr_dying_subsys_memory");
            }
        }
        Ok(c)
    }

    /// Every memcg the kernel holds, where known.
    pub fn total(&self) -> Option<u64> {
        if let Some(n) = self.num_cgroups {
            return Some(n);
        }
        if let (Some(live), Some(dying)) = (self.nr_subsys_memory, self.nr_dying_subsys_memory) {
            return Some(live + dying);
        }
        self.nr_dying_descendants.map(|d| self.visible + d)
    }

    /// Dying memcgs, and how that number was obtained.
    pub fn dying(&self) -> Option<(u64, DyingBasis)> {
        if let Some(n) = self.num_cgroups {
            return Some((
                n.saturating_sub(self.visible),
                DyingBasis::NumCgroupsMinusVisible,
            ));
        }
        if let Some(d) = self.nr_dying_subsys_memory {
            return Some((d, DyingBasis::DyingSubsysMemory));
        }
        self.nr_dying_descendants
            .map(|d| (d, DyingBasis::DyingDescendants))
    }
}

/// memory `num_cgroups` from a `/proc/cgroups` text.
pub fn parse_num_cgroups(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[0] == "memory")
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// `key value` lines (cgroup.stat, memory.stat).
pub fn parse_kv(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let k = f.next()?;
            let v = f.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// Live memcgs visible in cgroupfs: every directory on v1; on v2 the root and
/// the directories that have the memory controller (a `memory.current` file).
pub fn count_visible(h: &MemoryHierarchy) -> u64 {
    let mut n = 1;
    let mut stack: Vec<PathBuf> = vec![h.mount.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            // Directories only, and never through symlinks.
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let p = e.path();
            if crate::cgroupfs::has_memcg(h.version, &p) {
                n += 1;
            }
            stack.push(p);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroups_and_cgroup_stat_parse() {
        let pc =
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\nmemory\t4\t37\t1\n";
        assert_eq!(parse_num_cgroups(pc), Some(37));
        assert_eq!(parse_num_cgroups("memory 0"), None);
        let st = "nr_descendants 5\nnr_subsys_memory 6\nnr_dying_descendants 2\nnr_dying_subsys_memory 1\n";
        let kv = parse_kv(st);
        assert_eq!(kv[1], ("nr_subsys_memory".into(), 6));
    }

    #[test]
    fn dying_counts_say_where_they_come_from() {
        let v1 = KernelCounts {
            num_cgroups: Some(37),
            visible: 6,
            ..KernelCounts::default()
        };
        assert_eq!(v1.dying(), Some((31, DyingBasis::NumCgroupsMinusVisible)));
        assert_eq!(v1.total(), Some(37));
        let v2 = KernelCounts {
            visible: 6,
            nr_descendants: Some(9),
            nr_dying_descendants: Some(4),
            nr_subsys_memory: Some(6),
            nr_dying_subsys_memory: Some(3),
            ..KernelCounts::default()
        };
        assert_eq!(v2.dying(), Some((3, DyingBasis::DyingSubsysMemory)));
        assert_eq!(v2.total(), Some(9));
        let old_v2 = KernelCounts {
            nr_subsys_memory: None,
            nr_dying_subsys_memory: None,
            ..v2
        };
        assert_eq!(old_v2.dying(), Some((4, DyingBasis::DyingDescendants)));
        assert_eq!(old_v2.total(), Some(10));
        // More visible directories than counted (a race): never negative.
        let racy = KernelCounts {
            num_cgroups: Some(3),
            visible: 5,
            ..KernelCounts::default()
        };
        assert_eq!(racy.dying().unwrap().0, 0);
    }
}
