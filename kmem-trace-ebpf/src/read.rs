//! Kernel memory reads through BTF-resolved offsets: every read goes through
//! `bpf_probe_read_kernel` (`bpf_probe_read` in the old-kernel object: the
//! `_kernel` variant is 5.5+), so a stale pointer yields an error, never a fault.

#[cfg(feature = "perf")]
use aya_ebpf::helpers::{bpf_probe_read as read_kernel, bpf_probe_read_buf as read_kernel_buf};
#[cfg(not(feature = "perf"))]
use aya_ebpf::helpers::{
    bpf_probe_read_kernel as read_kernel, bpf_probe_read_kernel_buf as read_kernel_buf,
};
use kmem_trace_common::{stat, ABSENT};

use crate::maps::STATS;

/// Reads one `Layout` member. `read_volatile` keeps LLVM from folding the
/// compile-time default; the kernel sees the value userspace wrote into `.rodata`.
#[cfg(not(feature = "perf"))]
macro_rules! lay {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const crate::maps::LAYOUT.$field) }
    };
}

/// Reads one `Layout` member from entry 0 of the `LAYOUT` array map (the
/// old-kernel object has no global data); absent when the lookup fails.
#[cfg(feature = "perf")]
macro_rules! lay {
    ($field:ident) => {
        match crate::maps::LAYOUT.get_ptr(0) {
            // SAFETY: a non-NULL array map value of Layout's size.
            Some(p) => unsafe { core::ptr::read_volatile(&raw const (*p).$field) },
            None => crate::read::Absent::absent(),
        }
    };
}
pub(crate) use lay;

/// The value of a `Layout` member the programs cannot read ([`ABSENT`]
/// offsets, 0 for addresses).
#[cfg(feature = "perf")]
pub trait Absent {
    fn absent() -> Self;
}
#[cfg(feature = "perf")]
impl Absent for u32 {
    #[inline(always)]
    fn absent() -> u32 {
        ABSENT
    }
}
#[cfg(feature = "perf")]
impl Absent for u64 {
    #[inline(always)]
    fn absent() -> u64 {
        0
    }
}

/// Reads a `T` at `base + off`, or `None` when the member is absent on this kernel,
/// the base is NULL, or the read faults.
#[inline(always)]
pub fn rd<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == ABSENT {
        return None;
    }
    match unsafe { read_kernel((base + off as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(stat::READ_FAULTS);
            None
        }
    }
}

/// Reads a pointer-sized value at `base + off`, 0 on failure.
#[inline(always)]
pub fn rd_ptr(base: u64, off: u32) -> u64 {
    rd::<u64>(base, off).unwrap_or(0)
}

/// Copies `dst.len()` bytes at `base + off`; false on failure.
#[inline(always)]
pub fn rd_buf(base: u64, off: u32, dst: &mut [u8]) -> bool {
    if base == 0 || off == ABSENT {
        return false;
    }
    unsafe { read_kernel_buf((base + off as u64) as *const u8, dst).is_ok() }
}

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = STATS.get_ptr_mut(idx) {
        unsafe { *p += 1 };
    }
}

/// The memory controller's index in `cgroup.subsys[]`.
#[inline(always)]
pub fn memory_subsys_id() -> u32 {
    lay!(memory_subsys_id)
}

/// `cgrp->root` when `cgrp` belongs to a hierarchy the memory controller is
/// bound to (`cgroup_root.subsys_mask` has the bit: a v1 memory hierarchy or
/// a v2 root with the controller), else 0; the event's fill reuses it.
#[inline(always)]
pub fn memory_root(cgrp: u64) -> u64 {
    let root = rd_ptr(cgrp, lay!(cgroup_root));
    let mask: u32 = match rd(root, lay!(root_subsys_mask)) {
        Some(m) => m,
        None => return 0,
    };
    let id = memory_subsys_id();
    if id < 32 && mask & (1u32 << id) != 0 {
        root
    } else {
        0
    }
}

/// `cgroup->subsys[memory_cgrp_id]`: the memcg css, NULL when the cgroup has no
/// memory css (v2 without `+memory`, or after `offline_css()` cleared it).
#[inline(always)]
pub fn memcg_of_cgroup(cgrp: u64) -> u64 {
    let base = lay!(cgroup_subsys);
    let id = memory_subsys_id();
    if base == ABSENT || id >= 16 {
        return 0;
    }
    rd_ptr(cgrp, base + id * 8)
}

/// The `struct mem_cgroup` address from its embedded css.
#[inline(always)]
pub fn memcg_from_css(css: u64) -> u64 {
    let off = lay!(memcg_css);
    if css == 0 || off == ABSENT {
        return css;
    }
    css - off as u64
}
