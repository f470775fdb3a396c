//! Why a zombie is still there: classifies a dying memcg from its page
//! counters (at offline and now) into page cache, tmpfs/shmem, anonymous
//! memory, kernel memory, swap or socket buffers. Pure.
//!
//! Exact where the kernel allows it: the census program reads the dying
//! memcg's own page-state counters (`memcg->vmstats->state_local[]`; on
//! kernels without it, the hierarchical `state[]` of leaves), slots resolved from BTF
//! (`probes::btf::stat_index`): [`OwnStats`]. The cause is then the largest of
//! its own page cache, shmem, anon, swap, sockets (and kernel memory where it
//! still pins, before 5.9).
//!
//! Approximate elsewhere (no census program: kernels before 6.1; no
//! `memcg_vmstats` in BTF; a memcg with children on kernels without
//! `state_local[]`): the page counters (`memory`, v1 `kmem`,
//! `memsw`/`swap`) tell kernel memory and swap apart from user pages, but not
//! page cache from tmpfs. Live ancestors' hierarchical `memory.stat` include
//! their dying descendants, so what an ancestor holds beyond its live children
//! is what its dying descendants hold together: that split labels their user
//! pages, all alike (so a page-cache zombie beside tmpfs-pinned siblings gets
//! theirs). [`Pin::exact`] says which way a cause was found.

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
    /// Socket buffers: each socket holds its memcg (`mem_cgroup_sk_alloc()`).
    Sockets,
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
            PinCause::Sockets => "sockets",
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
            PinCause::Sockets => "close the sockets the cgroup's processes handed out (fd passing, long-lived connections of other processes)",
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
    /// The cause comes from the memcg's own counters ([`OwnStats`]), not
    /// from an ancestor's split.
    pub exact: bool,
}

impl Pin {
    /// Nothing known.
    pub const UNKNOWN: Pin = Pin {
        cause: PinCause::Unknown,
        user_pages: 0,
        kmem_pages: None,
        swap_pages: 0,
        change_pages: None,
        exact: false,
    };
}

/// A memcg's own page-state counters, in pages, as the census program read
/// them (`None`: no such counter on this kernel). Flushed by rstat, so at most
/// a per-CPU batch (`MEMCG_CHARGE_BATCH` pages per CPU) behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OwnStats {
    /// Page cache, shmem included (`NR_FILE_PAGES`).
    pub file: Option<u64>,
    pub shmem: Option<u64>,
    pub anon: Option<u64>,
    pub kmem: Option<u64>,
    pub swap: Option<u64>,
    pub sock: Option<u64>,
}

impl OwnStats {
    /// From a census record, when the program read the counters.
    pub fn from_event(ev: &kmem_trace_common::Event) -> Option<OwnStats> {
        use kmem_trace_common::census_stat as s;
        if ev.flags & kmem_trace_common::flags::CENSUS_STATS == 0 {
            return None;
        }
        let valid = ev.census_stat(s::VALID);
        let g = |i: usize| (valid & (1 << i) != 0).then(|| ev.census_stat(i) as u64);
        Some(OwnStats {
            file: g(s::FILE),
            shmem: g(s::SHMEM),
            anon: g(s::ANON),
            kmem: g(s::KMEM),
            swap: g(s::SWAP),
            sock: g(s::SOCK),
        })
    }

    /// The cause these counters name, `None` when they cannot tell: the
    /// user-page counters are missing, or they all read zero while the page
    /// counters show a charge (`charged`). They are flushed lazily (rstat,
    /// about every 2 s, `flush_memcg_stats_dwork`), so right after rmdir they
    /// can still be zero: zero against a charge is not an answer.
    /// `kmem_pins`: see [`kmem_pins`].
    pub fn cause(&self, kmem_pins: bool, charged: bool) -> Option<PinCause> {
        let file = self.file?;
        let shmem = self.shmem?;
        let anon = self.anon?;
        let kmem = if kmem_pins { self.kmem.unwrap_or(0) } else { 0 };
        // Largest first; ties go to the earlier (the more common cause).
        let candidates = [
            (file.saturating_sub(shmem), PinCause::PageCache),
            (shmem.min(file), PinCause::Tmpfs),
            (anon, PinCause::Anon),
            (self.swap.unwrap_or(0), PinCause::Swap),
            (kmem, PinCause::KernelMemory),
            (self.sock.unwrap_or(0), PinCause::Sockets),
        ];
        let (pages, cause) = candidates
            .iter()
            .copied()
            .fold(
                (0, PinCause::NoCharge),
                |best, c| if c.0 > best.0 { c } else { best },
            );
        match pages {
            0 if charged => None,
            0 => Some(PinCause::NoCharge),
            _ => Some(cause),
        }
    }
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

/// Classifies one dying memcg. `own` (its own counters) wins when it can tell;
/// else `now` wins over `at_offline` when both are known, and `residual` is
/// the split of its nearest live ancestor, if read; `kmem_pins` says whether
/// kernel memory can pin a memcg on this kernel.
pub fn classify(
    at_offline: Option<&Counters>,
    now: Option<&Counters>,
    own: Option<&OwnStats>,
    residual: Option<&Residual>,
    kmem_pins: bool,
) -> Pin {
    let Some(c) = now.or(at_offline).filter(|c| c.mem_pages.is_some()) else {
        return match own.and_then(|o| o.cause(kmem_pins, false)) {
            Some(cause) => Pin {
                cause,
                exact: true,
                ..Pin::UNKNOWN
            },
            None => Pin::UNKNOWN,
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
    let exact = own.and_then(|o| o.cause(kmem_pins, user > 0 || k > 0 || swap > 0));
    let cause = if let Some(cause) = exact {
        cause
    } else if user == 0 && k == 0 && swap == 0 {
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
        exact: exact.is_some(),
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
        assert_eq!(
            classify(None, None, None, None, true).cause,
            PinCause::Unknown
        );
        assert_eq!(
            classify(None, Some(&c(0, Some(0), Some(0))), None, None, true).cause,
            PinCause::NoCharge
        );
        let k = classify(None, Some(&c(40, Some(38), Some(0))), None, None, true);
        assert_eq!((k.cause, k.user_pages), (PinCause::KernelMemory, 2));
        // 5.9+: the same counters are stale reparented kmem plus 2 pages of cache.
        let k = classify(None, Some(&c(40, Some(38), Some(0))), None, None, false);
        assert_eq!(k.cause, PinCause::PageCacheOrTmpfs);
        let stale = classify(None, Some(&c(38, Some(38), None)), None, None, false);
        assert_eq!(stale.cause, PinCause::NoCharge);
        assert!(kmem_pins(Some(KernelVersion(3, 10, 0))));
        assert!(!kmem_pins(Some(KernelVersion(6, 18, 44))));
        assert_eq!(
            classify(None, Some(&c(10, Some(1), Some(50))), None, None, true).cause,
            PinCause::Swap
        );
        let u = classify(None, Some(&c(4096, Some(3), Some(0))), None, None, true);
        assert_eq!(u.cause, PinCause::PageCacheOrTmpfs);
        let tmpfs = Residual {
            shmem: 16 << 20,
            file: 0,
            anon: 0,
        };
        assert_eq!(
            classify(
                None,
                Some(&c(4096, Some(3), None)),
                None,
                Some(&tmpfs),
                true
            )
            .cause,
            PinCause::Tmpfs
        );
        // Offline counters are used when no census read them now, and the
        // change shows reclaim at work.
        let off = c(5000, None, None);
        let now = c(1000, None, None);
        assert_eq!(
            classify(Some(&off), None, None, None, true).user_pages,
            5000
        );
        assert_eq!(
            classify(Some(&off), Some(&now), None, None, true).change_pages,
            Some(-4000)
        );
    }

    #[test]
    fn own_counters_name_the_cause_exactly() {
        // The case: a zombie that ran `true` holds 487 pages of the
        // busybox binary's page cache while its siblings dominate the
        // ancestor's split with tmpfs: its own counters say page cache.
        let own = OwnStats {
            file: Some(487),
            shmem: Some(0),
            anon: Some(0),
            kmem: Some(30),
            swap: Some(0),
            sock: Some(0),
        };
        let tmpfs = Residual {
            shmem: 32 << 20,
            file: 2 << 20,
            anon: 0,
        };
        let p = classify(
            None,
            Some(&c(517, None, None)),
            Some(&own),
            Some(&tmpfs),
            false,
        );
        assert_eq!((p.cause, p.exact), (PinCause::PageCache, true));
        let p = classify(None, Some(&c(517, None, None)), None, Some(&tmpfs), false);
        assert_eq!((p.cause, p.exact), (PinCause::Tmpfs, false));
        let shm = OwnStats {
            file: Some(4096),
            shmem: Some(4000),
            ..own
        };
        assert_eq!(shm.cause(false, true), Some(PinCause::Tmpfs));
        let swap = OwnStats {
            swap: Some(9000),
            ..shm
        };
        assert_eq!(swap.cause(false, true), Some(PinCause::Swap));
        let sock = OwnStats {
            file: Some(0),
            shmem: Some(0),
            sock: Some(3),
            ..own
        };
        assert_eq!(sock.cause(false, true), Some(PinCause::Sockets));
        // Kernel memory counts only where it still pins (before 5.9).
        assert_eq!(sock.cause(true, true), Some(PinCause::KernelMemory));
        let none = OwnStats {
            file: Some(0),
            kmem: Some(0),
            sock: Some(0),
            ..sock
        };
        assert_eq!(none.cause(true, false), Some(PinCause::NoCharge));
        // All zero while the page counters show a charge: not yet flushed.
        assert_eq!(none.cause(true, true), None);
        // Without the user-page counters the own stats cannot tell.
        let partial = OwnStats { file: None, ..own };
        assert_eq!(partial.cause(true, false), None);
        // A census record carries them in comm/pcomm.
        let mut ev = kmem_trace_common::Event::ZERO;
        ev.flags = kmem_trace_common::flags::CENSUS_STATS;
        ev.set_census_stat(kmem_trace_common::census_stat::FILE, 487);
        ev.set_census_stat(kmem_trace_common::census_stat::SOCK, 2);
        ev.set_census_stat(kmem_trace_common::census_stat::VALID, 0b1_1111);
        let got = OwnStats::from_event(&ev).unwrap();
        assert_eq!((got.file, got.shmem, got.sock), (Some(487), Some(0), None));
        ev.flags = 0;
        assert_eq!(OwnStats::from_event(&ev), None);
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

    #[test]
    fn own_counters_still_zero_against_a_charge_are_not_exact() {
        let own = OwnStats {
            file: Some(0),
            shmem: Some(0),
            anon: Some(0),
            kmem: Some(0),
            swap: Some(0),
            sock: Some(0),
        };
        let now = Counters {
            mem_pages: Some(259),
            kmem_pages: Some(3),
            swap_pages: Some(0),
        };
        let p = classify(None, Some(&now), Some(&own), None, true);
        assert!(!p.exact, "{p:?}");
        assert_ne!(p.cause, PinCause::NoCharge, "{p:?}");
    }
}
