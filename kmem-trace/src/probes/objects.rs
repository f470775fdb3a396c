//! The two embedded eBPF objects and how each is loaded: the ring-buffer
//! object takes the layout as a global and hands out its ring buffer; the
//! old-kernel object (no global data before 5.2) takes it in an array map and
//! hands out one perf buffer per CPU.

use std::sync::{atomic::AtomicU64, Arc};

use aya::{
    maps::{Array, MapData, PerfEventArray, RingBuf},
    Ebpf, EbpfLoader,
};
use kmem_trace_common::Layout;

use super::{error_chain, ring::EventSource, ProbeConfig, ProbeError};

/// The eBPF object built by `build.rs`, embedded in the binary.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kmem-trace-ebpf.o"));

/// The old-kernel object (`kmem-trace-ebpf` with feature `perf`), embedded too.
static PERF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kmem-trace-ebpf-perf.o"));

/// Loads the ring-buffer object: the layout in its `LAYOUT` global.
pub(super) fn load_ringbuf(
    cfg: &ProbeConfig,
    layout: &Layout,
    btf: Option<&aya::Btf>,
) -> Result<(Ebpf, EventSource), ProbeError> {
    let mut bpf = EbpfLoader::new()
        .btf(btf)
        .override_global("LAYOUT", layout, true)
        .map_max_entries("EVENTS", cfg.ring_bytes)
        .load(OBJECT)
        .map_err(|e| ProbeError::Load(error_chain(&e)))?;
    let ring = RingBuf::try_from(bpf.take_map("EVENTS").ok_or(ProbeError::Map("EVENTS"))?)
        .map_err(|_| ProbeError::Map("EVENTS"))?;
    Ok((bpf, EventSource::Ring(ring)))
}

/// Loads the old-kernel object: the layout goes into entry 0 of its `LAYOUT`
/// array map before anything attaches, and one perf buffer of
/// `cfg.ring_bytes` is opened per online CPU.
pub(super) fn load_perf(
    cfg: &ProbeConfig,
    layout: &Layout,
    btf: Option<&aya::Btf>,
    lost: &Arc<AtomicU64>,
) -> Result<(Ebpf, EventSource), ProbeError> {
    if PERF_OBJECT.is_empty() {
        return Err(ProbeError::NoObject);
    }
    let mut bpf = EbpfLoader::new()
        .btf(btf)
        .load(PERF_OBJECT)
        .map_err(|e| ProbeError::Load(error_chain(&e)))?;
    let map_err = |name: &'static str, e: &dyn std::error::Error| ProbeError::MapRead {
        name,
        reason: error_chain(e),
    };
    let mut lay: Array<&mut MapData, Layout> =
        Array::try_from(bpf.map_mut("LAYOUT").ok_or(ProbeError::Map("LAYOUT"))?)
            .map_err(|_| ProbeError::Map("LAYOUT"))?;
    lay.set(0, *layout, 0).map_err(|e| map_err("LAYOUT", &e))?;
    let mut perf =
        PerfEventArray::try_from(bpf.take_map("EVENTS").ok_or(ProbeError::Map("EVENTS"))?)
            .map_err(|_| ProbeError::Map("EVENTS"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let pages = (cfg.ring_bytes as usize / page).max(1);
    let cpus = aya::util::online_cpus().map_err(|(what, e)| ProbeError::MapRead {
        name: "EVENTS",
        reason: format!("{what}: {e}"),
    })?;
    let mut buffers = Vec::with_capacity(cpus.len());
    for cpu in cpus {
        buffers.push(
            perf.open(cpu, Some(pages.next_power_of_two()))
                .map_err(|e| map_err("EVENTS", &e))?,
        );
    }
    let source = EventSource::Perf {
        buffers,
        lost: Arc::clone(lost),
    };
    Ok((bpf, source))
}

/// Whether this binary carries the eBPF programs.
pub fn has_object() -> bool {
    !OBJECT.is_empty()
}

/// The embedded eBPF object (for the read-only instruction check and `--dump-object`).
pub fn object() -> &'static [u8] {
    OBJECT
}

/// Whether this binary carries the old-kernel object.
pub fn has_perf_object() -> bool {
    !PERF_OBJECT.is_empty()
}

/// The embedded old-kernel object (empty in a build without the eBPF toolchain).
pub fn perf_object() -> &'static [u8] {
    PERF_OBJECT
}
