//! One run of every pin scenario (`pins`): one parent, one watch; all pinned
//! memcgs are made, removed and measured together, listed by one census, then
//! released one at a time, each waited for until the kernel frees it.

use std::{
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use kmem_trace::leaks::Cause;
use kmem_trace_tests::{wait_for, TestParent, Tracer};
use serde_json::{json, Value};

use crate::{
    check::{lives, Ev},
    kmem_trace_json,
    pins::Outcome,
    scenario::{in_cgroup, Plan},
    sys::kernel_dying,
    watches::Seen,
};

/// How long a writeback pin gets to go after its inode's eviction, and again
/// after its file's deletion. It does not go on 7.3.4 (a kernel finding, not
/// a failure): waiting `plan.wait` for it there only cost time.
const WRITEBACK_WAIT: Duration = Duration::from_secs(5);

/// One pin scenario in the run.
pub struct Pin {
    pub name: String,
    pub cause: Cause,
    pub out: Outcome,
    /// The memcg's cgroup while the pin is set up and holds; `None` once
    /// the scenario failed (its error is in `out`).
    cg: Option<PathBuf>,
    tmpfs_file: PathBuf,
    held: Vec<OwnedFd>,
}

impl Pin {
    pub fn new(name: String, cause: Cause) -> Pin {
        Pin {
            name,
            cause,
            out: Outcome::default(),
            cg: None,
            tmpfs_file: PathBuf::new(),
            held: Vec::new(),
        }
    }

    fn scratch_file(&self) -> PathBuf {
        Path::new(crate::init::SCRATCH).join(&self.name)
    }

    /// Drops what holds the memcg: the tmpfs file (and its swap entries),
    /// the sockets. Freed swap entries can wait in the per-CPU swap slots
    /// cache (6.12; the cache is gone by 7.2): swapoff returns every entry,
    /// as swap-in would.
    fn release(&mut self) {
        let _ = fs::remove_file(&self.tmpfs_file);
        self.held.clear();
        if self.cause == Cause::Swap {
            crate::pins::swapoff();
        }
    }

    /// Records a failed step and takes the pin out of the run.
    fn fail(&mut self, parent: &TestParent, e: &anyhow::Error) {
        self.out.errors.push(format!("{e:#}"));
        self.release();
        if let Some(cg) = self.cg.take() {
            let _ = parent.rmdir(&cg);
        }
        let _ = fs::remove_file(self.scratch_file());
    }
}

/// The whole run; `Err` for what fails every scenario (parent, watch).
pub fn run(plan: &Plan, pins: &mut [Pin]) -> Result<()> {
    if !crate::scenario::settle(Duration::from_secs(5)) {
        for p in pins.iter_mut() {
            p.out
                .errors
                .push("dying memcgs left from earlier runs".into());
        }
    }
    let mut parent = TestParent::new("vm-pins").context("creating the parent")?;
    let args = ["watch", "--json", "--no-history", "--zombie-after", "100ms"];
    let mut w = Tracer::start(&args).context("starting kmem-trace watch")?;
    crate::proto::step(None, "pins: set up");
    let mut before = kernel_dying().unwrap_or(0);
    for p in pins.iter_mut() {
        p.tmpfs_file = plan.shm_dir.join(format!("{}-{}", parent.name, p.name));
        parent.track_file(&p.tmpfs_file);
        if let Err(e) = set_up(plan, &parent, p) {
            p.fail(&parent, &e);
            // Its memcg, removed with the pin gone, must not count as another's.
            crate::sys::wait_dying_back_to(before, Duration::from_secs(5));
            before = kernel_dying().unwrap_or(0);
        }
    }
    remove_all(&parent, pins)?;
    // The watch's output, each line parsed once, for the whole run.
    let mut seen = Seen::default();
    measure(plan, &parent, &w, &mut seen, pins, before);
    let mut released_at = Vec::new();
    for p in pins.iter_mut().filter(|p| p.cg.is_some()) {
        crate::proto::step(None, &format!("pin {} release", p.name));
        released_at.push(seen.refresh(&w).len());
        release_and_wait(plan, &parent.name, &w, &mut seen, p, before);
    }
    thread::sleep(Duration::from_millis(300));
    w.stop().context("stopping kmem-trace watch")?;
    // The tracer's whole output is in its lines now.
    let evs = seen.refresh(&w);
    let active = pins.iter_mut().filter(|p| p.cg.is_some());
    for (p, at) in active.zip(released_at) {
        p.out.id_release = id_release(evs, &parent.name, &p.name, at).into();
    }
    drop(parent);
    Ok(())
}

/// Makes the pin's memcg and charges it with what will hold it.
fn set_up(plan: &Plan, parent: &TestParent, p: &mut Pin) -> Result<()> {
    let cg = parent.child(&p.name)?;
    p.cg = Some(cg.clone());
    match p.cause {
        Cause::Swap => {
            let file = p.tmpfs_file.to_string_lossy();
            in_cgroup(&cg, &["write", &file, &plan.pin_bytes.to_string()])?;
            // Reclaim may take more than one pass to write the shmem out.
            for _ in 0..4 {
                let _ = fs::write(cg.join("memory.reclaim"), "64M");
            }
            let swapped = crate::pins::read_u64(&cg.join("memory.swap.current"));
            p.out.swapped = swapped;
            if swapped.unwrap_or(0) < plan.pin_bytes / 2 {
                bail!(
                    "memory.reclaim pushed {swapped:?} bytes to swap, expected about {}",
                    plan.pin_bytes
                );
            }
        }
        Cause::Writeback => {
            if !crate::pins::is_mount(Path::new(crate::init::SCRATCH)) {
                bail!(
                    "no writable ext4 at {}: the VM has no scratch disk (/dev/vdc)",
                    crate::init::SCRATCH
                );
            }
            // Written, not fsynced: the inode must still be dirty when the
            // memcg goes offline. The last VM run fsynced it first, and 6.12
            // and 7.3 freed the memcg at rmdir: `cleanup_offline_cgwbs_workfn()`
            // (run from `wb_memcg_offline()`, c22d70a162d3 "writeback, cgroup:
            // release dying cgwbs by switching attached inodes", 5.15) moves
            // the clean inodes of an offline memcg's writeback context to the
            // parent's, but skips a context with dirty IO (`wb_has_dirty_io()`)
            // and does not come back to it until another memcg goes offline;
            // the inode then keeps the context, and it the memcg's css, past sync.
            let file = p.scratch_file();
            let bytes = plan.pin_bytes.to_string();
            in_cgroup(&cg, &["write", &file.to_string_lossy(), &bytes])?;
        }
        _ => {
            let kind = p.name.trim_start_matches("socket-");
            p.held.push(crate::pin_socket::socket_from(&cg, kind)?);
        }
    }
    Ok(())
}

/// Removes every pinned cgroup, the writeback pin's last: another memcg's
/// offline after its own would run the kernel's cleanup of offline writeback
/// contexts again, after sync cleaned the inode, and end the pin.
fn remove_all(parent: &TestParent, pins: &mut [Pin]) -> Result<()> {
    for p in pins.iter_mut().filter(|p| p.cause != Cause::Writeback) {
        if let Some(cg) = p.cg.clone() {
            if let Err(e) = parent.rmdir(&cg) {
                p.fail(parent, &e);
            }
        }
    }
    let Some(p) = pins.iter_mut().find(|p| p.cause == Cause::Writeback) else {
        return Ok(());
    };
    let Some(cg) = p.cg.clone() else {
        return Ok(());
    };
    // The others' offline (after an RCU grace period) before this one's.
    thread::sleep(Duration::from_millis(300));
    if let Err(e) = parent.rmdir(&cg) {
        p.fail(parent, &e);
        return Ok(());
    }
    // Offline runs after an RCU grace period (css_killed_work_fn()): let it
    // see the dirty inode before sync writes it (dirty pages expire after
    // 30 s, dirty_expire_centisecs). Then the pages are clean and go with
    // drop_caches; the inode stays.
    thread::sleep(Duration::from_millis(500));
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "1").context("writing drop_caches")
}

/// Whether each memcg is dying, and its census entry. The kernel's count
/// says it for all at once when every pin holds or none does; otherwise
/// each memcg's own evidence: its free in the watch, its census entry.
fn measure(
    plan: &Plan,
    parent: &TestParent,
    w: &Tracer,
    seen: &mut Seen,
    pins: &mut [Pin],
    before: i64,
) {
    // Memcgs the kernel reparents at offline (7.x LRU folios) go a moment later.
    thread::sleep(Duration::from_millis(300));
    let held = pins.iter().filter(|p| p.cg.is_some()).count() as i64;
    let delta = kernel_dying().map(|n| n - before);
    crate::proto::step(None, "pins: census");
    let doc = kmem_trace_json(&plan.kmem_trace, "census");
    let evs = seen.refresh(w);
    for p in pins.iter_mut().filter(|p| p.cg.is_some()) {
        let doc = match &doc {
            Ok(d) => d,
            Err(e) => {
                p.out.errors.push(format!("{e:#}"));
                &Value::Null
            }
        };
        let suffix = format!("/{}/{}", parent.name, p.name);
        p.out.entry = doc["memcgs"]
            .as_array()
            .and_then(|ms| {
                ms.iter()
                    .find(|m| m["path"].as_str().is_some_and(|s| s.ends_with(&suffix)))
            })
            .cloned();
        p.out.census = match &p.out.entry {
            Some(m) => json!({"pin": m["pin"], "pin_exact": m["pin_exact"],
                "mem_bytes": m["mem_bytes"], "swap_bytes": m["swap_bytes"],
                "own_pages": m["own_pages"], "state": m["state"]}),
            None => json!({"listed": false, "source": doc["source"]}),
        };
        let iterator = doc["source"] == "bpf_iterator";
        let freed = freed_in(evs, &parent.name, &p.name);
        p.out.kernel_dying = dying(delta, held, freed, p.out.entry.as_ref(), iterator);
    }
}

/// Whether one of `held` removed memcgs is dying: the kernel's count of
/// dying memcgs grew by `delta` since before them; `freed`: the watch saw
/// its free; `entry`: its census entry; `iterator`: the census walked the
/// cgroups (a memcg it does not list is gone). `None`: nothing tells.
fn dying(
    delta: Option<i64>,
    held: i64,
    freed: bool,
    entry: Option<&Value>,
    iterator: bool,
) -> Option<bool> {
    match delta {
        Some(d) if d == held => Some(true),
        Some(0) => Some(false),
        _ if freed => Some(false),
        _ => match entry {
            Some(m) => Some(m["state"] == "dying"),
            None if iterator => Some(false),
            None => None,
        },
    }
}

/// Whether the watch saw the free of `parent`/`name`.
fn freed_in(evs: &[Ev], parent: &str, name: &str) -> bool {
    lives(evs, parent)
        .iter()
        .any(|l| l.rel.as_deref() == Some(name) && l.count("free") > 0)
}

/// Releases one pin and waits until its memcg is freed: its free in the
/// watch, or one dying memcg fewer in the kernel's count.
fn release_and_wait(
    plan: &Plan,
    parent: &str,
    w: &Tracer,
    seen: &mut Seen,
    p: &mut Pin,
    before: i64,
) {
    let at = kernel_dying().unwrap_or(0);
    let was_freed = p.out.kernel_dying == Some(false);
    let name = p.name.clone();
    let mut freed = || {
        was_freed
            || freed_in(seen.refresh(w), parent, &name)
            || kernel_dying().is_some_and(|n| n < at || n <= before)
    };
    p.release();
    let (bound, what) = if p.cause == Cause::Writeback {
        // Evicting the inode (drop_caches 2: dentries and inodes) detaches
        // its writeback context; deleting the file evicts it too.
        let _ = fs::write("/proc/sys/vm/drop_caches", "2");
        let mut by = "inode evicted (drop_caches 2)";
        if !wait_for(WRITEBACK_WAIT, &mut freed) {
            by = "file deleted";
        }
        let _ = fs::remove_file(p.scratch_file());
        p.out.freed_by = Some(by);
        let waited = WRITEBACK_WAIT * 2;
        let what = format!("still dying {waited:?} after its pin was released");
        (WRITEBACK_WAIT, what)
    } else {
        let what = format!("still dying {:?} after its pin was released", plan.wait);
        (plan.wait, what)
    };
    if wait_for(bound, freed) {
        return;
    }
    if p.cause == Cause::Writeback {
        // What frees a writeback-pinned memcg is the kernel's business
        // (the leak table does not say): 7.3.4 kept it past inode eviction
        // and the file's deletion, with the file's pages still charged.
        p.out.findings.push(format!(
            "{}: {what} (inode evicted; file deleted, then {bound:?} more)",
            p.cause.name()
        ));
    } else {
        p.out.errors.push(what);
    }
}

/// When the trace saw the memcg's ID released: at "offline" (before the
/// pin's release, the watch's `released_at`-th event), at "release", or "not seen".
fn id_release(evs: &[Ev], parent: &str, name: &str, released_at: usize) -> &'static str {
    let ours = lives(evs, parent)
        .into_iter()
        .find(|l| l.rel.as_deref() == Some(name));
    match ours.as_ref().and_then(|l| l.first("id_release")) {
        None => "not seen",
        Some(id) => {
            let at = evs.iter().position(|e| e == id).unwrap_or(0);
            if at < released_at {
                "offline"
            } else {
                "release"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pin_is_dying_by_the_count_or_by_its_own_evidence() {
        let entry = json!({"state": "dying"});
        // Every pin held, or none: the kernel's count says it for each.
        assert_eq!(dying(Some(5), 5, false, None, false), Some(true));
        assert_eq!(dying(Some(0), 5, false, Some(&entry), true), Some(false));
        // Some held: each by its free, its census entry, its absence.
        assert_eq!(dying(Some(4), 5, true, Some(&entry), true), Some(false));
        assert_eq!(dying(Some(4), 5, false, Some(&entry), true), Some(true));
        let live = json!({"state": "online"});
        assert_eq!(dying(Some(4), 5, false, Some(&live), true), Some(false));
        assert_eq!(dying(Some(4), 5, false, None, true), Some(false));
        // Counts only and no free seen: nothing tells.
        assert_eq!(dying(Some(4), 5, false, None, false), None);
        assert_eq!(dying(None, 5, false, None, false), None);
    }

    #[test]
    fn the_id_release_is_placed_by_the_line_of_the_pin_release() {
        let ev = |k: &str, path: &str| {
            json!({"kind": k, "ts_ns": 1, "memcg_addr": "0x1", "memcg_id": 9, "path": path})
                .to_string()
        };
        let text = [
            ev("alloc", "/p/swap"),
            ev("offline", "/p/swap"),
            ev("id_release", "/p/swap"),
            ev("free", "/p/swap"),
        ]
        .join("\n");
        let evs: Vec<Ev> = text
            .lines()
            .filter_map(|l| Ev::from_json(&serde_json::from_str(l).ok()?))
            .collect();
        assert_eq!(id_release(&evs, "p", "swap", 3), "offline");
        assert_eq!(id_release(&evs, "p", "swap", 2), "release");
        assert_eq!(id_release(&evs, "p", "tcp", 2), "not seen");
    }
}
