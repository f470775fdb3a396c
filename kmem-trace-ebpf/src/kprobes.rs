//! kprobe-family hooks on the memcg css callbacks in `mm/memcontrol.c`. Userspace
//! attaches each program to the symbol the probe table chose (alternatives such as
//! `memcg_offline_kmem.part.0` included), so names here are only defaults.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
    EbpfContext,
};
use kmem_trace_common::{hook, EventKind};

use crate::{
    emit::{emit, emit_online, kmem_state, Subject},
    maps::{ID_CLAIMED, STASH},
    read::{lay, memcg_from_css, rd},
};

/// True for NULL and `ERR_PTR()` values.
#[inline(always)]
pub fn bad_ptr(p: u64) -> bool {
    p == 0 || p >= (-4095i64) as u64
}

/// `mem_cgroup_css_alloc()` returns the new css with its ID assigned by
/// `mem_cgroup_alloc()`; `css->cgroup` is only set afterwards (`init_and_link_css`).
#[kretprobe]
pub fn kt_kretprobe_css_alloc(ctx: RetProbeContext) -> u32 {
    let css: u64 = ctx.ret::<u64>();
    if !bad_ptr(css) {
        let subj = Subject::new(ctx.as_ptr(), memcg_from_css(css), 0);
        emit(hook::KPROBE_CSS_ALLOC, EventKind::Alloc, 0, &subj, 0);
    }
    0
}

/// Stashes the css so the return probe can report online and the kmem state
/// `memcg_online_kmem()` (called inside `mem_cgroup_css_online()`) left behind.
#[kprobe]
pub fn kt_kprobe_css_online(ctx: ProbeContext) -> u32 {
    let css: u64 = ctx.arg::<u64>(0).unwrap_or(0);
    let key = bpf_get_current_pid_tgid();
    let _ = STASH.insert(&key, &css, 0);
    0
}

#[kretprobe]
pub fn kt_kretprobe_css_online(ctx: RetProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    let css = match unsafe { STASH.get(&key) } {
        Some(v) => *v,
        None => return 0,
    };
    let _ = STASH.remove(&key);
    let ret: i32 = ctx.ret::<i32>();
    if ret != 0 || css == 0 {
        return 0;
    }
    emit_online(
        hook::KPROBE_CSS_ONLINE,
        &mut Subject::from_css(ctx.as_ptr(), css),
        false,
    );
    0
}

#[kprobe]
pub fn kt_kprobe_css_offline(ctx: ProbeContext) -> u32 {
    on_css(
        ctx.as_ptr(),
        hook::KPROBE_CSS_OFFLINE,
        EventKind::Offline,
        ctx.arg::<u64>(0).unwrap_or(0),
    );
    0
}

#[kprobe]
pub fn kt_kprobe_css_released(ctx: ProbeContext) -> u32 {
    on_css(
        ctx.as_ptr(),
        hook::KPROBE_CSS_RELEASED,
        EventKind::Released,
        ctx.arg::<u64>(0).unwrap_or(0),
    );
    0
}

#[kprobe]
pub fn kt_kprobe_css_free(ctx: ProbeContext) -> u32 {
    on_css(
        ctx.as_ptr(),
        hook::KPROBE_CSS_FREE,
        EventKind::Free,
        ctx.arg::<u64>(0).unwrap_or(0),
    );
    0
}

/// One record of `kind` for the memcg css `css` (NULL: none), shared by the
/// kprobe and fentry hooks on the css callbacks that take the css first.
#[inline(always)]
pub fn on_css(ctx: *mut c_void, hook_id: u16, kind: EventKind, css: u64) {
    if css != 0 {
        if matches!(kind, EventKind::Free) {
            // A later memcg at this address may release its ID again.
            let _ = ID_CLAIMED.remove(&memcg_from_css(css));
        }
        emit(hook_id, kind, 0, &Subject::from_css(ctx, css), 0);
    }
}

/// STASH key of `mem_cgroup_id_put_many()`'s memcg (pid_tgid with a tag bit,
/// apart from the css_online and kmem stashes).
const ID_PUT_TAG: u64 = 0x4000_0000_0000_0000;

/// `mem_cgroup_id_put_many(memcg, n)`: the ID goes back to the IDR/xarray when
/// `refcount_sub_and_test()` drops the count to zero, and
/// `mem_cgroup_id_remove()` then zeroes `memcg->id.id`. The count read here,
/// before the put, cannot tell: two concurrent puts both read a count above
/// their `n` and the release was missed. So the entry only stashes the memcg...
#[kprobe]
pub fn kt_kprobe_id_put_many(ctx: ProbeContext) -> u32 {
    let memcg: u64 = ctx.arg::<u64>(0).unwrap_or(0);
    let key = bpf_get_current_pid_tgid() ^ ID_PUT_TAG;
    let _ = STASH.insert(&key, &memcg, 0);
    0
}

/// ...and the return reads `id.id`: zero means the ID is gone. Of concurrent
/// puts that all return after the removal, the first to claim the memcg in
/// `ID_CLAIMED` reports it, so the release is reported exactly once.
#[kretprobe]
pub fn kt_kretprobe_id_put_many(ctx: RetProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid() ^ ID_PUT_TAG;
    let memcg = match unsafe { STASH.get(&key) } {
        Some(v) => *v,
        None => return 0,
    };
    let _ = STASH.remove(&key);
    if memcg == 0 || rd::<i32>(memcg, lay!(memcg_id)) != Some(0) {
        return 0;
    }
    // BPF_NOEXIST: only the first put to get here inserts. The value is
    // never read; a non-constant one stays on the stack, where `&1` was a
    // `.rodata` constant (global data, 5.2+) the old-kernel object cannot load.
    let claimed = memcg as u8 | 1;
    if ID_CLAIMED.insert(&memcg, &claimed, 1).is_ok() {
        let subj = Subject::new(
            ctx.as_ptr(),
            memcg,
            crate::read::rd_ptr(memcg + lay!(memcg_css) as u64, lay!(css_cgroup)),
        );
        emit(hook::KPROBE_ID_PUT, EventKind::IdRelease, 0, &subj, 0);
    }
    0
}

/// The fentry family's ID release (the count before the put equals `n`).
#[cfg(not(feature = "perf"))]
#[inline(always)]
pub fn on_id_put(ctx: *mut c_void, hook_id: u16, memcg: u64, n: u32) {
    if memcg == 0 {
        return;
    }
    let Some(refs) = rd::<i32>(memcg, lay!(memcg_id_ref)) else {
        return;
    };
    if refs as u32 == n {
        let subj = Subject::new(
            ctx,
            memcg,
            crate::read::rd_ptr(memcg + lay!(memcg_css) as u64, lay!(css_cgroup)),
        );
        emit(hook_id, EventKind::IdRelease, 0, &subj, n as u64);
    }
}

/// Direct kmem activation (`memcg_online_kmem(memcg)`, 4.x to 6.0; 3.10's
/// `memcg_activate_kmem` has no row: no object loads there): stash the memcg...
#[kprobe]
pub fn kt_kprobe_kmem_online(ctx: ProbeContext) -> u32 {
    let memcg: u64 = ctx.arg::<u64>(0).unwrap_or(0);
    let key = bpf_get_current_pid_tgid() ^ 0x8000_0000_0000_0000;
    let _ = STASH.insert(&key, &memcg, 0);
    0
}

/// ...and report it when the function returned 0 and left kmem active.
#[kretprobe]
pub fn kt_kretprobe_kmem_online(ctx: RetProbeContext) -> u32 {
    let key = bpf_get_current_pid_tgid() ^ 0x8000_0000_0000_0000;
    let memcg = match unsafe { STASH.get(&key) } {
        Some(v) => *v,
        None => return 0,
    };
    let _ = STASH.remove(&key);
    if ctx.ret::<i32>() == 0 {
        on_kmem_online(ctx.as_ptr(), hook::KPROBE_KMEM_ONLINE, memcg);
    }
    0
}

/// After a successful `memcg_online_kmem()`: a direct
/// kmem activation when it left accounting active, with its `kmemcg_id`
/// (shared by the kretprobe and fexit hooks). The state is read once and the
/// record's fill reuses it.
#[inline(always)]
pub fn on_kmem_online(ctx: *mut c_void, hook_id: u16, memcg: u64) {
    if memcg == 0 {
        return;
    }
    let (active, kmemcg_id) = kmem_state(memcg);
    if !active {
        return;
    }
    let mut subj = Subject::from_css(ctx, memcg + lay!(memcg_css) as u64);
    subj.kmem = Some(true);
    emit(
        hook_id,
        EventKind::KmemActivate,
        0,
        &subj,
        kmemcg_id as i64 as u64,
    );
}
