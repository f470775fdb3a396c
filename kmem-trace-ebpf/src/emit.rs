//! Filling and submitting events (ring buffer, or perf buffer in the old-kernel
//! object): one place that knows which kernel fields make up an [`Event`],
//! shared by every hook family. Each kernel read is a helper call
//! (`bpf_probe_read_kernel`), the bulk of a program's cost,
//! so what a hook already read travels in [`Subject`] instead of being read
//! again, and one record stands for every lifecycle point a hook sees at once.

use core::ffi::c_void;

#[cfg(not(feature = "perf"))]
use aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes as read_kernel_str_bytes;
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
    generated::bpf_get_current_comm,
};
use kmem_trace_common::{flags, stat, Event, EventKind, ABSENT, COMM_LEN, LAYOUT_KN_ID_U32};

use crate::{
    maps::{EMIT, EVENTS},
    read::{count, lay, memcg_from_css, rd, rd_buf, rd_ptr},
};

/// True when userspace enabled `kind` for `hook` (the `EMIT` map).
#[inline(always)]
pub fn enabled(hook: u16, kind: EventKind) -> bool {
    match EMIT.get(hook as u32) {
        Some(mask) => *mask & (1u32 << (kind as u32)) != 0,
        None => false,
    }
}

/// What a hook knows when it fires, and what it already read.
pub struct Subject {
    /// The program's context (`bpf_perf_event_output` needs it; the ring
    /// buffer does not).
    #[cfg_attr(not(feature = "perf"), allow(dead_code))]
    pub ctx: *mut c_void,
    /// `struct mem_cgroup *` (0 if unknown).
    pub memcg: u64,
    /// `struct cgroup *` (0 if unknown).
    pub cgrp: u64,
    /// `cgrp->root`, when the hook already read it (0: read it when needed).
    pub root: u64,
    /// The memcg ID, when the hook already read it.
    pub memcg_id: Option<u32>,
    /// Whether kmem accounting is active, when the hook already found out.
    pub kmem: Option<bool>,
}

impl Subject {
    #[inline(always)]
    pub fn new(ctx: *mut c_void, memcg: u64, cgrp: u64) -> Subject {
        Subject {
            ctx,
            memcg,
            cgrp,
            root: 0,
            memcg_id: None,
            kmem: None,
        }
    }

    /// From a memcg css pointer; the cgroup comes from `css->cgroup` (NULL at css_alloc).
    #[inline(always)]
    pub fn from_css(ctx: *mut c_void, css: u64) -> Subject {
        Subject::new(ctx, memcg_from_css(css), rd_ptr(css, lay!(css_cgroup)))
    }
}

/// Reserves, fills and submits one event; counts a drop when the ring is full.
#[inline(always)]
pub fn emit(hook: u16, kind: EventKind, extra_flags: u32, subj: &Subject, aux: u64) {
    emit_as(hook, kind, extra_flags, subj, aux, 0)
}

/// As [`emit`], but the task fields describe `task` (a `struct task_struct *`)
/// instead of the current task; 0 means the current task. Resident events use
/// it for the process that entered the memcg.
#[inline(always)]
pub fn emit_as(hook: u16, kind: EventKind, extra_flags: u32, subj: &Subject, aux: u64, task: u64) {
    if enabled(hook, kind) {
        submit(hook, kind, extra_flags, subj, aux, task);
    }
}

/// A memcg that is online now (the `cgroup_mkdir` tracepoint sees it
/// allocated and onlined; an online hook only onlined): alloc (when
/// `with_alloc`), online and, when kmem accounting came up with it,
/// kmem_activate (inferred), as one record. The first point the probe table
/// enabled for this hook is the record's kind, the others ride along as
/// `ALSO_*` flags, and userspace's decoder turns it back into one event per
/// point. Three records cost three times the reads and ring-buffer work of one
/// (docs/PERFORMANCE.md).
#[inline(always)]
pub fn emit_online(hook: u16, subj: &mut Subject, with_alloc: bool) {
    let alloc = with_alloc && enabled(hook, EventKind::Alloc);
    let online = enabled(hook, EventKind::Online);
    let want_kmem = enabled(hook, EventKind::KmemActivate);
    if !(alloc || online || want_kmem) {
        return;
    }
    let (active, kmemcg_id) = kmem_state(subj.memcg);
    subj.kmem = Some(active);
    let kmem = want_kmem && active;
    let (kind, mut fl) = if alloc {
        (EventKind::Alloc, 0)
    } else if online {
        (EventKind::Online, 0)
    } else if kmem {
        (EventKind::KmemActivate, flags::INFERRED)
    } else {
        return;
    };
    if alloc && online {
        fl |= flags::ALSO_ONLINE;
    }
    if kmem && kind != EventKind::KmemActivate {
        fl |= flags::ALSO_KMEM_ACTIVATE;
    }
    let aux = if kmem { kmemcg_id as i64 as u64 } else { 0 };
    submit(hook, kind, fl, subj, aux, 0);
}

/// Reserves, fills and submits one record (the caller checked `enabled`).
#[cfg(not(feature = "perf"))]
#[inline(always)]
fn submit(hook: u16, kind: EventKind, extra_flags: u32, subj: &Subject, aux: u64, task: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::DROPS);
        return;
    };
    let ev = entry.as_mut_ptr();
    zero(ev);
    // SAFETY: `ev` points to reserved ring-buffer memory of Event's size,
    // zeroed above (all-zero bits are a valid Event).
    fill(
        unsafe { &mut *ev },
        hook,
        kind,
        extra_flags,
        subj,
        aux,
        task,
    );
    entry.submit(0);
}

/// Fills this thread's scratch record (`maps::SCRATCH`, started from the
/// all-zero `ZERO_EVENT`) and copies it into this CPU's perf buffer. A full
/// buffer is counted by the kernel and reported to the reader as
/// `PERF_RECORD_LOST` (userspace adds it to the drop counter; before 5.4 the
/// helper does not even return the error); any other failure (no scratch
/// entry, no buffer open for this CPU) is counted here, in the same counter.
#[cfg(feature = "perf")]
#[inline(always)]
fn submit(hook: u16, kind: EventKind, extra_flags: u32, subj: &Subject, aux: u64, task: u64) {
    use aya_ebpf::{
        bindings::{BPF_ANY, BPF_F_CURRENT_CPU},
        helpers::{bpf_get_current_pid_tgid, generated::bpf_perf_event_output},
    };

    use crate::maps::{SCRATCH, ZERO_EVENT};

    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(zeroed) = ZERO_EVENT.get(0) else {
        count(stat::DROPS);
        return;
    };
    if SCRATCH.insert(&tid, zeroed, BPF_ANY as u64).is_err() {
        count(stat::DROPS);
        return;
    }
    let Some(ev) = SCRATCH.get_ptr_mut(&tid) else {
        count(stat::DROPS);
        return;
    };
    // SAFETY: `ev` is this thread's scratch value of Event's size, all zero
    // (inserted from ZERO_EVENT above).
    fill(
        unsafe { &mut *ev },
        hook,
        kind,
        extra_flags,
        subj,
        aux,
        task,
    );
    // SAFETY: `subj.ctx` is the program's context, `ev` Event's size of map memory.
    let ret = unsafe {
        bpf_perf_event_output(
            subj.ctx,
            (&raw const EVENTS).cast_mut().cast(),
            BPF_F_CURRENT_CPU,
            ev.cast(),
            core::mem::size_of::<Event>() as u64,
        )
    };
    let _ = SCRATCH.remove(&tid);
    const ENOSPC: i64 = 28;
    if ret != 0 && ret != -ENOSPC {
        count(stat::DROPS);
    }
}

/// Every field of one record but the ones `zero` left zero.
#[inline(always)]
fn fill(
    ev: &mut Event,
    hook: u16,
    kind: EventKind,
    extra_flags: u32,
    subj: &Subject,
    aux: u64,
    task: u64,
) {
    ev.kind = kind as u32;
    ev.hook = hook;
    ev.flags = extra_flags;
    ev.aux = aux;
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    if task == 0 {
        fill_task(ev);
    } else {
        fill_task_of(ev, task);
    }
    if subj.memcg != 0 {
        // Counters at offline and at free: what the memcg still charged when it
        // went away, and what it held when the kernel finally let it go.
        let counters = kind == EventKind::Offline || kind == EventKind::Free;
        fill_memcg(ev, subj, counters);
    } else {
        ev.flags |= flags::NO_MEMCG;
    }
    if subj.cgrp != 0 {
        fill_cgroup(ev, subj.cgrp, subj.root);
    } else {
        ev.flags |= flags::NO_CGROUP;
    }
}

/// Zeroes a reserved record with 33 eight-byte stores. `write(Event::ZERO)`
/// compiled to a call of a byte-at-a-time `memset` loop: 264 iterations,
/// about a thousand instructions per record (docs/PERFORMANCE.md).
#[inline(always)]
pub fn zero(ev: *mut Event) {
    const _: () = assert!(core::mem::size_of::<Event>() == 33 * 8);
    let p = ev as *mut u64;
    macro_rules! words {
        ($($i:literal)*) => {
            // SAFETY: `p` points to 33 writable, 8-byte aligned words.
            $( unsafe { p.add($i).write_volatile(0) }; )*
        };
    }
    words!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32);
}

/// pid, tgid and comm of the current task and of its real parent.
#[inline(always)]
fn fill_task(ev: &mut Event) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    // Straight into the record: aya's wrapper zeroes a stack copy and copies
    // it byte by byte. On failure the kernel zeroes the buffer.
    // SAFETY: `ev.comm` is COMM_LEN writable bytes.
    unsafe {
        bpf_get_current_comm(ev.comm.as_mut_ptr().cast(), COMM_LEN as u32);
    }
    let task = unsafe { bpf_get_current_task() };
    fill_parent(ev, task);
}

/// pid, tgid and comm of `task` and of its real parent, read through BTF offsets.
#[inline(always)]
fn fill_task_of(ev: &mut Event, task: u64) {
    if let Some(pid) = rd::<i32>(task, lay!(task_pid)) {
        ev.pid = pid as u32;
    }
    if let Some(tgid) = rd::<i32>(task, lay!(task_tgid)) {
        ev.tgid = tgid as u32;
    }
    rd_buf(task, lay!(task_comm), &mut ev.comm);
    fill_parent(ev, task);
}

/// tgid and comm of `task->real_parent`.
#[inline(always)]
pub fn fill_parent(ev: &mut Event, task: u64) {
    let parent = rd_ptr(task, lay!(task_real_parent));
    if let Some(tgid) = rd::<u32>(parent, lay!(task_tgid)) {
        ev.ppid = tgid;
    }
    rd_buf(parent, lay!(task_comm), &mut ev.pcomm);
}

/// The memcg's ID (`memcg->id.id`; before 4.6 the css ID).
#[inline(always)]
pub fn memcg_id(memcg: u64) -> Option<u32> {
    let id_off = lay!(memcg_id);
    if let Some(id) = rd::<i32>(memcg, id_off) {
        return Some(id as u32);
    }
    if id_off == ABSENT {
        // Before 4.6 the memcg ID is the css ID (commit 73f576c04b94 added memcg->id).
        let css = memcg + lay!(memcg_css) as u64;
        return rd::<i32>(css, lay!(css_id)).map(|id| id as u32);
    }
    None
}

/// memcg ID, kmem state and (at offline and free) page counters.
#[inline(always)]
pub fn fill_memcg(ev: &mut Event, subj: &Subject, counters: bool) {
    let memcg = subj.memcg;
    ev.memcg_addr = memcg;
    if let Some(id) = subj.memcg_id.or_else(|| memcg_id(memcg)) {
        ev.memcg_id = id;
    }
    if subj.kmem.unwrap_or_else(|| kmem_active(memcg)) {
        ev.flags |= flags::KMEM_ACTIVE;
    }
    if counters {
        fill_counters(ev, memcg);
    }
}

/// Page counters of the memcg: memory, kmem (v1 kernels that have it) and swap.
#[inline(always)]
pub fn fill_counters(ev: &mut Event, memcg: u64) {
    if let Some(v) = rd::<u64>(memcg, lay!(memcg_memory_usage)) {
        ev.mem_pages = v;
        ev.flags |= flags::MEM_COUNTER;
    }
    if let Some(v) = rd::<u64>(memcg, lay!(memcg_kmem_usage)) {
        ev.kmem_pages = v;
        ev.flags |= flags::KMEM_COUNTER;
    }
    if let Some(v) = rd::<u64>(memcg, lay!(memcg_swap_usage)) {
        ev.swap_pages = v;
        ev.flags |= flags::SWAP_COUNTER;
    }
}

/// Whether kernel-memory accounting is online for this memcg, and its
/// `kmemcg_id` (-1 when none or unreadable), from its own state:
/// `memcg_online_kmem()` sets `memcg->kmemcg_id` (and, 5.9+, `memcg->objcg`);
/// with `cgroup.memory=nokmem` it returns early and both stay unset.
#[inline(always)]
pub fn kmem_state(memcg: u64) -> (bool, i32) {
    if let Some(id) = rd::<i32>(memcg, lay!(memcg_kmemcg_id)) {
        return (id >= 0, id);
    }
    (rd_ptr(memcg, lay!(memcg_objcg)) != 0, -1)
}

/// See [`kmem_state`].
#[inline(always)]
pub fn kmem_active(memcg: u64) -> bool {
    kmem_state(memcg).0
}

/// The id of a kernfs node (the cgroupfs inode number on 64-bit).
#[inline(always)]
fn kn_id(kn: u64) -> u64 {
    if lay!(layout_flags) & LAYOUT_KN_ID_U32 != 0 {
        rd::<u32>(kn, lay!(kn_id)).unwrap_or(0) as u64
    } else {
        rd::<u64>(kn, lay!(kn_id)).unwrap_or(0)
    }
}

/// The kernfs node id of a cgroup.
#[inline(always)]
pub fn cgroup_id(cgrp: u64) -> u64 {
    kn_id(rd_ptr(cgrp, lay!(cgroup_kn)))
}

/// cgroup id, parent id, level, hierarchy and leaf name. `root` is
/// `cgrp->root` when the caller already read it.
#[inline(always)]
pub fn fill_cgroup(ev: &mut Event, cgrp: u64, root: u64) {
    let kn = rd_ptr(cgrp, lay!(cgroup_kn));
    ev.cgroup_id = kn_id(kn);
    // The parent cgroup's directory is the parent kernfs node (one read less
    // than `cgroup.self.parent` → `kn`); a hierarchy root's node has none.
    // Without the member (old BTF naming), go through the parent css, which
    // is the parent cgroup's `self` at offset 0 of `struct cgroup`.
    let parent = if lay!(kn_parent) != ABSENT {
        let pkn = rd_ptr(kn, lay!(kn_parent));
        (pkn != 0).then(|| kn_id(pkn))
    } else {
        let parent = rd_ptr(cgrp, lay!(css_parent));
        (parent != 0).then(|| cgroup_id(parent))
    };
    match parent {
        Some(id) => ev.parent_cgroup_id = id,
        None => ev.flags |= flags::ROOT,
    }
    if let Some(level) = rd::<i32>(cgrp, lay!(cgroup_level)) {
        ev.level = level as u32;
    }
    let root = if root != 0 {
        root
    } else {
        rd_ptr(cgrp, lay!(cgroup_root))
    };
    if let Some(h) = rd::<i32>(root, lay!(root_hierarchy_id)) {
        ev.hierarchy_id = h as u32;
    }
    let name = rd_ptr(kn, lay!(kn_name));
    if name != 0 {
        if let Ok(s) = unsafe { read_kernel_str_bytes(name as *const u8, &mut ev.name) } {
            ev.name_len = s.len() as u16;
        } else {
            ev.flags |= flags::READ_FAULT;
        }
    }
}

/// `bpf_probe_read_str` (4.11) into `dest`: the bytes before the NUL, as
/// aya's `bpf_probe_read_kernel_str_bytes` returns them (that helper is 5.5+).
#[cfg(feature = "perf")]
#[inline(always)]
unsafe fn read_kernel_str_bytes(src: *const u8, dest: &mut [u8]) -> Result<&[u8], i32> {
    // SAFETY: `dest` is `dest.len()` writable bytes.
    let len = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_str(
            dest.as_mut_ptr().cast(),
            dest.len() as u32,
            src.cast(),
        )
    };
    // The count includes the NUL (0 for an empty string); the bound check
    // shows the verifier the slice stays inside `dest`.
    if len < 0 || len > dest.len() as i64 {
        return Err(-1);
    }
    dest.get(..(len as usize).saturating_sub(1)).ok_or(-1)
}
