//! Resident hooks: processes entering a memcg, by `cgroup.procs` write
//! (`cgroup_attach_task`), by `fork()` (`sched_process_fork`) and processes
//! already inside that `exec()` (`sched_process_exec`, so the resident gets the
//! name of what it runs instead of `runc:[2:INIT]` or `sh`). A per-memcg limiter
//! keeps fork storms cheap: the first `Layout.max_residents` entries are
//! reported, after that at most one per second per memcg (so the last resident
//! before offline stays known) and the rest only counted.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, map},
    maps::LruHashMap,
    programs::BtfTracePointContext,
    EbpfContext,
};
use kmem_trace_common::{flags, hook, stat, EventKind, ABSENT};

use crate::{
    emit::{emit_as, enabled, memcg_id, Subject},
    read::{count, lay, memory_root, memory_subsys_id, rd, rd_ptr},
};

/// Limiter state of one memcg.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Admitted {
    /// Residents reported so far.
    count: u32,
    _pad: u32,
    /// When the last over-limit resident was reported.
    last_ns: u64,
}

/// Residents reported per memcg, keyed by `[memcg address, memcg ID]`: the
/// address alone is reused once a memcg is freed, and the ID once it is
/// offline (`mem_cgroup_id_remove()` at offline since 4.6), so the pair keeps a
/// new memcg from inheriting an old count. LRU, so memcgs that are gone age out.
#[map]
static RESIDENT_LIMIT: LruHashMap<[u64; 2], Admitted> = LruHashMap::with_max_entries(16384, 0);

/// Over the limit, one resident per memcg per this many ns is still reported.
const OVER_LIMIT_PERIOD_NS: u64 = 1_000_000_000;

/// The memcg css a task belongs to: `task->cgroups->subsys[memory_cgrp_id]`.
/// On cgroup v2 this is the effective css (the nearest ancestor with `+memory`).
#[inline(always)]
fn task_memcg_css(task: u64) -> u64 {
    let cset = rd_ptr(task, lay!(task_cgroups));
    let base = lay!(css_set_subsys);
    let id = memory_subsys_id();
    if cset == 0 || base == ABSENT || id >= 16 {
        return 0;
    }
    rd_ptr(cset, base + id * 8)
}

/// Whether to report a resident of the memcg with ID `id`: `Some(extra
/// flags)` or `None`.
#[inline(always)]
fn admit(memcg: u64, id: u32) -> Option<u32> {
    let max = lay!(max_residents);
    let key = [memcg, id as u64];
    let now = unsafe { bpf_ktime_get_ns() };
    match RESIDENT_LIMIT.get_ptr_mut(&key) {
        Some(p) => {
            // Updates race between CPUs; an occasional extra report is harmless.
            let a = unsafe { &mut *p };
            if a.count < max {
                a.count += 1;
                Some(0)
            } else if now.wrapping_sub(a.last_ns) >= OVER_LIMIT_PERIOD_NS {
                a.last_ns = now;
                count(stat::RESIDENTS_CAPPED);
                Some(flags::OVER_LIMIT)
            } else {
                count(stat::RESIDENTS_CAPPED);
                None
            }
        }
        None => {
            if max == 0 {
                count(stat::RESIDENTS_CAPPED);
                return None;
            }
            let a = Admitted {
                count: 1,
                _pad: 0,
                last_ns: now,
            };
            let _ = RESIDENT_LIMIT.insert(&key, &a, 0);
            Some(0)
        }
    }
}

/// Reports `task` as a resident of the memcg css `css` (skipping the root memcg,
/// where every host process lives). `root` is the cgroup root if the hook read it.
#[inline(always)]
fn report(ctx: *mut c_void, hook_id: u16, kind_flags: u32, css: u64, task: u64, root: u64) {
    if css == 0 || rd_ptr(css, lay!(css_parent)) == 0 {
        return;
    }
    let mut subj = Subject::from_css(ctx, css);
    // The ID keys the limiter and goes into the record: read it once.
    let id = memcg_id(subj.memcg).unwrap_or(0);
    subj.memcg_id = Some(id);
    subj.root = root;
    let Some(extra) = admit(subj.memcg, id) else {
        return;
    };
    let actor = (bpf_get_current_pid_tgid() >> 32) as u64;
    emit_as(
        hook_id,
        EventKind::Resident,
        kind_flags | extra,
        &subj,
        actor,
        task,
    );
}

/// `cgroup_attach_task` fires in `cgroup_attach_task()` after `cgroup_migrate()`
/// succeeded, once per hierarchy, with the thread-group leader: the task's
/// css_set already points at the destination, so its memcg is the new one.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn kt_tp_cgroup_attach_task(ctx: BtfTracePointContext) -> i32 {
    if !enabled(hook::TP_CGROUP_ATTACH, EventKind::Resident) {
        return 0;
    }
    let dst = ctx.arg::<*const u8>(0) as u64;
    let root = memory_root(dst);
    if root == 0 {
        return 0; // another v1 hierarchy (cpu, pids, ...)
    }
    let task = ctx.arg::<*const u8>(2) as u64;
    // The task's css_set already points into `dst`: its memcg is dst's, on
    // the same root.
    report(
        ctx.as_ptr(),
        hook::TP_CGROUP_ATTACH,
        flags::ATTACH,
        task_memcg_css(task),
        task,
        root,
    );
    0
}

/// `sched_process_fork` fires in `kernel_clone()` after `copy_process()`, which
/// ran `cgroup_post_fork()`: the child is linked to its css_set. Threads
/// (`CLONE_THREAD`) are skipped, they belong to a process already reported.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn kt_tp_process_fork(ctx: BtfTracePointContext) -> i32 {
    if !enabled(hook::TP_PROCESS_FORK, EventKind::Resident) {
        return 0;
    }
    let child = ctx.arg::<*const u8>(1) as u64;
    let pid = rd::<i32>(child, lay!(task_pid)).unwrap_or(0);
    let tgid = rd::<i32>(child, lay!(task_tgid)).unwrap_or(-1);
    if pid != tgid {
        return 0;
    }
    report(
        ctx.as_ptr(),
        hook::TP_PROCESS_FORK,
        flags::FORK,
        task_memcg_css(child),
        child,
        0,
    );
    0
}

/// `sched_process_exec` fires in `exec_binprm()` after the new image is loaded
/// and `comm` was set from the file name (`begin_new_exec()`).
#[btf_tracepoint(function = "sched_process_exec")]
pub fn kt_tp_process_exec(ctx: BtfTracePointContext) -> i32 {
    if !enabled(hook::TP_PROCESS_EXEC, EventKind::Resident) {
        return 0;
    }
    let task = ctx.arg::<*const u8>(0) as u64;
    report(
        ctx.as_ptr(),
        hook::TP_PROCESS_EXEC,
        flags::EXEC,
        task_memcg_css(task),
        task,
        0,
    );
    0
}
