//! Tracepoint-family hooks: BTF tracepoints (`tp_btf`) and raw tracepoints on the
//! cgroup core, plus `workqueue_execute_start` to see the css release and free
//! work items of memcgs (a classic tracepoint too, whose record carries the
//! work function). These work on kernels without kprobes or fentry; the
//! old-kernel object (feature `perf`) has only the raw and classic programs,
//! which need no kernel BTF.

use core::ffi::c_void;

#[cfg(not(feature = "perf"))]
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use kmem_trace_common::{hook, EventKind};

use crate::{
    emit::{emit, emit_online, Subject},
    read::{lay, memcg_from_css, memcg_of_cgroup, memory_root, memory_subsys_id, rd, rd_ptr},
};

/// `cgrp` when it is on a hierarchy the memory controller is bound to, with
/// its root kept for the record's fill; `None` for other v1 hierarchies.
#[inline(always)]
fn cgroup_subject(ctx: *mut c_void, cgrp: u64) -> Option<Subject> {
    let root = memory_root(cgrp);
    if root == 0 {
        return None;
    }
    let mut subj = Subject::new(ctx, 0, cgrp);
    subj.root = root;
    Some(subj)
}

/// As [`cgroup_subject`], with the cgroup's memcg; `None` when it has no
/// memory css (v2 cgroup without the memory controller enabled).
#[inline(always)]
fn memcg_subject(ctx: *mut c_void, cgrp: u64) -> Option<Subject> {
    let mut subj = cgroup_subject(ctx, cgrp)?;
    let css = memcg_of_cgroup(cgrp);
    if css == 0 {
        return None;
    }
    subj.memcg = memcg_from_css(css);
    Some(subj)
}

/// `cgroup_mkdir` fires at the end of `cgroup_mkdir()`, after `cgroup_create()` has
/// allocated and onlined every css, so the memcg exists with its ID: alloc,
/// online and (when accounting is on) kmem activation, in one record.
#[inline(always)]
fn on_mkdir(ctx: *mut c_void, hook_id: u16, cgrp: u64) {
    if let Some(mut subj) = memcg_subject(ctx, cgrp) {
        emit_online(hook_id, &mut subj, true);
    }
}

/// `cgroup_rmdir` fires in `cgroup_rmdir()` with `cgroup_mutex` held, after
/// `cgroup_destroy_locked()` started killing the css; `offline_css()` runs later
/// from a work item and needs the same mutex, so `subsys[]` is still set here.
#[inline(always)]
fn on_rmdir(ctx: *mut c_void, hook_id: u16, cgrp: u64) {
    if let Some(subj) = memcg_subject(ctx, cgrp) {
        emit(hook_id, EventKind::Offline, 0, &subj, 0);
    }
}

/// `cgroup_release` fires from `css_release_work_fn()` for the cgroup's own css,
/// which the subsystem css pin until `css_free_rwork_fn()`: on a memory hierarchy
/// it follows the memcg's free. `subsys[]` was cleared at offline, so the memcg
/// is resolved in userspace from the cgroup id.
#[inline(always)]
fn on_release(ctx: *mut c_void, hook_id: u16, cgrp: u64) {
    if let Some(subj) = cgroup_subject(ctx, cgrp) {
        emit(hook_id, EventKind::Free, 0, &subj, 0);
    }
}

#[cfg(not(feature = "perf"))]
#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn kt_tp_cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    on_mkdir(
        ctx.as_ptr(),
        hook::TP_CGROUP_MKDIR,
        ctx.arg::<*const u8>(0) as u64,
    );
    0
}

#[cfg(not(feature = "perf"))]
#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn kt_tp_cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    on_rmdir(
        ctx.as_ptr(),
        hook::TP_CGROUP_RMDIR,
        ctx.arg::<*const u8>(0) as u64,
    );
    0
}

#[cfg(not(feature = "perf"))]
#[btf_tracepoint(function = "cgroup_release")]
pub fn kt_tp_cgroup_release(ctx: BtfTracePointContext) -> i32 {
    on_release(
        ctx.as_ptr(),
        hook::TP_CGROUP_RELEASE,
        ctx.arg::<*const u8>(0) as u64,
    );
    0
}

#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn kt_raw_cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    on_mkdir(
        ctx.as_ptr(),
        hook::RAW_CGROUP_MKDIR,
        ctx.arg::<*const u8>(0) as u64,
    );
    0
}

#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn kt_raw_cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    on_rmdir(
        ctx.as_ptr(),
        hook::RAW_CGROUP_RMDIR,
        ctx.arg::<*const u8>(0) as u64,
    );
    0
}

#[raw_tracepoint(tracepoint = "cgroup_release")]
pub fn kt_raw_cgroup_release(ctx: RawTracePointContext) -> i32 {
    on_release(
        ctx.as_ptr(),
        hook::RAW_CGROUP_RELEASE,
        ctx.arg::<*const u8>(0) as u64,
    );
    0
}

/// `workqueue_execute_start` for every work item; only the css release and free
/// work of memory csses emit. `css_release_work_fn()` runs when the css refcount
/// hit zero (it calls `mem_cgroup_css_released()`); `css_free_rwork_fn()` calls
/// `mem_cgroup_css_free()`. Both work items are embedded in the css.
#[cfg(not(feature = "perf"))]
#[btf_tracepoint(function = "workqueue_execute_start")]
pub fn kt_tp_workqueue_start(ctx: BtfTracePointContext) -> i32 {
    let work = ctx.arg::<*const u8>(0) as u64;
    let func = rd_ptr(work, lay!(work_func));
    on_work(
        ctx.as_ptr(),
        work,
        func,
        hook::TP_CSS_RELEASE_WORK,
        hook::TP_CSS_FREE_WORK,
    );
    0
}

/// As `kt_tp_workqueue_start`, without BTF typing (4.17+).
#[raw_tracepoint(tracepoint = "workqueue_execute_start")]
pub fn kt_raw_workqueue_start(ctx: RawTracePointContext) -> i32 {
    let work = ctx.arg::<*const u8>(0) as u64;
    let func = rd_ptr(work, lay!(work_func));
    on_work(
        ctx.as_ptr(),
        work,
        func,
        hook::RAW_CSS_RELEASE_WORK,
        hook::RAW_CSS_FREE_WORK,
    );
    0
}

/// Offsets of `work` and `function` in the classic `workqueue_execute_start`
/// record (after the 8-byte common header; the same from 4.x to 6.18).
/// Userspace checks them against the tracepoint's `format` before attaching.
pub const WQ_TP_WORK_OFF: usize = 8;
pub const WQ_TP_FUNCTION_OFF: usize = 16;

/// As `kt_tp_workqueue_start`, as a classic tracepoint program (any kernel
/// with tracefs): the record carries the work function, so no read of
/// `work->func` is needed.
#[tracepoint(category = "workqueue", name = "workqueue_execute_start")]
pub fn kt_tpc_workqueue_start(ctx: TracePointContext) -> i32 {
    // Direct context loads: aya's `read_at` calls `bpf_probe_read_kernel` (5.5+).
    let rec = ctx.as_ptr() as *const u8;
    // SAFETY: both offsets are inside the record (userspace checks the format).
    let (work, func) = unsafe {
        (
            (rec.add(WQ_TP_WORK_OFF) as *const u64).read(),
            (rec.add(WQ_TP_FUNCTION_OFF) as *const u64).read(),
        )
    };
    on_work(
        ctx.as_ptr(),
        work,
        func,
        hook::TPC_CSS_RELEASE_WORK,
        hook::TPC_CSS_FREE_WORK,
    );
    0
}

/// One record when `func` is the css release or free work function of a
/// memory css (`work` is embedded in the css).
#[inline(always)]
fn on_work(ctx: *mut c_void, work: u64, func: u64, release_hook: u16, free_hook: u16) {
    if work == 0 || func == 0 {
        return;
    }
    let release_fn = lay!(fn_css_release_work);
    let free_fn = lay!(fn_css_free_work);
    let (kind, hook_id, work_off) = if func == release_fn {
        (EventKind::Released, release_hook, lay!(css_destroy_work))
    } else if func == free_fn {
        (EventKind::Free, free_hook, lay!(css_destroy_rwork))
    } else {
        return;
    };
    if work_off == kmem_trace_common::ABSENT {
        return;
    }
    let css = work - work_off as u64;
    let ss = rd_ptr(css, lay!(css_ss));
    if ss == 0 {
        return; // the cgroup's own css (`cgroup->self`) has no subsystem
    }
    match rd::<i32>(ss, lay!(cgroup_subsys_id_field)) {
        Some(id) if id as u32 == memory_subsys_id() => {}
        _ => return,
    }
    emit(hook_id, kind, 0, &Subject::from_css(ctx, css), 0);
}
