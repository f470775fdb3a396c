//! Memory of 65,535 tracked memcgs (the whole 16-bit ID space): a kubelet-shaped
//! node fed through the lifecycle and attribution stages, then the heap bytes
//! live (counted by a wrapping global allocator, deterministic) and the
//! process's resident set (VmRSS/VmHWM) are printed as one JSON line that
//! `cargo xtask bench` reads. Run: `cargo bench -p kmem-trace --bench footprint`.
//! With `KMEM_TRACE_FOOTPRINT_RECORDING=FILE` it also writes the same node as a
//! recording (`watch --record` format) for `kmem-trace replay FILE`, whose RSS
//! `cargo xtask bench` measures: the real binary holding every memcg.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use std::io::Write;

use kmem_trace::{
    attribution::Attributor,
    decode::{self, TraceEvent},
    lifecycle::{Lifecycle, LifecycleConfig},
};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            let now = if new >= l.size() {
                LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size()
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed) - (l.size() - new)
            };
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

const MEMCGS: u32 = 65_535;

fn main() {
    // `cargo bench` passes `--bench`; a filter that excludes us means skip.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with('-') && !"footprint".contains(a.as_str()))
    {
        return;
    }
    let recording = std::env::var_os("KMEM_TRACE_FOOTPRINT_RECORDING").map(|p| {
        let mut w =
            std::io::BufWriter::new(std::fs::File::create(&p).expect("creating the recording"));
        decode::write_header(&mut w, 0).expect("writing the recording header");
        common::node_events(MEMCGS, |ev| {
            w.write_all(ev.raw.as_bytes())
                .expect("writing the recording");
        });
        w.flush().expect("writing the recording");
        std::fs::metadata(&p).map_or(0, |m| m.len())
    });
    let (rss0, _) = rss_kib();
    // The lifecycle alone first, then lifecycle + attribution (what `watch` keeps).
    let heap0 = LIVE.load(Ordering::Relaxed);
    let mut lc = Lifecycle::new(LifecycleConfig::default()).expect("default config");
    common::node_events(MEMCGS, |ev| {
        lc.apply(ev);
    });
    let heap_lifecycle = LIVE.load(Ordering::Relaxed) - heap0;
    drop(lc);
    // Give the freed pass back to the kernel so VmRSS below is the second pass.
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    let heap0 = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut lc = Lifecycle::new(LifecycleConfig::default()).expect("default config");
    let mut attr = Attributor::paths_only();
    let mut events = 0u64;
    common::node_events(MEMCGS, |ev| {
        events += 1;
        let applied = lc.apply(ev);
        attr.observe(&applied);
    });
    let build_s = t.elapsed().as_secs_f64();
    let heap = LIVE.load(Ordering::Relaxed) - heap0;
    let (rss, hwm) = rss_kib();
    let counts = lc.counts(u64::MAX);
    let tracked = lc.memcgs().count();
    let residents: usize = lc.memcgs().map(|m| m.residents().len()).sum();
    println!(
        "{}",
        serde_json::json!({
            "memcgs": tracked,
            "dying": counts.dying,
            "residents": residents,
            "attributed": attr.len(),
            "tree_nodes": lc.tree.len(),
            "events": events,
            "heap_bytes": heap,
            "heap_lifecycle_bytes": heap_lifecycle,
            "heap_attribution_bytes": heap.saturating_sub(heap_lifecycle),
            "heap_peak_bytes": PEAK.load(Ordering::Relaxed),
            "heap_bytes_per_memcg": heap as f64 / tracked.max(1) as f64,
            "rss_before_kib": rss0,
            "rss_kib": rss,
            "rss_peak_kib": hwm,
            "build_s": build_s,
            "size_of_memcg": std::mem::size_of::<kmem_trace::lifecycle::Memcg>(),
            "size_of_task": std::mem::size_of::<kmem_trace::lifecycle::Task>(),
            "size_of_attribution": std::mem::size_of::<kmem_trace::attribution::Attribution>(),
            "size_of_trace_event": std::mem::size_of::<TraceEvent>(),
            "recording_bytes": recording,
        })
    );
    assert_eq!(tracked as u32, MEMCGS, "every memcg is tracked");
}
