//! The bench's results: the figures with their targets, the terminal table,
//! the JSON file and `docs/PERFORMANCE.md` (generated; the hand-written
//! analysis comes from `analysis.md` beside this file).

use std::process::Command;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::figures::f;

/// One line of the table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    pub figure: String,
    pub value: Option<f64>,
    pub shown: String,
    /// The goal, if the figure has one (never a gate).
    pub target: Option<String>,
    pub met: Option<bool>,
    /// The figure's interval straddles its target: this run cannot tell.
    #[serde(default)]
    pub unresolved: bool,
    pub note: String,
}

/// Everything one bench run measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct Results {
    pub command: String,
    pub date: String,
    pub commit: String,
    pub machine: Value,
    pub quick: bool,
    pub lifecycles: usize,
    pub rounds: usize,
    /// 1-minute load average when each section started.
    pub load: Vec<(String, f64)>,
    pub figures: Vec<Figure>,
    pub churn: Option<Value>,
    pub drops: Option<Value>,
    pub startup: Option<Value>,
    pub census: Vec<Value>,
    pub replay: Option<Value>,
    pub footprint: Option<Value>,
    pub errors: Vec<String>,
}

fn output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|x| x.1.trim().to_string())
        .unwrap_or_default();
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    serde_json::json!({
        "kernel": kernel,
        "cpu": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "cgroup_memory": super::cgroup::memory_root().map(|p| p.display().to_string()).unwrap_or_default(),
        "bpftrace": output("bpftrace", &["--version"]),
    })
}

impl Results {
    pub fn new(quick: bool, lifecycles: usize, rounds: usize) -> Results {
        let root = crate::util::root();
        let root = root.to_string_lossy();
        let dirty = !output(
            "git",
            &["-C", &root, "status", "--porcelain", "--untracked-files=no"],
        )
        .is_empty();
        Results {
            command: format!("cargo xtask bench{}", if quick { " --quick" } else { "" }),
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            commit: format!(
                "{}{}",
                output("git", &["-C", &root, "rev-parse", "--short", "HEAD"]),
                if dirty { " + uncommitted changes" } else { "" }
            ),
            machine: machine(),
            quick,
            lifecycles,
            rounds,
            load: Vec::new(),
            figures: Vec::new(),
            churn: None,
            drops: None,
            startup: None,
            census: Vec::new(),
            replay: None,
            footprint: None,
            errors: Vec::new(),
        }
    }

    /// Derives the table's figures from the sections.
    pub fn finish(&mut self) {
        self.figures = super::figures::figures(self);
    }
}

pub fn status(x: &Figure) -> &'static str {
    match x.met {
        _ if x.unresolved => "unresolved",
        Some(true) => "met",
        Some(false) => "MISSED",
        None if x.value.is_none() && x.target.is_some() => "-",
        None => "",
    }
}

/// The terminal table.
pub fn table(r: &Results) -> String {
    let w0 = r
        .figures
        .iter()
        .map(|x| x.figure.chars().count())
        .max()
        .unwrap_or(10);
    let w1 = r
        .figures
        .iter()
        .map(|x| x.shown.chars().count())
        .max()
        .unwrap_or(10);
    let mut s = format!(
        "{} — {} — kernel {}, {} cores\n",
        r.command,
        r.date,
        r.machine["kernel"].as_str().unwrap_or("?"),
        r.machine["cores"]
    );
    let pad = |t: &str, w: usize| format!("{t}{}", " ".repeat(w.saturating_sub(t.chars().count())));
    s.push_str(&format!(
        "{}  {}  {:<16} {:<6}  note\n",
        pad("figure", w0),
        pad("value", w1),
        "target",
        "status"
    ));
    for x in &r.figures {
        s.push_str(&format!(
            "{}  {}  {:<16} {:<6}  {}\n",
            pad(&x.figure, w0),
            pad(&x.shown, w1),
            x.target.as_deref().unwrap_or(""),
            status(x),
            x.note
        ));
    }
    for e in &r.errors {
        s.push_str(&format!("error: {e}\n"));
    }
    s
}

/// The load each section started at, and whether the machine was busy
/// (1-minute load at or above half its cores when a section started, which
/// the bench waits out only up to a minute or two).
pub fn load_note(r: &Results) -> String {
    if r.load.is_empty() {
        return String::new();
    }
    let l: Vec<String> = r.load.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
    let cores = r.machine["cores"].as_f64().unwrap_or(2.0);
    let busy: Vec<&str> = r
        .load
        .iter()
        .filter(|(_, v)| *v >= cores * 0.5)
        .map(|(k, _)| k.as_str())
        .collect();
    let mut s = format!("1-minute load when each section started: {}.", l.join(", "));
    if !busy.is_empty() {
        s.push_str(&format!(
            " The machine was busy (load at or above half its {cores} cores) for: {}; other \
             work (builds, VMs) ran beside the bench, so wall-time figures are slower and \
             noisier than on a quiet machine.",
            busy.join(", ")
        ));
    }
    s.push_str("\n\n");
    s
}

/// docs/PERFORMANCE.md.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    s.push_str("# kmem-trace performance\n\n");
    s.push_str(&format!(
        "Generated by `{}` on {} at commit {}; regenerate it with the same command \
         (`cargo xtask bench --from-json target/bench/results.json` rewrites this file \
         from saved results). Targets are goals, never CI gates.\n\n",
        r.command, r.date, r.commit
    ));
    let m = &r.machine;
    s.push_str(&format!(
        "Machine: kernel {}, {} ({} cores, shared with other builds), {} GiB, memory cgroups at `{}`, {}.\n\n",
        m["kernel"].as_str().unwrap_or("?"),
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["memory_gib"],
        m["cgroup_memory"].as_str().unwrap_or("?"),
        m["bpftrace"].as_str().unwrap_or("no bpftrace")
    ));
    s.push_str(&load_note(r));
    s.push_str("| figure | value | target | status | note |\n|---|---|---|---|---|\n");
    for x in &r.figures {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            x.figure,
            x.shown,
            x.target.as_deref().unwrap_or(""),
            status(x),
            x.note
        ));
    }
    for e in &r.errors {
        s.push_str(&format!("\nNot measured — {e}\n"));
    }
    s.push_str("\n## Raw data of this run\n\n");
    if let Some(c) = &r.churn {
        s.push_str("### Churn rounds\n\n| round | variant | seconds | lifecycles/s | churn CPU s | tracer CPU s | tracer lines (ours) | drops |\n|---|---|---|---|---|---|---|---|\n");
        for run in c["runs"].as_array().into_iter().flatten() {
            let t = &run["tracer"];
            s.push_str(&format!(
                "| {} | {} | {:.3} | {:.0} | {:.3} | {} | {} | {} |\n",
                run["round"],
                run["variant"].as_str().unwrap_or(""),
                f(run, "seconds").unwrap_or(0.0),
                f(run, "per_second").unwrap_or(0.0),
                f(run, "cpu_seconds").unwrap_or(0.0),
                f(t, "cpu_s").map_or("".into(), |v| format!("{v:.2}")),
                if t.is_null() {
                    String::new()
                } else {
                    format!("{} ({})", t["lines"], t["ours"])
                },
                t["drops"].as_u64().map_or(String::new(), |d| d.to_string()),
            ));
        }
        let tps: Vec<&str> = c["tracepoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        s.push_str(&format!("\nkmem-trace attached: {}.\n", tps.join(", ")));
        let perf_tps: Vec<&str> = c["perf"]["tracepoints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if !perf_tps.is_empty() {
            s.push_str(&format!(
                "\nkmem-trace --transport perf attached: {}.\n",
                perf_tps.join(", ")
            ));
        }
        if let Some(script) = c["bpftrace_script"].as_str() {
            s.push_str(&format!("\nThe bpftrace baseline:\n\n```\n{script}```\n"));
        }
    }
    if let Some(d) = &r.drops {
        s.push_str(&format!(
            "\n### Drops\n\n{} workers, {} lifecycles a run; untraced full rate {:.0}/s. \
             The perf transport's sizes are per CPU.\n\n\
             | transport | buffer | target rate | reached | drops |\n|---|---|---|---|---|\n",
            d["jobs"],
            d["lifecycles"],
            f(d, "untraced_per_second").unwrap_or(0.0)
        ));
        let rows = [("ring buffer", d), ("perf", &d["perf"])]
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .flat_map(|(name, v)| {
                std::iter::once(&v["at_full"])
                    .chain(v["ring_ramp"].as_array().into_iter().flatten())
                    .chain(v["rate_ramp"].as_array().into_iter().flatten())
                    .map(move |x| (name, x))
            });
        for (name, x) in rows {
            s.push_str(&format!(
                "| {name} | {} KiB | {} | {:.0}/s | {} |\n",
                x["ring_bytes"].as_u64().unwrap_or(0) / 1024,
                f(x, "target_per_second").map_or("full".into(), |v| format!("{v:.0}/s")),
                f(x, "per_second").unwrap_or(0.0),
                x["drops"]
            ));
        }
    }
    if let Some(rep) = r.replay.as_ref().and_then(Value::as_array) {
        s.push_str("\n### Replay (criterion)\n\n| bench | events | median per pass | mean 95% CI | events/s |\n|---|---|---|---|---|\n");
        for x in rep {
            s.push_str(&format!(
                "| {} | {} | {:.2} ms | {:.2}–{:.2} ms | {:.2} M |\n",
                x["name"].as_str().unwrap_or(""),
                x["events"],
                f(x, "median_ns").unwrap_or(0.0) / 1e6,
                f(x, "mean_low_ns").unwrap_or(0.0) / 1e6,
                f(x, "mean_high_ns").unwrap_or(0.0) / 1e6,
                f(x, "events_per_second").unwrap_or(0.0) / 1e6
            ));
        }
    }
    if let Some(fp) = &r.footprint {
        s.push_str(&format!(
            "\n### Memory (footprint benchmark)\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(fp).unwrap_or_default()
        ));
    }
    for c in &r.census {
        s.push_str(&format!(
            "\n### Census of {} memcgs (`cargo xtask bench-census`)\n\n```\n{}```\n",
            c["created"],
            c["report"].as_str().unwrap_or("")
        ));
    }
    if let Some(st) = &r.startup {
        let runs: Vec<String> = st["runs_ms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .map(|v| format!("{v:.0}"))
            .collect();
        s.push_str(&format!(
            "\n### Start-up\n\nRuns (ms): {}.\n",
            runs.join(", ")
        ));
    }
    s.push('\n');
    s.push_str(include_str!("analysis.md"));
    s
}
