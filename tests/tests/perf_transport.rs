//! Root tests of the old-kernel object on this kernel: `watch --transport perf`
//! (perf buffers; raw and classic tracepoint programs here, which has no
//! kprobes) sees every lifecycle point the ring-buffer object's tracepoint
//! family sees on the same churn, and a tiny perf buffer counts its drops.
//! Needs: root, a memory cgroup controller, BPF raw tracepoints.

use std::{collections::BTreeMap, time::Duration};

use kmem_trace_tests::{json_lines, lock::KernelLock, require_root, wait_for, TestParent, Tracer};
use serde_json::Value;

/// Lifecycle points the tracepoint family can see (no id_release).
const POINTS: &[&str] = &[
    "alloc",
    "online",
    "kmem_activate",
    "offline",
    "released",
    "free",
];

/// Events per kind under our parent.
fn counts(events: &[Value], parent: &str) -> BTreeMap<String, usize> {
    let prefix = format!("/{parent}/");
    let mut m = BTreeMap::new();
    for e in events {
        if e["path"].as_str().is_some_and(|p| p.starts_with(&prefix)) {
            *m.entry(e["kind"].as_str().unwrap_or("?").to_string())
                .or_default() += 1;
        }
    }
    m
}

/// Runs `n` memcgs through mkdir and rmdir under one tracer, waiting up to
/// `wait` for their frees; the per-kind counts and every JSON record.
fn churn(
    transport: &str,
    extra: &[&str],
    n: usize,
    wait: Duration,
) -> (BTreeMap<String, usize>, Vec<Value>) {
    let parent = TestParent::new(&format!("perf-{transport}")).unwrap();
    let mut args = vec![
        "watch",
        "--json",
        "--no-history",
        "--hooks",
        "tracepoint",
        "--transport",
        transport,
    ];
    args.extend_from_slice(extra);
    let mut tracer = Tracer::start(&args).unwrap();
    let mut kids = Vec::new();
    for i in 0..n {
        kids.push(parent.child(&format!("c{i}")).unwrap());
    }
    for k in &kids {
        parent.rmdir(k).unwrap();
    }
    // Empty memcgs are freed a moment after rmdir.
    wait_for(wait, || {
        counts(&tracer.json(), &parent.name)
            .get("free")
            .copied()
            .unwrap_or(0)
            >= n
    });
    std::thread::sleep(Duration::from_secs(1));
    let (code, out) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "{}", tracer.stderr.join("\n"));
    let events = json_lines(&out).unwrap();
    (counts(&events, &parent.name), events)
}

/// The run's summary record.
fn summary(events: &[Value]) -> &Value {
    events
        .iter()
        .rev()
        .find(|e| e["kind"] == "summary")
        .expect("a summary")
}

#[test]
fn perf_transport_sees_every_point_the_tracepoint_family_sees() {
    if !require_root("perf_transport_sees_every_point_the_tracepoint_family_sees") {
        return;
    }
    let _lock = KernelLock::take();
    const N: usize = 100;
    let wait = Duration::from_secs(30);
    let (ring, ring_events) = churn("ringbuf", &[], N, wait);
    let (perf, perf_events) = churn("perf", &[], N, wait);
    eprintln!("ringbuf {ring:?}\nperf    {perf:?}");
    for point in POINTS {
        let r = ring.get(*point).copied().unwrap_or(0);
        let p = perf.get(*point).copied().unwrap_or(0);
        assert_eq!(p, r, "{point}: perf saw {p}, ringbuf {r}");
    }
    for point in ["alloc", "online", "offline", "released", "free"] {
        assert_eq!(perf.get(point).copied(), Some(N), "{point}");
    }
    let (ring_sum, perf_sum) = (summary(&ring_events), summary(&perf_events));
    assert_eq!(perf_sum["drops"], 0, "{perf_sum}");
    assert_eq!(ring_sum["drops"], 0, "{ring_sum}");
    assert_eq!(perf_sum["hook_family"], "tracepoint");
}

#[test]
fn a_tiny_perf_buffer_counts_and_shows_its_drops() {
    if !require_root("a_tiny_perf_buffer_counts_and_shows_its_drops") {
        return;
    }
    let _lock = KernelLock::take();
    const N: usize = 500;
    // One page per CPU: 15 records of 264 bytes; mkdir outruns the reader.
    let args = ["--ring-buffer-size", "4096"];
    let (seen, events) = churn("perf", &args, N, Duration::from_secs(10));
    let sum = summary(&events);
    eprintln!("seen {seen:?}\nsummary {sum}");
    let drops = sum["drops"].as_u64().unwrap();
    assert!(drops > 0, "no drops with a one-page perf buffer: {sum}");
    // Shown live too: `drops` records while running, their last total at
    // most the summary's (lost samples still queued are counted at the end).
    let live: Vec<u64> = events
        .iter()
        .filter(|e| e["kind"] == "drops")
        .filter_map(|e| e["total"].as_u64())
        .collect();
    assert!(!live.is_empty(), "no live drops record");
    assert!(live.iter().all(|&t| t <= drops), "{live:?} vs {drops}");
    // What was lost is missing from what was seen.
    let missing: usize = POINTS
        .iter()
        .map(|p| N.saturating_sub(seen.get(*p).copied().unwrap_or(0)))
        .sum();
    assert!(
        missing > 0,
        "every event of ours arrived despite {drops} drops: {seen:?}"
    );
}
