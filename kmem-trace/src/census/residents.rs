//! Residents of the memcgs that are live when the tracer starts: the
//! processes in their `cgroup.procs`, with `comm`, parent and start time from
//! `/proc`. The tracer sees processes enter only from its start; these were
//! there before. Read once at start-up, never on the event path.

use std::path::Path;

use crate::lifecycle::{Comm, Memcg, Task};

/// `comm`, ppid and start time (clock ticks after boot) from `/proc/<pid>/stat`.
/// The name is in parentheses and may itself hold `)` and spaces, so the
/// fields are counted from the last `)` (as `proc_pid_stat()` prints them).
pub fn parse_stat(text: &str) -> Option<(String, u32, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, starttime field 22.
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((comm, ppid, start))
}

/// The processes listed in `procs` (the text of `cgroup.procs`), at most
/// `max`, oldest first, and how many more there were. `read_stat(pid)` gives
/// `/proc/<pid>/stat`; a process gone meanwhile is skipped. `ticks` is
/// `sysconf(_SC_CLK_TCK)`. Start times count from boot, like the kernel's
/// monotonic clock of the events (they differ only by time spent suspended).
pub fn tasks(
    procs: &str,
    max: usize,
    ticks: u64,
    read_stat: &dyn Fn(u32) -> Option<String>,
) -> (Vec<Task>, u32) {
    let mut found: Vec<(u64, Task)> = Vec::new();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
        let Some((comm, ppid, start)) = read_stat(pid).as_deref().and_then(parse_stat) else {
            continue;
        };
        let pcomm = read_stat(ppid)
            .as_deref()
            .and_then(parse_stat)
            .map(|p| p.0)
            .unwrap_or_default();
        let ts_ns = start.saturating_mul(1_000_000_000) / ticks.max(1);
        let t = Task::new(pid, pid, Comm::new(&comm), ppid, Comm::new(&pcomm), ts_ns);
        found.push((start, t));
    }
    found.sort_by_key(|(start, t)| (*start, t.pid));
    let dropped = found.len().saturating_sub(max) as u32;
    (
        found.into_iter().take(max).map(|(_, t)| t).collect(),
        dropped,
    )
}

/// Gives every live memcg without residents the processes in its
/// `cgroup.procs` under `mount`.
pub fn fill(memcgs: &mut [Memcg], mount: &Path, max: usize) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let read_stat = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    for m in memcgs
        .iter_mut()
        .filter(|m| m.state == crate::lifecycle::State::Live && m.residents().is_empty())
    {
        let rel = m.path.trim_start_matches('/');
        let Ok(procs) = std::fs::read_to_string(mount.join(rel).join("cgroup.procs")) else {
            continue;
        };
        let (ts, dropped) = tasks(&procs, max, ticks, &read_stat);
        if !ts.is_empty() {
            m.set_residents(ts);
            m.residents_dropped = dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_1: &str =
        "1 (containerd-shim) S 0 1 1 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 9 0 50 1 1\n";
    const STAT_7: &str =
        "7 (we (ird) name) S 1 7 7 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 300 1 1\n";
    const STAT_9: &str = "9 (sleep) S 1 9 9 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 200 1 1\n";

    #[test]
    fn stat_lines_with_odd_names() {
        assert_eq!(parse_stat(STAT_7), Some(("we (ird) name".into(), 1, 300)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn residents_oldest_first_bounded() {
        let read = |pid: u32| match pid {
            1 => Some(STAT_1.to_string()),
            7 => Some(STAT_7.to_string()),
            9 => Some(STAT_9.to_string()),
            _ => None,
        };
        // 8 vanished before it was read; junk lines are ignored.
        let (ts, dropped) = tasks("7\n9\n8\nnot-a-pid\n", 1, 100, &read);
        assert_eq!(dropped, 1);
        assert_eq!(ts.len(), 1);
        let t = &ts[0];
        assert_eq!((t.pid, t.tgid, t.ppid), (9, 9, 1));
        assert_eq!(t.comm().as_str(), "sleep");
        assert_eq!(t.pcomm().as_str(), "containerd-shim");
        // 200 ticks at 100 Hz: 2 s after boot.
        assert_eq!(t.ts_ns, 2_000_000_000);
        let (all, dropped) = tasks("7\n9\n", 8, 100, &read);
        assert_eq!((all.len(), dropped), (2, 0));
        assert_eq!(all[1].comm().as_str(), "we (ird) name");
    }
}
