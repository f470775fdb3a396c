//! kmem-trace's eBPF programs: one small program per kernel hook, all feeding one
//! event channel with [`kmem_trace_common::Event`] records. Kernel struct layouts
//! come from userspace (resolved from BTF).
//!
//! Built twice (`kmem-trace/build.rs`): the default object for 5.8+ (BPF ring
//! buffer, the layout in the read-only `LAYOUT` global, `bpf_probe_read_kernel`,
//! fentry, BTF tracepoints, the census iterator), and with feature `perf` the
//! old-kernel object for the 4.18 floor: events through a
//! `BPF_MAP_TYPE_PERF_EVENT_ARRAY`, the layout in an ordinary array map (global
//! data needs 5.2), `bpf_probe_read` (the `_kernel` variant is 5.5), and only
//! kprobe, raw tracepoint and classic tracepoint programs (no kernel BTF).
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(all(target_arch = "bpf", not(feature = "perf")))]
mod census;
#[cfg(target_arch = "bpf")]
mod emit;
#[cfg(all(target_arch = "bpf", not(feature = "perf")))]
mod fentry;
#[cfg(target_arch = "bpf")]
mod kprobes;
#[cfg(target_arch = "bpf")]
mod read;
#[cfg(all(target_arch = "bpf", not(feature = "perf")))]
mod residents;
#[cfg(target_arch = "bpf")]
mod tracepoints;

#[cfg(target_arch = "bpf")]
mod maps {
    use aya_ebpf::{
        macros::map,
        maps::{Array, HashMap, LruHashMap, PerCpuArray},
    };
    use kmem_trace_common::{stat, MAX_HOOKS};

    #[cfg(not(feature = "perf"))]
    pub use ring::*;
    #[cfg(not(feature = "perf"))]
    mod ring {
        use aya_ebpf::{macros::map, maps::RingBuf};
        use kmem_trace_common::Layout;

        /// Kernel layout; userspace overwrites it before load (`EbpfLoader::set_global`).
        #[unsafe(no_mangle)]
        pub static LAYOUT: Layout = Layout::EMPTY;

        /// Lifecycle events. Userspace resizes it (`--ring-buffer-size`).
        #[map]
        pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
    }

    #[cfg(feature = "perf")]
    pub use perf::*;
    #[cfg(feature = "perf")]
    mod perf {
        use aya_ebpf::{
            macros::map,
            maps::{Array, HashMap, PerfEventArray},
        };
        use kmem_trace_common::{Event, Layout};

        /// Kernel layout in entry 0, written by userspace before it attaches
        /// anything (global data needs 5.2). Until then every member reads
        /// as absent.
        #[map]
        pub static LAYOUT: Array<Layout> = Array::with_max_entries(1, 0);

        /// Lifecycle events, one perf buffer per CPU (the ring buffer is 5.8+).
        #[map]
        pub static EVENTS: PerfEventArray<Event> = PerfEventArray::new(0);

        /// The records being filled, one per thread (the low 32 bits of
        /// pid_tgid): 264 bytes do not fit beside the rest on the 512-byte
        /// stack; `bpf_perf_event_output` copies it out. Not one per CPU: where
        /// two programs' runs interleave on one CPU, one overwrites the other's
        /// per-CPU record: on 7.3.4 cloud (perf-tp, 2026-12-07, one VM CPU) a
        /// run sent churn-10's offline (rmdir, the test's task) twice and
        /// churn-0's released (a kworker's work item) never, which takes a
        /// program interrupted or preempted mid-fill by another task's. A
        /// thread runs one program at a time; entries live from fill to output.
        #[map]
        pub static SCRATCH: HashMap<u32, Event> = HashMap::with_max_entries(1024, 0);

        /// An all-zero record: the value SCRATCH entries start from (a map
        /// value can be a helper's argument, the stack has no room for one).
        #[map]
        pub static ZERO_EVENT: Array<Event> = Array::with_max_entries(1, 0);
    }

    /// Which kinds each hook may emit (see `MAX_HOOKS`); userspace fills it from
    /// the probe-table choice before attaching each program.
    #[map]
    pub static EMIT: Array<u32> = Array::with_max_entries(MAX_HOOKS as u32, 0);

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
