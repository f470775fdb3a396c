//! Tracepoint-family hooks: BTF tracepoints (`tp_btf`) and raw tracepoints on the
//! cgroup core, plus `workqueue_execute_start` to see the css release and free
//! work items of memcgs. These work on kernels without kprobes or fentry.

use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use kmem_trace_common::{hook, EventKind};

use crate::{
    emit::{emit, emit_online, Subject},
    read::{lay, memcg_from_css, memcg_of_cgroup, memory_root, memory_subsys_id, rd, rd_ptr},
};

/// `cgrp` when it is on a hierarchy the memory controller is bound to, with
/// its root kept for the record's fill; `None` for other v1 hierarchies.
#[inline(always)]
fn cgroup_subject(cgrp: u64) -> Option<Subject> {
    let root = memory_root(cgrp);
    if root == 0 {
        return None;
    }
    let mut subj = Subject::new(0, cgrp);
    subj.root = root;
    Some(subj)
}

/// As [`cgroup_subject`], with the cgroup's memcg; `None` when it has no
/// memory css (v2 cgroup without the memory controller enabled).
#[inline(always)]
fn memcg_subject(cgrp: u64) -> Option<Subject> {
    let mut subj = cgroup_subject(cgrp)?;
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
fn on_mkdir(hook_id: u16, cgrp: u64) {
    if let Some(mut subj) = memcg_subject(cgrp) {
        emit_online(hook_id, &mut subj, true);
    }
}

/// `cgroup_rmdir` fires in `cgroup_rmdir()` with `cgroup_mutex` held, after
/// `cgroup_destroy_locked()` started killing the css; `offline_css()` runs later
/// from a work item and needs the same mutex, so `subsys[]` is still set here.
#[inline(always)]
fn on_rmdir(hook_id: u16, cgrp: u64) {
    if let Some(subj) = memcg_subject(cgrp) {
        emit(hook_id, EventKind::Offline, 0, &subj, 0);
    }
}

/// `cgroup_release` fires from `css_release_work_fn()` for the cgroup's own css,
/// which the subsystem css pin until `css_free_rwork_fn()`: on a memory hierarchy
/// it follows the memcg's free. `subsys[]` was cleared at offline, so the memcg
/// is resolved in userspace from the cgroup id.
#[inline(always)]
fn on_release(hook_id: u16, cgrp: u64) {
    if let Some(subj) = cgroup_subject(cgrp) {
        emit(hook_id, EventKind::Free, 0, &subj, 0);
    }
}

#[btf_tracepoint(function = "cgroup_mkdir")]
pub fn kt_tp_cgroup_mkdir(ctx: BtfTracePointContext) -> i32 {
    on_mkdir(hook::TP_CGROUP_MKDIR, ctx.arg::<*const u8>(0) as u64);
    0
}

#[btf_tracepoint(function = "cgroup_rmdir")]
pub fn kt_tp_cgroup_rmdir(ctx: BtfTracePointContext) -> i32 {
    on_rmdir(hook::TP_CGROUP_RMDIR, ctx.arg::<*const u8>(0) as u64);
    0
}

#[btf_tracepoint(function = "cgroup_release")]
pub fn kt_tp_cgroup_release(ctx: BtfTracePointContext) -> i32 {
    on_release(hook::TP_CGROUP_RELEASE, ctx.arg::<*const u8>(0) as u64);
    0
}

#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn kt_raw_cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    on_mkdir(hook::RAW_CGROUP_MKDIR, ctx.arg::<*const u8>(0) as u64);
    0
}

#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn kt_raw_cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    on_rmdir(hook::RAW_CGROUP_RMDIR, ctx.arg::<*const u8>(0) as u64);
    0
}

#[raw_tracepoint(tracepoint = "cgroup_release")]
pub fn kt_raw_cgroup_release(ctx: RawTracePointContext) -> i32 {
    on_release(hook::RAW_CGROUP_RELEASE, ctx.arg::<*const u8>(0) as u64);
    0
}

/// `workqueue_execute_start` for every work item; only the css release and free
/// work of memory csses emit. `css_release_work_fn()` runs when the css refcount
/// hit zero (it calls `mem_cgroup_css_released()`); `css_free_rwork_fn()` calls
/// `mem_cgroup_css_free()`. Both work items are embedded in the css.
#[btf_tracepoint(function = "workqueue_execute_start")]
pub fn kt_tp_workqueue_start(ctx: BtfTracePointContext) -> i32 {
    let work = ctx.arg::<*const u8>(0) as u64;
    let release_fn = lay!(fn_css_release_work);
    let free_fn = lay!(fn_css_free_work);
    let func = rd_ptr(work, lay!(work_func));
    if func == 0 {
        return 0;
    }
    let (kind, hook_id, work_off) = if func == release_fn {
        (
            EventKind::Released,
            hook::TP_CSS_RELEASE_WORK,
            lay!(css_destroy_work),
        )
    } else if func == free_fn {
        (
            EventKind::Free,
            hook::TP_CSS_FREE_WORK,
            lay!(css_destroy_rwork),
        )
    } else {
        return 0;
    };
    if work_off == kmem_trace_common::ABSENT {
        return 0;
    }
    let css = work - work_off as u64;
    let ss = rd_ptr(css, lay!(css_ss));
    if ss == 0 {
        return 0; // the cgroup's own css (`cgroup->self`) has no subsystem
    }
    match rd::<i32>(ss, lay!(cgroup_subsys_id_field)) {
        Some(id) if id as u32 == memory_subsys_id() => {}
        _ => return 0,
    }
    emit(hook_id, kind, 0, &Subject::from_css(css), 0);
    0
}
