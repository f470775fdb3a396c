//! kmem-trace's eBPF programs: one small program per kernel hook, all feeding one
//! ring buffer with [`kmem_trace_common::Event`] records. Kernel struct layouts come
//! from userspace (resolved from BTF) through the read-only `LAYOUT` global.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod census;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(target_arch = "bpf")]
mod fentry;
#[cfg(target_arch = "bpf")]
mod kprobes;
#[cfg(target_arch = "bpf")]
mod read;
#[cfg(target_arch = "bpf")]
mod residents;
#[cfg(target_arch = "bpf")]
mod tracepoints;

#[cfg(target_arch = "bpf")]
mod maps {
    use aya_ebpf::{
        macros::map,
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    };
    use kmem_trace_common::{stat, Layout, MAX_HOOKS};

    /// Kernel layout; userspace overwrites it before load (`EbpfLoader::set_global`).
    #[unsafe(no_mangle)]
    pub static LAYOUT: Layout = Layout::EMPTY;

    /// Which kinds each hook may emit (see `MAX_HOOKS`); userspace fills it from
    /// the probe-table choice before attaching each program.
    #[map]
    pub static EMIT: Array<u32> = Array::with_max_entries(MAX_HOOKS as u32, 0);

    /// Lifecycle events. Userspace resizes it (`--ring-buffer-size`).
    #[map]
    pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

    /// Per-CPU counters, indexed by `kmem_trace_common::stat`.
    #[map]
    pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

    /// Function arguments stashed at a kprobe for its kretprobe, keyed by pid_tgid.
    #[map]
    pub static STASH: HashMap<u64, u64> = HashMap::with_max_entries(4096, 0);

    /// memcgs whose ID release the kprobe family reported (one report per life:
    /// concurrent puts can both return after the ID is gone); the key goes when
    /// the memcg is freed, LRU eviction bounds it otherwise.
    #[map]
    pub static ID_CLAIMED: LruHashMap<u64, u8> = LruHashMap::with_max_entries(16384, 0);
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in verified programs: the verifier rejects any path that could
    // get here, so this loop is never taken.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("kmem-trace-ebpf only builds for bpfel-unknown-none (see `cargo xtask build-ebpf`)");
}
