//! Figures from benchmark programs: replay throughput (criterion,
//! `kmem-trace/benches/replay.rs`), the memory of 65,535 tracked memcgs
//! (`kmem-trace/benches/footprint.rs`, then `kmem-trace replay` of the same
//! memcgs, see `rss.rs`) and the census time (the census
//! helper's `cargo xtask bench-census`, run as a child process).

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::util::{self, show};

/// Replay throughput of one criterion benchmark.
#[derive(Debug, Serialize)]
pub struct Replay {
    pub name: String,
    pub events: u64,
    /// Median time of one pass over the stream (ns).
    pub median_ns: f64,
    /// Criterion's 95% interval of the mean (ns).
    pub mean_low_ns: f64,
    pub mean_high_ns: f64,
    pub events_per_second: f64,
    /// Events/s of every criterion sample (its time per pass), in order.
    pub samples_events_per_second: Vec<f64>,
}

fn cargo_bench(bench: &str, args: &[&str]) -> Result<String> {
    cargo_bench_env(bench, args, None)
}

fn cargo_bench_env(bench: &str, args: &[&str], env: Option<(&str, &Path)>) -> Result<String> {
    let mut c = Command::new(util::cargo());
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.current_dir(util::root())
        .args([
            "bench",
            "--quiet",
            "-p",
            "kmem-trace",
            "--bench",
            bench,
            "--",
        ])
        .args(args);
    eprintln!("+ {}", show(&c));
    let out = c
        .output()
        .with_context(|| format!("running {}", show(&c)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            show(&c),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs the replay benchmarks and reads criterion's estimates.
pub fn replay(quick: bool) -> Result<Vec<Replay>> {
    let args: &[&str] = if quick {
        &[
            "--warm-up-time",
            "1",
            "--measurement-time",
            "3",
            "--sample-size",
            "10",
            "--noplot",
        ]
    } else {
        &[
            "--warm-up-time",
            "3",
            "--measurement-time",
            "10",
            "--sample-size",
            "30",
            "--noplot",
        ]
    };
    cargo_bench("replay", args)?;
    let dir = util::root().join("target/criterion/replay");
    let mut out = Vec::new();
    for name in ["core", "json"] {
        let read = |f: &str| -> Result<Value> {
            let p = dir.join(name).join("new").join(f);
            let s =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(serde_json::from_str(&s)?)
        };
        let est = read("estimates.json")?;
        let meta = read("benchmark.json")?;
        let events = meta["throughput"]["Elements"].as_u64().unwrap_or(0);
        let median_ns = est["median"]["point_estimate"].as_f64().unwrap_or(f64::NAN);
        let sample = read("sample.json")?;
        let per = |k: &str| -> Vec<f64> {
            sample[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_f64)
                .collect()
        };
        let samples_events_per_second = per("iters")
            .iter()
            .zip(per("times"))
            .map(|(iters, ns)| events as f64 * iters / (ns * 1e-9))
            .collect();
        out.push(Replay {
            name: format!("replay/{name}"),
            events,
            median_ns,
            mean_low_ns: est["mean"]["confidence_interval"]["lower_bound"]
                .as_f64()
                .unwrap_or(f64::NAN),
            mean_high_ns: est["mean"]["confidence_interval"]["upper_bound"]
                .as_f64()
                .unwrap_or(f64::NAN),
            events_per_second: events as f64 / (median_ns * 1e-9),
            samples_events_per_second,
        });
    }
    Ok(out)
}

/// The footprint benchmark's JSON line, and the RSS of the real binary
/// replaying the same 65,535 memcgs (the benchmark writes the recording).
pub fn footprint(bin: &Path) -> Result<Value> {
    let recording = util::root().join("target/bench/footprint-65535.kmt");
    std::fs::create_dir_all(recording.parent().context("recording directory")?)?;
    let out = cargo_bench_env(
        "footprint",
        &[],
        Some(("KMEM_TRACE_FOOTPRINT_RECORDING", &recording)),
    )?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the footprint benchmark printed no JSON line")?;
    let mut v: Value = serde_json::from_str(line)?;
    let rss = super::rss::replay_rss(bin, &recording);
    let _ = std::fs::remove_file(&recording);
    v["replay"] = serde_json::to_value(rss?)?;
    Ok(v)
}

/// One census size.
#[derive(Debug, Serialize)]
pub struct Census {
    pub created: usize,
    /// memcgs the census saw (created + the machine's own).
    pub memcgs: Option<u64>,
    /// Median census time as the census reports it (BTF, load, walk, read).
    pub census_ms: Option<f64>,
    /// Median of the in-kernel css walk alone.
    pub walk_ms: Option<f64>,
    /// Median wall time of the whole `kmem-trace census` process.
    pub process_ms: Option<f64>,
    /// The census bench's report, as printed.
    pub report: String,
}

/// A number right after `key` in `line` (`... census 12.3 ms ...`).
fn after(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(key)? + key.len()..];
    // Skip words between the key and the number (`(median 60.5 ms`).
    let start = rest.find(|c: char| c.is_ascii_digit())?;
    let num: String = rest[start..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse().ok()
}

/// `cargo xtask bench-census --memcgs N` (it takes the kernel lock itself).
pub fn census(bin: &Path, memcgs: usize, runs: usize) -> Result<Census> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    let mut c = Command::new(exe);
    c.args(["bench-census", "--memcgs", &memcgs.to_string()])
        .args(["--runs", &runs.to_string(), "--binary"])
        .arg(bin);
    eprintln!("+ {}", show(&c));
    let out = c
        .output()
        .with_context(|| format!("running {}", show(&c)))?;
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            show(&c),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let median = report.lines().find(|l| l.starts_with("median of"));
    let verdict = report.lines().find(|l| l.starts_with("verdict:"));
    Ok(Census {
        created: memcgs,
        memcgs: verdict
            .and_then(|l| after(l, "census of"))
            .map(|v| v as u64),
        census_ms: verdict.and_then(|l| after(l, "100 ms (")),
        walk_ms: median.and_then(|l| after(l, ": walk")),
        process_ms: median.and_then(|l| after(l, "whole process")),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::after;

    #[test]
    fn numbers_are_read_from_the_census_report() {
        let v = "verdict: census of 10028 memcgs under 100 ms (median 41.5 ms, best 40.0 ms)";
        assert_eq!(after(v, "census of"), Some(10028.0));
        assert_eq!(after(v, "100 ms ("), Some(41.5));
        let m = "median of 3: walk 1.20 ms (0.12 µs/memcg), read() 3.00 ms, census 41.5 ms \
                 (of which 30.0 ms BTF + load, independent of the memcg count); \
                 reconciliation walk of cgroupfs 20.0 ms; whole process 80.1 ms";
        assert_eq!(after(m, ": walk"), Some(1.2));
        assert_eq!(after(m, "whole process"), Some(80.1));
    }
}
