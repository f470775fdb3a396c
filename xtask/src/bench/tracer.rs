//! The tracers under test, run as child processes: `kmem-trace watch --json`
//! and bpftrace on the same tracepoints. Their stdout goes into a counting sink
//! (lines, lines about our cgroups, the last line for kmem-trace's summary);
//! start-up and CPU time are measured from outside.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// What a counting sink saw on a tracer's stdout.
#[derive(Debug, Default)]
struct Sink {
    lines: u64,
    ours: u64,
    last: String,
    /// CPU seconds the sink's thread used (it shares the machine with the churn).
    cpu_s: f64,
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Reads and counts a tracer's output while the churn runs, on the same two
/// cores: it has to be cheap. A byte-by-byte window search for the needle
/// took 55-70 µs of CPU per lifecycle on kmem-trace's ~600-byte JSON lines,
/// more than the tracer itself, and ten times what it took on bpftrace's
/// short lines (docs/PERFORMANCE.md); `memmem` takes a few.
fn count<R: Read>(r: R, needle: &[u8], ready: &str, tx: mpsc::Sender<String>) -> Sink {
    let mut s = Sink::default();
    let mut r = BufReader::with_capacity(1 << 16, r);
    let mut line = Vec::with_capacity(1024);
    let mut told = false;
    let mut last = Vec::new();
    let finder = memchr::memmem::Finder::new(needle);
    while matches!(r.read_until(b'\n', &mut line), Ok(n) if n > 0) {
        s.lines += 1;
        if !needle.is_empty() && finder.find(&line).is_some() {
            s.ours += 1;
        }
        if !told && !ready.is_empty() && line.starts_with(ready.as_bytes()) {
            told = true;
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        }
        // Keep the last non-empty line (kmem-trace's summary) without copying.
        std::mem::swap(&mut line, &mut last);
        line.clear();
    }
    s.last = String::from_utf8_lossy(&last).trim_end().to_string();
    s.cpu_s = thread_cpu_s();
    s
}

/// A running tracer.
pub struct Running {
    child: Child,
    /// Exec to the ready line.
    pub ready_after: Duration,
    cpu_at_ready: f64,
    out: Option<thread::JoinHandle<Sink>>,
    err: Option<thread::JoinHandle<Vec<String>>>,
    stop_signal: i32,
}

/// What a tracer run produced.
#[derive(Debug, Default, Serialize)]
pub struct Outcome {
    pub lines: u64,
    /// Lines that name the bench's parent cgroup.
    pub ours: u64,
    /// kmem-trace's `drops` from its summary line.
    pub drops: Option<u64>,
    /// CPU seconds (user + system) between ready and stop.
    pub cpu_s: f64,
    /// CPU seconds of the bench's thread that reads and counts the output.
    pub sink_cpu_s: f64,
    pub exit_code: Option<i32>,
}

/// CPU seconds of a process: the sum over its live threads of the time on a
/// CPU from `/proc/<pid>/task/*/schedstat` (ns; `stat`'s ticks are 10 ms).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        / 1e9
}

impl Running {
    /// Starts `cmd` and waits for a line starting with `ready` on stdout or
    /// containing it on stderr. `needle` marks lines about our cgroups.
    fn start(mut cmd: Command, ready: &str, needle: &str, stop_signal: i32) -> Result<Running> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", crate::util::show(&cmd)))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().context("tracer stdout")?;
        let (needle, ready_s) = (needle.as_bytes().to_vec(), ready.to_string());
        let tx_out = tx.clone();
        let out = thread::spawn(move || count(stdout, &needle, &ready_s, tx_out));
        let stderr = child.stderr.take().context("tracer stderr")?;
        let ready_e = ready.to_string();
        let err = thread::spawn(move || {
            let mut lines = Vec::new();
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                if l.contains(&ready_e) {
                    let _ = tx.send(l.clone());
                }
                lines.push(l);
            }
            lines
        });
        let mut r = Running {
            child,
            ready_after: Duration::ZERO,
            cpu_at_ready: 0.0,
            out: Some(out),
            err: Some(err),
            stop_signal,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(_) => {
                r.ready_after = t0.elapsed();
                r.cpu_at_ready = cpu_seconds(r.child.id());
                Ok(r)
            }
            Err(_) => {
                let _ = r.child.kill();
                let _ = r.child.wait();
                let errs = r.err.take().and_then(|h| h.join().ok()).unwrap_or_default();
                bail!(
                    "{} did not get ready: {}",
                    crate::util::show(&cmd),
                    errs.join("\n")
                )
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the tracer (SIGTERM / SIGINT), waits, and collects what it printed.
    pub fn stop(mut self) -> Result<Outcome> {
        let cpu = cpu_seconds(self.child.id()) - self.cpu_at_ready;
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, self.stop_signal) };
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait()?;
            }
            thread::sleep(Duration::from_millis(10));
        };
        let sink = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let _ = self.err.take().and_then(|h| h.join().ok());
        let drops = serde_json::from_str::<Value>(&sink.last)
            .ok()
            .filter(|v| v["kind"] == "summary")
            .and_then(|v| v["drops"].as_u64());
        Ok(Outcome {
            lines: sink.lines,
            ours: sink.ours,
            drops,
            cpu_s: cpu,
            sink_cpu_s: sink.cpu_s,
            exit_code: status.code(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kmem-trace watch --json [extra]`, ready at its "watching with" line.
pub fn kmem_trace(bin: &Path, extra: &[String], needle: &str) -> Result<Running> {
    let mut cmd = Command::new(bin);
    cmd.args(["watch", "--json"]).args(extra);
    Running::start(cmd, "watching with", needle, libc::SIGTERM)
}

/// bpftrace running `script`, ready at its "Attaching N probes" line.
pub fn bpftrace(script: &str, needle: &str) -> Result<Running> {
    let mut cmd = Command::new("bpftrace");
    cmd.args(["-B", "full", "-e", script]);
    Running::start(cmd, "Attaching", needle, libc::SIGINT)
}

/// Tracepoints (by name) that kmem-trace's programs are linked to right now.
pub fn kmem_trace_tracepoints() -> Vec<String> {
    let show = |what: &str| -> Vec<Value> {
        Command::new("bpftool")
            .args(["-j", what, "show"])
            .output()
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok())
            .unwrap_or_default()
    };
    let ours: Vec<u64> = show("prog")
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("kt_")))
        .filter_map(|p| p["id"].as_u64())
        .collect();
    let mut tps: Vec<String> = show("link")
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| ours.contains(&id)))
        .filter_map(|l| l["tp_name"].as_str().map(String::from))
        .collect();
    tps.sort();
    tps.dedup();
    tps
}

/// The tracefs category of tracepoint `name` (`cgroup`, `sched`, ...).
fn category(name: &str) -> Option<String> {
    let events = Path::new("/sys/kernel/tracing/events");
    fs::read_dir(events)
        .ok()?
        .flatten()
        .find(|e| e.path().join(name).is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// A bpftrace script doing per tracepoint what kmem-trace does: lifecycle
/// points print one line each (kmem-trace sends one record through its ring
/// buffer); `workqueue_execute_start` is filtered to the css release/free work
/// like kmem-trace's program; process fork/exec/attach, which kmem-trace
/// admits through an in-kernel per-memcg limiter, are counted in a map.
pub fn bpftrace_script(tracepoints: &[String]) -> Result<String> {
    let mut s = String::new();
    for tp in tracepoints {
        let cat = category(tp).with_context(|| {
            format!("tracepoint {tp} is not in /sys/kernel/tracing/events (is tracefs mounted?)")
        })?;
        let body = match tp.as_str() {
            "cgroup_mkdir" | "cgroup_rmdir" | "cgroup_release" => format!(
                "{{ printf(\"{tp} %d %d %d %s %s %d\\n\", args->root, args->id, args->level, str(args->path), comm, pid); }}"
            ),
            "workqueue_execute_start" => "/args->function == kaddr(\"css_release_work_fn\") || args->function == kaddr(\"css_free_rwork_fn\")/ \
                 { printf(\"work %lx %lx %s %d\\n\", args->work, args->function, comm, pid); }"
                .to_string(),
            _ => format!("{{ @{tp}[cpu] = count(); }}"),
        };
        s.push_str(&format!("tracepoint:{cat}:{tp} {body}\n"));
    }
    if s.is_empty() {
        bail!("kmem-trace attached no tracepoints to compare bpftrace with");
    }
    Ok(s)
}
