//! `cargo xtask bench-census`: how long a census of many memcgs takes. Creates
//! N memcgs under a parent named for the run, times `kmem-trace census --json`
//! several times (the census reports its own phases), prints the numbers and
//! per-memcg ratios, and removes everything it created, also on failure.
//! Holds the kernel lock (`/tmp/kmem-trace-kernel.lock`) while it runs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use crate::{
    bench::cgroup::{memory_root, RunParent},
    util::{self, sh},
};

#[derive(Args)]
pub struct BenchCensusArgs {
    /// memcgs to create.
    #[arg(long, default_value_t = 10_000)]
    pub memcgs: usize,
    /// Children per intermediate cgroup (the tree is two levels deep).
    #[arg(long, default_value_t = 100)]
    pub fanout: usize,
    /// Census runs to time.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// kmem-trace binary to time (default: build and use target/release/kmem-trace).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
}

pub fn run(args: &BenchCensusArgs) -> Result<()> {
    if !util::is_root() {
        bail!("bench-census creates cgroups and loads BPF: run it as root");
    }
    if args.memcgs == 0 || args.fanout == 0 || args.runs == 0 {
        bail!("--memcgs, --fanout and --runs must be at least 1");
    }
    let bin = match &args.binary {
        Some(b) => b.clone(),
        None => {
            sh(Command::new(util::cargo()).current_dir(util::root()).args([
                "build",
                "--release",
                "-p",
                "kmem-trace",
            ]))?;
            util::root().join("target/release/kmem-trace")
        }
    };
    let lock = util::KernelLock::take();
    let parent = RunParent::new(&memory_root()?, "census")?;
    let v2 = parent.path.join("cgroup.subtree_control").exists();
    let mut created = 0;

    let base = census(&bin)?;
    eprintln!(
        "bench-census: baseline {} memcgs; creating {} under {}",
        base.memcgs,
        args.memcgs,
        parent.path.display()
    );
    let t = Instant::now();
    let mut g = 0;
    while created < args.memcgs {
        let group = parent.path.join(format!("g{g}"));
        g += 1;
        fs::create_dir(&group).with_context(|| format!("creating {}", group.display()))?;
        created += 1;
        if v2 {
            fs::write(group.join("cgroup.subtree_control"), "+memory")?;
        }
        for c in 0..args.fanout {
            if created >= args.memcgs {
                break;
            }
            let d = group.join(format!("c{c}"));
            fs::create_dir(&d).with_context(|| format!("creating {}", d.display()))?;
            created += 1;
        }
    }
    eprintln!(
        "bench-census: created {} memcgs in {:.2}s",
        created,
        t.elapsed().as_secs_f64()
    );

    let mut runs = Vec::new();
    for _ in 0..args.runs {
        runs.push(census(&bin)?);
    }
    print_report(&base, &runs, created);
    let t = Instant::now();
    drop(parent);
    eprintln!(
        "bench-census: removed {} cgroups in {:.2}s",
        created + 1,
        t.elapsed().as_secs_f64()
    );
    drop(lock);
    Ok(())
}

/// One timed run of `kmem-trace census --json`.
struct Run {
    memcgs: u64,
    dying: u64,
    wall_ms: f64,
    /// Reconciliation: the cgroupfs walk for the kernel counts (not the census).
    counts_ms: f64,
    timing: Value,
}

fn census(bin: &Path) -> Result<Run> {
    let t = Instant::now();
    let out = Command::new(bin)
        .args(["census", "--json"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let wall_ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        bail!(
            "kmem-trace census failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("census output is not JSON")?;
    if v["source"] != "bpf_iterator" {
        bail!(
            "the census ran counts only ({}); the benchmark needs the BPF iterator",
            v["fallback"]
        );
    }
    Ok(Run {
        memcgs: v["totals"]["memcgs"].as_u64().unwrap_or(0),
        dying: v["totals"]["dying"].as_u64().unwrap_or(0),
        wall_ms,
        counts_ms: v["counts_us"].as_f64().unwrap_or(0.0) / 1e3,
        timing: v["timing"].clone(),
    })
}

fn ms(t: &Value, k: &str) -> f64 {
    t[k].as_f64().unwrap_or(0.0) / 1e3
}

fn print_report(base: &Run, runs: &[Run], created: usize) {
    println!(
        "census benchmark: {created} memcgs created (+{} already there)",
        base.memcgs
    );
    println!(
        "{:>4} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "run",
        "memcgs",
        "dying",
        "walk",
        "read",
        "drain",
        "load",
        "btf",
        "census",
        "reconcile",
        "process",
        "µs/memcg"
    );
    let row = |label: &str, r: &Run| {
        let t = &r.timing;
        println!(
            "{:>4} {:>7} {:>6} {:>6.2}ms {:>6.2}ms {:>6.2}ms {:>6.1}ms {:>6.1}ms {:>6.1}ms {:>6.1}ms {:>7.1}ms {:>7.1}ms {:>9.3}",
            label,
            r.memcgs,
            r.dying,
            ms(t, "walk_us"),
            ms(t, "read_us"),
            ms(t, "drain_us"),
            ms(t, "load_us"),
            ms(t, "btf_us"),
            ms(t, "total_us"),
            ms(t, "cpu_us"),
            r.counts_ms,
            r.wall_ms,
            t["walk_us"].as_f64().unwrap_or(0.0) / r.memcgs.max(1) as f64
        );
    };
    row("base", base);
    for (i, r) in runs.iter().enumerate() {
        row(&(i + 1).to_string(), r);
    }
    let median = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let walk = median(&|r| ms(&r.timing, "walk_us"));
    let read = median(&|r| ms(&r.timing, "read_us"));
    let total = median(&|r| ms(&r.timing, "total_us"));
    let wall = median(&|r| r.wall_ms);
    let counts = median(&|r| r.counts_ms);
    let cpu = median(&|r| ms(&r.timing, "cpu_us"));
    let load = median(&|r| ms(&r.timing, "load_us"));
    let n = runs[0].memcgs.max(1) as f64;
    println!(
        "median of {}: walk {walk:.2} ms ({:.2} µs/memcg), read() {read:.2} ms, census {total:.1} ms \
         wall / {cpu:.1} ms CPU (BTF parsing and object load {load:.1} ms, independent of the memcg count); \
         reconciliation walk of cgroupfs {counts:.1} ms; whole process {wall:.1} ms",
        runs.len(),
        walk * 1e3 / n
    );
    let base_walk = ms(&base.timing, "walk_us");
    println!(
        "scaling: {} → {} memcgs: walk {:.2} → {walk:.2} ms ({:.1}x for {:.1}x memcgs)",
        base.memcgs,
        runs[0].memcgs,
        base_walk,
        walk / base_walk.max(1e-3),
        n / base.memcgs.max(1) as f64
    );
    let best = runs
        .iter()
        .map(|r| ms(&r.timing, "total_us"))
        .fold(f64::INFINITY, f64::min);
    println!(
        "verdict: census of {} memcgs {} 100 ms (median {total:.1} ms, best {best:.1} ms, load average {})",
        runs[0].memcgs,
        if total < 100.0 { "under" } else { "NOT under" },
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or("?")
    );
}
