//! Filling and submitting ring-buffer events: one place that knows which kernel
//! fields make up an [`Event`], shared by every hook family.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
    bpf_probe_read_kernel_str_bytes,
};
use kmem_trace_common::{flags, stat, Event, EventKind, ABSENT, LAYOUT_KN_ID_U32};

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

/// What a hook knows when it fires.
pub struct Subject {
    /// `struct mem_cgroup *` (0 if unknown).
    pub memcg: u64,
    /// `struct cgroup *` (0 if unknown).
    pub cgrp: u64,
}

impl Subject {
    /// From a memcg css pointer; the cgroup comes from `css->cgroup` (NULL at css_alloc).
    #[inline(always)]
    pub fn from_css(css: u64) -> Subject {
        Subject {
            memcg: memcg_from_css(css),
            cgrp: rd_ptr(css, lay!(css_cgroup)),
        }
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
    if !enabled(hook, kind) {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::DROPS);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to reserved ring-buffer memory of Event's size.
    let ev = unsafe {
        ev.write(Event::ZERO);
        &mut *ev
    };
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
        fill_memcg(ev, subj.memcg, counters);
    } else {
        ev.flags |= flags::NO_MEMCG;
    }
    if subj.cgrp != 0 {
        fill_cgroup(ev, subj.cgrp);
    } else {
        ev.flags |= flags::NO_CGROUP;
    }
    entry.submit(0);
}

/// pid, tgid and comm of the current task and of its real parent.
#[inline(always)]
fn fill_task(ev: &mut Event) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.pid = pid_tgid as u32;
    ev.tgid = (pid_tgid >> 32) as u32;
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
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

/// memcg ID, kmem state and (at offline) page counters.
#[inline(always)]
pub fn fill_memcg(ev: &mut Event, memcg: u64, counters: bool) {
    ev.memcg_addr = memcg;
    let id_off = lay!(memcg_id);
    if let Some(id) = rd::<i32>(memcg, id_off) {
        ev.memcg_id = id as u32;
    } else if id_off == ABSENT {
        // Before 4.6 the memcg ID is the css ID (commit 73f576c04b94 added memcg->id).
        let css = memcg + lay!(memcg_css) as u64;
        if let Some(id) = rd::<i32>(css, lay!(css_id)) {
            ev.memcg_id = id as u32;
        }
    }
    if kmem_active(memcg) {
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

/// Whether kernel-memory accounting is online for this memcg, from its own state:
/// `memcg_online_kmem()` sets `memcg->kmemcg_id` (and, 5.9+, `memcg->objcg`);
/// with `cgroup.memory=nokmem` it returns early and both stay unset.
#[inline(always)]
pub fn kmem_active(memcg: u64) -> bool {
    if let Some(id) = rd::<i32>(memcg, lay!(memcg_kmemcg_id)) {
        return id >= 0;
    }
    rd_ptr(memcg, lay!(memcg_objcg)) != 0
}

/// The kernfs node id of a cgroup (the cgroupfs inode number on 64-bit).
#[inline(always)]
pub fn cgroup_id(cgrp: u64) -> u64 {
    let kn = rd_ptr(cgrp, lay!(cgroup_kn));
    if lay!(layout_flags) & LAYOUT_KN_ID_U32 != 0 {
        rd::<u32>(kn, lay!(kn_id)).unwrap_or(0) as u64
    } else {
        rd::<u64>(kn, lay!(kn_id)).unwrap_or(0)
    }
}

/// cgroup id, parent id, level, hierarchy and leaf name.
#[inline(always)]
pub fn fill_cgroup(ev: &mut Event, cgrp: u64) {
    let kn = rd_ptr(cgrp, lay!(cgroup_kn));
    ev.cgroup_id = cgroup_id(cgrp);
    // `cgroup.self.parent` is the parent cgroup's `self` css, which sits at
    // offset 0 of `struct cgroup`.
    let parent = rd_ptr(cgrp, lay!(css_parent));
    if parent != 0 {
        ev.parent_cgroup_id = cgroup_id(parent);
    } else {
        ev.flags |= flags::ROOT;
    }
    if let Some(level) = rd::<i32>(cgrp, lay!(cgroup_level)) {
        ev.level = level as u32;
    }
    let root = rd_ptr(cgrp, lay!(cgroup_root));
    if let Some(h) = rd::<i32>(root, lay!(root_hierarchy_id)) {
        ev.hierarchy_id = h as u32;
    }
    let name = rd_ptr(kn, lay!(kn_name));
    if name != 0 {
        if let Ok(s) = unsafe { bpf_probe_read_kernel_str_bytes(name as *const u8, &mut ev.name) } {
            ev.name_len = s.len() as u16;
        } else {
            ev.flags |= flags::READ_FAULT;
        }
    }
}
