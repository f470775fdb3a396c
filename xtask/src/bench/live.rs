//! Figures measured on the running kernel: churn overhead (untraced vs
//! kmem-trace vs bpftrace, interleaved A/B rounds, ratios of medians), the
//! churn rate kmem-trace keeps up with without drops, and start-up time.

use std::{path::Path, time::Duration};

use anyhow::Result;
use serde::Serialize;

use super::{
    bpfstats::{self, ProgCost},
    cgroup::{self, Churn, RunParent},
    median,
    tracer::{self, Outcome},
};

/// Settings of the live figures.
pub struct Live<'a> {
    pub bin: &'a Path,
    pub parent: &'a RunParent,
    /// `/proc/cgroups` memory count before the bench: what `settle` waits for.
    pub baseline: u64,
    pub lifecycles: usize,
    pub rounds: usize,
    pub quick: bool,
    pub bpftrace: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Untraced,
    KmemTrace,
    /// kmem-trace without its history database (`--no-history`).
    KmemTraceNoHistory,
    Bpftrace,
}

/// One timed churn run.
#[derive(Debug, Serialize)]
pub struct Run {
    pub round: usize,
    pub variant: Variant,
    pub lifecycles: usize,
    pub seconds: f64,
    pub per_second: f64,
    /// CPU of the churn workers and their children (in-line syscall work).
    pub cpu_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracer: Option<Outcome>,
    /// kmem-trace's programs during the churn (BPF run-time statistics).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bpf: Vec<ProgCost>,
}

/// The churn overhead figures.
#[derive(Debug, Serialize)]
pub struct ChurnResult {
    pub lifecycles: usize,
    pub rounds: usize,
    /// Tracepoints kmem-trace attached (bpftrace attaches the same).
    pub tracepoints: Vec<String>,
    pub bpftrace_script: Option<String>,
    /// Why bpftrace was left out, if it was.
    pub bpftrace_skipped: Option<String>,
    pub untraced_per_second: f64,
    /// Median over rounds of (traced time / untraced time of the same round).
    pub kmem_trace_ratio: Option<f64>,
    /// Every round's ratio, in round order (the spread behind the median).
    pub kmem_trace_ratios: Vec<f64>,
    pub kmem_trace_no_history_ratios: Vec<f64>,
    pub bpftrace_ratios: Vec<f64>,
    /// Tracer CPU per lifecycle of every kmem-trace round, µs.
    pub kmem_trace_cpu_us_rounds: Vec<f64>,
    /// In-kernel cost per kmem-trace program, summed over the kmem-trace
    /// runs (both variants) while `kernel.bpf_stats_enabled` was on.
    pub bpf_programs: Vec<ProgCost>,
    /// Lifecycles those runs churned (to give runs and ns per lifecycle).
    pub bpf_lifecycles: usize,
    /// Why there are no BPF statistics, if there are none.
    pub bpf_stats_error: Option<String>,
    pub bpftrace_ratio: Option<f64>,
    pub kmem_trace_no_history_ratio: Option<f64>,
    /// The same with the churn's own CPU time instead of wall time: less
    /// sensitive to other load, blind to kworker and tracer-process costs.
    pub kmem_trace_cpu_ratio: Option<f64>,
    pub bpftrace_cpu_ratio: Option<f64>,
    /// Tracer CPU (user + system) per lifecycle, µs (median over rounds).
    pub kmem_trace_cpu_us: Option<f64>,
    pub bpftrace_cpu_us: Option<f64>,
    pub kmem_trace_no_history_cpu_us: Option<f64>,
    /// kmem-trace JSON lines about the bench's cgroups per lifecycle.
    pub kmem_trace_events_per_lifecycle: Option<f64>,
    pub kmem_trace_drops: u64,
    pub runs: Vec<Run>,
}

fn run_once(
    l: &Live,
    round: usize,
    v: Variant,
    script: Option<&str>,
    churn: Churn,
    ring: Option<u32>,
) -> Result<Run> {
    cgroup::settle(l.baseline);
    let needle = l.parent.name.as_str();
    let running = match v {
        Variant::Untraced => None,
        Variant::KmemTrace | Variant::KmemTraceNoHistory => {
            let mut extra: Vec<String> = ring
                .map(|r| vec!["--ring-buffer-size".into(), r.to_string()])
                .unwrap_or_default();
            if v == Variant::KmemTraceNoHistory {
                extra.push("--no-history".into());
            }
            Some(tracer::kmem_trace(l.bin, &extra, needle)?)
        }
        Variant::Bpftrace => Some(tracer::bpftrace(script.unwrap_or_default(), needle)?),
    };
    let tag = format!("r{round}-{v:?}-{}", ring.unwrap_or(0));
    let before = running.as_ref().map(|_| bpfstats::snapshot());
    let took = cgroup::churn(&l.parent.path, &tag, churn)?;
    let bpf = match (&before, v) {
        (Some(b), Variant::KmemTrace | Variant::KmemTraceNoHistory) => {
            // The offline events of the last lifecycles run a little later.
            std::thread::sleep(Duration::from_millis(200));
            bpfstats::delta(b, &bpfstats::snapshot())
        }
        _ => Vec::new(),
    };
    let tracer = match running {
        Some(r) => {
            // Let the tracer see this run's offline events before it stops.
            std::thread::sleep(Duration::from_millis(200));
            Some(r.stop()?)
        }
        None => None,
    };
    let seconds = took.wall.as_secs_f64();
    Ok(Run {
        round,
        variant: v,
        lifecycles: churn.lifecycles,
        seconds,
        per_second: churn.lifecycles as f64 / seconds,
        cpu_seconds: took.cpu_s,
        tracer,
        bpf,
    })
}

/// Starts kmem-trace once to see which tracepoints it attaches here.
fn discover(l: &Live) -> Result<Vec<String>> {
    let r = tracer::kmem_trace(l.bin, &[], "")?;
    let tps = tracer::kmem_trace_tracepoints();
    r.stop()?;
    Ok(tps)
}

/// Interleaved A/B churn: in every round each variant runs once, the order
/// alternating between rounds, so drift (other load, kernel state) hits all
/// variants alike; ratios are taken within a round, then the median.
pub fn churn_overhead(l: &Live) -> Result<ChurnResult> {
    let churn = Churn {
        lifecycles: l.lifecycles,
        jobs: 1,
        rate: None,
    };
    // Warm-up: page cache, slab caches, the kernel's cgroup ID allocator.
    cgroup::churn(
        &l.parent.path,
        "warmup",
        Churn {
            lifecycles: 100,
            ..churn
        },
    )?;
    let tracepoints = discover(l)?;
    let (mut script, mut skipped) = (None, None);
    if l.bpftrace {
        match tracer::bpftrace_script(&tracepoints) {
            Ok(s) => script = Some(s),
            Err(e) => skipped = Some(e.to_string()),
        }
    } else {
        skipped = Some("bpftrace is not installed".into());
    }
    let mut variants = vec![
        Variant::Untraced,
        Variant::KmemTrace,
        Variant::KmemTraceNoHistory,
    ];
    if script.is_some() {
        variants.push(Variant::Bpftrace);
    }
    // Switched on for the whole churn bench (every variant pays for it alike:
    // two clock reads per program run, bpftrace's programs too).
    let stats = bpfstats::StatsEnabled::on();
    let mut runs = Vec::new();
    for round in 0..l.rounds {
        let mut order = variants.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        let k = (round / 2) % order.len();
        order.rotate_left(k);
        for v in order {
            let run = run_once(l, round, v, script.as_deref(), churn, None)?;
            eprintln!(
                "bench: churn round {round} {v:?}: {} lifecycles in {:.3}s ({:.0}/s)",
                run.lifecycles, run.seconds, run.per_second
            );
            runs.push(run);
        }
    }
    let of = |v: Variant| runs.iter().filter(move |r| r.variant == v);
    let stats_error = stats.err().map(|e| format!("{e:#}"));
    let rounds_by = |v: Variant, m: fn(&Run) -> f64| -> Vec<f64> {
        (0..l.rounds)
            .filter_map(|round| {
                let t = m(of(v).find(|r| r.round == round)?);
                let u = m(of(Variant::Untraced).find(|r| r.round == round)?);
                Some(t / u)
            })
            .collect()
    };
    let ratio_by = |v: Variant, m: fn(&Run) -> f64| median(&rounds_by(v, m));
    let ratios = |v: Variant| rounds_by(v, |r| r.seconds);
    let ratio = |v: Variant| ratio_by(v, |r| r.seconds);
    let cpu_ratio = |v: Variant| ratio_by(v, |r| r.cpu_seconds);
    let cpu_rounds = |v: Variant| -> Vec<f64> {
        of(v)
            .filter_map(|r| {
                r.tracer
                    .as_ref()
                    .map(|t| t.cpu_s * 1e6 / r.lifecycles as f64)
            })
            .collect()
    };
    let cpu = |v: Variant| median(&cpu_rounds(v));
    let kmem = |r: &&Run| matches!(r.variant, Variant::KmemTrace | Variant::KmemTraceNoHistory);
    let bpf_programs = bpfstats::total(runs.iter().filter(kmem).flat_map(|r| &r.bpf));
    let per_lc: Vec<f64> = of(Variant::KmemTrace)
        .filter_map(|r| {
            r.tracer
                .as_ref()
                .map(|t| t.ours as f64 / r.lifecycles as f64)
        })
        .collect();
    Ok(ChurnResult {
        lifecycles: l.lifecycles,
        rounds: l.rounds,
        untraced_per_second: median(
            &of(Variant::Untraced)
                .map(|r| r.per_second)
                .collect::<Vec<_>>(),
        )
        .unwrap_or(0.0),
        kmem_trace_ratio: ratio(Variant::KmemTrace),
        kmem_trace_ratios: ratios(Variant::KmemTrace),
        kmem_trace_no_history_ratios: ratios(Variant::KmemTraceNoHistory),
        bpftrace_ratios: ratios(Variant::Bpftrace),
        kmem_trace_cpu_us_rounds: cpu_rounds(Variant::KmemTrace),
        bpf_lifecycles: runs
            .iter()
            .filter(kmem)
            .filter(|r| !r.bpf.is_empty())
            .map(|r| r.lifecycles)
            .sum(),
        bpf_stats_error: stats_error.or_else(|| {
            bpf_programs
                .is_empty()
                .then(|| "bpftool showed no kt_* programs with statistics".into())
        }),
        bpf_programs,
        bpftrace_ratio: ratio(Variant::Bpftrace),
        kmem_trace_no_history_ratio: ratio(Variant::KmemTraceNoHistory),
        kmem_trace_no_history_cpu_us: cpu(Variant::KmemTraceNoHistory),
        kmem_trace_cpu_ratio: cpu_ratio(Variant::KmemTrace),
        bpftrace_cpu_ratio: cpu_ratio(Variant::Bpftrace),
        kmem_trace_cpu_us: cpu(Variant::KmemTrace),
        bpftrace_cpu_us: cpu(Variant::Bpftrace),
        kmem_trace_events_per_lifecycle: median(&per_lc),
        kmem_trace_drops: of(Variant::KmemTrace)
            .filter_map(|r| r.tracer.as_ref().and_then(|t| t.drops))
            .sum(),
        tracepoints,
        bpftrace_script: script,
        bpftrace_skipped: skipped,
        runs,
    })
}

/// One traced full-speed (or rate-limited) run for the drop figures.
#[derive(Debug, Serialize)]
pub struct DropRun {
    pub ring_bytes: u32,
    pub target_per_second: Option<f64>,
    pub per_second: f64,
    pub drops: u64,
}

#[derive(Debug, Serialize)]
pub struct DropResult {
    pub jobs: usize,
    pub lifecycles: usize,
    /// The machine's full untraced churn rate (all cores churning).
    pub untraced_per_second: f64,
    /// kmem-trace with its default ring buffer at that full speed.
    pub at_full: DropRun,
    /// Smaller rings at full speed, down to the first that drops.
    pub ring_ramp: Vec<DropRun>,
    /// With the smallest ring that dropped: rates tried, down to one without drops.
    pub rate_ramp: Vec<DropRun>,
    /// Highest rate seen with zero drops at the default ring.
    pub no_drop_per_second: f64,
}

/// Default `--ring-buffer-size` of `kmem-trace watch`
/// (`kmem_trace::probes::DEFAULT_RING_BYTES`).
pub const DEFAULT_RING: u32 = 1 << 20;

fn drop_run(l: &Live, churn: Churn, ring: u32, round: usize) -> Result<DropRun> {
    let run = run_once(l, round, Variant::KmemTrace, None, churn, Some(ring))?;
    let drops = run.tracer.as_ref().and_then(|t| t.drops).unwrap_or(0);
    eprintln!(
        "bench: drops: ring {ring} B, target {:?}/s: {:.0}/s, {drops} dropped",
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

/// Churn with every core, untraced then traced; then smaller rings until one
/// drops, and with that ring lower rates until none drops.
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
    let at_full = drop_run(l, churn, DEFAULT_RING, 200)?;
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
        let r = drop_run(l, churn, ring, 300 + i)?;
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
            let r = drop_run(
                l,
                Churn {
                    rate: Some(full * frac),
                    ..churn
                },
                ring,
                400 + i,
            )?;
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
    Ok(DropResult {
        jobs,
        lifecycles: l.lifecycles,
        untraced_per_second: full,
        at_full,
        ring_ramp,
        rate_ramp,
        no_drop_per_second: no_drop,
    })
}

/// Start-up: exec of `kmem-trace watch` to its "watching with" line.
#[derive(Debug, Serialize)]
pub struct StartupResult {
    pub runs_ms: Vec<f64>,
    pub median_ms: f64,
    /// Resident set of the idle `watch` process right after start-up, KiB.
    pub idle_rss_kib: Option<u64>,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub fn startup(bin: &Path, runs: usize) -> Result<StartupResult> {
    let mut ms = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let r = tracer::kmem_trace(bin, &[], "")?;
        ms.push(r.ready_after.as_secs_f64() * 1e3);
        std::thread::sleep(Duration::from_millis(300));
        rss.extend(rss_kib(r.pid()));
        r.stop()?;
    }
    eprintln!("bench: start-up runs (ms): {ms:.0?}");
    Ok(StartupResult {
        median_ms: median(&ms).unwrap_or(0.0),
        idle_rss_kib: rss.iter().max().copied(),
        runs_ms: ms,
    })
}
