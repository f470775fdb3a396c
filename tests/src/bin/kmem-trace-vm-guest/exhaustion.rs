//! The incident on a real kernel (issue 13): live filler memcgs bring the ID
//! space near its end, then a "leaky workload" under a kubelet-style path
//! creates a container memcg at a steady rate, pins swap in it (a tmpfs file
//! written inside, kept outside, pushed out with `memory.reclaim`) and removes
//! it, until `mkdir` fails. `kmem-trace serve` with its history runs
//! throughout; its `/metrics` are scraped every [`SCRAPE_EVERY`], and the
//! checks compare them with what the kernel did. The tmpfs pages go to swap
//! by `memory.reclaim` (v2, 5.19+), else by lowering `memory.high` (older
//! v2) or by `memory.force_empty` / a `memory.limit_in_bytes` below the usage
//! (v1): see the `swap_push` module.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use kmem_trace_tests::Tracer;
use serde_json::{json, Value};

use crate::{
    exhaustion_leak::{self, Leak},
    proto,
    scenario::Plan,
};

const LISTEN: &str = "127.0.0.1:9464";
const DB: &str = "/shm/exhaustion-history.db";
/// IDs left free when the filler stops: the leak's budget.
const LEAK_BUDGET: u64 = 300;
/// Forecasts judged while at least this much time is left (see `judge`).
const MIN_LEFT_S: f64 = 30.0;
/// "Once the leak ran a minute": the forecast fits the rise once its
/// samples span a minute (`forecast::MIN_WINDOW_S`), sampled every second
/// by serve and scraped every [`SCRAPE_EVERY`]; the minute of leak is in
/// its window by this many seconds after.
const SETTLE_S: f64 = 4.0;
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// `MEM_CGROUP_ID_MAX`.
const ID_LIMIT: u64 = 65535;
const POD_UID: &str = "5f1c9a2e-7b3d-4e8f-9a61-0c2d4b6e8f10";

/// One scrape of serve's `/metrics`: every unlabelled `kmem_trace_*` series,
/// plus `events_total` summed over kinds, and the tracer's own CPU and RSS.
#[derive(Clone, Debug)]
struct Scrape {
    t_s: f64,
    values: BTreeMap<String, f64>,
}

fn scrape() -> Result<BTreeMap<String, f64>> {
    let mut s = TcpStream::connect(LISTEN).context("connecting to serve's /metrics")?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("kmem_trace_")) {
        let Some((name, val)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = match val {
            "+Inf" => f64::INFINITY,
            v => match v.parse() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        match name.split_once('{') {
            None => {
                out.insert(name.to_string(), v);
            }
            Some((base, _)) if base == "kmem_trace_events_total" => {
                *out.entry(base.to_string()).or_insert(0.0) += v;
            }
            Some(_) => {}
        }
    }
    Ok(out)
}

/// utime+stime in seconds and VmRSS in bytes of a process.
fn cpu_rss(pid: u32) -> Option<(f64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after ")": state is 0, utime 11, stime 12 (clock ticks; 100 Hz).
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((ticks / 100.0, rss_kb * 1024))
}

/// memcgs the kernel counts (live and dying, the root included): memory's
/// `num_cgroups` in `/proc/cgroups`, or (7.x lists no v2-only controller
/// there) `nr_subsys_memory + nr_dying_subsys_memory` of the root's
/// `cgroup.stat` (6.11+).
fn kernel_memcgs() -> Option<u64> {
    let t = fs::read_to_string("/proc/cgroups").unwrap_or_default();
    if let Some(n) = t
        .lines()
        .find(|l| l.starts_with("memory\t"))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
    {
        return Some(n);
    }
    let root = kmem_trace_tests::memory_root().ok()?;
    let stat = fs::read_to_string(root.join("cgroup.stat")).ok()?;
    let get = |k: &str| -> Option<u64> {
        stat.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
    };
    Some(get("nr_subsys_memory ")? + get("nr_dying_subsys_memory ")?)
}

fn mkdir_memcg(dir: &Path) -> Result<(), std::io::Error> {
    fs::create_dir(dir)
}

/// `+memory` for the children of `dir` (v2); v1 children always have a memcg.
fn enable_memory(dir: &Path) -> Result<()> {
    if !crate::sys::cgroup_v2() {
        return Ok(());
    }
    fs::write(dir.join("cgroup.subtree_control"), "+memory")
        .with_context(|| format!("+memory in {}", dir.display()))
}

/// The scenario; the `exhaustion` protocol record.
pub fn run(plan: &Plan) -> Value {
    let start = Instant::now();
    match run_inner(plan, start) {
        Ok(v) => v,
        Err(e) => json!({"status": "fail", "errors": [format!("{e:#}")],
                         "seconds": start.elapsed().as_secs_f64()}),
    }
}

fn run_inner(plan: &Plan, start: Instant) -> Result<Value> {
    crate::pins::enable_swap()?;
    // The VM's init leaves loopback down: serve's endpoint needs it.
    let lo = Command::new("/bin/busybox")
        .args(["ifconfig", "lo", "127.0.0.1", "up"])
        .status()
        .context("busybox ifconfig")?;
    if !lo.success() {
        bail!("bringing up lo: {lo}");
    }
    let t = || start.elapsed().as_secs_f64();
    proto::step(None, "exhaustion: serve");
    let mut serve = Tracer::start(&[
        "serve",
        "--listen",
        LISTEN,
        "--db",
        DB,
        "--zombie-after",
        "5s",
        "--ring-buffer-size",
        "16777216",
    ])
    .context("starting kmem-trace serve")?;
    let serve_pid = serve.pid();
    let series: Arc<Mutex<Vec<Scrape>>> = Arc::default();
    let scrape_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (series, stop, errs) = (series.clone(), stop.clone(), scrape_errors.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let at = start.elapsed().as_secs_f64();
                let got = scrape();
                if let Err(e) = &got {
                    let mut errs = errs.lock().expect("errors");
                    if errs.len() < 5 {
                        errs.push(format!("at {at:.0} s: {e:#}"));
                    }
                }
                if let Ok(mut values) = got {
                    if let Some((cpu, rss)) = cpu_rss(serve_pid) {
                        values.insert("serve_cpu_seconds".into(), cpu);
                        values.insert("serve_rss_bytes".into(), rss as f64);
                    }
                    if let Some(n) = kernel_memcgs() {
                        values.insert("kernel_memcgs".into(), n as f64);
                    }
                    series
                        .lock()
                        .expect("series")
                        .push(Scrape { t_s: at, values });
                }
                thread::sleep(SCRAPE_EVERY);
            }
        })
    };

    // Filler: live memcgs up to LEAK_BUDGET IDs from the end.
    let root = kmem_trace_tests::memory_root().context("finding the memory hierarchy")?;
    let filler = root.join("filler.slice");
    fs::create_dir_all(&filler)?;
    enable_memory(&filler)?;
    let pods = root.join("kubepods.slice/kubepods-burstable.slice");
    let pod = pods.join(format!(
        "kubepods-burstable-pod{}.slice",
        POD_UID.replace('-', "_")
    ));
    for d in [pods.parent().expect("parent"), &pods, &pod] {
        fs::create_dir_all(d)?;
        enable_memory(d)?;
    }
    let base = kernel_memcgs().context("counting memcgs (/proc/cgroups, cgroup.stat)")?;
    let n_fill = ID_LIMIT.saturating_sub(base + LEAK_BUDGET);
    let fill_start = t();
    for i in 0..n_fill {
        if i.is_multiple_of(5000) {
            proto::step(None, &format!("exhaustion: filler {i}/{n_fill}"));
        }
        mkdir_memcg(&filler.join(format!("f{i}")))
            .with_context(|| format!("filler memcg {i} of {n_fill}"))?;
    }
    let fill_s = t() - fill_start;

    // The leak: one container memcg of the pod at a time, swap-pinned,
    // removed, at a pace chosen from its first pushes (`exhaustion_leak`).
    proto::step(None, "exhaustion: leak");
    let shm = plan.shm_dir.join("leak");
    fs::create_dir_all(&shm)?;
    let leak = exhaustion_leak::run(&exhaustion_leak::Setup {
        pod: &pod,
        shm: &shm,
        filler: &filler,
        next_filler: n_fill,
        id_limit: ID_LIMIT,
        kernel_memcgs: &kernel_memcgs,
        now_s: &t,
        max_leaks: 4 * LEAK_BUDGET,
    })?;
    // The state at exhaustion: one more scrape (the gauge after the last
    // leak), doctor and the report, while serve still runs.
    thread::sleep(SCRAPE_EVERY * 2);
    let at_fail = scrape().ok();
    proto::step(None, "exhaustion: doctor and report");
    // With serve's history: the running tracer's count of ID holders is what
    // doctor can know without a census (no BPF cgroup iterator before 6.1).
    // Its exit code is 1 with a critical finding (the NPD convention): the
    // JSON is read whatever the status.
    // `--try-mkdir`: where neither a census nor the tracer can count ID
    // holders for certain (7.3: no hook sees ID releases), the refused mkdir
    // is what makes "exhausted" certain, as an operator would ask it.
    let doctor = Command::new(&plan.kmem_trace)
        .args(["doctor", "--json", "--db", DB, "--try-mkdir"])
        .output()
        .ok()
        .and_then(|out| serde_json::from_slice::<Value>(&out.stdout).ok())
        .unwrap_or(Value::Null);
    let html = report(plan, "html");
    let report_md = report(plan, "md");
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let (_, serve_out) = serve.stop().unwrap_or((None, String::new()));
    let series = series.lock().expect("series").clone();

    let mut v = judge(
        &series,
        at_fail.as_ref(),
        &leak,
        &doctor,
        report_md.as_deref().ok(),
    );
    v["figures"]["fill_seconds"] = json!(fill_s);
    v["figures"]["filler_memcgs"] = json!(n_fill);
    v["figures"]["memcgs_at_start"] = json!(base);
    v["figures"]["leak_period_s"] = json!(leak.period.map(|p| p.as_secs_f64()));
    v["figures"]["leak_calibration_s"] = json!(leak.calibration_s);
    v["figures"]["leak_late"] = json!(leak.late);
    v["figures"]["filler_topped_up"] = json!(leak.topped_up);
    v["figures"]["cgroup"] = json!(if crate::sys::cgroup_v2() { "v2" } else { "v1" });
    // Whether swap-pinned zombies kept their IDs here (mkdir failed within
    // the leak's budget), beside what the leak table says for this kernel.
    let version = kmem_trace::probes::kernel::KernelVersion::parse(&crate::sys::release());
    let row = version.and_then(|v| kmem_trace::leaks::lookup(kmem_trace::leaks::Cause::Swap, v));
    v["figures"]["swap_pin_holds_id"] = json!(leak.errno.is_some());
    v["figures"]["leak_table_swap_id_release"] = json!(row.map(|r| r.id_release.name()));
    v["doctor"] = doctor;
    v["serve_stdout_tail"] = json!(serve_out.lines().rev().take(5).collect::<Vec<_>>());
    v["series"] = json!(series
        .iter()
        .map(|s| json!({"t": s.t_s, "v": s.values.iter()
            .map(|(k, x)| (k.clone(), if x.is_finite() { json!(x) } else { json!("+Inf") }))
            .collect::<serde_json::Map<_, _>>()}))
        .collect::<Vec<_>>());
    v["seconds"] = json!(start.elapsed().as_secs_f64());
    v["scrape_errors"] = json!(*scrape_errors.lock().expect("errors"));
    if let Ok(md) = &report_md {
        proto::emit(
            "artifact",
            json!({"name": "exhaustion-report.md", "text": md}),
        );
    }
    if let Ok(h) = html {
        proto::emit(
            "artifact",
            json!({"name": "exhaustion-report.html", "text": h}),
        );
    } else if let Err(e) = html {
        v["errors"]
            .as_array_mut()
            .expect("errors")
            .push(json!(format!("report --format html: {e:#}")));
        v["status"] = json!("fail");
    }
    Ok(v)
}

fn report(plan: &Plan, format: &str) -> Result<String> {
    let out = kmem_trace_tests::stdout_of(
        Command::new(&plan.kmem_trace).args(["report", "--db", DB, "--format", format]),
    )
    .with_context(|| format!("kmem-trace report --format {format}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn value(s: &Scrape, k: &str) -> Option<f64> {
    s.values.get(k).copied()
}

/// The checks of issue 13, each pass or fail with what it saw.
fn judge(
    series: &[Scrape],
    at_fail: Option<&BTreeMap<String, f64>>,
    leak: &Leak,
    doctor: &Value,
    report_md: Option<&str>,
) -> Value {
    let mut checks = Vec::new();
    let mut check = |name: &str, pass: bool, saw: String| {
        checks.push(json!({"check": name, "pass": pass, "saw": saw}));
    };
    let errno = leak.errno.clone();
    check(
        "mkdir fails at the end of the ID space",
        errno.is_some(),
        format!(
            "{:?} after {} leaked memcgs at {}",
            errno, leak.leaked, leak.failed_path
        ),
    );
    let gauge = at_fail.and_then(|m| m.get("kmem_trace_memcg_ids_in_use").copied());
    let doc_ids = doctor["facts"]["ids_in_use"].as_u64();
    check(
        "ID gauge at the limit when mkdir fails",
        gauge.is_some_and(|g| g as u64 >= ID_LIMIT),
        format!("metrics {gauge:?}, doctor {doc_ids:?}, limit {ID_LIMIT}"),
    );
    // Forecast: announced before exhaustion; once the leak ran a minute,
    // predicted end time within 25% of the actual time left.
    let during: Vec<&Scrape> = series
        .iter()
        .filter(|s| s.t_s >= leak.start_s && s.t_s < leak.end_s)
        .collect();
    let announced = during
        .iter()
        .find(|s| value(s, "kmem_trace_id_exhaustion_seconds").is_some_and(f64::is_finite));
    check(
        "forecast announced exhaustion before it happened",
        announced.is_some(),
        format!(
            "first finite kmem_trace_id_exhaustion_seconds at {:?} s before mkdir failed",
            announced.map(|s| leak.end_s - s.t_s)
        ),
    );
    let after_minute: Vec<(f64, f64, f64)> = during
        .iter()
        .filter(|s| s.t_s >= leak.start_s + 60.0 + SETTLE_S)
        .filter_map(|s| {
            let p = value(s, "kmem_trace_id_exhaustion_seconds")?;
            Some((s.t_s, p, leak.end_s - s.t_s))
        })
        .collect();
    // Near the end the time left nears zero and a second of error is a large
    // share of it: the worst error counts while [`MIN_LEFT_S`] are left.
    let worst = after_minute
        .iter()
        .filter(|(_, _, actual)| *actual >= MIN_LEFT_S)
        .map(|(t, p, a)| (*t, *p, *a, (p - a).abs() / a))
        .max_by(|a, b| a.3.total_cmp(&b.3));
    let first = after_minute.first().map(|(t, p, a)| (*t, *p, *a));
    check(
        "forecast within 25% once the leak ran a minute",
        first.is_some_and(|(_, p, a)| (p - a).abs() / a <= 0.25)
            && worst.is_some_and(|w| w.3 <= 0.25),
        format!(
            "first after 60 s: t={:?} predicted {:?} s, actual {:?} s; worst: {:?} ({} forecasts)",
            first.map(|f| f.0),
            first.map(|f| f.1),
            first.map(|f| f.2),
            worst.map(|w| format!(
                "t={:.0} predicted {:.0} s actual {:.0} s error {:.0}%",
                w.0,
                w.1,
                w.2,
                w.3 * 100.0
            )),
            after_minute.len()
        ),
    );
    // Leak rate: only ID-holding memcgs; the filler (tens of thousands of
    // live memcgs created minutes before) must not show in it.
    let rates: Vec<f64> = during
        .iter()
        .filter(|s| s.t_s >= leak.start_s + 60.0 + SETTLE_S)
        .filter_map(|s| value(s, "kmem_trace_leak_rate_per_hour"))
        .collect();
    // The rate the workload reached (first to last removal), beside the
    // pace it aimed at: a push slower than the period would slip it.
    let want = leak.rate_reached().map(|r| r * 3600.0);
    let aimed = leak.period.map(|p| 3600.0 / p.as_secs_f64());
    let last_rate = rates.last().copied();
    check(
        "leak rate counts only ID-holding memcgs",
        last_rate
            .zip(want)
            .is_some_and(|(r, w)| (r - w).abs() / w <= 0.25),
        format!(
            "leak_rate_per_hour {last_rate:?}, the workload leaked {want:.0?}/h (paced at {aimed:.0?}/h, {} leaks late)",
            leak.late
        ),
    );
    let md = report_md.unwrap_or("");
    let section = |from: &str, to: &str| -> String {
        md.split_once(from)
            .map(|(_, rest)| rest.split(to).next().unwrap_or(rest).trim().to_string())
            .unwrap_or_default()
    };
    let owners = section("## Top owners", "## Pin causes");
    let top_owner = owners.lines().nth(2).unwrap_or("").to_string();
    // Owner tables shorten pod UIDs (`pod 5f1c9a2e-7b3`).
    let names_owner = top_owner.contains(&POD_UID[..12]);
    let causes = section("## Pin causes", "## Remediation");
    let top_cause = causes.lines().next().unwrap_or("").to_string();
    let names_swap = top_cause.to_lowercase().contains("swap");
    check(
        "report names the leaking owner and swap",
        names_owner && names_swap,
        format!("top owner row {top_owner:?}; top pin cause {top_cause:?}"),
    );
    // Doctor and report: the exhausted state in the words mkdir printed.
    let words = errno.as_ref().map_or("", |e| e.1.as_str());
    let finding = doctor["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["id"] == "memcg-ids-exhausted");
    let finding_text = finding.map_or(String::new(), |f| {
        format!(
            "{} {}",
            f["title"].as_str().unwrap_or(""),
            f["detail"].as_str().unwrap_or("")
        )
    });
    let report_says = md.contains("memcg ID space exhausted") && md.contains(words);
    // Certain, not "may be": a critical finding whose title says exhausted.
    let certain = finding.is_some_and(|f| {
        f["severity"] == "critical"
            && f["title"]
                .as_str()
                .is_some_and(|t| t.contains("exhausted") && !t.contains("may be"))
    });
    check(
        "doctor and report say exhausted with the errno mkdir gave",
        !words.is_empty() && certain && finding_text.contains(words) && report_says,
        format!(
            "mkdir: {words:?}; doctor: {:?} {:?}; report says exhausted with these words: {report_says}",
            finding.map(|f| f["severity"].clone()),
            finding.map(|f| f["title"].clone()),
        ),
    );
    let last = series.last();
    let figures = json!({
        "pushed_to_swap_by": leak.pushed_by,
        // doctor's errno table has this kernel (else it gives both words).
        "errno_in_doctor_table": finding.is_some() && !finding_text.contains("is not recorded"),
        "time_to_exhaustion_s": leak.end_s - leak.start_s,
        "leak_rate_reached_per_s": leak.rate_reached(),
        "leaked": leak.leaked,
        "errno": errno.as_ref().map(|e| &e.0),
        "mkdir_words": errno.as_ref().map(|e| &e.1),
        "forecast_first_after_minute": first.map(|f| json!({"t": f.0, "predicted_s": f.1, "actual_s": f.2})),
        "forecast_worst_error": worst.map(|w| w.3),
        "serve_cpu_s": last.and_then(|s| value(s, "serve_cpu_seconds")),
        "serve_rss_bytes": last.and_then(|s| value(s, "serve_rss_bytes")),
        "events": last.and_then(|s| value(s, "kmem_trace_events_total")),
        "drops": last.and_then(|s| value(s, "kmem_trace_ring_drops_total")),
        "ids_in_use_at_fail": gauge,
        "kernel_memcgs_at_end": last.and_then(|s| value(s, "kernel_memcgs")),
    });
    let mut errors = leak.errors.clone();
    errors.extend(checks.iter().filter(|c| c["pass"] == false).map(|c| {
        format!(
            "{}: {}",
            c["check"].as_str().unwrap_or(""),
            c["saw"].as_str().unwrap_or("")
        )
    }));
    json!({
        "status": if errors.is_empty() { "pass" } else { "fail" },
        "checks": checks,
        "figures": figures,
        "errors": errors,
    })
}

#[cfg(test)]
#[path = "exhaustion_tests.rs"]
mod tests;
