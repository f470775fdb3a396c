//! Types shared bit-for-bit by the eBPF programs and userspace: the ring-buffer
//! event record, the kernel layout handed to the programs, and the numbering of
//! event kinds and hooks. Everything is `#[repr(C)]` with explicit padding and
//! compile-time size assertions, because both sides read the same bytes.
#![no_std]

/// Every shared record's size, alignment and field offsets, asserted at compile time.
pub mod abi;

/// Version of the [`Event`] record; bumped whenever its layout or meaning
/// changes. 2: one record may stand for several lifecycle points
/// ([`flags::ALSO_ONLINE`], [`flags::ALSO_KMEM_ACTIVATE`]).
pub const EVENT_ABI_VERSION: u32 = 2;
/// The oldest record version this code still reads (version 1 records are
/// version 2 records without the `ALSO_*` flags).
pub const EVENT_ABI_OLDEST: u32 = 1;

/// Maximum number of bytes of a cgroup leaf name carried in an event.
/// Long enough for `cri-containerd-<64 hex>.scope` (85 bytes).
pub const NAME_LEN: usize = 128;
/// `TASK_COMM_LEN` in the kernel.
pub const COMM_LEN: usize = 16;
/// `MEM_CGROUP_ID_MAX` in the kernel (`include/linux/memcontrol.h`): memcg IDs are 16 bit.
pub const MEMCG_ID_MAX: u32 = 65535;
/// Marks a [`Layout`] member the running kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// The context slot where the fexit programs read the traced function's
/// return value: after one parameter (`btf_ctx_access()` allows slot `nr_args`).
/// A fixed slot, as the verifier refuses a variable context access; userspace
/// refuses a function whose BTF prototype has another parameter count.
pub const FEXIT_RET_SLOT: usize = 1;

/// Numbered event kinds. The numbers are ABI: never reuse or renumber one.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// The memcg was allocated and got its ID (`mem_cgroup_css_alloc`).
    Alloc = 1,
    /// The memcg went online (`mem_cgroup_css_online`).
    Online = 2,
    /// The cgroup was removed / the memcg went offline (`mem_cgroup_css_offline`).
    Offline = 3,
    /// The last css reference was dropped (`mem_cgroup_css_released`).
    Released = 4,
    /// The memcg was freed (`mem_cgroup_css_free`).
    Free = 5,
    /// The memcg's 16-bit ID was given back to the kernel (`mem_cgroup_id_put_many` to zero).
    IdRelease = 6,
    /// Kernel-memory accounting was switched on for the memcg.
    KmemActivate = 7,
    /// A process entered the memcg (attach or fork); pid/tgid/comm describe that process.
    Resident = 8,
    /// A census record: one memcg found by walking the css tree (not a lifecycle event).
    Census = 9,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        EventKind::Alloc,
        EventKind::Online,
        EventKind::Offline,
        EventKind::Released,
        EventKind::Free,
        EventKind::IdRelease,
        EventKind::KmemActivate,
        EventKind::Resident,
        EventKind::Census,
    ];

    pub const fn from_u32(v: u32) -> Option<EventKind> {
        Some(match v {
            1 => EventKind::Alloc,
            2 => EventKind::Online,
            3 => EventKind::Offline,
            4 => EventKind::Released,
            5 => EventKind::Free,
            6 => EventKind::IdRelease,
            7 => EventKind::KmemActivate,
            8 => EventKind::Resident,
            9 => EventKind::Census,
            _ => return None,
        })
    }

    /// The name used in JSON output and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            EventKind::Alloc => "alloc",
            EventKind::Online => "online",
            EventKind::Offline => "offline",
            EventKind::Released => "released",
            EventKind::Free => "free",
            EventKind::IdRelease => "id_release",
            EventKind::KmemActivate => "kmem_activate",
            EventKind::Resident => "resident",
            EventKind::Census => "census",
        }
    }
}

/// Bits of [`Event::flags`].
pub mod flags {
    /// The lifecycle point was inferred from a neighbouring hook, not seen directly.
    pub const INFERRED: u32 = 1 << 0;
    /// The memcg fields (`memcg_addr`, `memcg_id`) are unknown at this hook
    /// (e.g. `cgroup_release`: `offline_css()` already cleared `cgroup->subsys[]`).
    pub const NO_MEMCG: u32 = 1 << 1;
    /// `mem_pages` holds the memcg's `memory` page counter.
    pub const MEM_COUNTER: u32 = 1 << 2;
    /// `kmem_pages` holds the memcg's `kmem` page counter (cgroup v1 kernels that have it).
    pub const KMEM_COUNTER: u32 = 1 << 3;
    /// `swap_pages` holds the memcg's `swap` (v2) or `memsw` (v1) page counter.
    pub const SWAP_COUNTER: u32 = 1 << 4;
    /// Kernel-memory accounting is active on this memcg (read from its own state).
    pub const KMEM_ACTIVE: u32 = 1 << 5;
    /// [`super::EventKind::Resident`]: the process entered by `fork()`.
    pub const FORK: u32 = 1 << 6;
    /// [`super::EventKind::Resident`]: the process was attached (`cgroup.procs` write).
    pub const ATTACH: u32 = 1 << 7;
    /// At least one kernel read failed; the affected fields are zero.
    pub const READ_FAULT: u32 = 1 << 8;
    /// The cgroup fields are unknown (e.g. at `css_alloc`, before `css->cgroup` is set).
    pub const NO_CGROUP: u32 = 1 << 9;
    /// The memcg is the root of its hierarchy.
    pub const ROOT: u32 = 1 << 10;
    /// [`super::EventKind::Census`]: the memcg is offline (dying), not online.
    pub const DYING: u32 = 1 << 11;
    /// [`super::EventKind::Resident`]: the process (already inside) called `exec()`;
    /// `comm` is its new name.
    pub const EXEC: u32 = 1 << 12;
    /// [`super::EventKind::Resident`]: sent after the per-memcg resident limit was
    /// reached (at most one per second per memcg), so the last resident stays known.
    pub const OVER_LIMIT: u32 = 1 << 13;
    /// The record also stands for an [`super::EventKind::Online`] of the same memcg
    /// at the same time (`cgroup_mkdir` sees alloc and online at once).
    pub const ALSO_ONLINE: u32 = 1 << 14;
    /// The record also stands for an inferred [`super::EventKind::KmemActivate`]
    /// of the same memcg; `aux` is its `kmemcg_id`.
    pub const ALSO_KMEM_ACTIVATE: u32 = 1 << 15;
    /// [`super::EventKind::Census`]: the memcg's own page-state counters were
    /// read; see [`super::Event::census_stat`] (`comm`/`pcomm` carry them).
    pub const CENSUS_STATS: u32 = 1 << 16;
}

/// Entries of the `EMIT` array map: indexed by hook number, each holds the bits
/// `1 << kind` of the event kinds that hook may emit. One program can serve
/// several lifecycle points (`cgroup_mkdir` gives alloc and online); userspace
/// enables only the points the probe table chose it for, so two hooks never
/// report the same point.
pub const MAX_HOOKS: usize = 64;

/// One ring-buffer record. Produced by every hook; fields a hook cannot know are
/// zero and flagged in `flags`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// [`EventKind`] as a number.
    pub kind: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC), converted to wall clock in userspace.
    pub ts_ns: u64,
    /// Kernel address of the `struct mem_cgroup`: an opaque key, never dereferenced.
    pub memcg_addr: u64,
    /// The cgroup's kernfs node id (= inode number of its cgroupfs directory).
    pub cgroup_id: u64,
    /// The parent cgroup's kernfs node id (0 for a hierarchy root).
    pub parent_cgroup_id: u64,
    /// The memcg's private 16-bit ID (`memcg->id.id`).
    pub memcg_id: u32,
    /// `cgroup_root->hierarchy_id` (0 is the cgroup v2 default hierarchy).
    pub hierarchy_id: u32,
    /// `cgroup->level` (0 = root).
    pub level: u32,
    /// Acting task (for `Resident`: the task that entered).
    pub pid: u32,
    pub tgid: u32,
    /// tgid of the acting task's `real_parent`.
    pub ppid: u32,
    /// Probe-table hook that produced the event ([`hook`] numbers).
    pub hook: u16,
    /// Bytes of `name` that are valid (without the NUL).
    pub name_len: u16,
    pub _pad0: u32,
    /// Page counters in pages (see [`flags::MEM_COUNTER`] etc.).
    pub mem_pages: u64,
    pub kmem_pages: u64,
    pub swap_pages: u64,
    /// Kind-specific: for `IdRelease`, the reference count dropped; for
    /// `KmemActivate`, the `kmemcg_id`; for `Resident`, the acting task's tgid.
    pub aux: u64,
    pub comm: [u8; COMM_LEN],
    pub pcomm: [u8; COMM_LEN],
    pub name: [u8; NAME_LEN],
}

/// Size of [`Event`] in bytes; part of the ABI.
pub const EVENT_SIZE: usize = 264;

impl Event {
    pub const ZERO: Event = Event {
        kind: 0,
        flags: 0,
        ts_ns: 0,
        memcg_addr: 0,
        cgroup_id: 0,
        parent_cgroup_id: 0,
        memcg_id: 0,
        hierarchy_id: 0,
        level: 0,
        pid: 0,
        tgid: 0,
        ppid: 0,
        hook: 0,
        name_len: 0,
        _pad0: 0,
        mem_pages: 0,
        kmem_pages: 0,
        swap_pages: 0,
        aux: 0,
        comm: [0; COMM_LEN],
        pcomm: [0; COMM_LEN],
        name: [0; NAME_LEN],
    };

    /// [`EventKind::Census`] with [`flags::CENSUS_STATS`]: page-state counter
    /// `i` ([`census_stat`]) in pages. Census records have no task, so `comm`
    /// and `pcomm` carry these eight `u32` slots instead.
    #[inline(always)]
    pub fn census_stat(&self, i: usize) -> u32 {
        let (buf, at) = if i < 4 {
            (&self.comm, i * 4)
        } else {
            (&self.pcomm, (i - 4) * 4)
        };
        if at + 4 > COMM_LEN {
            return 0;
        }
        u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
    }

    /// Sets census counter `i`; see [`Event::census_stat`].
    #[inline(always)]
    pub fn set_census_stat(&mut self, i: usize, pages: u32) {
        let (buf, at) = if i < 4 {
            (&mut self.comm, i * 4)
        } else {
            (&mut self.pcomm, (i - 4) * 4)
        };
        if at + 4 <= COMM_LEN {
            buf[at..at + 4].copy_from_slice(&pages.to_ne_bytes());
        }
    }

    /// The record as bytes, exactly as the ring buffer carries it.
    pub fn as_bytes(&self) -> &[u8; EVENT_SIZE] {
        // SAFETY: Event is repr(C), has no implicit padding (asserted in
        // `abi`: its fields tile EVENT_SIZE) and every bit pattern is valid.
        unsafe { &*(self as *const Event as *const [u8; EVENT_SIZE]) }
    }
}

/// Hook numbers carried in [`Event::hook`]. Each names one eBPF program; the
/// probe table in userspace maps them to lifecycle points and families.
pub mod hook {
    pub const TP_CGROUP_MKDIR: u16 = 1;
    pub const TP_CGROUP_RMDIR: u16 = 2;
    pub const TP_CGROUP_RELEASE: u16 = 3;
    pub const TP_CSS_RELEASE_WORK: u16 = 4;
    pub const TP_CSS_FREE_WORK: u16 = 5;
    pub const TP_CGROUP_ATTACH: u16 = 6;
    pub const TP_PROCESS_FORK: u16 = 7;
    pub const RAW_CGROUP_MKDIR: u16 = 8;
    pub const RAW_CGROUP_RMDIR: u16 = 9;
    pub const RAW_CGROUP_RELEASE: u16 = 10;
    pub const TP_PROCESS_EXEC: u16 = 11;
    /// `workqueue_execute_start` as a raw tracepoint (4.17+, no kernel BTF).
    pub const RAW_CSS_RELEASE_WORK: u16 = 12;
    pub const RAW_CSS_FREE_WORK: u16 = 13;
    /// `workqueue_execute_start` as a classic tracepoint (tracefs; the
    /// record carries the work function).
    pub const TPC_CSS_RELEASE_WORK: u16 = 14;
    pub const TPC_CSS_FREE_WORK: u16 = 15;

    pub const KPROBE_CSS_ALLOC: u16 = 20;
    pub const KPROBE_CSS_ONLINE: u16 = 21;
    pub const KPROBE_CSS_OFFLINE: u16 = 22;
    pub const KPROBE_CSS_RELEASED: u16 = 23;
    pub const KPROBE_CSS_FREE: u16 = 24;
    pub const KPROBE_ID_PUT: u16 = 25;
    pub const KPROBE_KMEM_ONLINE: u16 = 26;
    pub const KPROBE_KMEM_OFFLINE: u16 = 27;

    pub const FENTRY_CSS_ALLOC: u16 = 40;
    pub const FENTRY_CSS_ONLINE: u16 = 41;
    pub const FENTRY_CSS_OFFLINE: u16 = 42;
    pub const FENTRY_CSS_RELEASED: u16 = 43;
    pub const FENTRY_CSS_FREE: u16 = 44;
    pub const FENTRY_ID_PUT: u16 = 45;
    pub const FENTRY_KMEM_ONLINE: u16 = 46;
}

/// Byte offsets of the kernel struct members the programs read, resolved from BTF
/// in userspace and handed to the programs as a read-only global. [`ABSENT`] marks a
/// member this kernel does not have; the programs then skip what depends on it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Value of `memory_cgrp_id` in `enum cgroup_subsys_id`.
    pub memory_subsys_id: u32,
    /// Bit `LAYOUT_KN_ID_U32`: `kernfs_node.id` is a 32-bit ino (pre-5.5 union).
    pub layout_flags: u32,

    pub cgroup_kn: u32,
    pub cgroup_level: u32,
    pub cgroup_root: u32,
    /// Start of `cgroup.subsys[]` (array of `struct cgroup_subsys_state *`).
    pub cgroup_subsys: u32,

    pub css_cgroup: u32,
    pub css_parent: u32,
    pub css_flags: u32,
    pub css_ss: u32,
    pub css_children: u32,
    pub css_sibling: u32,
    pub cgroup_subsys_id_field: u32,

    pub root_hierarchy_id: u32,
    pub root_subsys_mask: u32,

    pub kn_id: u32,
    pub kn_name: u32,
    pub kn_parent: u32,

    /// `mem_cgroup.css` (0 on every kernel so far, kept for safety).
    pub memcg_css: u32,
    /// `mem_cgroup.id.id` (4.6+); [`ABSENT`] before, where `css.id` is the ID.
    pub memcg_id: u32,
    /// `mem_cgroup.id.ref`.
    pub memcg_id_ref: u32,
    /// `mem_cgroup.memory.usage` (`page_counter` 4.6+, `res_counter` before).
    pub memcg_memory_usage: u32,
    /// `mem_cgroup.swap.usage` (v2) or `memsw.usage` (v1): one union since 5.10,
    /// separate fields before, where userspace picks by the memory hierarchy.
    pub memcg_swap_usage: u32,
    /// `mem_cgroup.kmem.usage` where the kernel has a kmem counter.
    pub memcg_kmem_usage: u32,
    /// `mem_cgroup.kmemcg_id` (>= 0 once kmem accounting is online).
    pub memcg_kmemcg_id: u32,
    /// `mem_cgroup.objcg` (5.9+, non-NULL once kmem accounting is online).
    pub memcg_objcg: u32,

    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_comm: u32,
    pub task_cgroups: u32,
    pub css_set_subsys: u32,

    /// `work_struct.func`.
    pub work_func: u32,
    /// `cgroup_subsys_state.destroy_work` (the css kill/release work item).
    pub css_destroy_work: u32,
    /// `cgroup_subsys_state.destroy_rwork` (the css free work item).
    pub css_destroy_rwork: u32,
    /// `cgroup_subsys_state.id` (the memcg ID before 4.6).
    pub css_id: u32,

    /// Addresses of `css_release_work_fn` and `css_free_rwork_fn` (from kallsyms),
    /// 0 when unknown. Matched against `work->func` in `workqueue_execute_start`.
    pub fn_css_release_work: u64,
    pub fn_css_free_work: u64,

    /// Most residents reported per memcg by the in-kernel limiter.
    pub max_residents: u32,
    pub _pad1: u32,

    /// `mem_cgroup.vmstats`: a pointer to `struct memcg_vmstats` or the
    /// embedded struct (see [`LAYOUT_VMSTATS_PTR`]).
    pub memcg_vmstats: u32,
    /// Byte offsets, inside `struct memcg_vmstats`, of the memcg's own page-state
    /// counters the census reads ([`census_stat`] order: file, shmem, anon,
    /// kmem, swap, sock); [`ABSENT`] where this kernel has no such counter.
    pub stat_off: [u32; census_stat::N],
    pub _pad2: u32,
}

/// [`Layout::layout_flags`]: `kernfs_node.id` is the pre-5.5 `{ino, generation}` union.
pub const LAYOUT_KN_ID_U32: u32 = 1 << 0;
/// [`Layout::layout_flags`]: `mem_cgroup.vmstats` is a pointer (recent
/// kernels, as BTF says), not the embedded struct.
pub const LAYOUT_VMSTATS_PTR: u32 = 1 << 1;
/// [`Layout::layout_flags`]: [`Layout::stat_off`] point into the hierarchical
/// `state[]` (no `state_local[]` on this kernel): exact for leaf memcgs only.
pub const LAYOUT_STATS_HIER: u32 = 1 << 2;

/// The memcg page-state counters a census record carries, as indexes of
/// [`Layout::stat_off`] and of [`Event::census_stat`]. Values are pages.
pub mod census_stat {
    /// `NR_FILE_PAGES`: page cache, tmpfs/shmem included.
    pub const FILE: usize = 0;
    /// `NR_SHMEM`: tmpfs/shmem pages.
    pub const SHMEM: usize = 1;
    /// `NR_ANON_MAPPED`: anonymous pages.
    pub const ANON: usize = 2;
    /// `MEMCG_KMEM`: kernel memory charged (slab, stacks, page tables...).
    pub const KMEM: usize = 3;
    /// `MEMCG_SWAP`: swap entries charged (cgroup v2 accounting).
    pub const SWAP: usize = 4;
    /// `MEMCG_SOCK`: socket buffers charged.
    pub const SOCK: usize = 5;
    pub const N: usize = 6;
    /// Slot holding the bit mask (`1 << i`) of the counters that were read.
    pub const VALID: usize = 6;
}

pub const LAYOUT_SIZE: usize = 200;

impl Layout {
    pub const EMPTY: Layout = Layout {
        memory_subsys_id: ABSENT,
        layout_flags: 0,
        cgroup_kn: ABSENT,
        cgroup_level: ABSENT,
        cgroup_root: ABSENT,
        cgroup_subsys: ABSENT,
        css_cgroup: ABSENT,
        css_parent: ABSENT,
        css_flags: ABSENT,
        css_ss: ABSENT,
        css_children: ABSENT,
        css_sibling: ABSENT,
        cgroup_subsys_id_field: ABSENT,
        root_hierarchy_id: ABSENT,
        root_subsys_mask: ABSENT,
        kn_id: ABSENT,
        kn_name: ABSENT,
        kn_parent: ABSENT,
        memcg_css: ABSENT,
        memcg_id: ABSENT,
        memcg_id_ref: ABSENT,
        memcg_memory_usage: ABSENT,
        memcg_swap_usage: ABSENT,
        memcg_kmem_usage: ABSENT,
        memcg_kmemcg_id: ABSENT,
        memcg_objcg: ABSENT,
        task_real_parent: ABSENT,
        task_tgid: ABSENT,
        task_pid: ABSENT,
        task_comm: ABSENT,
        task_cgroups: ABSENT,
        css_set_subsys: ABSENT,
        work_func: ABSENT,
        css_destroy_work: ABSENT,
        css_destroy_rwork: ABSENT,
        css_id: ABSENT,
        fn_css_release_work: 0,
        fn_css_free_work: 0,
        max_residents: 0,
        _pad1: 0,
        memcg_vmstats: ABSENT,
        stat_off: [ABSENT; census_stat::N],
        _pad2: 0,
    };
}

/// What the census iterator (`iter/cgroup`) writes to its seq file once it has
/// walked the memcg tree; the records themselves go to the `CENSUS` ring buffer.
/// Counts are complete even when records were dropped (ring buffer full).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CensusSummary {
    /// [`CENSUS_MAGIC`]: tells a summary from anything else the seq file may hold.
    pub magic: u32,
    /// [`census_flags`] bits.
    pub flags: u32,
    /// memcgs visited (online + dying).
    pub visited: u64,
    pub online: u64,
    pub dying: u64,
    /// Records written to `CENSUS`.
    pub emitted: u64,
    /// Records lost because `CENSUS` was full.
    pub dropped: u64,
    /// Walk steps taken (at most two per memcg).
    pub steps: u64,
    /// `bpf_ktime_get_ns()` when the walk started and ended.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// `"KTCS"`: [`CensusSummary::magic`].
pub const CENSUS_MAGIC: u32 = 0x5343_544b;
pub const CENSUS_SUMMARY_SIZE: usize = 72;

/// Bits of [`CensusSummary::flags`].
pub mod census_flags {
    /// The walk came back to the root: every memcg was visited.
    pub const COMPLETE: u32 = 1 << 0;
    /// The iterator's cgroup has no memory css (not a memory hierarchy).
    pub const NO_MEMORY: u32 = 1 << 1;
    /// A kernel read failed during the walk; it stopped there.
    pub const FAULT: u32 = 1 << 2;
    /// The walk hit its step limit before it was complete.
    pub const TRUNCATED: u32 = 1 << 3;
    /// `Layout` lacks a member the walk needs (css children/sibling/flags).
    pub const NO_LAYOUT: u32 = 1 << 4;
}

/// Index into the `STATS` per-CPU array map.
pub mod stat {
    /// Failed ring-buffer reservations or perf-buffer outputs: events lost.
    pub const DROPS: u32 = 0;
    /// Kernel reads that faulted.
    pub const READ_FAULTS: u32 = 1;
    /// Residents not reported because the per-memcg limit was reached.
    pub const RESIDENTS_CAPPED: u32 = 2;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are repr(C), Copy, without implicit padding, valid for any bits.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Layout {}
    unsafe impl aya::Pod for super::CensusSummary {}
}
