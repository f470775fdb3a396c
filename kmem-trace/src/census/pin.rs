//! Why a zombie is still there: classifies a dying memcg from its page
//! counters (at offline and now) into page cache, tmpfs/shmem, anonymous
//! memory, kernel memory or swap. Pure.
//!
//! The per-memcg counters (`memory`, v1 `kmem`, `memsw`/`swap`) tell kernel
//! memory and swap apart from user pages, but not page cache from tmpfs: a dying
//! memcg has no `memory.stat` to read. Its live ancestors do, and their
//! hierarchical stats include the dying descendants (charges and rstat counts
//! are hierarchical), so what an ancestor holds beyond its live children is
//! what its dying descendants hold: that split, by type, labels their user pages.

use std::collections::HashMap;

use serde::Serialize;

use crate::{cgroupfs::CgroupVersion, decode::Counters, probes::kernel::KernelVersion};

/// The main thing keeping a dying memcg alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinCause {
    /// Page cache of regular files: `echo 1 > /proc/sys/vm/drop_caches` frees it.
    PageCache,
    /// tmpfs/shmem pages: only deleting the files (or unmounting) frees them.
    Tmpfs,
    /// User pages whose type the ancestors' stats do not tell.
    PageCacheOrTmpfs,
    /// Anonymous memory of processes that left the cgroup (v1 does not move charges).
    Anon,
    /// Kernel memory (slab, stacks) charged to the memcg.
    KernelMemory,
    /// Swapped-out pages (they also keep the memcg ID, `mem_cgroup_id_get_many()`).
    Swap,
    /// No pages charged: references only (sockets, BPF maps, writeback in flight).
    NoCharge,
    /// No counters were read.
    Unknown,
}

impl PinCause {
    pub fn name(self) -> &'static str {
        match self {
            PinCause::PageCache => "page cache",
            PinCause::Tmpfs => "tmpfs/shmem",
            PinCause::PageCacheOrTmpfs => "page cache or tmpfs",
            PinCause::Anon => "anon (moved-out tasks)",
            PinCause::KernelMemory => "kernel memory",
            PinCause::Swap => "swap",
            PinCause::NoCharge => "no charge (references)",
            PinCause::Unknown => "unknown",
        }
    }

    /// What frees memcgs pinned this way.
    pub fn remedy(self) -> &'static str {
        match self {
            PinCause::PageCache => "echo 1 > /proc/sys/vm/drop_caches frees page-cache pins",
            PinCause::Tmpfs => "delete the tmpfs/shmem files the cgroup wrote (e.g. /dev/shm, emptyDir medium: Memory)",
            PinCause::PageCacheOrTmpfs => "try `kmem-trace doctor --try-drop-caches`; what survives it is tmpfs: delete those files",
            PinCause::Anon => "restart the processes that were moved out of the cgroup",
            PinCause::KernelMemory => "before 5.9 slab objects pin the memcg until they are freed: drain the node and reboot; boot with cgroup.memory=nokmem",
            PinCause::Swap => "swapoff/swapon, or let the swapped pages be faulted back",
            PinCause::NoCharge => "usually freed soon; if not, a kernel reference leak (drain and reboot)",
            PinCause::Unknown => "no counters: run the census with BPF (`kmem-trace census`)",
        }
    }
}

/// A dying memcg's pin, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Pin {
    pub cause: PinCause,
    /// Pages charged that are not kernel memory.
    pub user_pages: u64,
    pub kmem_pages: Option<u64>,
    pub swap_pages: u64,
    /// `memory` now minus at offline: negative while the kernel reclaims it.
    pub change_pages: Option<i64>,
}

/// What a live ancestor holds beyond its live children, in bytes: the pages of
/// its dying descendants, by type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Residual {
    pub shmem: u64,
    /// Page cache other than shmem.
    pub file: u64,
    pub anon: u64,
}

impl Residual {
    /// The user-page cause these shares point at (80 % or more of one type).
    pub fn cause(&self) -> PinCause {
        let total = self.shmem + self.file + self.anon;
        if total == 0 {
            return PinCause::PageCacheOrTmpfs;
        }
        let share = |v: u64| v as f64 / total as f64;
        if share(self.shmem) >= 0.8 {
            PinCause::Tmpfs
        } else if share(self.file) >= 0.8 {
            PinCause::PageCache
        } else if share(self.anon) >= 0.8 {
            PinCause::Anon
        } else {
            PinCause::PageCacheOrTmpfs
        }
    }
}

/// Whether kernel memory still pins a dying memcg on a kernel. From 5.9 slab
/// objects (and, later, all `__GFP_ACCOUNT` pages) are charged through an
/// `obj_cgroup` that `memcg_reparent_objcgs()` hands to the parent at offline
/// (commit bf4f059954dc): kernel memory no longer holds the memcg, and its
/// `kmem` counter keeps charges that are uncharged from the parent only, so the
/// dying memcg's `memory` and `kmem` counters both include that stale amount.
pub fn kmem_pins(version: Option<KernelVersion>) -> bool {
    version.is_none_or(|v| v < KernelVersion(5, 9, 0))
}

/// Classifies one dying memcg. `now` wins over `at_offline` when both are
/// known; `residual` is the split of its nearest live ancestor, if read;
/// `kmem_pins` says whether kernel memory can pin a memcg on this kernel.
pub fn classify(
    at_offline: Option<&Counters>,
    now: Option<&Counters>,
    residual: Option<&Residual>,
    kmem_pins: bool,
) -> Pin {
    let Some(c) = now.or(at_offline).filter(|c| c.mem_pages.is_some()) else {
        return Pin {
            cause: PinCause::Unknown,
            user_pages: 0,
            kmem_pages: None,
            swap_pages: 0,
            change_pages: None,
        };
    };
    let mem = c.mem_pages.unwrap_or(0);
    let kmem = c.kmem_pages;
    let swap = c.swap_pages.unwrap_or(0);
    // `memory` includes kernel memory (v1 charges both counters).
    let user = mem.saturating_sub(kmem.unwrap_or(0));
    let change = match (now, at_offline) {
        (Some(n), Some(o)) => match (n.mem_pages, o.mem_pages) {
            (Some(a), Some(b)) => Some(a as i64 - b as i64),
            _ => None,
        },
        _ => None,
    };
    // Stale reparented kmem does not pin (see `kmem_pins`).
    let k = if kmem_pins { kmem.unwrap_or(0) } else { 0 };
    let cause = if user == 0 && k == 0 && swap == 0 {
        PinCause::NoCharge
    } else if swap > 0 && swap >= user && swap >= k {
        PinCause::Swap
    } else if k > 0 && k >= user {
        PinCause::KernelMemory
    } else {
        residual
            .map(Residual::cause)
            .unwrap_or(PinCause::PageCacheOrTmpfs)
    };
    Pin {
        cause,
        user_pages: user,
        kmem_pages: kmem,
        swap_pages: swap,
        change_pages: change,
    }
}

/// The fields of a `memory.stat` that tell pin types, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStat {
    /// Hierarchical (this cgroup and every descendant, dying ones included).
    pub shmem: u64,
    pub cache: u64,
    pub anon: u64,
    /// This cgroup alone (v1 only; v2 has no local values).
    pub local: Option<(u64, u64, u64)>,
}

impl MemStat {
    /// v1: `total_shmem`, `total_cache` (page cache including shmem),
    /// `total_rss`, and their local values; v2 (always hierarchical): `shmem`,
    /// `file` (including shmem), `anon`. 3.10 has no shmem line: counted as 0.
    pub fn parse(text: &str, version: CgroupVersion) -> MemStat {
        let kv: HashMap<&str, u64> = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k, v.trim().parse().ok()?))
            })
            .collect();
        let g = |k: &str| kv.get(k).copied().unwrap_or(0);
        match version {
            CgroupVersion::V1 => MemStat {
                shmem: g("total_shmem"),
                cache: g("total_cache"),
                anon: g("total_rss"),
                local: Some((g("shmem"), g("cache"), g("rss"))),
            },
            CgroupVersion::V2 => MemStat {
                shmem: g("shmem"),
                cache: g("file"),
                anon: g("anon"),
                local: None,
            },
        }
    }

    /// What this cgroup holds beyond its live children and its own pages.
    pub fn residual(&self, live_children: &[MemStat]) -> Residual {
        let (ls, lc, la) = self.local.unwrap_or((0, 0, 0));
        let sum = |f: fn(&MemStat) -> u64| live_children.iter().map(f).sum::<u64>();
        let shmem = self.shmem.saturating_sub(ls + sum(|m| m.shmem));
        let cache = self.cache.saturating_sub(lc + sum(|m| m.cache));
        let anon = self.anon.saturating_sub(la + sum(|m| m.anon));
        Residual {
            shmem: shmem.min(cache),
            file: cache.saturating_sub(shmem),
            anon,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(mem: u64, kmem: Option<u64>, swap: Option<u64>) -> Counters {
        Counters {
            mem_pages: Some(mem),
            kmem_pages: kmem,
            swap_pages: swap,
        }
    }

    #[test]
    fn counters_tell_kmem_swap_and_user_pages() {
        assert_eq!(classify(None, None, None, true).cause, PinCause::Unknown);
        assert_eq!(
            classify(None, Some(&c(0, Some(0), Some(0))), None, true).cause,
            PinCause::NoCharge
        );
        let k = classify(None, Some(&c(40, Some(38), Some(0))), None, true);
        assert_eq!((k.cause, k.user_pages), (PinCause::KernelMemory, 2));
        // 5.9+: the same counters are stale reparented kmem plus 2 pages of cache.
        let k = classify(None, Some(&c(40, Some(38), Some(0))), None, false);
        assert_eq!(k.cause, PinCause::PageCacheOrTmpfs);
        let stale = classify(None, Some(&c(38, Some(38), None)), None, false);
        assert_eq!(stale.cause, PinCause::NoCharge);
        assert!(kmem_pins(Some(KernelVersion(3, 10, 0))));
        assert!(!kmem_pins(Some(KernelVersion(6, 18, 44))));
        assert_eq!(
            classify(None, Some(&c(10, Some(1), Some(50))), None, true).cause,
            PinCause::Swap
        );
        let u = classify(None, Some(&c(4096, Some(3), Some(0))), None, true);
        assert_eq!(u.cause, PinCause::PageCacheOrTmpfs);
        let tmpfs = Residual {
            shmem: 16 << 20,
            file: 0,
            anon: 0,
        };
        assert_eq!(
            classify(None, Some(&c(4096, Some(3), None)), Some(&tmpfs), true).cause,
            PinCause::Tmpfs
        );
        // Offline counters are used when no census read them now, and the
        // change shows reclaim at work.
        let off = c(5000, None, None);
        let now = c(1000, None, None);
        assert_eq!(classify(Some(&off), None, None, true).user_pages, 5000);
        assert_eq!(
            classify(Some(&off), Some(&now), None, true).change_pages,
            Some(-4000)
        );
    }

    #[test]
    fn residuals_split_by_type() {
        let v1 =
            "cache 0\nrss 0\nshmem 0\ntotal_cache 20971520\ntotal_rss 4096\ntotal_shmem 16777216\n";
        let parent = MemStat::parse(v1, CgroupVersion::V1);
        let child = MemStat::parse(
            "cache 0\nrss 0\nshmem 0\ntotal_cache 4194304\ntotal_rss 4096\ntotal_shmem 0\n",
            CgroupVersion::V1,
        );
        let r = parent.residual(&[child]);
        assert_eq!(
            r,
            Residual {
                shmem: 16 << 20,
                file: 0,
                anon: 0
            }
        );
        assert_eq!(r.cause(), PinCause::Tmpfs);
        let v2 = MemStat::parse("anon 0\nfile 8388608\nshmem 0\n", CgroupVersion::V2);
        assert_eq!(v2.residual(&[]).cause(), PinCause::PageCache);
        assert_eq!(Residual::default().cause(), PinCause::PageCacheOrTmpfs);
        let mixed = Residual {
            shmem: 5,
            file: 5,
            anon: 0,
        };
        assert_eq!(mixed.cause(), PinCause::PageCacheOrTmpfs);
    }
}
