//! Drops at the machine's full churn rate and the highest churn rate without
//! drops, for each transport in the same run: the BPF ring buffer (default)
//! and perf buffers (`--transport perf`, the old-kernel object). All cores
//! churn untraced for the full rate; then each transport traces that churn
//! with its default buffer, with smaller buffers until one drops, and with
//! that buffer at lower rates until none drops.

use anyhow::Result;
use serde::Serialize;

use super::{
    cgroup::Churn,
    live::{run_once, Live, Variant},
};

/// One traced full-speed (or rate-limited) run for the drop figures.
#[derive(Debug, Serialize)]
pub struct DropRun {
    /// `--ring-buffer-size`: the ring's size, or each CPU's perf buffer's.
    pub ring_bytes: u32,
    pub target_per_second: Option<f64>,
    pub per_second: f64,
    pub drops: u64,
}

/// One transport's search.
#[derive(Debug, Serialize)]
pub struct Search {
    /// kmem-trace with its default buffer at the full untraced speed.
    pub at_full: DropRun,
    /// Smaller buffers at full speed, down to the first that drops.
    pub ring_ramp: Vec<DropRun>,
    /// With the smallest buffer that dropped: rates tried, down to one without drops.
    pub rate_ramp: Vec<DropRun>,
    /// Highest rate seen with zero drops at the default buffer size.
    pub no_drop_per_second: f64,
}

#[derive(Debug, Serialize)]
pub struct DropResult {
    pub jobs: usize,
    pub lifecycles: usize,
    /// The machine's full untraced churn rate (all cores churning).
    pub untraced_per_second: f64,
    /// The ring buffer's search, at the top level where results before the
    /// perf transport was measured have it (`--from-json` still reads them).
    #[serde(flatten)]
    pub ringbuf: Search,
    /// The perf transport's search (sizes are per CPU).
    pub perf: Option<Search>,
    /// Why the perf transport was left out, if it was.
    pub perf_skipped: Option<String>,
}

/// Default `--ring-buffer-size` of `kmem-trace watch`
/// (`kmem_trace::probes::DEFAULT_RING_BYTES`); with perf, per CPU.
pub const DEFAULT_RING: u32 = 1 << 20;

fn drop_run(l: &Live, v: Variant, churn: Churn, ring: u32, round: usize) -> Result<DropRun> {
    let run = run_once(l, round, v, None, churn, Some(ring))?;
    let drops = run.tracer.as_ref().and_then(|t| t.drops).unwrap_or(0);
    eprintln!(
        "bench: drops: {v:?} buffer {ring} B, target {:?}/s: {:.0}/s, {drops} dropped",
        churn.rate.map(|r| r.round()),
        run.per_second
    );
    Ok(DropRun {
        ring_bytes: ring,
        target_per_second: churn.rate,
        per_second: run.per_second,
        drops,
    })
}

/// Smaller buffers at full speed until one drops, then with the smallest that
/// dropped lower rates until none drops. `base` numbers the runs' cgroups.
fn ramps(
    l: &Live,
    v: Variant,
    churn: Churn,
    full: f64,
    at_full: DropRun,
    base: usize,
) -> Result<Search> {
    let mut no_drop = if at_full.drops == 0 {
        at_full.per_second
    } else {
        0.0
    };
    let rings: &[u32] = if l.quick {
        &[1 << 16, 1 << 12]
    } else {
        &[1 << 18, 1 << 16, 1 << 14, 1 << 12]
    };
    let mut ring_ramp = Vec::new();
    for (i, &ring) in rings.iter().enumerate() {
        let r = drop_run(l, v, churn, ring, base + 100 + i)?;
        let dropped = r.drops > 0;
        ring_ramp.push(r);
        if dropped {
            break;
        }
    }
    let mut rate_ramp = Vec::new();
    let dropping_ring = ring_ramp.iter().find(|r| r.drops > 0).map(|r| r.ring_bytes);
    let small = dropping_ring.or(if at_full.drops > 0 {
        Some(DEFAULT_RING)
    } else {
        None
    });
    if let Some(ring) = small {
        for (i, frac) in [0.5, 0.25, 0.1].iter().enumerate() {
            let rate = Churn {
                rate: Some(full * frac),
                ..churn
            };
            let r = drop_run(l, v, rate, ring, base + 200 + i)?;
            let clean = r.drops == 0;
            if clean && ring == DEFAULT_RING {
                no_drop = no_drop.max(r.per_second);
            }
            rate_ramp.push(r);
            if clean {
                break;
            }
        }
    }
    Ok(Search {
        at_full,
        ring_ramp,
        rate_ramp,
        no_drop_per_second: no_drop,
    })
}

/// Churn with every core untraced, then each transport's search. The two
/// default-buffer runs at full speed come one after the other, so their
/// ratio is taken under the same load; a perf transport that cannot start
/// is recorded and leaves the ring buffer's figures standing.
pub fn drops(l: &Live) -> Result<DropResult> {
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    let churn = Churn {
        lifecycles: l.lifecycles,
        jobs,
        rate: None,
    };
    let mut rates = Vec::new();
    for round in 0..2 {
        rates.push(run_once(l, 100 + round, Variant::Untraced, None, churn, None)?.per_second);
    }
    let full = rates.iter().cloned().fold(0.0, f64::max);
    eprintln!("bench: full untraced churn rate with {jobs} workers: {full:.0}/s");
    let ring_full = drop_run(l, Variant::KmemTrace, churn, DEFAULT_RING, 200)?;
    let (perf_full, mut perf_skipped) = if l.perf {
        match drop_run(l, Variant::KmemTracePerf, churn, DEFAULT_RING, 500) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    } else {
        (None, Some("--skip perf".to_string()))
    };
    let ringbuf = ramps(l, Variant::KmemTrace, churn, full, ring_full, 200)?;
    let perf = match perf_full {
        Some(at_full) => match ramps(l, Variant::KmemTracePerf, churn, full, at_full, 500) {
            Ok(s) => Some(s),
            Err(e) => {
                perf_skipped = Some(format!("{e:#}"));
                None
            }
        },
        None => None,
    };
    Ok(DropResult {
        jobs,
        lifecycles: l.lifecycles,
        untraced_per_second: full,
        ringbuf,
        perf,
        perf_skipped,
    })
}
