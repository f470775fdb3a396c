//! The census: an `iter/cgroup` program that walks the whole memcg css tree,
//! dying memcgs included, and writes one `Census` record per memcg to the
//! `CENSUS` ring buffer, then a [`CensusSummary`] to its seq file.
//!
//! Why walk the css tree by hand: the kernel's cgroup iterator skips dead
//! cgroups (`cgroup_is_dead()` in `kernel/bpf/cgroup_iter.c`), and dead cgroups
//! are exactly the zombies. Userspace attaches this program `SELF_ONLY` to the
//! memory hierarchy's root; on that one element it walks `css.children` /
//! `css.sibling` / `css.parent` in pre-order like `css_next_descendant_pre()`.
//! `cgroup_iter_seq_start()` holds `cgroup_mutex` until `..._stop()`, and
//! `css_release_work_fn()` needs it to unlink a css, so the tree cannot change
//! under the walk. Records go to a ring buffer, not the seq file, because one
//! `show()` may write at most one seq buffer (8 pages, `bpf_seq_read()`), which
//! holds about 120 records.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_loop, bpf_seq_write},
    },
    macros::map,
    maps::{Array, RingBuf},
};
use kmem_trace_common::{
    census_flags, census_stat, flags, CensusSummary, Event, EventKind, ABSENT, CENSUS_MAGIC,
    LAYOUT_STATS_HIER, LAYOUT_VMSTATS_PTR,
};

use crate::{
    emit::{fill_cgroup, fill_memcg, zero, Subject},
    read::{lay, memcg_from_css, memcg_of_cgroup, rd, rd_ptr},
};

/// Census records. Userspace sizes it from `/proc/cgroups` before load and
/// retries bigger when the summary reports drops.
#[map]
pub static CENSUS: RingBuf = RingBuf::with_byte_size(1 << 16, 0);

/// State of the walk. It lives in a map, not on the program's stack: values
/// read from a map are unknown to the verifier, so every callback iteration
/// starts from the same verifier state and the loop is verified once instead
/// of once per distinct counter value.
#[map]
static WALK: Array<Walk> = Array::with_max_entries(1, 0);

/// `BPF_RB_NO_WAKEUP`: nobody polls while the walk runs; userspace reads after
/// `read()` on the iterator returned, so no wake-up is needed per record.
const RB_NO_WAKEUP: u64 = 1;

/// `CSS_ONLINE` and `CSS_DYING` of `include/linux/cgroup-defs.h`. `CSS_DYING`
/// (5.x+) is set by `kill_css()` at rmdir, before `offline_css()` clears
/// `CSS_ONLINE` from a work item; on older kernels bit 4 is unused.
const CSS_ONLINE: u32 = 1 << 1;
const CSS_DYING: u32 = 1 << 4;

/// `BPF_MAX_LOOPS`: the walk takes at most two steps per memcg, so this covers
/// four million memcgs, far beyond what any kernel can hold.
const MAX_STEPS: u32 = 1 << 23;

/// `struct bpf_iter__cgroup`: the program's context.
#[repr(C)]
pub struct IterCgroupCtx {
    meta: *const IterMeta,
    cgroup: *const u8,
}

/// `struct bpf_iter_meta`.
#[repr(C)]
struct IterMeta {
    seq: *mut c_void,
    session_id: u64,
    seq_num: u64,
}

/// State of the walk, shared by the program and the loop callback.
#[repr(C)]
pub struct Walk {
    /// The root memcg css (scalar: read through `bpf_probe_read_kernel`).
    root: u64,
    /// The css being visited.
    pos: u64,
    /// 1 while climbing back up after a subtree was done.
    ascending: u64,
    ts_ns: u64,
    summary: CensusSummary,
}

/// The iterator program. The kernel calls it once with the root cgroup, and
/// once more with `cgroup == NULL` when the iteration ends.
#[unsafe(link_section = "iter/cgroup")]
#[unsafe(no_mangle)]
pub extern "C" fn kt_census(ctx: *const IterCgroupCtx) -> i32 {
    // SAFETY: the kernel passes a valid `bpf_iter__cgroup`; the verifier checks
    // both loads (context and trusted BTF pointer).
    let (cgrp, seq) = unsafe { ((*ctx).cgroup, (*(*ctx).meta).seq) };
    if cgrp.is_null() {
        return 0;
    }
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the map value is Walk-sized; only this program and its callback
    // touch it, and iterator runs of one map instance do not overlap.
    let w = unsafe { &mut *w };
    let now = unsafe { bpf_ktime_get_ns() };
    w.root = 0;
    w.pos = 0;
    w.ascending = 0;
    w.ts_ns = now;
    w.summary = CensusSummary {
        magic: CENSUS_MAGIC,
        start_ns: now,
        ..CensusSummary::default()
    };
    if lay!(css_children) == ABSENT || lay!(css_sibling) == ABSENT || lay!(css_flags) == ABSENT {
        w.summary.flags |= census_flags::NO_LAYOUT;
    } else {
        w.root = memcg_of_cgroup(cgrp as u64);
        if w.root == 0 {
            w.summary.flags |= census_flags::NO_MEMORY;
        } else {
            w.pos = w.root;
            // SAFETY: `step` has the callback signature bpf_loop expects.
            unsafe {
                bpf_loop(
                    MAX_STEPS,
                    step as *const () as *mut c_void,
                    core::ptr::null_mut(),
                    0,
                )
            };
            if w.summary.flags & (census_flags::COMPLETE | census_flags::FAULT) == 0 {
                w.summary.flags |= census_flags::TRUNCATED;
            }
        }
    }
    w.summary.end_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: `seq` is the iterator's seq file; the summary is map memory.
    unsafe {
        bpf_seq_write(
            seq as *mut _,
            &w.summary as *const CensusSummary as *const c_void,
            core::mem::size_of::<CensusSummary>() as u32,
        )
    };
    0
}

/// One step of the pre-order walk (`css_next_descendant_pre()` split into
/// single moves so each `bpf_loop` iteration stays small): visit and go down,
/// or go right, or go up. Returns 1 to stop the loop.
#[inline(never)]
extern "C" fn step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(w) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: see `kt_census`.
    let w = unsafe { &mut *w };
    w.summary.steps += 1;
    if w.ascending == 0 {
        let child = first_child(w.pos);
        visit(w, child == Some(0));
        match child {
            Some(0) => w.ascending = 1,
            Some(child) => w.pos = child,
            None => return fault(w),
        }
        return 0;
    }
    if w.pos == w.root {
        w.summary.flags |= census_flags::COMPLETE;
        return 1;
    }
    let parent = rd_ptr(w.pos, lay!(css_parent));
    if parent == 0 {
        return fault(w);
    }
    let next = rd_ptr(w.pos, lay!(css_sibling));
    if next == 0 {
        return fault(w);
    }
    if next == parent + lay!(css_children) as u64 {
        // Last child: the parent's subtree is done.
        w.pos = parent;
    } else {
        w.pos = next - lay!(css_sibling) as u64;
        w.ascending = 0;
    }
    0
}

#[inline(always)]
fn fault(w: &mut Walk) -> i64 {
    w.summary.flags |= census_flags::FAULT;
    1
}

/// The first child css, `Some(0)` when there is none, `None` when the read failed.
#[inline(always)]
fn first_child(css: u64) -> Option<u64> {
    let head = css + lay!(css_children) as u64;
    let next = rd_ptr(css, lay!(css_children));
    if next == 0 {
        None
    } else if next == head {
        Some(0)
    } else {
        Some(next - lay!(css_sibling) as u64)
    }
}

/// Counts the memcg at `w.pos` and writes its record; `leaf` when it has no
/// child memcg (dying ones included).
#[inline(always)]
fn visit(w: &mut Walk, leaf: bool) {
    let css = w.pos;
    let css_flags: u32 = rd(css, lay!(css_flags)).unwrap_or(0);
    let dying = css_flags & CSS_ONLINE == 0 || css_flags & CSS_DYING != 0;
    w.summary.visited += 1;
    if dying {
        w.summary.dying += 1;
    } else {
        w.summary.online += 1;
    }
    let Some(mut entry) = CENSUS.reserve::<Event>(0) else {
        w.summary.dropped += 1;
        return;
    };
    // SAFETY: `entry` is reserved ring-buffer memory of Event's size.
    let ev = unsafe {
        let p = entry.as_mut_ptr();
        zero(p);
        &mut *p
    };
    ev.kind = EventKind::Census as u32;
    ev.ts_ns = w.ts_ns;
    if dying {
        ev.flags |= flags::DYING;
    }
    let memcg = memcg_from_css(css);
    // No context: census records go to their own ring buffer.
    fill_memcg(ev, &Subject::new(core::ptr::null_mut(), memcg, 0), true);
    // `memcg->id.ref`: 0 once the ID went back to the kernel (4.6+).
    if let Some(r) = rd::<i32>(memcg, lay!(memcg_id_ref)) {
        ev.aux = r as u32 as u64;
    } else {
        ev.aux = u64::MAX;
    }
    fill_stats(ev, memcg, leaf);
    let cgrp = rd_ptr(css, lay!(css_cgroup));
    if cgrp != 0 {
        fill_cgroup(ev, cgrp, 0);
    } else {
        ev.flags |= flags::NO_CGROUP;
    }
    entry.submit(RB_NO_WAKEUP);
    w.summary.emitted += 1;
}

/// The memcg's own page-state counters (`memcg->vmstats`, flushed by rstat:
/// at most a per-CPU batch behind). What pins a dying memcg is in its own
/// counters, not in an ancestor's. Hierarchical values stand for the memcg's
/// own only on leaves (kernels without `state_local[]`).
#[inline(always)]
fn fill_stats(ev: &mut Event, memcg: u64, leaf: bool) {
    let lf = lay!(layout_flags);
    if lf & LAYOUT_STATS_HIER != 0 && !leaf {
        return;
    }
    let vm_off = lay!(memcg_vmstats);
    if vm_off == ABSENT {
        return;
    }
    let vmstats = if lf & LAYOUT_VMSTATS_PTR != 0 {
        rd_ptr(memcg, vm_off)
    } else {
        memcg + vm_off as u64
    };
    if vmstats == 0 {
        return;
    }
    let mut i = 0;
    let mut valid = 0u32;
    while i < census_stat::N {
        // SAFETY: LAYOUT is a read-only global; `i` is in bounds.
        let off = unsafe { core::ptr::read_volatile(&raw const crate::maps::LAYOUT.stat_off[i]) };
        if let Some(v) = rd::<i64>(vmstats, off) {
            // Per-CPU deltas not yet flushed can make a counter briefly negative.
            let pages = v.clamp(0, u32::MAX as i64) as u32;
            ev.set_census_stat(i, pages);
            valid |= 1 << i;
        }
        i += 1;
    }
    if valid != 0 {
        ev.set_census_stat(census_stat::VALID, valid);
        ev.flags |= flags::CENSUS_STATS;
    }
}
