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
    /// No counters were read, or they do not show what holds the memcg: a
    /// charge that is none of the types `memory.stat` counts (an idle
    /// socket's reference with stale reparented kernel memory, or stats not
    /// yet flushed). Never guessed as page cache.
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
            PinCause::Unknown => "the counters do not show it: run the census with BPF (`kmem-trace census`) for the memcg's own counters; references without pages (idle sockets passed to other processes, BPF maps) show as unknown",
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
    /// Swapped-out pages: the swap page counter where the census read it
    /// ([`OwnStats::with_swap_counter`]), else `MEMCG_SWAP`.
    pub swap: Option<u64>,
    pub sock: Option<u64>,
}

impl OwnStats {
    /// Takes the memcg's swap from its page counter (`memcg->swap` on v2,
    /// `memsw` minus `memory` on v1; `Counters::swap_pages`) when read: it is
    /// charged at swap-out (`__mem_cgroup_try_charge_swap()`) and never lags,
    /// while `MEMCG_SWAP` is an rstat counter seen only after a flush (the
    /// 6.12 VM read 0 of it for a memcg with 256 pages swapped out, its
    /// `memory.swap.current`).
    pub fn with_swap_counter(mut self, swap_pages: Option<u64>) -> OwnStats {
        if swap_pages.is_some() {
            self.swap = swap_pages;
        }
        self
    }

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

    /// Whether these counters are behind the exact `memory` page counter
    /// (`mem_pages`): their user pages and socket buffers exceed it, so pages
    /// were uncharged since the last rstat flush. The 6.12 VM: a writeback
    /// pin's memcg with `file` 266 pages after `drop_caches` against `memory`
    /// 31 (its stale kernel memory); a socket's with `anon` 16 against 1.
    pub fn stale(&self, mem_pages: u64) -> bool {
        let user = self.file.unwrap_or(0) + self.anon.unwrap_or(0) + self.sock.unwrap_or(0);
        user > mem_pages
    }

    /// The cause these counters name, `None` when they cannot tell: the
    /// user-page counters are missing, or the rstat ones all read zero while
    /// the page counters show a charge (`charged`: memory, or kernel memory
    /// where it pins). They are flushed lazily (rstat, about every 2 s,
    /// `flush_memcg_stats_dwork`), so right after rmdir they can still be
    /// zero: zero against a charge is not an answer; the page counters then
    /// decide ([`classify`]; swap from the page counter,
    /// [`OwnStats::with_swap_counter`], does not lag). `kmem_pins`: see
    /// [`kmem_pins`].
    pub fn cause(&self, kmem_pins: bool, charged: bool) -> Option<PinCause> {
        let file = self.file?;
        let shmem = self.shmem?;
        let anon = self.anon?;
        let kmem = if kmem_pins { self.kmem.unwrap_or(0) } else { 0 };
        let sock = self.sock.unwrap_or(0);
        if charged && file == 0 && anon == 0 && kmem == 0 && sock == 0 {
            return None;
        }
        // Largest first; ties go to the earlier (the more common cause).
        let candidates = [
            (file.saturating_sub(shmem), PinCause::PageCache),
            (shmem.min(file), PinCause::Tmpfs),
            (anon, PinCause::Anon),
            (self.swap.unwrap_or(0), PinCause::Swap),
            (kmem, PinCause::KernelMemory),
            (sock, PinCause::Sockets),
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
    /// Socket buffers (v2 `sock`, `MEMCG_SOCK`; 0 on v1, which has no line).
    pub sock: u64,
}

impl Residual {
    /// The cause these shares point at (80 % or more of one type). Nothing
    /// left over is [`PinCause::Unknown`], not page cache: the dying
    /// descendants' charge is none of the types `memory.stat` counts (the 6.12
    /// and 7.3 VMs: an idle socket's memcg, 1 to 17 pages of stale reparented
    /// kernel memory in its `memory` counter, `memcg_reparent_objcgs()`).
    pub fn cause(&self) -> PinCause {
        let total = self.shmem + self.file + self.anon + self.sock;
        if total == 0 {
            return PinCause::Unknown;
        }
        let share = |v: u64| v as f64 / total as f64;
        if share(self.shmem) >= 0.8 {
            PinCause::Tmpfs
        } else if share(self.file) >= 0.8 {
            PinCause::PageCache
        } else if share(self.anon) >= 0.8 {
            PinCause::Anon
        } else if share(self.sock) >= 0.8 {
            PinCause::Sockets
        } else if self.sock * 2 > total {
            // Mostly socket buffers, with some page cache: no single answer.
            PinCause::Unknown
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
    // Own counters above the page counter are stale: pages were uncharged
    // (dropped, reclaimed, freed) since the last rstat flush. Neither they nor
    // an ancestor's `memory.stat` (the same lagging stats) can name the rest.
    let stale = own.is_some_and(|o| o.stale(mem));
    let exact = own
        .filter(|_| !stale)
        .and_then(|o| o.cause(kmem_pins, user > 0 || k > 0 || swap > 0));
    let cause = if let Some(cause) = exact {
        cause
    } else if user == 0 && k == 0 && swap == 0 {
        PinCause::NoCharge
    } else if swap > 0 && swap >= user && swap >= k {
        PinCause::Swap
    } else if k > 0 && k >= user {
        PinCause::KernelMemory
    } else if stale {
        PinCause::Unknown
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
    /// Socket buffers (v2 `sock`; v1 has none: 0).
    pub sock: u64,
    /// This cgroup alone (v1 only; v2 has no local values).
    pub local: Option<(u64, u64, u64)>,
}

impl MemStat {
    /// v1: `total_shmem`, `total_cache` (page cache including shmem),
    /// `total_rss`, and their local values; v2 (always hierarchical): `shmem`,
    /// `file` (including shmem), `anon`, `sock`. 3.10 has no shmem line:
    /// counted as 0.
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
                sock: 0,
                local: Some((g("shmem"), g("cache"), g("rss"))),
            },
            CgroupVersion::V2 => MemStat {
                shmem: g("shmem"),
                cache: g("file"),
                anon: g("anon"),
                sock: g("sock"),
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
        let sock = self.sock.saturating_sub(sum(|m| m.sock));
        Residual {
            shmem: shmem.min(cache),
            file: cache.saturating_sub(shmem),
            anon,
            sock,
        }
    }
}

#[cfg(test)]
#[path = "pin_tests.rs"]
mod tests;
