//! The outputs of `vm-test --scenario exhaustion` on the host: the guest's
//! artifacts (the HTML incident report) beside the console log, and the
//! metric series the guest scraped from `kmem-trace serve` written as a
//! `promtool test rules` file that checks `deploy/prometheus/rules.yml`'s ID
//! and zombie alerts fire on them (run here when promtool is installed).

use std::{fs, path::Path, process::Command};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::results::RunResult;

/// Grid of the promtool series (the guest scrapes every 2 s).
const STEP_S: f64 = 10.0;
/// After the run the node stays exhausted (nothing frees the leaked swap):
/// the last scraped value is held this many steps (40 min), long enough for
/// the rules' `for:` durations (5m, 15m, 30m).
const HOLD_STEPS: usize = 240;
/// Series written; all unlabelled gauges and counters of serve.
const SERIES: &[&str] = &[
    "kmem_trace_memcg_ids_in_use",
    "kmem_trace_memcg_id_limit",
    "kmem_trace_id_exhaustion_seconds",
    "kmem_trace_zombies",
    "kmem_trace_dying_memcgs",
    "kmem_trace_live_memcgs",
    "kmem_trace_leak_rate_per_hour",
    "kmem_trace_ring_drops_total",
];
/// Alerts that must fire at the end of the held tail, and none at the start.
const MUST_FIRE: &[&str] = &[
    "KmemTraceMemcgIdUsageHigh",
    "KmemTraceMemcgIdExhaustionSoon",
    "KmemTraceZombiesGrowing",
];

fn prom_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if s == "+Inf" => Some("Inf".into()),
        Value::Number(n) => n.as_f64().map(|f| format!("{f}")),
        _ => None,
    }
}

/// `values:` of one series on the [`STEP_S`] grid: at each step the last
/// scrape at or before it (`_` before the first one).
fn grid(series: &[Value], name: &str) -> Option<String> {
    let t0 = series.first()?["t"].as_f64()?;
    let t_end = series.last()?["t"].as_f64()?;
    let steps = ((t_end - t0) / STEP_S).floor() as usize;
    let mut out = Vec::new();
    let mut last: Option<String> = None;
    let mut i = 0;
    for k in 0..=steps {
        let at = t0 + k as f64 * STEP_S;
        while i < series.len() && series[i]["t"].as_f64().unwrap_or(f64::MAX) <= at {
            if let Some(v) = prom_value(&series[i]["v"][name]) {
                last = Some(v);
            }
            i += 1;
        }
        out.push(last.clone().unwrap_or_else(|| "_".into()));
    }
    for s in &series[i..] {
        if let Some(v) = prom_value(&s["v"][name]) {
            last = Some(v);
        }
    }
    let held = last?;
    out.push(format!("{held}x{HOLD_STEPS}"));
    Some(out.join(" "))
}

/// The promtool test file for one run's series; `None` without series.
pub fn promtool_test(rules: &Path, x: &Value) -> Option<String> {
    let series = x["series"].as_array()?;
    let steps = {
        let t0 = series.first()?["t"].as_f64()?;
        let t1 = series.last()?["t"].as_f64()?;
        ((t1 - t0) / STEP_S).floor() as usize
    };
    let mut input = String::new();
    for name in SERIES {
        if let Some(values) = grid(series, name) {
            input.push_str(&format!(
                "      - series: '{name}{{node=\"vm\"}}'\n        values: '{values}'\n"
            ));
        }
    }
    let end_s = (steps + HOLD_STEPS) as f64 * STEP_S;
    let firing: String = MUST_FIRE
        .iter()
        .map(|a| format!("          - labels: '{{alertname=\"{a}\"}}'\n            value: 1\n"))
        .collect();
    Some(format!(
        "# Series kmem-trace serve exported during `cargo xtask vm-test --scenario exhaustion`
# (scraped every 2 s in the guest, on a {STEP_S} s grid here); after the run the last
# value is held for {HOLD_STEPS} steps: the exhausted node stays exhausted.
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  - interval: {STEP_S}s
    input_series:
{input}    promql_expr_test:
      - expr: count by (alertname) (ALERTS{{alertstate=\"firing\"}})
        eval_time: 0s
        exp_samples: []
      - expr: count by (alertname) (ALERTS{{alertstate=\"firing\", alertname=~\"{names}\"}})
        eval_time: {end_s}s
        exp_samples:
{firing}",
        rules = rules.display(),
        names = MUST_FIRE.join("|"),
    ))
}

/// Writes the artifacts and the promtool file of every run; runs promtool
/// when installed and fails the run when the alerts do not fire.
pub fn write_outputs(root: &Path, out: &Path, runs: &mut [RunResult]) -> Result<()> {
    let rules = root.join("deploy/prometheus/rules.yml");
    for r in runs.iter_mut() {
        let stem = r.label.replace(' ', "-");
        for (name, text) in &r.artifacts {
            let p = out.join(format!("{stem}-{name}"));
            fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("vm-test: kept {}", p.display());
        }
        let Some(x) = r.exhaustion.as_mut() else {
            continue;
        };
        let Some(test) = promtool_test(&rules, x) else {
            continue;
        };
        let p = out.join(format!("{stem}-alerts_test.yml"));
        fs::write(&p, test)?;
        let verdict = match Command::new("promtool")
            .arg("test")
            .arg("rules")
            .arg(&p)
            .output()
        {
            Err(e) => json!({"file": p, "ran": false, "why": format!("promtool: {e}")}),
            Ok(o) => {
                let pass = o.status.success();
                if !pass && r.failure.is_none() {
                    r.failure = Some(format!(
                        "alerts did not fire on the recorded series ({})",
                        p.display()
                    ));
                    r.ok = false;
                }
                json!({"file": p, "ran": true, "pass": pass,
                       "output": String::from_utf8_lossy(&o.stdout).trim()})
            }
        };
        x["promtool"] = verdict;
    }
    Ok(())
}

/// Per run: every check as pass/FAIL with what it saw, the figures, promtool.
pub fn text(runs: &[RunResult]) -> String {
    let mut out = String::new();
    for r in runs {
        let Some(x) = &r.exhaustion else { continue };
        out.push_str(&format!(
            "\nID exhaustion on {} ({}):\n",
            r.label,
            x["status"].as_str().unwrap_or("?")
        ));
        for c in x["checks"].as_array().into_iter().flatten() {
            let verdict = if c["pass"] == true { "pass" } else { "FAIL" };
            out.push_str(&format!(
                "  {verdict:4}  {}: {}\n",
                c["check"].as_str().unwrap_or(""),
                c["saw"].as_str().unwrap_or("")
            ));
        }
        if let Some(p) = x.get("promtool") {
            let verdict = match (p["ran"].as_bool(), p["pass"].as_bool()) {
                (Some(true), Some(true)) => "pass",
                (Some(true), _) => "FAIL",
                _ => "not run",
            };
            out.push_str(&format!(
                "  {verdict:4}  alert rules fire on the recorded series: {}\n",
                p["file"].as_str().unwrap_or("")
            ));
        }
        out.push_str(&format!("  figures: {}\n", x["figures"]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_go_on_a_grid_and_hold_the_last_value() {
        let s = vec![
            json!({"t": 0.0, "v": {"kmem_trace_zombies": 1.0, "kmem_trace_id_exhaustion_seconds": "+Inf"}}),
            json!({"t": 12.0, "v": {"kmem_trace_zombies": 3.0, "kmem_trace_id_exhaustion_seconds": 50.0}}),
            json!({"t": 21.0, "v": {"kmem_trace_zombies": 4.0}}),
        ];
        assert_eq!(
            grid(&s, "kmem_trace_zombies").unwrap(),
            format!("1 1 3 4x{HOLD_STEPS}")
        );
        assert_eq!(
            grid(&s, "kmem_trace_id_exhaustion_seconds").unwrap(),
            format!("Inf Inf 50 50x{HOLD_STEPS}")
        );
        assert!(grid(&s, "kmem_trace_live_memcgs").is_none());
        let t = promtool_test(Path::new("/r.yml"), &json!({"series": s})).unwrap();
        assert!(t.contains("eval_time: 2420s"), "{t}");
    }

    #[test]
    fn text_shows_every_check_and_promtool() {
        let r = RunResult {
            label: "6.12 default".into(),
            exhaustion: Some(json!({
                "status": "fail",
                "checks": [{"check": "a", "pass": true, "saw": "x"},
                           {"check": "b", "pass": false, "saw": "y"}],
                "promtool": {"ran": true, "pass": false, "file": "f.yml"},
                "figures": {"leaked": 300},
            })),
            ..RunResult::default()
        };
        let t = text(&[r, RunResult::default()]);
        assert!(t.contains("pass  a: x"), "{t}");
        assert!(t.contains("FAIL  b: y"), "{t}");
        assert!(
            t.contains("FAIL  alert rules fire on the recorded series: f.yml"),
            "{t}"
        );
        assert_eq!(t.matches("ID exhaustion on").count(), 1);
    }
}
