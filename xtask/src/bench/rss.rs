//! The memory figure measured on the real binary: `kmem-trace replay` of a
//! generated recording of 65,535 memcgs (written by the footprint benchmark),
//! its VmRSS read from `/proc/PID/status` whenever it is blocked writing its
//! output into a one-page pipe. Every such sample is taken with the state it
//! built alive; the last one is at the end of the replay (its final output),
//! before `main` returns and drops the state.

use std::{
    io::Read,
    os::fd::AsRawFd,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde::Serialize;

/// What the replay process's memory was.
#[derive(Debug, Serialize)]
pub struct ReplayRss {
    /// VmRSS at the last sample (KiB): the end of the replay.
    pub rss_end_kib: u64,
    /// VmHWM at the last sample (KiB): the peak, which includes the file read
    /// whole and its decoded copy side by side.
    pub hwm_kib: u64,
    /// Samples taken (times the replay blocked on its output).
    pub samples: u64,
    /// The largest VmRSS among the samples (KiB).
    pub rss_max_sampled_kib: u64,
    /// Bytes the replay printed.
    pub output_bytes: u64,
    pub seconds: f64,
    pub exit_code: Option<i32>,
}

/// `VmRSS` and `VmHWM` of `pid` in KiB, if it still exists.
fn status(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The scheduler state letter of `pid` (`R`, `S`, `Z`, ...), `None` once reaped.
fn state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

/// Waits until `pid` sleeps (blocked on our full pipe: the replay does no
/// other blocking I/O after reading its file) or has exited. True if it sleeps.
fn wait_blocked(pid: u32, deadline: Instant) -> Result<bool> {
    loop {
        match state(pid) {
            Some('S') => return Ok(true),
            Some('Z' | 'X') | None => return Ok(false),
            _ => {}
        }
        if Instant::now() > deadline {
            bail!("kmem-trace replay did not finish in time");
        }
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Runs `bin replay recording` and samples its memory as described above.
pub fn replay_rss(bin: &Path, recording: &Path) -> Result<ReplayRss> {
    let mut cmd = Command::new(bin);
    cmd.arg("replay")
        .arg(recording)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    eprintln!("+ {} (RSS sampled)", crate::util::show(&cmd));
    let t0 = Instant::now();
    let mut child = cmd.spawn().context("starting kmem-trace replay")?;
    let mut out = child.stdout.take().context("replay stdout")?;
    // SAFETY: fcntl on a pipe fd we own; one page is the smallest pipe.
    unsafe { libc::fcntl(out.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    let pid = child.id();
    let deadline = t0 + Duration::from_secs(600);
    let mut buf = vec![0u8; 4096];
    let (mut last, mut samples, mut max_rss, mut bytes) = (None, 0u64, 0u64, 0u64);
    loop {
        if wait_blocked(pid, deadline)? {
            if let Some((rss, hwm)) = status(pid) {
                last = Some((rss, hwm));
                max_rss = max_rss.max(rss);
                samples += 1;
            }
        }
        let n = out.read(&mut buf).context("reading the replay's output")?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    let st = child.wait()?;
    let seconds = t0.elapsed().as_secs_f64();
    if !st.success() {
        bail!("kmem-trace replay {} failed ({st})", recording.display());
    }
    let (rss_end_kib, hwm_kib) = last.context("the replay never blocked on its output")?;
    Ok(ReplayRss {
        rss_end_kib,
        hwm_kib,
        samples,
        rss_max_sampled_kib: max_rss,
        output_bytes: bytes,
        seconds,
        exit_code: st.code(),
    })
}
