//! What the guest reads from the kernel itself, independent of kmem-trace: the
//! dying-memcg count, cgroup version, kmem boot option, memcg symbols in
//! kallsyms, and kernel warnings in the log.

use std::{
    fs,
    io::Read,
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::Path,
};

use serde_json::{json, Value};

/// `uname -r`.
pub fn release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The memory controller runs on cgroup v2 (its root has `cgroup.stat`).
pub fn cgroup_v2() -> bool {
    kmem_trace_tests::memory_root().is_ok_and(|r| r.join("cgroup.stat").exists())
}

/// Kernel-memory accounting is on unless the kernel was booted with
/// `cgroup.memory=nokmem` (`mem_cgroup_kmem_disabled()`).
pub fn kmem_enabled() -> bool {
    !fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .any(|a| a == "cgroup.memory=nokmem")
}

/// Waits up to `limit` until the kernel counts at most `before` dying memcgs
/// (the ones a step made are gone); whether it did.
pub fn wait_dying_back_to(before: i64, limit: std::time::Duration) -> bool {
    kmem_trace_tests::wait_for(limit, || kernel_dying().is_some_and(|n| n <= before))
}

/// Memcgs the kernel still has after their directory was removed: v2's
/// `nr_dying_descendants` at the root, or on v1 `num_cgroups` of `memory` in
/// `/proc/cgroups` minus the directories of the hierarchy.
pub fn kernel_dying() -> Option<i64> {
    let root = kmem_trace_tests::memory_root().ok()?;
    let stat = root.join("cgroup.stat");
    if stat.exists() {
        return fs::read_to_string(stat)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("nr_dying_descendants "))?
            .trim()
            .parse()
            .ok();
    }
    let total: i64 = fs::read_to_string("/proc/cgroups")
        .ok()?
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&"memory")).then(|| f.get(2)?.parse().ok())?
        })?;
    Some(total - count_dirs(&root))
}

fn count_dirs(dir: &Path) -> i64 {
    1 + fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| count_dirs(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

/// Text symbols of the memcg and css machinery in `/proc/kallsyms`, for the
/// probe table's "seen on" ranges (GCC clones such as `.part.0` included).
pub fn memcg_symbols() -> Vec<String> {
    let text = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (_, ty, name) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || !matches!(ty, "t" | "T") {
                return None;
            }
            let interesting = ["mem_cgroup_", "memcg_", "obj_cgroup_", "css_"]
                .iter()
                .any(|p| name.starts_with(p));
            interesting.then(|| name.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Reads kernel log records at warning level or worse from `/dev/kmsg`.
pub struct Kmsg(Option<fs::File>);

impl Kmsg {
    /// From boot (a VM) or from now on (a shared host, whose older records are
    /// none of this run's business).
    pub fn open(from_now: bool) -> Kmsg {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok();
        if let (Some(f), true) = (&f, from_now) {
            // SAFETY: lseek on an open descriptor.
            unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
        }
        Kmsg(f)
    }

    /// The lines so far, and whether any is a splat (WARN, BUG, Oops) that
    /// fails the run.
    pub fn collect(&mut self) -> Value {
        let mut lines = Vec::new();
        if let Some(f) = self.0.as_mut() {
            // One record per read(); EAGAIN at the end of the buffer.
            let mut buf = vec![0u8; 8192];
            while let Ok(n) = f.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let rec = String::from_utf8_lossy(&buf[..n]);
                let Some((head, msg)) = rec.split_once(';') else {
                    continue;
                };
                let level = head
                    .split(',')
                    .next()
                    .and_then(|p| p.parse::<u32>().ok())
                    .map(|p| p & 7)
                    .unwrap_or(7);
                if level <= 4 {
                    lines.push(msg.lines().next().unwrap_or("").to_string());
                }
            }
        }
        let splat = lines.iter().any(|l| {
            [
                "WARNING:",
                "BUG:",
                "Oops",
                "general protection",
                "Call Trace",
            ]
            .iter()
            .any(|p| l.contains(p))
        });
        lines.truncate(60);
        json!({"splat": splat, "lines": lines})
    }
}
