//! `cargo xtask soak`: the image under the DaemonSet's capabilities, mounts
//! and limits for N minutes while the host churns about 20 memcg lifecycles a
//! second (every 5th pinned by a tmpfs page for a minute); every 5 s it
//! scrapes /metrics and samples the tracer's RSS, CPU, open files and history
//! size. Pass: RSS and open files flat after warm-up (the median of the last
//! minute within 10% of the first minute's; warm-up ends before the first
//! periodic recheck, so the baseline precedes it), RSS never above the
//! DaemonSet's memory request, the history bounded by its retention (flat
//! within 15% once the retention has been in force for a period), no drops,
//! no bad records, the container still running.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{image, util};

#[derive(Args)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 30)]
    pub minutes: u64,
    /// The image archive (default: target/image/kmem-trace.oci.tar).
    #[arg(long)]
    pub image: Option<PathBuf>,
}

/// The DaemonSet's capabilities and limits (deploy/base/daemonset.yaml).
const CAPS: &str = "BPF,PERFMON,SYSLOG,SYS_ADMIN";
const MEMORY_LIMIT: &str = "512m";
const CPU_LIMIT: &str = "0.5";
/// The DaemonSet's memory request (64Mi): what the scheduler reserves per node.
const MEMORY_REQUEST_KIB: u64 = 64 * 1024;
const PORT: u16 = 19480;

/// The history's `--retain` for a soak of `minutes`: a sixth of the run, at
/// most 5 minutes, so that a short soak still reaches the retention's steady
/// state (the DaemonSet keeps the default, 14 days).
fn retention(minutes: u64) -> Duration {
    Duration::from_secs((minutes * 10).clamp(20, 300))
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    cpu_s: f64,
    fds: usize,
    history: u64,
    drops: f64,
    bad: f64,
    zombies: f64,
}

/// Value of an unlabelled sample line.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn scrape() -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", PORT)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn sample(pid: u32, start: Instant, history: &Path) -> Result<Sample> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).context("the tracer is gone")?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    let history = std::fs::read_dir(history)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let text = scrape().unwrap_or_default();
    Ok(Sample {
        at: start.elapsed(),
        rss_kib,
        cpu_s: ticks / hz,
        fds,
        history,
        drops: metric(&text, "kmem_trace_ring_drops_total"),
        bad: metric(&text, "kmem_trace_bad_records_total"),
        zombies: metric(&text, "kmem_trace_zombies"),
    })
}

/// The churn: ~20 lifecycles a second under `parent`, every 5th pinned.
fn churn(parent: PathBuf, pins: PathBuf, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let mut n = 0u64;
    let mut pinned: Vec<(Instant, PathBuf)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        n += 1;
        let cg = parent.join(format!("c{n}"));
        if std::fs::create_dir(&cg).is_ok() {
            let procs = cg.join("cgroup.procs");
            let script = if n.is_multiple_of(5) {
                let pin = pins.join(format!("pin{n}"));
                pinned.push((Instant::now(), pin.clone()));
                format!(
                    "echo $$ > {} && exec head -c 4096 /dev/zero > {}",
                    procs.display(),
                    pin.display()
                )
            } else {
                format!("echo $$ > {}", procs.display())
            };
            let _ = Command::new("sh").args(["-c", &script]).status();
            let _ = std::fs::remove_dir(&cg);
            done.fetch_add(1, Ordering::Relaxed);
        }
        // Pins older than a minute go: their zombies are freed.
        while pinned
            .first()
            .is_some_and(|(at, _)| at.elapsed() > Duration::from_secs(60))
        {
            let _ = std::fs::remove_file(pinned.remove(0).1);
        }
        std::thread::sleep(Duration::from_millis(50).saturating_sub(t.elapsed()));
    }
}

pub fn run(args: &SoakArgs) -> Result<()> {
    let root = util::root();
    let tar = args
        .image
        .clone()
        .unwrap_or_else(|| root.join("target/image/kmem-trace.oci.tar"));
    if !tar.exists() {
        bail!(
            "{} is missing; run `cargo xtask image` first",
            tar.display()
        );
    }
    let memory = Path::new("/sys/fs/cgroup/memory");
    if !memory.join("cgroup.procs").exists() {
        bail!(
            "the soak's churn needs a cgroup v1 memory hierarchy at {}",
            memory.display()
        );
    }
    let _lock = util::KernelLock::take();
    // Dropped at return, after the container is removed below.
    let _leftovers = image::PodmanLeftovers::take();
    let name = format!("kmem-soak-{}", std::process::id());
    let work = std::env::temp_dir().join(&name);
    let parent = memory.join(&name);
    let result = soak(args, &tar, &work, &parent, &name);
    // Cleanup even on failure: the container, the pins, the cgroups, the store.
    let _ = image::podman(&work)
        .args(["rm", "-f", "-t", "2", &name])
        .output();
    let _ = Command::new("umount").arg(work.join("pins")).status();
    if let Ok(rd) = std::fs::read_dir(&parent) {
        for e in rd.flatten().filter(|e| e.path().is_dir()) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    let _ = std::fs::remove_dir(&parent);
    let _ = image::podman(&work)
        .args(["system", "reset", "--force"])
        .output();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn soak(args: &SoakArgs, tar: &Path, work: &Path, parent: &Path, name: &str) -> Result<()> {
    let (history, pins) = (work.join("history"), work.join("pins"));
    std::fs::create_dir_all(&history)?;
    std::fs::create_dir_all(&pins)?;
    util::sh(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(&pins),
    )?;
    std::fs::create_dir(parent)?;
    util::sh(image::podman(work).args(["load", "-q", "-i"]).arg(tar))?;
    let reference = format!("{}:{}", image::REFERENCE, env!("CARGO_PKG_VERSION"));
    let mut run = image::podman(work);
    run.args([
        "run",
        "-d",
        "--name",
        name,
        "--pid=host",
        "--network=host",
        "--user",
        "0",
    ])
    .args(["--cap-drop=all", &format!("--cap-add={CAPS}")])
    .args([
        "--security-opt",
        "no-new-privileges",
        "--read-only",
        "--read-only-tmpfs=false",
    ])
    .args(["--memory", MEMORY_LIMIT, "--cpus", CPU_LIMIT])
    .args([
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
    ])
    .args([
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "-v",
        "/sys/kernel/btf:/sys/kernel/btf:ro",
    ])
    .args(["-v", "/sys/kernel/tracing:/sys/kernel/tracing:ro"])
    .arg("-v")
    .arg(format!("{}:/var/lib/kmem-trace", history.display()))
    .args([
        &reference,
        "serve",
        &format!("--listen=[127.0.0.1]:{PORT}"),
        "--listen-any",
    ])
    .args([
        "--db=/var/lib/kmem-trace/history.db",
        &format!("--retain={}s", retention(args.minutes).as_secs()),
        "--zombie-after=30s",
    ]);
    util::sh(&mut run)?;
    let pid: u32 = String::from_utf8(
        image::podman(work)
            .args(["inspect", "-f", "{{.State.Pid}}", name])
            .output()?
            .stdout,
    )?
    .trim()
    .parse()
    .context("container pid")?;
    let start = Instant::now();
    while scrape().is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the tracer did not answer within 60 s");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let churner = {
        let (p, s, d, pins) = (
            parent.to_path_buf(),
            stop.clone(),
            done.clone(),
            pins.clone(),
        );
        std::thread::spawn(move || churn(p, pins, s, d))
    };
    let total = Duration::from_secs(args.minutes * 60);
    let mut samples = Vec::new();
    println!(
        "{:>6} {:>9} {:>7} {:>4} {:>10} {:>6} {:>8}",
        "t(s)", "rss(KiB)", "cpu(s)", "fds", "history", "drops", "zombies"
    );
    let result = (|| -> Result<()> {
        while start.elapsed() < total {
            std::thread::sleep(Duration::from_secs(5));
            let s = sample(pid, start, &history)?;
            println!(
                "{:>6} {:>9} {:>7.1} {:>4} {:>10} {:>6} {:>8}",
                s.at.as_secs(),
                s.rss_kib,
                s.cpu_s,
                s.fds,
                s.history,
                s.drops,
                s.zombies
            );
            samples.push(s);
        }
        Ok(())
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = churner.join();
    result?;
    verdict(
        &samples,
        done.load(Ordering::Relaxed),
        start.elapsed(),
        retention(args.minutes),
    )
}

/// The history's size once finished rows older than the retention have been
/// deleted for a whole period (2 retentions and the writer's prune interval
/// after the start), and its largest size after that: (when, size, max).
fn history_growth(samples: &[Sample], retain: Duration) -> Option<(Duration, u64, u64)> {
    let settled = retain * 2 + kmem_trace::store::writer::prune_interval(retain);
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= settled).collect();
    // Too few samples after it says nothing.
    if after.len() < 4 {
        return None;
    }
    let max = after.iter().map(|s| s.history).max()?;
    Some((after[0].at, after[0].history, max))
}

/// Where warm-up ends: a third of the run, but a minute before the tracer's
/// first periodic recheck at the latest. The RSS baseline must come from
/// before that recheck: the 30-minute soak's warm-up once ended at exactly
/// 600 s, so the recheck's 20 MiB step (glibc arena, fixed by malloc_trim in
/// census::recheck) fell on the baseline and passed unseen.
fn warm_up_end(took: Duration) -> Duration {
    let before_recheck = kmem_trace::census::recheck::EVERY.saturating_sub(Duration::from_secs(60));
    (took / 3).min(before_recheck)
}

/// How many periodic rechecks fell after warm-up (what the RSS check covered).
fn rechecks_after(warm: Duration, end: Duration) -> u64 {
    let every = kmem_trace::census::recheck::EVERY.as_secs();
    end.as_secs() / every - warm.as_secs() / every
}

/// The median of `v` (0 for none).
fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// One minute of samples (at 5 s): a window's median ignores the recheck's
/// transient (its census holds the parsed BTF and an iterator's fds for a
/// second or two: 25.9 MiB and 46 fds in one sample of the 30-minute soak)
/// but not a lasting step like the arena the recheck once kept.
const WINDOW: usize = 12;

/// RSS or open files flat: the median of the last minute within 10% of the
/// median of the first minute after warm-up. (first, last).
fn steady(warm: &[Sample], f: impl Fn(&Sample) -> u64) -> (u64, u64) {
    let n = WINDOW.min(warm.len());
    let first = median(warm[..n].iter().map(&f).collect());
    let last = median(warm[warm.len() - n..].iter().map(&f).collect());
    (first, last)
}

/// The pass criteria over the samples after warm-up ([`warm_up_end`]).
fn verdict(samples: &[Sample], lifecycles: u64, took: Duration, retain: Duration) -> Result<()> {
    let warm_end = warm_up_end(took);
    let from = samples
        .iter()
        .position(|s| s.at >= warm_end)
        .unwrap_or(samples.len());
    let warm = &samples[from..];
    let (Some(first), Some(last)) = (warm.first(), samples.last()) else {
        bail!("too few samples");
    };
    println!(
        "soak: warm-up until {} s; {} periodic recheck(s) (every {} s) after it",
        first.at.as_secs(),
        rechecks_after(first.at, last.at),
        kmem_trace::census::recheck::EVERY.as_secs()
    );
    let (rss0, rss1) = steady(warm, |s| s.rss_kib);
    let (fds0, fds1) = steady(warm, |s| s.fds as u64);
    let peak_rss = warm.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let peak_fds = warm.iter().map(|s| s.fds).max().unwrap_or(0);
    let cpu = (last.cpu_s - first.cpu_s) / (last.at - first.at).as_secs_f64() * 100.0;
    println!(
        "soak: {lifecycles} lifecycles in {:.0} s ({:.1}/s); after warm-up RSS {rss0} -> {rss1} KiB \
         (medians of the first and last minute; peak {peak_rss} KiB), open files {fds0} -> {fds1} \
         (peak {peak_fds}), CPU {cpu:.1}% of one core, history {} -> {} bytes, drops {}, bad records {}",
        took.as_secs_f64(),
        lifecycles as f64 / took.as_secs_f64(),
        first.history, last.history, last.drops, last.bad
    );
    let mut fail = Vec::new();
    if rss1 as f64 > rss0 as f64 * 1.10 {
        fail.push("RSS grew more than 10% after warm-up");
    }
    if peak_rss > MEMORY_REQUEST_KIB {
        fail.push("RSS peaked above the DaemonSet's memory request (64Mi)");
    }
    if fds1 as f64 > fds0 as f64 * 1.10 {
        fail.push("open files grew more than 10% after warm-up");
    }
    if last.drops != 0.0 {
        fail.push("ring-buffer drops");
    }
    if last.bad != 0.0 {
        fail.push("bad records");
    }
    match history_growth(samples, retain) {
        Some((at, from, max)) => {
            println!(
                "soak: history from {} s (retention {} s in force for a period): {from} -> max {max} bytes",
                at.as_secs(),
                retain.as_secs()
            );
            if max as f64 > from as f64 * 1.15 {
                fail.push("the history grew more than 15% although the retention was in force");
            }
        }
        None => fail.push("the soak was too short to see the retention in force"),
    }
    if !fail.is_empty() {
        bail!("soak failed: {}", fail.join(", "));
    }
    println!("soak: pass");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, rss_kib: u64) -> Sample {
        Sample {
            at: Duration::from_secs(secs),
            rss_kib,
            cpu_s: secs as f64 / 100.0,
            fds: 35,
            history: 1000,
            drops: 0.0,
            bad: 0.0,
            zombies: 0.0,
        }
    }

    /// The 30-minute soak's shape before the malloc_trim fix: flat, then a
    /// step at the first recheck (600 s). The rule must fail it.
    #[test]
    fn a_step_at_the_first_recheck_fails() {
        let samples: Vec<Sample> = (0..=360)
            .map(|i| at(i * 5, if i * 5 < 600 { 14_100 } else { 37_400 }))
            .collect();
        let err = verdict(
            &samples,
            1,
            Duration::from_secs(1800),
            Duration::from_secs(300),
        );
        assert!(format!("{err:?}").contains("RSS grew"), "{err:?}");
        assert_eq!(
            warm_up_end(Duration::from_secs(1800)),
            Duration::from_secs(540)
        );
        assert_eq!(
            rechecks_after(Duration::from_secs(540), Duration::from_secs(1800)),
            3
        );
    }

    /// A recheck's one-sample transient (the 30-minute soak at 1201 s) is
    /// not growth; a lasting step is.
    #[test]
    fn a_transient_at_a_recheck_passes_a_lasting_step_fails() {
        let spike = |i: u64| if i * 5 == 1200 { 25_888 } else { 14_700 };
        let samples: Vec<Sample> = (0..=360).map(|i| at(i * 5, spike(i))).collect();
        let got = verdict(
            &samples,
            1,
            Duration::from_secs(1800),
            Duration::from_secs(300),
        );
        assert!(got.is_ok(), "{got:?}");
        let step = |i: u64| if i * 5 >= 1200 { 25_888 } else { 14_700 };
        let samples: Vec<Sample> = (0..=360).map(|i| at(i * 5, step(i))).collect();
        let err = verdict(
            &samples,
            1,
            Duration::from_secs(1800),
            Duration::from_secs(300),
        );
        assert!(format!("{err:?}").contains("RSS grew"), "{err:?}");
    }

    /// The soak's capabilities and limits are the DaemonSet's.
    #[test]
    fn the_soak_runs_the_manifests_capabilities_and_limits() {
        let yaml = std::fs::read_to_string(util::root().join("deploy/base/daemonset.yaml"))
            .expect("deploy/base/daemonset.yaml");
        let items = |key: &str| -> Vec<String> {
            let mut lines = yaml.lines().skip_while(|l| l.trim_start() != key).skip(1);
            let mut out = Vec::new();
            for l in lines.by_ref() {
                let t = l.trim();
                if t.starts_with('#') {
                    continue;
                }
                match t.strip_prefix("- ") {
                    // A trailing comment (a linter's check ID) is not the value.
                    Some(v) => out.push(v.split(" #").next().unwrap_or(v).trim().to_string()),
                    None => break,
                }
            }
            out
        };
        assert_eq!(items("add:  # CKV_K8S_25").join(","), CAPS);
        let field = |section: &str, key: &str| -> String {
            let mut lines = yaml.lines().skip_while(|l| l.trim() != section).skip(1);
            lines
                .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
                .expect("field")
        };
        assert_eq!(field("limits:", "memory:"), "512Mi");
        assert_eq!(MEMORY_LIMIT, "512m");
        assert_eq!(field("limits:", "cpu:"), "500m");
        assert_eq!(CPU_LIMIT, "0.5");
        assert_eq!(field("requests:", "memory:"), "64Mi");
        assert_eq!(MEMORY_REQUEST_KIB, 64 * 1024);
    }

    #[test]
    fn a_peak_above_the_request_fails() {
        let peak = |i: u64| if i * 5 == 1200 { 70_000 } else { 14_700 };
        let samples: Vec<Sample> = (0..=360).map(|i| at(i * 5, peak(i))).collect();
        let err = verdict(
            &samples,
            1,
            Duration::from_secs(1800),
            Duration::from_secs(300),
        );
        assert!(format!("{err:?}").contains("memory request"), "{err:?}");
    }

    #[test]
    fn flat_rss_passes_and_short_soaks_see_no_recheck() {
        let samples: Vec<Sample> = (0..=36).map(|i| at(i * 5, 14_100)).collect();
        let took = Duration::from_secs(180);
        assert_eq!(warm_up_end(took), Duration::from_secs(60));
        assert_eq!(rechecks_after(Duration::from_secs(60), took), 0);
        let got = verdict(&samples, 1, took, Duration::from_secs(20));
        assert!(got.is_ok(), "{got:?}");
    }
}
