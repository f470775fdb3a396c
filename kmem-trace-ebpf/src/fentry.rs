//! fentry/fexit-family hooks (BPF trampolines) on the memcg css callbacks. The
//! target function is chosen at load time by userspace, so the names given to
//! the macros are defaults only.

use aya_ebpf::{
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
    EbpfContext,
};
use kmem_trace_common::{hook, EventKind, FEXIT_RET_SLOT};

use crate::{
    emit::{emit, emit_online, Subject},
    kprobes::{bad_ptr, on_css, on_id_put, on_kmem_online},
    read::memcg_from_css,
};

/// The traced function's return value: the trampoline's context holds the
/// arguments, then the return value (`btf_ctx_access()` allows reading slot
/// `nr_args` from fexit programs since 5.5), at [`FEXIT_RET_SLOT`] for every
/// function hooked here (one parameter). Not aya's `FExitContext::ret`:
/// that calls `bpf_get_func_ret`, a 5.17 helper, and the load fails with
/// EINVAL on 5.5–5.16 kernels (seen on Debian 5.10.0-46).
fn return_value<T: aya_ebpf::Argument>(ctx: &FExitContext) -> T {
    ctx.arg::<T>(FEXIT_RET_SLOT)
}

/// `struct cgroup_subsys_state *mem_cgroup_css_alloc(struct cgroup_subsys_state *parent_css)`.
#[fexit(function = "mem_cgroup_css_alloc")]
pub fn kt_fexit_css_alloc(ctx: FExitContext) -> i32 {
    let css: u64 = return_value(&ctx);
    if !bad_ptr(css) {
        let subj = Subject::new(ctx.as_ptr(), memcg_from_css(css), 0);
        emit(hook::FENTRY_CSS_ALLOC, EventKind::Alloc, 0, &subj, 0);
    }
    0
}

/// fexit sees both the css argument and the result, so online and the kmem
/// state `memcg_online_kmem()` left behind are reported together.
#[fexit(function = "mem_cgroup_css_online")]
pub fn kt_fexit_css_online(ctx: FExitContext) -> i32 {
    // int mem_cgroup_css_online(struct cgroup_subsys_state *css)
    let css: u64 = ctx.arg::<u64>(0);
    let ret: i32 = return_value(&ctx);
    if css == 0 || ret != 0 {
        return 0;
    }
    emit_online(
        hook::FENTRY_CSS_ONLINE,
        &mut Subject::from_css(ctx.as_ptr(), css),
        false,
    );
    0
}

#[fentry(function = "mem_cgroup_css_offline")]
pub fn kt_fentry_css_offline(ctx: FEntryContext) -> i32 {
    on_css(
        ctx.as_ptr(),
        hook::FENTRY_CSS_OFFLINE,
        EventKind::Offline,
        ctx.arg::<u64>(0),
    );
    0
}

#[fentry(function = "mem_cgroup_css_released")]
pub fn kt_fentry_css_released(ctx: FEntryContext) -> i32 {
    on_css(
        ctx.as_ptr(),
        hook::FENTRY_CSS_RELEASED,
        EventKind::Released,
        ctx.arg::<u64>(0),
    );
    0
}

#[fentry(function = "mem_cgroup_css_free")]
pub fn kt_fentry_css_free(ctx: FEntryContext) -> i32 {
    on_css(
        ctx.as_ptr(),
        hook::FENTRY_CSS_FREE,
        EventKind::Free,
        ctx.arg::<u64>(0),
    );
    0
}

#[fentry(function = "mem_cgroup_id_put_many")]
pub fn kt_fentry_id_put_many(ctx: FEntryContext) -> i32 {
    let memcg: u64 = ctx.arg::<u64>(0);
    let n: u32 = ctx.arg::<u32>(1);
    on_id_put(ctx.as_ptr(), hook::FENTRY_ID_PUT, memcg, n);
    0
}

/// Direct kmem activation where the kernel has `memcg_online_kmem()` as a function.
#[fexit(function = "memcg_online_kmem")]
pub fn kt_fexit_kmem_online(ctx: FExitContext) -> i32 {
    // int memcg_online_kmem(struct mem_cgroup *memcg)
    let memcg: u64 = ctx.arg::<u64>(0);
    let ret: i32 = return_value(&ctx);
    if ret == 0 {
        on_kmem_online(ctx.as_ptr(), hook::FENTRY_KMEM_ONLINE, memcg);
    }
    0
}
