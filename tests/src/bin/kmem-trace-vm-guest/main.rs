//! `kmem-trace-vm-guest`: the VM kernel matrix's scenario. As PID 1 of a test VM
//! it is the init (mounts, modules, data disk, memory controller), runs the
//! scenario once per hook family the kernel supports, reports on the serial
//! console (see `proto`) and powers off. `run` does the same on the machine it is
//! started on (the matrix's host row), under a parent cgroup named for the run.

mod census;
mod check;
mod compare;
mod exhaustion;
mod exhaustion_leak;
mod init;
mod pin_census;
mod pin_run;
mod pin_socket;
mod pins;
mod proto;
mod rows;
mod scenario;
mod swap_push;
mod sys;
mod toggle;
mod visibility;
mod watches;

use std::{
    path::PathBuf,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    check::{Expect, Vis},
    scenario::{Plan, Release},
};

/// Hook families, and the perf rows: the old-kernel object forced (`watch
/// --transport perf`, hooks chosen per point, and its tracepoint programs
/// alone), rows of their own that must agree with the families on every point
/// they see.
const FAMILIES: [&str; 5] = [
    "fentry",
    "kprobe",
    "tracepoint",
    visibility::PERF,
    visibility::PERF_TP,
];

const USAGE: &str = "usage: kmem-trace-vm-guest run --kmem-trace BIN --data-dir DIR \
[--family F]... [--force FAMILY:POINT=SYMBOL]... [--churn N] [--pins N] \
[--release fadvise|drop-caches]
As PID 1 of a VM it reads kmt.families=, kmt.force=, kmt.churn=, kmt.pins=, kmt.scenario=matrix|exhaustion from the kernel command line.";

fn main() -> ExitCode {
    if std::process::id() == 1 {
        init_main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return match scenario::child(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kmem-trace-vm-guest child: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if args.first().map(String::as_str) != Some("run") {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    }
    stay_on_one_cpu();
    match host_plan(&args[1..]).and_then(|p| run_all(&p, false)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            proto::emit("error", json!({"msg": format!("{e:#}")}));
            proto::emit("done", json!({"ok": false}));
            ExitCode::FAILURE
        }
    }
}

/// Keeps the host run (and every process it starts) on the CPU it started on.
/// Folios a process adds to the page cache wait in a per-CPU LRU batch, which
/// holds a reference until that CPU drains it; on an idle CPU of a multi-core
/// host that can take long, and a pin then outlives its release. On one CPU
/// the later steps' page-cache traffic drains the batch, as in a one-CPU VM.
fn stay_on_one_cpu() {
    // SAFETY: plain syscalls on this process with a zeroed, then filled cpu_set_t.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn default_plan() -> Plan {
    Plan {
        families: Vec::new(),
        forced: Vec::new(),
        churn: 16,
        cache_pins: 3,
        pin_bytes: 1 << 20,
        zombie_after: Duration::from_millis(500),
        release: Release::DropCaches,
        data_dir: PathBuf::from(init::DISK),
        shm_dir: PathBuf::from(init::SHM),
        kmem_trace: PathBuf::from("/bin/kmem-trace"),
        exact: true,
        wait: Duration::from_secs(20),
        exhaustion: false,
    }
}

/// `FAMILY:POINT=SYMBOL`.
fn parse_force(s: &str) -> Result<(String, String)> {
    match s.split_once(':') {
        Some((f, ps)) if FAMILIES.contains(&f) && ps.contains('=') => {
            Ok((f.to_string(), ps.to_string()))
        }
        _ => bail!("expected FAMILY:POINT=SYMBOL, got {s:?}"),
    }
}

fn parse_families(s: &str) -> Result<Vec<String>> {
    s.split(',')
        .filter(|f| !f.is_empty())
        .map(|f| {
            if FAMILIES.contains(&f) {
                Ok(f.to_string())
            } else {
                bail!("unknown hook family {f:?}; use one of {FAMILIES:?}")
            }
        })
        .collect()
}

/// The plan of a VM, from `kmt.*` options on the kernel command line.
fn vm_plan(cmdline: &str) -> Result<Plan> {
    let mut plan = default_plan();
    for arg in cmdline.split_whitespace() {
        let Some((key, val)) = arg.strip_prefix("kmt.").and_then(|a| a.split_once('=')) else {
            continue;
        };
        match key {
            "families" => plan.families = parse_families(val)?,
            "force" => {
                for f in val.split(',') {
                    plan.forced.push(parse_force(f)?);
                }
            }
            "churn" => plan.churn = val.parse().context("kmt.churn")?,
            "pins" => plan.cache_pins = val.parse().context("kmt.pins")?,
            "scenario" => match val {
                "matrix" => plan.exhaustion = false,
                "exhaustion" => plan.exhaustion = true,
                other => bail!("unknown kmt.scenario={other:?}; use matrix or exhaustion"),
            },
            // Read by init before the plan (`mount_memory_controller()`
            // mounts v2 for it); named here so a typo still fails.
            "cgroup" => match val {
                "v1" | "v2" => {}
                other => bail!("unknown kmt.cgroup={other:?}; use v1 or v2"),
            },
            _ => bail!("unknown option kmt.{key}"),
        }
    }
    Ok(plan)
}

/// The plan of a host run, from the command line.
fn host_plan(args: &[String]) -> Result<Plan> {
    let mut plan = Plan {
        shm_dir: PathBuf::from("/dev/shm"),
        release: Release::Fadvise,
        exact: false,
        ..default_plan()
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--kmem-trace" => plan.kmem_trace = PathBuf::from(val()?),
            "--data-dir" => plan.data_dir = PathBuf::from(val()?),
            "--family" => plan.families.extend(parse_families(val()?)?),
            "--force" => plan.forced.push(parse_force(val()?)?),
            "--churn" => plan.churn = val()?.parse().context("--churn")?,
            "--pins" => plan.cache_pins = val()?.parse().context("--pins")?,
            "--release" => {
                plan.release = match val()?.as_str() {
                    "fadvise" => Release::Fadvise,
                    "drop-caches" => Release::DropCaches,
                    other => bail!("unknown --release {other:?}"),
                }
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if plan.data_dir.as_os_str() == init::DISK {
        bail!("--data-dir is required (a directory on a disk filesystem)\n{USAGE}");
    }
    Ok(plan)
}

/// PID 1: set up the VM, run, power off — whatever happens.
fn init_main() -> ! {
    std::panic::set_hook(Box::new(|info| {
        proto::emit("error", json!({"msg": format!("guest panicked: {info}")}));
        proto::emit("done", json!({"ok": false}));
        init::poweroff();
    }));
    let result = init::setup()
        .and_then(|()| std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline"))
        .and_then(|c| vm_plan(&c))
        .and_then(|p| run_all(&p, true));
    if let Err(e) = result {
        proto::emit("error", json!({"msg": format!("{e:#}")}));
        proto::emit("done", json!({"ok": false}));
    }
    init::poweroff()
}

/// `kmem-trace SUBCOMMAND --json`, parsed: `probes` without forcing anything
/// (which family sees which point on this kernel), `census`.
fn kmem_trace_json(bin: &std::path::Path, subcommand: &str) -> Result<Value> {
    kmem_trace_json_with(bin, subcommand, &[])
}

/// `kmem-trace SUBCOMMAND --json ARGS...`, parsed.
fn kmem_trace_json_with(bin: &std::path::Path, subcommand: &str, args: &[&str]) -> Result<Value> {
    let what = format!("kmem-trace {subcommand} --json {}", args.join(" "));
    let out =
        kmem_trace_tests::stdout_of(Command::new(bin).args([subcommand, "--json"]).args(args))
            .with_context(|| what.clone())?;
    serde_json::from_slice(&out).with_context(|| format!("parsing {what}"))
}

/// The report the `perf` row is judged by: `probes --json --transport perf`
/// (which points the old-kernel object sees here); `Err`: why it cannot start.
fn perf_report(bin: &std::path::Path) -> Result<Value, String> {
    kmem_trace_json_with(bin, "probes", &["--transport", "perf"]).map_err(|e| format!("{e:#}"))
}

/// The whole scenario on this kernel; `Ok(false)` when any check failed.
fn run_all(plan: &Plan, vm: bool) -> Result<bool> {
    let mut kmsg = sys::Kmsg::open(!vm);
    std::env::set_var("KMEM_TRACE_BIN", &plan.kmem_trace);
    let kmem = sys::kmem_enabled();
    proto::emit(
        "env",
        json!({
            "kernel": sys::release(),
            "cgroup": if sys::cgroup_v2() { "v2" } else { "v1" },
            "kmem": kmem,
            "cmdline": std::fs::read_to_string("/proc/cmdline").unwrap_or_default().trim(),
        }),
    );
    plan.prepare_data()?;
    if plan.exhaustion {
        // The exhaustion scenario fills the ID space: nothing else can run after it.
        let v = exhaustion::run(plan);
        let ok = v["status"] == "pass";
        proto::emit("exhaustion", v);
        proto::emit("kernel_log", kmsg.collect());
        proto::emit("done", json!({ "ok": ok }));
        return Ok(ok);
    }
    proto::step(None, "probes");
    let report = kmem_trace_json(&plan.kmem_trace, "probes")?;
    let families: Vec<&str> = if plan.families.is_empty() {
        FAMILIES.to_vec()
    } else {
        plan.families.iter().map(String::as_str).collect()
    };
    let perf = families
        .iter()
        .any(|f| visibility::perf_hooks(f).is_some())
        .then(|| perf_report(&plan.kmem_trace));
    let perf_json = match &perf {
        Some(Ok(r)) => r.clone(),
        Some(Err(e)) => json!({"error": e}),
        None => Value::Null,
    };
    proto::emit("probes", json!({"report": report, "perf": perf_json}));
    proto::emit("symbols", json!({"symbols": sys::memcg_symbols()}));
    let reports = Reports { report, perf };
    let exp = plan.expect(kmem);
    let runnable = runnable(&families, &reports);
    let mut ok = run_families(plan, &runnable, &reports, &exp, vm);
    proto::step(None, "census");
    let census = census::check(plan);
    ok &= census["status"] != "fail";
    proto::emit("census", census);
    if vm {
        let pins = pins::check(plan);
        ok &= pins["status"] != "fail";
        proto::emit("pins", pins);
    }
    let log = kmsg.collect();
    ok &= log["splat"] != true;
    proto::emit("kernel_log", log);
    proto::emit("done", json!({ "ok": ok }));
    Ok(ok)
}

/// The `probes --json` reports a family is judged by: the perf rows by the
/// perf transport's (`Err`: why it cannot start), the families by the default.
struct Reports {
    report: Value,
    perf: Option<Result<Value, String>>,
}

impl Reports {
    fn of(&self, family: &str) -> &Value {
        match &self.perf {
            Some(Ok(r)) if visibility::perf_hooks(family).is_some() => r,
            _ => &self.report,
        }
    }
}

/// The families that can run here; a `cell` record for each that cannot.
fn runnable<'f>(families: &[&'f str], reports: &Reports) -> Vec<&'f str> {
    let mut runnable = Vec::new();
    for &family in families {
        if let (Some(_), Some(Err(e))) = (visibility::perf_hooks(family), &reports.perf) {
            proto::emit(
                "cell",
                json!({"family": family, "status": "unsupported",
                       "errors": [format!("the perf transport cannot start: {e}")]}),
            );
            continue;
        }
        let vis: Vec<Vis> = check::POINTS
            .iter()
            .map(|p| check::visibility(reports.of(family), family, p))
            .collect();
        if !vis.contains(&Vis::Seen) {
            // Every point blind by the table (fentry on arm64 before 6.4:
            // no ftrace direct calls) is the table's word, not a failure;
            // a hook the table means for this kernel that did not attach is.
            let by_table = vis.iter().all(|v| matches!(v, Vis::Blind(_)));
            let why = match vis.iter().find(|v| !matches!(v, Vis::Seen)) {
                Some(Vis::Blind(r) | Vis::Broken(r)) => r.clone(),
                _ => String::new(),
            };
            proto::emit(
                "cell",
                json!({"family": family,
                       "status": if by_table { "unavailable" } else { "unsupported" },
                       "errors": if by_table { vec![] } else {
                           vec![format!("no {family} hook attaches on this kernel: {why}")] },
                       "why": why}),
            );
            continue;
        }
        runnable.push(family);
    }
    runnable
}

/// The scenario under every runnable family's watch, then a `cell` per family,
/// the families-agree `compare` and (VM) the `toggle` record; whether all passed.
fn run_families(plan: &Plan, runnable: &[&str], reports: &Reports, exp: &Expect, vm: bool) -> bool {
    if plan.exact && !scenario::settle(Duration::from_secs(5)) {
        proto::emit(
            "note",
            json!({"msg": "dying memcgs left before the scenario"}),
        );
    }
    // The toggle is checked per hook family, in the VM on cgroup v2; the perf
    // row's hooks are the kprobe and tracepoint families' programs, checked there.
    let toggle = vm && sys::cgroup_v2();
    let start = Instant::now();
    let run = scenario::run_families(plan, runnable, exp.kmem, toggle);
    let seconds = start.elapsed().as_secs_f64();
    let runs: Vec<&check::Observation> = run.watches.0.iter().map(|w| &w.obs).collect();
    let mut ok = true;
    for obs in &runs {
        let mut cell = check::judge(obs, exp, reports.of(&obs.family));
        cell["seconds"] = json!(seconds);
        ok &= cell["status"] == "pass";
        proto::emit("cell", cell);
    }
    let refs: Vec<(&check::Observation, &Value)> =
        runs.iter().map(|o| (*o, reports.of(&o.family))).collect();
    let cmp = compare::compare(&refs, exp);
    ok &= cmp.iter().all(|c| c["agree"] != false);
    proto::emit("compare", json!({ "points": cmp }));
    if vm {
        let toggled: Vec<(&str, &[check::Ev])> = runs
            .iter()
            .filter(|o| visibility::perf_hooks(&o.family).is_none())
            .map(|o| (o.family.as_str(), o.events.as_slice()))
            .collect();
        let t = toggle::record(&toggled, run.toggle.as_ref(), &reports.report);
        ok &= t["status"] != "fail";
        proto::emit("toggle", t);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_options_come_from_the_kernel_command_line() {
        let p = vm_plan(
            "console=ttyS0 quiet kmt.families=kprobe,fentry kmt.force=kprobe:offline=nope kmt.churn=4",
        )
        .unwrap();
        assert_eq!(p.families, vec!["kprobe", "fentry"]);
        assert_eq!(
            p.forced,
            vec![("kprobe".to_string(), "offline=nope".to_string())]
        );
        assert_eq!(p.churn, 4);
        assert!(p.exact);
        assert!(vm_plan("kmt.families=magic").is_err());
        assert!(vm_plan("kmt.force=offline=x").is_err());
    }

    #[test]
    fn host_runs_need_a_data_dir_and_are_not_exact() {
        let args: Vec<String> = ["--kmem-trace", "/x/kmem-trace", "--data-dir", "/var/tmp/d"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let p = host_plan(&args).unwrap();
        assert!(!p.exact);
        assert_eq!(p.release, Release::Fadvise);
        assert!(host_plan(&args[..2]).is_err());
    }
}
