//! Figures measured on the running kernel: churn overhead (untraced vs
//! kmem-trace on the ring buffer and on perf buffers vs bpftrace, interleaved
//! A/B rounds, ratios of medians) and start-up time. The drop figures are in
//! `drops`.

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
    /// Measure `--transport perf` beside the ring buffer (not `--skip perf`).
    pub perf: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    Untraced,
    KmemTrace,
    /// kmem-trace without its history database (`--no-history`).
    KmemTraceNoHistory,
    /// kmem-trace on the old-kernel object (`--transport perf`: perf buffers),
    /// with its history like `KmemTrace`, so the two differ by the transport.
    KmemTracePerf,
    Bpftrace,
}

impl Variant {
    /// A `kmem-trace watch` run (its programs are `kt_*`, it prints a summary).
    pub fn is_kmem_trace(self) -> bool {
        matches!(
            self,
            Variant::KmemTrace | Variant::KmemTraceNoHistory | Variant::KmemTracePerf
        )
    }

    /// `watch` flags of the variant, beside `--json`.
    fn args(self) -> Vec<String> {
        match self {
            Variant::KmemTraceNoHistory => vec!["--no-history".into()],
            Variant::KmemTracePerf => PERF_ARGS.iter().map(|a| a.to_string()).collect(),
            _ => Vec::new(),
        }
    }
}

/// `watch` flags selecting the perf transport.
pub const PERF_ARGS: &[&str] = &["--transport", "perf"];

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
    /// `--transport perf` beside the ring buffer, from the same rounds.
    pub perf: Option<PerfChurn>,
    /// Why the perf transport was left out, if it was.
    pub perf_skipped: Option<String>,
    pub runs: Vec<Run>,
}

/// The perf transport's churn figures: kmem-trace with `--transport perf`
/// against the untraced run and against the ring-buffer run (`KmemTrace`,
/// also with history) of the same round.
#[derive(Debug, Serialize)]
pub struct PerfChurn {
    /// Tracepoints the perf object's programs are linked to.
    pub tracepoints: Vec<String>,
    /// Median over rounds of (perf time / untraced time of the same round).
    pub ratio: Option<f64>,
    pub ratios: Vec<f64>,
    /// Median over rounds of (perf time / ring-buffer time of the same round).
    pub vs_ringbuf_ratio: Option<f64>,
    pub vs_ringbuf_ratios: Vec<f64>,
    /// The same with the churn's own CPU time.
    pub cpu_ratio: Option<f64>,
    pub cpu_vs_ringbuf_ratio: Option<f64>,
    /// Tracer CPU per lifecycle, µs: median and every round.
    pub cpu_us: Option<f64>,
    pub cpu_us_rounds: Vec<f64>,
    /// JSON lines about the bench's cgroups per lifecycle (the ring buffer's
    /// is `kmem_trace_events_per_lifecycle`: both should see the same).
    pub events_per_lifecycle: Option<f64>,
    pub drops: u64,
    /// In-kernel cost per program over the perf runs.
    pub bpf_programs: Vec<ProgCost>,
    pub bpf_lifecycles: usize,
}

pub(super) fn run_once(
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
        _ if v.is_kmem_trace() => {
            // With perf, the size is that of each CPU's buffer.
            let mut extra: Vec<String> = ring
                .map(|r| vec!["--ring-buffer-size".into(), r.to_string()])
                .unwrap_or_default();
            extra.extend(v.args());
            Some(tracer::kmem_trace(l.bin, &extra, needle)?)
        }
        _ => Some(tracer::bpftrace(script.unwrap_or_default(), needle)?),
    };
    let tag = format!("r{round}-{v:?}-{}", ring.unwrap_or(0));
    let before = running.as_ref().map(|_| bpfstats::snapshot());
    let took = cgroup::churn(&l.parent.path, &tag, churn)?;
    let bpf = match &before {
        Some(b) if v.is_kmem_trace() => {
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

/// Starts kmem-trace (with `extra` flags) once to see which tracepoints it
/// attaches here.
fn discover(l: &Live, extra: &[String]) -> Result<Vec<String>> {
    let r = tracer::kmem_trace(l.bin, extra, "")?;
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
    let tracepoints = discover(l, &[])?;
    // A kernel or build without the old-kernel object leaves perf out; the
    // ring-buffer figures are still taken.
    let (perf_tracepoints, perf_skipped) = if !l.perf {
        (None, Some("--skip perf".to_string()))
    } else {
        match discover(l, &Variant::KmemTracePerf.args()) {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        }
    };
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
    if perf_tracepoints.is_some() {
        variants.push(Variant::KmemTracePerf);
    }
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
    let ratios = |v: Variant| per_round(&runs, l.rounds, v, Variant::Untraced, |r| r.seconds);
    let ratio = |v: Variant| median(&ratios(v));
    let cpu_ratio = |v: Variant| {
        median(&per_round(&runs, l.rounds, v, Variant::Untraced, |r| {
            r.cpu_seconds
        }))
    };
    let cpu = |v: Variant| median(&tracer_cpu_us(&runs, v));
    let kmem = |r: &&Run| matches!(r.variant, Variant::KmemTrace | Variant::KmemTraceNoHistory);
    let bpf_programs = bpfstats::total(runs.iter().filter(kmem).flat_map(|r| &r.bpf));
    let perf = perf_tracepoints.map(|tps| perf_churn(&runs, l.rounds, tps));
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
        kmem_trace_cpu_us_rounds: tracer_cpu_us(&runs, Variant::KmemTrace),
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
        kmem_trace_events_per_lifecycle: events_per_lifecycle(&runs, Variant::KmemTrace),
        kmem_trace_drops: drops_of(&runs, Variant::KmemTrace),
        perf,
        perf_skipped,
        tracepoints,
        bpftrace_script: script,
        bpftrace_skipped: skipped,
        runs,
    })
}

/// Per round, `m` of variant `v` over `m` of variant `base` in the same
/// round (rounds missing either are left out), in round order.
fn per_round(
    runs: &[Run],
    rounds: usize,
    v: Variant,
    base: Variant,
    m: fn(&Run) -> f64,
) -> Vec<f64> {
    let find = |v: Variant, round: usize| runs.iter().find(|r| r.variant == v && r.round == round);
    (0..rounds)
        .filter_map(|round| Some(m(find(v, round)?) / m(find(base, round)?)))
        .collect()
}

/// Tracer CPU per lifecycle of every run of `v`, µs.
fn tracer_cpu_us(runs: &[Run], v: Variant) -> Vec<f64> {
    runs.iter()
        .filter(|r| r.variant == v)
        .filter_map(|r| {
            r.tracer
                .as_ref()
                .map(|t| t.cpu_s * 1e6 / r.lifecycles as f64)
        })
        .collect()
}

/// Median of the tracer's lines about our cgroups per lifecycle over the runs of `v`.
fn events_per_lifecycle(runs: &[Run], v: Variant) -> Option<f64> {
    let per: Vec<f64> = runs
        .iter()
        .filter(|r| r.variant == v)
        .filter_map(|r| {
            r.tracer
                .as_ref()
                .map(|t| t.ours as f64 / r.lifecycles as f64)
        })
        .collect();
    median(&per)
}

/// Drops the runs of `v` reported, summed.
fn drops_of(runs: &[Run], v: Variant) -> u64 {
    runs.iter()
        .filter(|r| r.variant == v)
        .filter_map(|r| r.tracer.as_ref().and_then(|t| t.drops))
        .sum()
}

/// The perf transport's figures from the interleaved rounds.
fn perf_churn(runs: &[Run], rounds: usize, tracepoints: Vec<String>) -> PerfChurn {
    let p = Variant::KmemTracePerf;
    let ratios = per_round(runs, rounds, p, Variant::Untraced, |r| r.seconds);
    let vs_ringbuf = per_round(runs, rounds, p, Variant::KmemTrace, |r| r.seconds);
    let cpu_rounds = tracer_cpu_us(runs, p);
    let perf_runs = || runs.iter().filter(move |r| r.variant == p);
    PerfChurn {
        tracepoints,
        ratio: median(&ratios),
        ratios,
        vs_ringbuf_ratio: median(&vs_ringbuf),
        vs_ringbuf_ratios: vs_ringbuf,
        cpu_ratio: median(&per_round(runs, rounds, p, Variant::Untraced, |r| {
            r.cpu_seconds
        })),
        cpu_vs_ringbuf_ratio: median(&per_round(runs, rounds, p, Variant::KmemTrace, |r| {
            r.cpu_seconds
        })),
        cpu_us: median(&cpu_rounds),
        cpu_us_rounds: cpu_rounds,
        events_per_lifecycle: events_per_lifecycle(runs, p),
        drops: drops_of(runs, p),
        bpf_programs: bpfstats::total(perf_runs().flat_map(|r| &r.bpf)),
        bpf_lifecycles: perf_runs()
            .filter(|r| !r.bpf.is_empty())
            .map(|r| r.lifecycles)
            .sum(),
    }
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
