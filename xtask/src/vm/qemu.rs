//! Runs one row of the matrix as a child process — a qemu VM (TCG: KVM does not
//! work inside the VMs this runs on) or the host scenario — streaming its output
//! line by line into a log and the row's result, and stopping it on a kernel
//! panic, on silence (hang) or at the overall timeout.

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::{kernels::Kernel, progress::Progress, results::RunResult};
use crate::build::Arch;

/// One VM boot.
pub struct VmSpec {
    pub kernel: Kernel,
    pub initrd: PathBuf,
    pub disk: PathBuf,
    /// The swap disk (`/dev/vdb`), attached copy-on-write.
    pub swap: PathBuf,
    /// An empty ext4 image (`/dev/vdc`), attached copy-on-write: the guest's
    /// writable disk filesystem (the writeback pin).
    pub scratch: PathBuf,
    /// Extra kernel command-line options (`cgroup.memory=nokmem`, `kmt.*`).
    pub append: Vec<String>,
    pub memory_mb: u32,
}

/// Limits for a supervised child.
#[derive(Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    /// No output for this long is a hang.
    pub silence: Duration,
}

/// What differs between architectures' VMs.
struct Machine {
    args: &'static [&'static str],
    /// The console, and what else this machine's kernels need on the command line.
    append: &'static [&'static str],
}

impl Machine {
    fn of(arch: Arch) -> Machine {
        match arch {
            // The default PC machine: virtio disks on PCI, the 8250 UART.
            // no_timer_check: on a loaded host, TCG can run the IO-APIC timer
            // check (`check_timer()`) too slowly for it to see the tick, and
            // the kernel panics ("IO-APIC + timer doesn't work!"; seen in CI
            // with a build beside it). The check is for broken real boards.
            Arch::Amd64 => Machine {
                args: &[],
                append: &["console=ttyS0", "no_timer_check"],
            },
            // `virt` has a PCIe host (virtio disks on PCI, as on x86) and a
            // PL011 UART. `max` gives the ARMv8.x features a Graviton has (LSE
            // atomics the BPF JIT uses); pauth-impdef makes its pointer
            // authentication cheap to emulate (QEMU's own advice for TCG).
            Arch::Arm64 => Machine {
                args: &["-M", "virt", "-cpu", "max,pauth-impdef=on"],
                append: &["console=ttyAMA0"],
            },
        }
    }
}

impl VmSpec {
    pub fn command(&self) -> Command {
        let m = Machine::of(self.kernel.arch);
        let mut c = Command::new(self.kernel.arch.qemu_system());
        // norandmaps: every kmem-trace start maps its code at the same
        // addresses, so TCG reuses the blocks it translated for the last one
        // (about 20% faster starts; a cgroup v2 VM starts kmem-trace about eleven times).
        let mut append = m.append.to_vec();
        append.extend(["quiet", "panic=-1", "norandmaps"]);
        append.extend(self.append.iter().map(String::as_str));
        c.args(m.args)
            .args(["-accel", "tcg", "-smp", "1", "-nodefaults", "-no-reboot"])
            .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
            .args(["-m", &self.memory_mb.to_string()])
            .arg("-kernel")
            .arg(&self.kernel.vmlinuz)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,readonly=on",
                self.disk.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                self.swap.display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,snapshot=on",
                self.scratch.display()
            ))
            .arg("-append")
            .arg(append.join(" "));
        c
    }
}

/// Runs `cmd`, feeding its stdout (and stderr) lines to `result` and the log
/// at `log`, until it exits or a limit is hit (then it is killed, by its PID).
pub fn supervise(
    mut cmd: Command,
    log: &Path,
    limits: Limits,
    result: &mut RunResult,
    progress: &Progress,
) {
    let start = Instant::now();
    result.console = Some(log.display().to_string());
    let mut logf = fs::File::create(log).ok();
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            result.failure = Some(format!("starting {:?}: {e}", cmd.get_program()));
            return;
        }
    };
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            // Lines may hold invalid UTF-8 (console escapes): read bytes.
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);
    let mut last_output = Instant::now();
    let stop = loop {
        match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(line) => {
                last_output = Instant::now();
                if let Some(f) = logf.as_mut() {
                    let _ = f.write_all(line.as_bytes());
                }
                if let Some(step) = result.line(&line, start.elapsed().as_secs_f64()) {
                    progress.update(&result.label, step.family.as_deref(), &step.step);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break None,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if start.elapsed() > limits.timeout {
            break Some(format!("timeout after {:?}", limits.timeout));
        }
        if last_output.elapsed() > limits.silence {
            break Some(format!(
                "hang: no output for {:?} (last step: {})",
                limits.silence,
                result.tail.back().map(String::as_str).unwrap_or("none")
            ));
        }
    };
    if let Some(why) = stop {
        // Our own child, by PID.
        let _ = child.kill();
        result.failure.get_or_insert(why.clone());
        progress.update(&result.label, None, &why);
    }
    let status = child.wait();
    result.seconds = start.elapsed().as_secs_f64();
    if let Ok(s) = status {
        if !s.success() && result.failure.is_none() && result.done.is_none() {
            result.failure = Some(format!("exited with {s}"));
        }
    }
    result.finish();
    let verdict = if result.ok { "pass" } else { "FAIL" };
    progress.update(
        &result.label,
        None,
        &format!("{verdict} in {:.1}s", result.seconds),
    );
}
