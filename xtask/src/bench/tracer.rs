//! The tracers under test, run as child processes: `kmem-trace watch --json`
//! and bpftrace on the same tracepoints. Their stdout goes to a file in
//! memory (`/dev/shm`) that is counted after the run (lines, lines about our
//! cgroups, the last line for kmem-trace's summary); start-up and CPU time
//! are measured from outside.

use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

/// What a tracer wrote on stdout.
#[derive(Debug, Default)]
struct Sink {
    lines: u64,
    ours: u64,
    last: String,
}

/// Counts a tracer's output once it has stopped. Reading it while the churn
/// ran, in a thread of the churn driver's own process, cost that process
/// 55-70 µs of CPU per lifecycle on kmem-trace's ~600-byte JSON lines (a
/// byte-wise window search; 20 µs with `memmem`), ten times what it cost on
/// bpftrace's short lines, and its allocations shared the address space the
/// churn worker forks from: the harness slowed the churn it measured
/// (docs/PERFORMANCE.md).
fn count(out: &[u8], needle: &[u8]) -> Sink {
    let mut s = Sink::default();
    let finder = memchr::memmem::Finder::new(needle);
    let mut last: &[u8] = b"";
    for line in out.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        s.lines += 1;
        if !needle.is_empty() && finder.find(line).is_some() {
            s.ours += 1;
        }
        last = line;
    }
    s.last = String::from_utf8_lossy(last).trim_end().to_string();
    s
}

/// A fresh file in memory for a tracer's stdout.
fn out_file() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = Path::new("/dev/shm");
    let dir = if dir.is_dir() {
        dir.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    dir.join(format!(
        "kmem-trace-bench-{}-{}.out",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Whether the output file so far has a line starting with `ready` (read
/// from `*pos` on).
fn ready_in(path: &Path, pos: &mut u64, ready: &str) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    if f.seek(SeekFrom::Start(*pos)).is_err() {
        return false;
    }
    let mut r = BufReader::new(f);
    let mut line = String::new();
    while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
        if !line.ends_with('\n') {
            break; // partial: read it again next time
        }
        *pos += line.len() as u64;
        if line.starts_with(ready) {
            return true;
        }
        line.clear();
    }
    false
}

/// A running tracer.
pub struct Running {
    child: Child,
    /// Exec to the ready line.
    pub ready_after: Duration,
    cpu_at_ready: f64,
    /// Where its stdout goes.
    out: PathBuf,
    err: Option<thread::JoinHandle<Vec<String>>>,
    stop_signal: i32,
    needle: Vec<u8>,
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
        let out = out_file();
        let file = File::create(&out).with_context(|| format!("creating {}", out.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = fs::remove_file(&out);
                return Err(e).with_context(|| format!("starting {}", crate::util::show(&cmd)));
            }
        };
        let (tx, rx) = mpsc::channel();
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
            out,
            err: Some(err),
            stop_signal,
            needle: needle.as_bytes().to_vec(),
        };
        let mut pos = 0;
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let on_stderr = rx.recv_timeout(Duration::from_millis(2)).is_ok();
            if on_stderr || ready_in(&r.out, &mut pos, ready) {
                r.ready_after = t0.elapsed();
                r.cpu_at_ready = cpu_seconds(r.child.id());
                return Ok(r);
            }
            let exited = matches!(r.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
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
        let _ = self.err.take().and_then(|h| h.join().ok());
        let out = fs::read(&self.out).unwrap_or_default();
        let sink = count(&out, &self.needle);
        let drops = serde_json::from_str::<Value>(&sink.last)
            .ok()
            .filter(|v| v["kind"] == "summary")
            .and_then(|v| v["drops"].as_u64());
        Ok(Outcome {
            lines: sink.lines,
            ours: sink.ours,
            drops,
            cpu_s: cpu,
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
        let _ = fs::remove_file(&self.out);
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
