//! The table's figures derived from a bench run's sections: each value with
//! its spread (every round, an interval) where the run has one, and its
//! target judged on that interval ("unresolved" when the interval straddles it).

use serde_json::Value;

use super::report::{Figure, Results};

pub fn fig(
    figure: &str,
    value: Option<f64>,
    shown: String,
    target: Option<(&str, bool)>,
    note: String,
) -> Figure {
    Figure {
        figure: figure.into(),
        value,
        shown: if value.is_some() {
            shown
        } else {
            "not measured".into()
        },
        target: target.map(|t| t.0.to_string()),
        met: target.and(value).and(target.map(|t| t.1)),
        unresolved: false,
        note,
    }
}

pub fn f(v: &Value, path: &str) -> Option<f64> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
}

pub fn figures(r: &Results) -> Vec<Figure> {
    let mut out = Vec::new();
    let null = Value::Null;
    let churn = r.churn.as_ref().unwrap_or(&null);
    let n = f(churn, "lifecycles").unwrap_or(0.0);
    for (label, key, extra) in [
        (
            "churn time, kmem-trace / untraced",
            "kmem_trace",
            String::new(),
        ),
        (
            "churn time, kmem-trace --no-history / untraced",
            "kmem_trace_no_history",
            "; the pipeline without the SQLite history".to_string(),
        ),
    ] {
        let ratio = f(churn, &format!("{key}_ratio"));
        let rounds = list(&churn[format!("{key}_ratios")]);
        let mut x = fig(
            label,
            ratio,
            format!("{:.3}{}", ratio.unwrap_or(0.0), interval(&rounds, 3)),
            Some(("≤ 1.03", ratio.unwrap_or(9.0) <= 1.03)),
            format!(
                "{n:.0} lifecycles × {} interleaved rounds, median of per-round ratios (min–max in brackets); \
                 rounds {}{extra}; untraced {:.0}/s",
                f(churn, "rounds").unwrap_or(0.0),
                every(&rounds, 3),
                f(churn, "untraced_per_second").unwrap_or(0.0)
            ),
        );
        judge(&mut x, &rounds, 1.03, 0.03, true);
        out.push(x);
    }
    let b = f(churn, "bpftrace_ratio");
    let b_rounds = list(&churn["bpftrace_ratios"]);
    out.push(fig(
        "churn time, bpftrace / untraced",
        b,
        format!("{:.3}{}", b.unwrap_or(0.0), interval(&b_rounds, 3)),
        None,
        churn["bpftrace_skipped"]
            .as_str()
            .map(|s| format!("skipped: {s}"))
            .unwrap_or_else(|| {
                format!(
                    "same tracepoints as kmem-trace (baseline); rounds {}",
                    every(&b_rounds, 3)
                )
            }),
    ));
    let cr = f(churn, "kmem_trace_cpu_ratio");
    out.push(fig(
        "churn CPU (in line), kmem-trace / untraced",
        cr,
        format!("{:.3}", cr.unwrap_or(0.0)),
        None,
        format!(
            "CPU of the churn and its children, robust to other load; bpftrace {}",
            num(f(churn, "bpftrace_cpu_ratio"), 3)
        ),
    ));
    let kc = f(churn, "kmem_trace_cpu_us");
    out.push(fig(
        "tracer CPU per lifecycle, kmem-trace",
        kc,
        format!("{:.1} µs", kc.unwrap_or(0.0)),
        None,
        format!(
            "user+system of the tracer process, median; rounds {} µs; --no-history {}; bpftrace {}",
            every(&list(&churn["kmem_trace_cpu_us_rounds"]), 1),
            f(churn, "kmem_trace_no_history_cpu_us").map_or("-".into(), |v| format!("{v:.1} µs")),
            f(churn, "bpftrace_cpu_us").map_or("-".into(), |v| format!("{v:.1} µs"))
        ),
    ));
    bpf_figures(churn, &mut out);
    super::perf_figures::churn(churn, &mut out);
    let drops = r.drops.as_ref().unwrap_or(&null);
    let full = f(drops, "untraced_per_second");
    out.push(fig(
        "full untraced churn rate",
        full,
        format!("{:.0} lifecycles/s", full.unwrap_or(0.0)),
        None,
        format!(
            "{} workers (one per core), {n:.0} lifecycles",
            f(drops, "jobs").unwrap_or(0.0)
        ),
    ));
    let d = f(drops, "at_full.drops");
    let ring = f(drops, "at_full.ring_bytes").unwrap_or(0.0) / 1024.0;
    let ring = if ring >= 1024.0 {
        format!("{:.0} MiB", ring / 1024.0)
    } else {
        format!("{ring:.0} KiB")
    };
    out.push(fig(
        &format!("drops at full churn rate (default {ring} ring)"),
        d,
        format!("{:.0}", d.unwrap_or(0.0)),
        Some(("0", d == Some(0.0))),
        format!(
            "traced rate reached {:.0}/s",
            f(drops, "at_full.per_second").unwrap_or(0.0)
        ),
    ));
    let nd = f(drops, "no_drop_per_second");
    let smallest = smallest_clean_buffer(drops);
    out.push(fig(
        "highest churn rate without drops",
        nd.filter(|v| *v > 0.0),
        format!("≥ {:.0} lifecycles/s", nd.unwrap_or(0.0)),
        None,
        format!(
            "the fastest this machine churns while traced (ring buffer); traced / untraced full rate {}; \
             smallest ring without drops at that rate: {}",
            match (nd.filter(|v| *v > 0.0), full.filter(|v| *v > 0.0)) {
                (Some(a), Some(b)) => format!("{:.3}", a / b),
                _ => "-".into(),
            },
            smallest.map_or("none tried".into(), |b| format!("{} KiB", b / 1024))
        ),
    ));
    super::perf_figures::drops(drops, &mut out);
    let replay = r
        .replay
        .as_ref()
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let eps = |name: &str| {
        replay
            .iter()
            .find(|x| x["name"] == name)
            .and_then(|x| f(x, "events_per_second"))
    };
    let core = eps("replay/core");
    let samples = |name: &str| {
        replay
            .iter()
            .find(|x| x["name"] == name)
            .map(|x| list(&x["samples_events_per_second"]))
            .unwrap_or_default()
    };
    let core_samples: Vec<f64> = samples("replay/core").iter().map(|v| v / 1e6).collect();
    let mut x = fig(
        "replay: decode + lifecycle + attribution",
        core,
        format!(
            "{:.2} M events/s{}",
            core.unwrap_or(0.0) / 1e6,
            interval(&core_samples, 2)
        ),
        Some(("≥ 5 M events/s", core.unwrap_or(0.0) >= 5e6)),
        format!(
            "one core, criterion median (min–max of its {} samples in brackets; the replay raw data has them all); \
             recorded 6.18 churn replicated; run-to-run spread on a loaded machine is larger than within a run",
            core_samples.len()
        ),
    );
    // No margin claimed: judged on the interval alone.
    judge(&mut x, &core_samples, 5.0, f64::INFINITY, false);
    out.push(x);
    let json = eps("replay/json");
    out.push(fig(
        "replay: the same + JSON output",
        json,
        format!(
            "{:.2} M events/s{}",
            json.unwrap_or(0.0) / 1e6,
            interval(
                &samples("replay/json")
                    .iter()
                    .map(|v| v / 1e6)
                    .collect::<Vec<_>>(),
                2
            )
        ),
        None,
        "watch::Pipeline with --json formatting into a sink".into(),
    ));
    for c in &r.census {
        let created = f(c, "created").unwrap_or(0.0);
        let ms = f(c, "census_ms");
        let target = (created >= 10_000.0).then_some(("< 100 ms", ms.unwrap_or(1e9) < 100.0));
        out.push(fig(
            &format!("census of {created:.0} memcgs"),
            ms,
            format!("{:.1} ms", ms.unwrap_or(0.0)),
            target,
            format!(
                "{} memcgs seen; in-kernel walk {:.2} ms; whole process {:.0} ms",
                f(c, "memcgs").unwrap_or(0.0),
                f(c, "walk_ms").unwrap_or(0.0),
                f(c, "process_ms").unwrap_or(0.0)
            ),
        ));
    }
    if r.census.is_empty() {
        out.push(fig(
            "census of 10000 memcgs",
            None,
            String::new(),
            Some(("< 100 ms", false)),
            "see errors".into(),
        ));
    }
    let idle = r.startup.as_ref().and_then(|s| f(s, "idle_rss_kib"));
    memory_figure(r.footprint.as_ref().unwrap_or(&null), idle, &mut out);
    let st = r.startup.as_ref().unwrap_or(&null);
    let ms = f(st, "median_ms");
    out.push(fig(
        "start-up: exec to probes attached",
        ms,
        format!("{:.0} ms", ms.unwrap_or(0.0)),
        Some(("≤ 300 ms", ms.unwrap_or(1e9) <= 300.0)),
        format!(
            "median of {} runs",
            st["runs_ms"].as_array().map_or(0, Vec::len)
        ),
    ));
    out
}

/// The in-kernel cost of each kmem-trace program (BPF run-time statistics),
/// then their sum per lifecycle, beside the tracer's CPU per lifecycle.
fn bpf_figures(churn: &Value, out: &mut Vec<Figure>) {
    if churn.is_null() {
        return;
    }
    let lifecycles = f(churn, "bpf_lifecycles").unwrap_or(0.0);
    let progs = churn["bpf_programs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut per_lifecycle = 0.0;
    for p in &progs {
        let runs = f(p, "runs").unwrap_or(0.0);
        let ns = f(p, "run_time_ns").unwrap_or(0.0);
        let per_run = (runs > 0.0).then(|| ns / runs);
        per_lifecycle += ns / lifecycles.max(1.0);
        out.push(fig(
            &format!("in-kernel, {}", p["name"].as_str().unwrap_or("?")),
            per_run,
            format!("{:.0} ns/run", per_run.unwrap_or(0.0)),
            None,
            format!(
                "{runs:.0} runs over {lifecycles:.0} lifecycles ({:.1} per lifecycle), {:.2} µs per lifecycle",
                runs / lifecycles.max(1.0),
                ns / lifecycles.max(1.0) / 1e3
            ),
        ));
    }
    let total = (!progs.is_empty() && lifecycles > 0.0).then_some(per_lifecycle / 1e3);
    out.push(fig(
        "in-kernel BPF time per lifecycle, kmem-trace",
        total,
        format!("{:.2} µs", total.unwrap_or(0.0)),
        None,
        churn["bpf_stats_error"].as_str().map_or_else(
            || {
                format!(
                    "sum of run_time_ns of its programs (kernel.bpf_stats_enabled during the churn bench) / lifecycles; \
                     tracer process CPU {} µs per lifecycle",
                    num(f(churn, "kmem_trace_cpu_us"), 1)
                )
            },
            |e| format!("no BPF statistics: {e}"),
        ),
    ));
}

/// A JSON array of numbers.
/// `v` with `digits` decimals, "-" when absent.
pub fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

pub fn list(v: &Value) -> Vec<f64> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .collect()
}

/// ` [min–max]` of `v`, or nothing for fewer than two values.
pub fn interval(v: &[f64], digits: usize) -> String {
    match minmax(v) {
        Some((lo, hi)) if v.len() > 1 => format!(" [{lo:.digits$}–{hi:.digits$}]"),
        _ => String::new(),
    }
}

/// Every value, comma-separated.
pub fn every(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let s: Vec<String> = v.iter().map(|x| format!("{x:.digits$}")).collect();
    s.join(", ")
}

fn minmax(v: &[f64]) -> Option<(f64, f64)> {
    let lo = v.iter().copied().reduce(f64::min)?;
    let hi = v.iter().copied().reduce(f64::max)?;
    Some((lo, hi))
}

/// Judges `x`'s target `limit` on the interval of `v` (`upper`: the target is
/// `≤ limit`, else `≥ limit`): met only when the whole interval meets it,
/// missed only when none of it does, otherwise unresolved — also when the
/// interval is wider than `margin` (what the target claims to resolve), which
/// the note then says.
pub fn judge(x: &mut Figure, v: &[f64], limit: f64, margin: f64, upper: bool) {
    let Some((lo, hi)) = minmax(v).filter(|_| v.len() > 1) else {
        return;
    };
    let (all, none) = if upper {
        (hi <= limit, lo > limit)
    } else {
        (lo >= limit, hi < limit)
    };
    // A wider interval than the margin the target claims to resolve cannot
    // say "met", even when every value is within it (a traced churn faster
    // than the untraced one is noise); every value missing is still a miss.
    let wide = hi - lo > margin;
    x.met = if all && !wide {
        Some(true)
    } else if none {
        Some(false)
    } else {
        None
    };
    x.unresolved = x.met.is_none();
    if wide {
        x.note.push_str(&format!(
            "; the interval ({:.3}) is wider than the target's margin ({margin}): this run cannot resolve the target",
            hi - lo
        ));
    }
}

/// Memory with 65,535 memcgs: the RSS of the real `kmem-trace replay` of a
/// recording of them at the end of the replay, less its own decoded copy of
/// the recording (which `watch`, streaming from the ring buffer, never holds).
fn memory_figure(fp: &Value, idle_kib: Option<f64>, out: &mut Vec<Figure>) {
    let mib = |kib: f64| kib / 1024.0;
    let rep = &fp["replay"];
    let end = f(rep, "rss_end_kib");
    let decoded = f(fp, "events").unwrap_or(0.0) * f(fp, "size_of_trace_event").unwrap_or(0.0);
    let decoded_mib = decoded / 1048576.0;
    let value = end.map(|e| mib(e) - decoded_mib);
    out.push(fig(
        "memory with 65,535 tracked memcgs",
        value,
        format!("{:.1} MiB", value.unwrap_or(0.0)),
        Some(("≤ 64 MiB", value.unwrap_or(1e9) <= 64.0)),
        format!(
            "measured: VmRSS of `kmem-trace replay` at its end {:.1} MiB (VmHWM {:.1} MiB; {} samples), \
             less its decoded copy of the recording {decoded_mib:.1} MiB ({:.0} events × {:.0} B, exact), \
             which watch does not hold (nor does replay hold watch's ring buffer, probes or history: \
             idle watch RSS {}); {:.0} memcgs, {:.0} dying, {:.0} residents; \
             heap count cross-check (footprint bench) {:.1} MiB of state, {:.0} B/memcg",
            mib(end.unwrap_or(0.0)),
            mib(f(rep, "hwm_kib").unwrap_or(0.0)),
            rep["samples"],
            f(fp, "events").unwrap_or(0.0),
            f(fp, "size_of_trace_event").unwrap_or(0.0),
            idle_kib.map_or("not measured".into(), |k| format!("{:.1} MiB", mib(k))),
            f(fp, "memcgs").unwrap_or(0.0),
            f(fp, "dying").unwrap_or(0.0),
            f(fp, "residents").unwrap_or(0.0),
            f(fp, "heap_bytes").unwrap_or(0.0) / 1048576.0,
            f(fp, "heap_bytes_per_memcg").unwrap_or(0.0)
        ),
    ));
}

/// The smallest buffer (`ring_bytes`) of a drops search (the ring buffer's, or
/// perf's per-CPU size) whose run dropped nothing, the full-rate run included.
pub fn smallest_clean_buffer(drops: &Value) -> Option<u64> {
    drops["ring_ramp"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&drops["at_full"]))
        .filter(|x| x["drops"] == 0)
        .filter_map(|x| x["ring_bytes"].as_u64())
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x() -> Figure {
        fig(
            "t",
            Some(1.0),
            "1".into(),
            Some(("≤ 1.03", true)),
            String::new(),
        )
    }

    #[test]
    fn a_target_is_judged_on_the_interval() {
        let mut a = x();
        judge(&mut a, &[1.00, 1.02], 1.03, 0.03, true);
        assert_eq!((a.met, a.unresolved), (Some(true), false));
        let mut w = x();
        judge(&mut w, &[0.60, 1.01], 1.03, 0.03, true);
        assert_eq!((w.met, w.unresolved), (None, true));
        let mut b = x();
        judge(&mut b, &[0.95, 1.07], 1.03, 0.03, true);
        assert_eq!((b.met, b.unresolved), (None, true));
        assert!(b.note.contains("cannot resolve"), "{}", b.note);
        let mut c = x();
        judge(&mut c, &[1.04, 1.05], 1.03, 0.03, true);
        assert_eq!((c.met, c.unresolved), (Some(false), false));
        let mut d = x();
        judge(&mut d, &[4.0e6, 4.5e6], 5e6, f64::INFINITY, false);
        assert_eq!(d.met, Some(false));
        assert_eq!(interval(&[1.0, 1.5, 1.2], 1), " [1.0–1.5]");
        assert_eq!(every(&[1.0, 1.25], 2), "1.00, 1.25");
    }
}
