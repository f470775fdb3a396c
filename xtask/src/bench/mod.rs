//! `cargo xtask bench [--quick]`: kmem-trace's performance figures. Churn
//! overhead against an untraced run and against bpftrace (interleaved A/B
//! rounds, ratios), the perf transport (`--transport perf`) beside the ring
//! buffer in the same rounds, drops at the machine's full churn rate and the
//! highest rate without drops for both transports, replay throughput,
//! census time, memory at 65,535 memcgs and start-up time. Prints a table,
//! writes `target/bench/results.json` and regenerates `docs/PERFORMANCE.md`
//! and the README's performance section (between markers) from it.
//! Targets are goals shown beside each figure, never gates: the command fails
//! only when it cannot measure.

mod bpfstats;
pub(crate) mod cgroup;
mod drops;
mod figures;
mod live;
mod offline;
mod perf_figures;
mod readme;
mod report;
mod rss;
mod tracer;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result};
use clap::Args;

use crate::util::{self, sh};

#[derive(Args)]
pub struct BenchArgs {
    /// A short run (fewer lifecycles, rounds and samples); writes
    /// target/bench/results-quick.json and leaves docs/PERFORMANCE.md and the
    /// README's performance section alone unless --docs is given.
    #[arg(long)]
    pub quick: bool,
    /// Memcg lifecycles per churn run (default 2000, quick 300).
    #[arg(long)]
    pub lifecycles: Option<usize>,
    /// A/B rounds (default 9, quick 3): per-round ratios spread by several per
    /// cent on a shared two-core machine, and the median of 9 moves less than
    /// that of 5.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Skip figures by name: churn, drops, startup, census, replay, memory;
    /// perf leaves the perf transport out of churn and drops.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
    /// Also regenerate docs/PERFORMANCE.md and the README's table after a --quick run.
    #[arg(long)]
    pub docs: bool,
    /// Do not touch docs/PERFORMANCE.md or README.md.
    #[arg(long, conflicts_with = "docs")]
    pub no_docs: bool,
    /// Measure nothing: regenerate docs/PERFORMANCE.md and the README's
    /// performance section from this results file.
    #[arg(long, value_name = "JSON")]
    pub from_json: Option<PathBuf>,
}

/// Packages the bench runs: the bpftrace baseline, bpftool (which tracepoints
/// kmem-trace attached), perf for profiling a figure that misses.
const BENCH_PACKAGES: &[&str] = &["bpftrace", "bpftool", "linux-perf"];

/// Median of `v` (mean of the middle two for even lengths); `None` if empty.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Waits (up to `max`) for the load to fall below half the cores, so a
/// figure is not taken in the middle of someone's build; measures anyway after.
fn quiet(what: &str, max: Duration) -> f64 {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        let l = load1();
        if l < cores * 0.5 || start.elapsed() > max {
            return l;
        }
        if !said {
            eprintln!("bench: load {l:.2} on {cores} cores; waiting up to {max:?} before {what}");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

/// Mounts tracefs for bpftrace when it is not mounted; unmounts on drop.
struct Tracefs(bool);

impl Tracefs {
    fn ensure() -> Tracefs {
        if Path::new("/sys/kernel/tracing/events").is_dir() {
            return Tracefs(false);
        }
        let ok =
            util::ok(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]));
        Tracefs(ok)
    }
}

impl Drop for Tracefs {
    fn drop(&mut self) {
        if self.0 {
            let _ = util::ok(Command::new("umount").arg("/sys/kernel/tracing"));
        }
    }
}

/// A section's results as JSON.
fn val<T: serde::Serialize>(v: Option<T>) -> Option<serde_json::Value> {
    v.and_then(|v| serde_json::to_value(v).ok())
}

fn skip(args: &BenchArgs, what: &str) -> bool {
    args.skip.iter().any(|s| s == what)
}

/// Runs a figure, keeping its error instead of stopping the bench.
fn attempt<T>(errors: &mut Vec<String>, what: &str, f: impl FnOnce() -> Result<T>) -> Option<T> {
    match f() {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = format!("{what}: {e:#}");
            eprintln!("bench: {msg}");
            errors.push(msg);
            None
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let root = util::root();
    let docs = root.join("docs/PERFORMANCE.md");
    if let Some(json) = &args.from_json {
        let s =
            std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
        let mut r: report::Results = serde_json::from_str(&s)?;
        // Figures are derived again, so a fix to the derivation reaches old results.
        r.finish();
        std::fs::write(&docs, report::markdown(&r))?;
        eprintln!("bench: wrote {}", docs.display());
        readme::write(&root, &r)?;
        return Ok(());
    }
    let (lifecycles, rounds) = if args.quick {
        (args.lifecycles.unwrap_or(300), args.rounds.unwrap_or(3))
    } else {
        (args.lifecycles.unwrap_or(2000), args.rounds.unwrap_or(9))
    };
    let is_root = util::is_root();
    crate::setup::run_setup(false)?;
    if is_root {
        crate::setup::apt_install(BENCH_PACKAGES, false)?;
    }
    sh(Command::new(util::cargo()).current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "kmem-trace",
    ]))?;
    sh(Command::new(util::cargo())
        .current_dir(&root)
        .args(["bench", "--no-run", "-p", "kmem-trace"])
        .args(["--bench", "replay", "--bench", "footprint"]))?;
    let bin = root.join("target/release/kmem-trace");

    let mut r = report::Results::new(args.quick, lifecycles, rounds);
    let mut errors = Vec::new();
    let live_wanted = ["churn", "drops", "startup"].iter().any(|s| !skip(args, s));
    if !is_root && live_wanted {
        errors.push(
            "churn, drops, start-up and census: skipped, they need root (cgroups and BPF)".into(),
        );
    }
    if is_root && live_wanted {
        // Held while the bench creates cgroups and loads BPF.
        let lock = util::KernelLock::take();
        let _tracefs = Tracefs::ensure();
        let bpftrace = util::which("bpftrace").is_some();
        let baseline = cgroup::kernel_memcgs().unwrap_or(0);
        let parent = cgroup::RunParent::new(&cgroup::memory_root()?, "churn")?;
        let l = live::Live {
            bin: &bin,
            parent: &parent,
            baseline,
            lifecycles,
            rounds,
            quick: args.quick,
            bpftrace,
            perf: !skip(args, "perf"),
        };
        if !skip(args, "startup") {
            r.load
                .push(("startup".into(), quiet("start-up", Duration::from_secs(60))));
            r.startup = val(attempt(&mut errors, "start-up", || {
                live::startup(&bin, if args.quick { 5 } else { 11 })
            }));
        }
        if !skip(args, "churn") {
            r.load
                .push(("churn".into(), quiet("churn", Duration::from_secs(120))));
            r.churn = val(attempt(&mut errors, "churn", || live::churn_overhead(&l)));
            // The load at the start alone misses what arrived during the rounds.
            r.load.push(("churn end".into(), load1()));
        }
        if !skip(args, "drops") {
            r.load
                .push(("drops".into(), quiet("drops", Duration::from_secs(60))));
            r.drops = val(attempt(&mut errors, "drops", || drops::drops(&l)));
        }
        drop(parent);
        drop(lock);
    }
    if is_root && !skip(args, "census") {
        // bench-census takes the kernel lock itself.
        let runs = if args.quick { 2 } else { 5 };
        for n in [1_000, 10_000] {
            r.load.push((
                format!("census {n}"),
                quiet("census", Duration::from_secs(60)),
            ));
            if let Some(c) = attempt(&mut errors, &format!("census of {n}"), || {
                offline::census(&bin, n, runs)
            }) {
                r.census.extend(val(Some(c)));
            }
        }
    }
    if !skip(args, "replay") {
        r.load
            .push(("replay".into(), quiet("replay", Duration::from_secs(120))));
        r.replay = val(attempt(&mut errors, "replay", || {
            offline::replay(args.quick)
        }));
    }
    if !skip(args, "memory") {
        r.load.push(("memory".into(), load1()));
        r.footprint = attempt(&mut errors, "memory", || offline::footprint(&bin));
    }
    r.errors = errors;
    r.finish();

    println!("{}", report::table(&r));
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let json = dir.join(if args.quick {
        "results-quick.json"
    } else {
        "results.json"
    });
    std::fs::write(&json, serde_json::to_string_pretty(&r)?)?;
    eprintln!("bench: wrote {}", json.display());
    if !args.no_docs && (!args.quick || args.docs) {
        std::fs::create_dir_all(root.join("docs"))?;
        std::fs::write(&docs, report::markdown(&r))?;
        eprintln!("bench: wrote {}", docs.display());
        readme::write(&root, &r)?;
    }
    Ok(())
}
