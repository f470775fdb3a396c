//! The facts `doctor` judges, read from procfs and cgroupfs under a root
//! directory (`/`, a host mounted into a container, or a test tree). Nothing
//! here needs BPF or a recent kernel: every file read exists on 3.10 too, and
//! a file that is missing or unreadable becomes an unknown, never an error.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    census::{
        counts::{DyingBasis, KernelCounts},
        pin::{MemStat, Residual},
    },
    cgroupfs::{self, CgroupVersion, MemoryHierarchy},
    forecast::{dying_hold, dying_holding, SwapEvidence},
    probes::{caps, kernel::KernelVersion},
};

/// How kubelet names pod cgroups (`--cgroup-driver`), as seen in the paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Driver {
    /// `kubepods/{burstable,besteffort}/pod<uid>/<cid>`.
    Cgroupfs,
    /// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/...`.
    Systemd,
}

impl Driver {
    /// `cgroupfs` or `systemd`, as kubelet's `--cgroup-driver` names it.
    pub fn name(self) -> &'static str {
        match self {
            Driver::Cgroupfs => "cgroupfs",
            Driver::Systemd => "systemd",
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Kubelet {
    pub driver: Option<Driver>,
    /// The kubepods cgroup, relative to the memory hierarchy root.
    pub kubepods: Option<String>,
    pub pods: u64,
}

/// Kernel-memory accounting state of the kubepods memcg (cgroup v1).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Kmem {
    pub path: String,
    /// `memory.kmem.slabinfo` could be read and was not empty (3.10: reading
    /// it fails with EIO unless kmem accounting is active).
    pub slabinfo_readable: bool,
    pub usage_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    /// Whether kmem accounting is active there; `None` when it cannot be told.
    pub active: Option<bool>,
    pub why: String,
}

/// One cgroup mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub path: String,
    pub version: CgroupVersion,
    pub options: String,
}

/// Everything `doctor` read.
#[derive(Clone, Debug, Serialize)]
pub struct Facts {
    pub host_root: PathBuf,
    pub release: Option<String>,
    pub version: Option<KernelVersion>,
    /// The build of a RHEL/CentOS 7 kernel (`3.10.0-<build>.el7`).
    pub el7_build: Option<u32>,
    pub cmdline: Option<String>,
    /// `cgroup.memory=nokmem` on the kernel command line.
    pub nokmem: bool,
    pub mounts: Vec<Mount>,
    pub memory: Option<MemoryHierarchy>,
    pub counts: Option<KernelCounts>,
    pub dying: Option<(u64, DyingBasis)>,
    /// Dying memcgs holding an ID ([`crate::forecast::dying_hold`]); `None`: unknown.
    pub dying_holding: Option<u64>,
    /// memcgs holding an ID: the live ones plus `dying_holding`; `None`: unknown.
    pub ids_in_use: Option<u64>,
    /// Swap in use on the node (`/proc/meminfo` SwapTotal − SwapFree), bytes.
    pub swap_used: Option<u64>,
    pub kubelet: Kubelet,
    pub kmem: Option<Kmem>,
    pub uptime_s: Option<f64>,
    /// Bytes dying memcgs hold, by type (live cgroups' stats minus their own).
    pub dying_bytes: Option<Residual>,
    /// `memory.stat` has a shmem line (not on 3.10): tmpfs is told apart.
    pub shmem_known: bool,
    pub caps: caps::BpfCapabilities,
    /// The running tracer's count of ID-holding memcgs, from its history
    /// (`doctor` with a history database); `None` when not fresh or absent.
    pub tracer_ids: Option<super::exhausted::TracerIds>,
    /// `--try-mkdir`: what making one memcg answered.
    pub mkdir_probe: Option<super::mkdir_probe::MkdirProbe>,
    /// What could not be read.
    pub unreadable: Vec<String>,
}

/// The largest tree whose `memory.stat` files are all read for `dying_bytes`.
const MAX_STAT_DIRS: usize = 20_000;

impl Facts {
    /// Reads every fact under `root`. `caps` is decided by the caller (predicted
    /// or verified), so this never touches BPF.
    pub fn gather(root: &Path, caps: caps::BpfCapabilities) -> Facts {
        let mut unreadable = Vec::new();
        let release = caps::release(root);
        if release.is_none() {
            unreadable.push("proc/sys/kernel/osrelease".into());
        }
        let version = release.as_deref().and_then(KernelVersion::parse);
        let cmdline = read(root, "proc/cmdline", &mut unreadable);
        let nokmem = cmdline.as_deref().is_some_and(has_nokmem);
        let mounts = read(root, "proc/1/mountinfo", &mut Vec::new())
            .or_else(|| read(root, "proc/self/mountinfo", &mut unreadable))
            .map(|t| cgroup_mounts(&t))
            .unwrap_or_default();
        let memory = match cgroupfs::preferred_memory_hierarchy(root) {
            Ok(h) => Some(h),
            Err(e) => {
                unreadable.push(e.to_string());
                None
            }
        };
        let counts = memory
            .as_ref()
            .and_then(|h| match KernelCounts::read(root, h) {
                Ok(c) => Some(c),
                Err(e) => {
                    unreadable.push(e.to_string());
                    None
                }
            });
        let dying = counts.as_ref().and_then(KernelCounts::dying);
        let swap_used = read(root, "proc/meminfo", &mut unreadable)
            .as_deref()
            .and_then(swap_used);
        let swap = node_swap(swap_used);
        let dying_holding = dying.and_then(|(d, _)| dying_holding(dying_hold(version), d, swap));
        let ids_in_use = counts
            .as_ref()
            .zip(dying_holding)
            .map(|(c, h)| c.visible + h);
        let kubelet = memory.as_ref().map(kubelet).unwrap_or_default();
        let kmem = match (&memory, &kubelet.kubepods) {
            (Some(h), Some(k)) if h.version == CgroupVersion::V1 => {
                Some(kmem_state(h, k, version, nokmem))
            }
            _ => None,
        };
        let uptime_s = read(root, "proc/uptime", &mut unreadable)
            .and_then(|t| t.split_whitespace().next()?.parse().ok());
        let dying_bytes = memory.as_ref().and_then(dying_bytes);
        let shmem_known = memory.as_ref().is_some_and(shmem_in_stats);
        Facts {
            host_root: root.to_path_buf(),
            el7_build: release.as_deref().and_then(el7_build),
            release,
            version,
            cmdline,
            nokmem,
            mounts,
            memory,
            counts,
            dying,
            dying_holding,
            ids_in_use,
            swap_used,
            kubelet,
            kmem,
            uptime_s,
            dying_bytes,
            shmem_known,
            caps,
            tracer_ids: None,
            mkdir_probe: None,
            unreadable,
        }
    }

    /// Takes the dying count and the ID reading from a census the caller took,
    /// so every section of a report shows the same snapshot.
    pub fn use_census(&mut self, c: CensusReading) {
        self.dying = Some((c.dying, DyingBasis::Census));
        let swap = c
            .swap_held_dying
            .map_or(node_swap(self.swap_used), SwapEvidence::PerMemcg);
        self.dying_holding = dying_holding(dying_hold(self.version), c.dying, swap);
        self.ids_in_use = self.dying_holding.map(|h| c.live + h);
    }

    /// The memory hierarchy's mount as a path on the host (without the host root).
    pub fn memory_mount(&self) -> Option<String> {
        let h = self.memory.as_ref()?;
        let rel = h.mount.strip_prefix(&self.host_root).unwrap_or(&h.mount);
        Some(format!("/{}", rel.display()).replace("//", "/"))
    }
}

fn read(root: &Path, rel: &str, unreadable: &mut Vec<String>) -> Option<String> {
    match fs::read_to_string(root.join(rel)) {
        Ok(s) => Some(s),
        Err(_) => {
            unreadable.push(format!("/{rel}"));
            None
        }
    }
}

/// Counts of a census taken by the caller (`report`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CensusReading {
    pub live: u64,
    pub dying: u64,
    /// Dying memcgs with swap entries, when every dying memcg's swap counter was read.
    pub swap_held_dying: Option<u64>,
}

fn node_swap(used: Option<u64>) -> SwapEvidence {
    used.map_or(SwapEvidence::Unknown, SwapEvidence::NodeSwapUsed)
}

/// Swap in use from `/proc/meminfo` (kB lines), in bytes.
fn swap_used(meminfo: &str) -> Option<u64> {
    let kb = |key: &str| {
        meminfo.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.trim().trim_end_matches("kB").trim();
            v.parse::<u64>().ok()
        })
    };
    Some(kb("SwapTotal:")?.saturating_sub(kb("SwapFree:")?) * 1024)
}

/// `cgroup.memory=nokmem` (also inside a comma list: `cgroup.memory=nosocket,nokmem`).
pub fn has_nokmem(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|a| {
        a.strip_prefix("cgroup.memory=")
            .is_some_and(|v| v.split(',').any(|o| o == "nokmem"))
    })
}

/// `3.10.0-1160.el7.x86_64` → 1160.
pub fn el7_build(release: &str) -> Option<u32> {
    if !release.contains(".el7") {
        return None;
    }
    let rest = release.split_once('-')?.1;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// cgroup and cgroup2 mounts of a mountinfo text.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<Mount> {
    cgroupfs::parse_mountinfo(mountinfo)
        .into_iter()
        .filter_map(|(path, fstype, opts)| {
            let version = match fstype.as_str() {
                "cgroup" => CgroupVersion::V1,
                "cgroup2" => CgroupVersion::V2,
                _ => return None,
            };
            Some(Mount {
                path,
                version,
                options: opts,
            })
        })
        .collect()
}

/// Kubelet's pod cgroups in the memory hierarchy, and how they are named.
fn kubelet(h: &MemoryHierarchy) -> Kubelet {
    let mut k = Kubelet::default();
    let (driver, top, classes): (Driver, &str, [&str; 2]) =
        if h.mount.join("kubepods.slice").is_dir() {
            (
                Driver::Systemd,
                "kubepods.slice",
                ["kubepods-burstable.slice", "kubepods-besteffort.slice"],
            )
        } else if h.mount.join("kubepods").is_dir() {
            (Driver::Cgroupfs, "kubepods", ["burstable", "besteffort"])
        } else {
            return k;
        };
    k.driver = Some(driver);
    k.kubepods = Some(format!("/{top}"));
    let is_pod = |name: &str| match driver {
        Driver::Cgroupfs => name.starts_with("pod"),
        Driver::Systemd => name.contains("-pod") && name.ends_with(".slice"),
    };
    let count = |dir: &Path| -> u64 {
        fs::read_dir(dir)
            .map(|es| {
                es.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter(|e| is_pod(&e.file_name().to_string_lossy()))
                    .count() as u64
            })
            .unwrap_or(0)
    };
    let base = h.mount.join(top);
    k.pods = count(&base) + classes.iter().map(|c| count(&base.join(c))).sum::<u64>();
    k
}

/// Whether kmem accounting is active in the kubepods memcg (cgroup v1).
fn kmem_state(
    h: &MemoryHierarchy,
    kubepods: &str,
    version: Option<KernelVersion>,
    nokmem: bool,
) -> Kmem {
    let dir = h.mount.join(kubepods.trim_start_matches('/'));
    let num =
        |f: &str| -> Option<u64> { fs::read_to_string(dir.join(f)).ok()?.trim().parse().ok() };
    let slabinfo_readable =
        fs::read_to_string(dir.join("memory.kmem.slabinfo")).is_ok_and(|s| !s.trim().is_empty());
    let usage_bytes = num("memory.kmem.usage_in_bytes");
    let limit_bytes = num("memory.kmem.limit_in_bytes");
    // A page-aligned "unlimited": PAGE_COUNTER_MAX * PAGE_SIZE (or LLONG_MAX on 3.x).
    let limited = limit_bytes.is_some_and(|l| l < (1u64 << 62));
    let (active, why) = if nokmem {
        (Some(false), "cgroup.memory=nokmem is set".to_string())
    } else if version.is_some_and(|v| v >= KernelVersion(4, 6, 0)) {
        (
            Some(true),
            "4.6+ accounts kernel memory in every cgroup v1 memcg unless cgroup.memory=nokmem"
                .into(),
        )
    } else if slabinfo_readable || usage_bytes.is_some_and(|u| u > 0) || limited {
        let mut ev = Vec::new();
        if slabinfo_readable {
            ev.push("memory.kmem.slabinfo is readable");
        }
        if usage_bytes.is_some_and(|u| u > 0) {
            ev.push("memory.kmem.usage_in_bytes > 0");
        }
        if limited {
            ev.push("a kmem limit is set");
        }
        (Some(true), ev.join(", "))
    } else if usage_bytes.is_some() {
        (
            Some(false),
            "no slabinfo, no kmem usage and no kmem limit".into(),
        )
    } else {
        (None, "the memory.kmem.* files could not be read".into())
    };
    Kmem {
        path: kubepods.to_string(),
        slabinfo_readable,
        usage_bytes,
        limit_bytes,
        active,
        why,
    }
}

/// What dying memcgs hold, by type: every live cgroup's `memory.stat` minus
/// what its live children and (v1) it itself account. `None` for huge trees.
/// An estimate: stats are flushed lazily, and on v2 a parent's own pages count.
fn dying_bytes(h: &MemoryHierarchy) -> Option<Residual> {
    let dirs = cgroupfs::scan(h).ok()?;
    if dirs.len() > MAX_STAT_DIRS {
        return None;
    }
    let stats: HashMap<u64, MemStat> = dirs
        .iter()
        .filter_map(|d| Some((d.key.1, crate::census::read_stat(h, &d.path)?)))
        .collect();
    let mut kids: HashMap<u64, Vec<MemStat>> = HashMap::new();
    for d in &dirs {
        if let Some(s) = stats.get(&d.key.1) {
            kids.entry(d.parent).or_default().push(*s);
        }
    }
    let mut total = Residual::default();
    for d in &dirs {
        let Some(s) = stats.get(&d.key.1) else {
            continue;
        };
        // v2 stats have no local part: a cgroup's own pages would count as
        // dying, so only cgroups that have dying descendants are looked at
        // (inner cgroups hold no processes on v2).
        if h.version == CgroupVersion::V2 && !has_dying_descendants(h, &d.path) {
            continue;
        }
        let r = s.residual(kids.get(&d.key.1).map(Vec::as_slice).unwrap_or(&[]));
        total.shmem += r.shmem;
        total.file += r.file;
        total.anon += r.anon;
    }
    (!stats.is_empty()).then_some(total)
}

/// Whether `memory.stat` has a shmem line: the root's, else (v2 roots may
/// have none) the first child's.
fn shmem_in_stats(h: &MemoryHierarchy) -> bool {
    let has = |dir: &Path| {
        fs::read_to_string(dir.join("memory.stat"))
            .ok()
            .map(|t| t.lines().any(|l| l.starts_with("shmem ")))
    };
    if let Some(v) = has(&h.mount) {
        return v;
    }
    fs::read_dir(&h.mount)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| has(&e.path()))
        .unwrap_or(false)
}

fn has_dying_descendants(h: &MemoryHierarchy, path: &str) -> bool {
    let p = h
        .mount
        .join(path.trim_start_matches('/'))
        .join("cgroup.stat");
    fs::read_to_string(p).is_ok_and(|t| {
        crate::census::counts::parse_kv(&t)
            .iter()
            .any(|(k, v)| k == "nr_dying_descendants" && *v > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_and_release_details() {
        assert!(has_nokmem("ro quiet cgroup.memory=nokmem"));
        assert!(has_nokmem("cgroup.memory=nosocket,nokmem"));
        assert!(!has_nokmem("cgroup.memory=nosocket"));
        assert!(!has_nokmem("nokmem"));
        assert_eq!(el7_build("3.10.0-957.27.2.el7.x86_64"), Some(957));
        assert_eq!(el7_build("3.10.0-1160.el7.x86_64"), Some(1160));
        assert_eq!(el7_build("6.18.44-fc-v669"), None);
        let mi = "MemTotal: 100 kB\nSwapTotal:       2048 kB\nSwapFree:        1024 kB\n";
        assert_eq!(swap_used(mi), Some(1024 * 1024));
        assert_eq!(swap_used("MemTotal: 100 kB\n"), None);
    }

    #[test]
    fn mounts_are_split_by_version() {
        let mi = "\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
25 31 0:22 / /sys rw - sysfs sysfs rw
";
        let m = cgroup_mounts(mi);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].version, CgroupVersion::V1);
        assert_eq!(m[1].path, "/sys/fs/cgroup/unified");
    }
}
