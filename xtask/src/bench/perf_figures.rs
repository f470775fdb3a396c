//! The perf transport's figures (`kmem-trace watch --transport perf`), each
//! beside the ring buffer's from the same run: churn time against the
//! untraced run and against the ring-buffer run of the same round, tracer and
//! in-kernel CPU, drops at full rate and the highest rate without drops.
//! Ratios within one run are what counts on a shared machine, so every
//! figure here is one or carries one.

use serde_json::Value;

use super::{
    drops::DEFAULT_RING,
    figures::{every, f, fig, interval, list, num, smallest_clean_buffer},
    report::Figure,
};

/// The sum of `run_time_ns` of `progs` per lifecycle, µs.
fn bpf_us(progs: &Value, lifecycles: Option<f64>) -> Option<f64> {
    let progs = progs.as_array().filter(|p| !p.is_empty())?;
    let n = lifecycles.filter(|n| *n > 0.0)?;
    let ns: f64 = progs.iter().filter_map(|p| f(p, "run_time_ns")).sum();
    Some(ns / n / 1e3)
}

/// `a / b`, shown with three decimals, or "-".
fn over(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.3}", a / b),
        _ => "-".into(),
    }
}

/// Churn figures of the perf transport (after the ring buffer's).
pub fn churn(churn: &Value, out: &mut Vec<Figure>) {
    if churn.is_null() {
        return;
    }
    let p = &churn["perf"];
    if p.is_null() {
        out.push(fig(
            "churn time, kmem-trace --transport perf / untraced",
            None,
            String::new(),
            None,
            churn["perf_skipped"]
                .as_str()
                .map_or("not measured".into(), |s| format!("skipped: {s}")),
        ));
        return;
    }
    let rounds = list(&p["ratios"]);
    let ratio = f(p, "ratio");
    let tps: Vec<&str> = p["tracepoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    // The old-kernel object has no resident hooks: a perf run does less per
    // lifecycle than a ring-buffer run, which the reader of a ratio must know.
    let missing: Vec<&str> = churn["tracepoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| !tps.contains(t))
        .collect();
    out.push(fig(
        "churn time, kmem-trace --transport perf / untraced",
        ratio,
        format!("{:.3}{}", ratio.unwrap_or(0.0), interval(&rounds, 3)),
        None,
        format!(
            "perf buffers (the old-kernel object), with history, in the same interleaved rounds; \
             rounds {}; in-line CPU {}; linked to {}{}",
            every(&rounds, 3),
            num(f(p, "cpu_ratio"), 3),
            if tps.is_empty() {
                "-".to_string()
            } else {
                tps.join(", ")
            },
            if missing.is_empty() {
                String::new()
            } else {
                format!(
                    "; not linked, unlike the ring-buffer object: {} (the old-kernel object has no resident hooks)",
                    missing.join(", ")
                )
            }
        ),
    ));
    let vs = list(&p["vs_ringbuf_ratios"]);
    let v = f(p, "vs_ringbuf_ratio");
    out.push(fig(
        "churn time, perf / ring buffer",
        v,
        format!("{:.3}{}", v.unwrap_or(0.0), interval(&vs, 3)),
        None,
        format!(
            "per round, the perf run's time over the ring-buffer run's (both with history), median; \
             rounds {}; in-line CPU perf / ring buffer {}",
            every(&vs, 3),
            num(f(p, "cpu_vs_ringbuf_ratio"), 3)
        ),
    ));
    let cpu = f(p, "cpu_us");
    let ring_cpu = f(churn, "kmem_trace_cpu_us");
    out.push(fig(
        "tracer CPU per lifecycle, kmem-trace --transport perf",
        cpu,
        format!("{:.1} µs", cpu.unwrap_or(0.0)),
        None,
        format!(
            "user+system of the tracer process, median; rounds {} µs; perf / ring buffer {}; \
             lines about the bench's cgroups per lifecycle {} (ring buffer {}); drops {}",
            every(&list(&p["cpu_us_rounds"]), 1),
            over(cpu, ring_cpu),
            num(f(p, "events_per_lifecycle"), 2),
            num(f(churn, "kmem_trace_events_per_lifecycle"), 2),
            p["drops"]
        ),
    ));
    let bpf = bpf_us(&p["bpf_programs"], f(p, "bpf_lifecycles"));
    let ring_bpf = bpf_us(&churn["bpf_programs"], f(churn, "bpf_lifecycles"));
    let per_prog: Vec<String> = p["bpf_programs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| {
            let runs = f(x, "runs").filter(|r| *r > 0.0)?;
            Some(format!(
                "{} {:.0} ns/run",
                x["name"].as_str().unwrap_or("?"),
                f(x, "run_time_ns")? / runs
            ))
        })
        .collect();
    out.push(fig(
        "in-kernel BPF time per lifecycle, kmem-trace --transport perf",
        bpf,
        format!("{:.2} µs", bpf.unwrap_or(0.0)),
        None,
        if bpf.is_some() {
            format!(
                "perf / ring buffer {}; {}",
                over(bpf, ring_bpf),
                per_prog.join(", ")
            )
        } else {
            "no BPF statistics for the perf runs".into()
        },
    ));
}

/// Drop figures of the perf transport (after the ring buffer's).
pub fn drops(drops: &Value, out: &mut Vec<Figure>) {
    if drops.is_null() {
        return;
    }
    let p = &drops["perf"];
    let kib = |b: f64| {
        let k = b / 1024.0;
        if k >= 1024.0 {
            format!("{:.0} MiB", k / 1024.0)
        } else {
            format!("{k:.0} KiB")
        }
    };
    // Results without the perf search still name the size it would use.
    let size = kib(f(p, "at_full.ring_bytes").unwrap_or(f64::from(DEFAULT_RING)));
    let d = f(p, "at_full.drops");
    out.push(fig(
        &format!("drops at full churn rate, perf (default {size} per-CPU buffers)"),
        d,
        format!("{:.0}", d.unwrap_or(0.0)),
        Some(("0", d == Some(0.0))),
        if p.is_null() {
            drops["perf_skipped"]
                .as_str()
                .map_or("not measured".into(), |s| format!("skipped: {s}"))
        } else {
            format!(
                "traced rate reached {:.0}/s, right after the ring buffer's run at the same full rate",
                f(p, "at_full.per_second").unwrap_or(0.0)
            )
        },
    ));
    if p.is_null() {
        return;
    }
    let nd = f(p, "no_drop_per_second").filter(|v| *v > 0.0);
    let ring_nd = f(drops, "no_drop_per_second").filter(|v| *v > 0.0);
    let smallest = smallest_clean_buffer(p);
    let first_drop = p["ring_ramp"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| f(x, "drops").unwrap_or(0.0) > 0.0);
    out.push(fig(
        "highest churn rate without drops, perf",
        nd,
        format!("≥ {:.0} lifecycles/s", nd.unwrap_or(0.0)),
        None,
        format!(
            "perf / ring buffer {}; traced / untraced full rate {}; smallest per-CPU buffer without \
             drops at full rate: {}; {}",
            over(nd, ring_nd),
            over(nd, f(drops, "untraced_per_second")),
            smallest.map_or("none tried".into(), |b| kib(b as f64)),
            first_drop.map_or("no smaller buffer dropped".into(), |x| format!(
                "{} per CPU dropped {:.0} at {:.0}/s",
                kib(f(x, "ring_bytes").unwrap_or(0.0)),
                f(x, "drops").unwrap_or(0.0),
                f(x, "per_second").unwrap_or(0.0)
            ))
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn perf_figures_are_ratios_to_the_ring_buffer_of_the_same_run() {
        let c = json!({
            "tracepoints": ["cgroup_attach_task", "cgroup_mkdir"],
            "kmem_trace_cpu_us": 20.0,
            "kmem_trace_events_per_lifecycle": 7.0,
            "bpf_programs": [{"name": "kt_a", "runs": 10, "run_time_ns": 10000}],
            "bpf_lifecycles": 10,
            "perf": {
                "tracepoints": ["cgroup_mkdir"],
                "ratio": 1.1, "ratios": [1.0, 1.2],
                "vs_ringbuf_ratio": 1.05, "vs_ringbuf_ratios": [1.0, 1.1],
                "cpu_ratio": 1.02, "cpu_vs_ringbuf_ratio": 1.01,
                "cpu_us": 30.0, "cpu_us_rounds": [30.0],
                "events_per_lifecycle": 7.0, "drops": 0,
                "bpf_programs": [{"name": "kt_a", "runs": 10, "run_time_ns": 15000}],
                "bpf_lifecycles": 10
            }
        });
        let mut out = Vec::new();
        churn(&c, &mut out);
        let by = |name: &str| out.iter().find(|x| x.figure.starts_with(name)).unwrap();
        let t = &by("churn time, kmem-trace --transport perf").note;
        assert!(
            t.contains("not linked, unlike the ring-buffer object: cgroup_attach_task ("),
            "{t}"
        );
        assert_eq!(
            by("churn time, perf / ring buffer").shown,
            "1.050 [1.000–1.100]"
        );
        assert!(by("tracer CPU per lifecycle")
            .note
            .contains("perf / ring buffer 1.500"));
        let bpf = by("in-kernel BPF time per lifecycle");
        assert_eq!(bpf.shown, "1.50 µs");
        assert!(
            bpf.note.contains("perf / ring buffer 1.500"),
            "{}",
            bpf.note
        );

        let d = json!({
            "untraced_per_second": 1000.0,
            "no_drop_per_second": 900.0,
            "perf": {
                "at_full": {"ring_bytes": 1048576, "per_second": 800.0, "drops": 0},
                "ring_ramp": [{"ring_bytes": 4096, "per_second": 700.0, "drops": 12}],
                "rate_ramp": [],
                "no_drop_per_second": 800.0
            }
        });
        let mut out = Vec::new();
        drops(&d, &mut out);
        assert_eq!(
            out[0].figure,
            "drops at full churn rate, perf (default 1 MiB per-CPU buffers)"
        );
        assert_eq!(out[0].met, Some(true));
        let nd = &out[1];
        assert!(nd.note.contains("perf / ring buffer 0.889"), "{}", nd.note);
        assert!(nd.note.contains("traced / untraced full rate 0.800"));
        assert!(nd.note.contains("4 KiB per CPU dropped 12"), "{}", nd.note);

        let mut out = Vec::new();
        drops(&json!({"perf_skipped": "no object"}), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].shown, "not measured");
        assert!(out[0].figure.contains("(default 1 MiB per-CPU buffers)"));
        assert!(out[0].note.contains("skipped: no object"));
    }
}
