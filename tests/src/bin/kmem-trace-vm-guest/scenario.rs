//! One family run of the VM scenario on a live kernel: a lifecycle churn, a tmpfs
//! pin and page-cache pins under a parent cgroup named for the run, traced by one
//! `kmem-trace watch --json` through the whole run; SIGUSR1 makes it write its
//! summary so far (`"kind":"snapshot"`) while the pins hold their memcgs, for
//! the zombie verdict. In VMs with cgroup v2 the same watch then sees the
//! memory toggle (`toggle`) of hook families.

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use kmem_trace_tests::{TestParent, Tracer};
use serde_json::Value;

use crate::{
    check::{lives, watch_blind, Ev, Expect, Observation},
    proto,
};

/// How the page-cache pins are released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// `echo 1 > /proc/sys/vm/drop_caches` (VMs: nothing else runs there).
    DropCaches,
    /// `posix_fadvise(DONTNEED)` on the pinning files only, so a shared host
    /// keeps its caches.
    Fadvise,
}

/// What to run and where.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Families to run; empty means every family the kernel supports.
    pub families: Vec<String>,
    /// `(family, "point=symbol")`: `--force-symbol` for that family's watch.
    pub forced: Vec<(String, String)>,
    pub churn: usize,
    pub cache_pins: usize,
    pub pin_bytes: u64,
    pub zombie_after: Duration,
    pub release: Release,
    /// Directory on a disk filesystem holding `pin-N` files for the cache pins.
    pub data_dir: PathBuf,
    /// Directory on tmpfs for the tmpfs pin.
    pub shm_dir: PathBuf,
    pub kmem_trace: PathBuf,
    /// Nothing else runs on this kernel: counts must match exactly.
    pub exact: bool,
    /// How long to wait for each expected event before giving up.
    pub wait: Duration,
    /// Run the ID exhaustion scenario (`kmt.scenario=exhaustion`) instead of the matrix.
    pub exhaustion: bool,
}

impl Plan {
    pub fn expect(&self, kmem: bool) -> Expect {
        Expect {
            churn: (0..self.churn).map(|i| format!("churn-{i}")).collect(),
            tmpfs_pin: "tmpfs-pin".into(),
            cache_pins: (0..self.cache_pins)
                .map(|i| format!("cache-pin-{i}"))
                .collect(),
            kmem,
            pin_bytes: self.pin_bytes,
            exact: self.exact,
            release: crate::sys::release(),
        }
    }

    pub fn data_file(&self, i: usize) -> PathBuf {
        self.data_dir.join(format!("pin-{i}"))
    }

    /// Creates missing data files (host runs; a VM's disk comes prepared) and
    /// syncs them so their pages are clean and can be evicted.
    pub fn prepare_data(&self) -> Result<()> {
        fs::create_dir_all(&self.data_dir)
            .with_context(|| format!("creating {}", self.data_dir.display()))?;
        for i in 0..self.cache_pins {
            let f = self.data_file(i);
            let ok = fs::metadata(&f).is_ok_and(|m| m.len() >= self.pin_bytes);
            if !ok {
                let data: Vec<u8> = (0..self.pin_bytes).map(|b| (b % 251) as u8).collect();
                fs::write(&f, data).with_context(|| format!("writing {}", f.display()))?;
                fs::File::open(&f)?.sync_all()?;
            }
        }
        Ok(())
    }
}

/// Runs the scenario for one family; failures are recorded, never propagated.
pub fn run_family(plan: &Plan, family: &str, kmem: bool) -> Observation {
    let mut obs = Observation {
        family: family.to_string(),
        ..Observation::default()
    };
    if let Err(e) = scenario(plan, family, kmem, &mut obs) {
        obs.errors.push(format!("{e:#}"));
    }
    obs
}

/// The whole-run watch's events so far, parsed once each: polling re-parsed
/// everything every 50 ms, which under TCG cost a tenth of the guest's CPU.
#[derive(Default)]
pub struct Seen {
    lines: usize,
    events: Vec<Ev>,
}

impl Seen {
    pub fn refresh(&mut self, t: &Tracer) -> &[Ev] {
        let lines = t.lines();
        for l in &lines[self.lines.min(lines.len())..] {
            if let Some(ev) = serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| Ev::from_json(&v))
            {
                self.events.push(ev);
            }
        }
        self.lines = lines.len();
        &self.events
    }
}

fn summary(out: &str) -> Option<Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .rfind(|v| v["kind"] == "summary")
}

/// Asks the running watch for its summary so far (SIGUSR1: it drains what the
/// kernel sent, writes a `"kind":"snapshot"` record and goes on) and waits
/// for that record; with the number of output lines up to it. One start of
/// kmem-trace fewer than a second watch stopped for its final summary (about
/// 2 s of CPU under TCG).
fn snapshot(w: &Tracer, wait: Duration) -> Result<(Value, usize)> {
    let pid = i32::try_from(w.pid()).context("watch PID")?;
    if pid <= 0 {
        anyhow::bail!("the watch has exited");
    }
    let from = w.lines().len();
    // SAFETY: signalling our own running child by PID.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        anyhow::bail!("SIGUSR1 to the watch: {}", std::io::Error::last_os_error());
    }
    let mut snap = None;
    kmem_trace_tests::wait_for(wait, || {
        let lines = w.lines();
        snap = lines.iter().enumerate().skip(from).find_map(|(i, l)| {
            let v = serde_json::from_str::<Value>(l).ok()?;
            (v["kind"] == "snapshot").then_some((v, i + 1))
        });
        snap.is_some()
    });
    snap.with_context(|| format!("no snapshot record from the watch within {wait:?}"))
}

fn events(lines: &[&str]) -> Vec<Ev> {
    lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Ev::from_json(&v))
        .collect()
}

/// Names (relative to the parent) that have an event of `kind` in `evs`.
fn with_event(evs: &[Ev], parent: &str, kind: &str) -> Vec<String> {
    lives(evs, parent)
        .into_iter()
        .filter(|l| l.count(kind) > 0)
        .filter_map(|l| l.rel)
        .collect()
}

struct Run<'a> {
    plan: &'a Plan,
    family: &'a str,
    parent: String,
    blind: Vec<String>,
    seen: Seen,
}

impl Run<'_> {
    fn step(&self, what: &str) {
        proto::step(Some(self.family), what);
    }

    /// Names (relative to the parent) with a `kind` event from `w` so far.
    fn with_event(&mut self, w: &Tracer, kind: &str) -> Vec<String> {
        let parent = self.parent.clone();
        with_event(self.seen.refresh(w), &parent, kind)
    }

    /// Waits until every name in `names` has a `kind` event in `w`'s output;
    /// when the watch cannot see `kind`, just lets the kernel catch up.
    fn wait_event(&mut self, w: &Tracer, kind: &str, names: &[String], obs: &mut Observation) {
        if self.blind.iter().any(|b| b == kind) {
            thread::sleep(Duration::from_millis(500));
            return;
        }
        let deadline = Instant::now() + self.plan.wait;
        loop {
            let have = self.with_event(w, kind);
            let missing: Vec<&String> = names.iter().filter(|n| !have.contains(n)).collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                obs.errors.push(format!(
                    "no {kind} event within {:?} for {missing:?}",
                    self.plan.wait
                ));
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Records pinned memcgs that were freed while their pin should still hold.
    fn note_early_frees(&mut self, w: &Tracer, pinned: &[String], obs: &mut Observation) {
        let freed = self.with_event(w, "free");
        for n in pinned {
            if freed.contains(n) && !obs.freed_early.contains(n) {
                obs.freed_early.push(n.clone());
            }
        }
    }
}

fn scenario(plan: &Plan, family: &str, kmem: bool, obs: &mut Observation) -> Result<()> {
    let exp = plan.expect(kmem);
    let mut parent = TestParent::new(&format!("vm-{family}")).context("creating the parent")?;
    obs.parent = parent.name.clone();
    let zombie_after = format!("{}ms", plan.zombie_after.as_millis());
    // No history database: a VM would create one at every start, and the
    // host's default one is not this test's to fill.
    let mut args = vec!["watch", "--json", "--no-history"];
    if let Some(hooks) = crate::visibility::perf_hooks(family) {
        // The old-kernel object forced: hooks chosen per point as on a node
        // where auto picks it (kprobes, else classic tracepoints), or its
        // tracepoint programs alone.
        args.extend(["--transport", "perf", "--hooks", hooks]);
    } else {
        args.extend(["--hooks", family]);
    }
    args.extend(["--zombie-after", &zombie_after]);
    for (f, forced) in &plan.forced {
        if f == family {
            args.extend(["--force-symbol", forced.as_str()]);
        }
    }
    let mut run = Run {
        plan,
        family,
        parent: parent.name.clone(),
        blind: Vec::new(),
        seen: Seen::default(),
    };
    run.step("start watch");
    let mut w = Tracer::start(&args).context("starting kmem-trace watch")?;
    run.blind = watch_blind(&w.stderr);
    obs.watch_blind = run.blind.clone();
    let dying_before = crate::sys::kernel_dying();

    run.step("churn");
    let mut churn = Vec::new();
    for name in &exp.churn {
        churn.push(parent.child(name)?);
    }
    for c in &churn {
        parent.rmdir(c)?;
    }
    run.wait_event(&w, "free", &exp.churn, obs);

    run.step("pins");
    let tmpfs_file = plan.shm_dir.join(format!("{}-pin", parent.name));
    parent.track_file(&tmpfs_file);
    let cg = parent.child(&exp.tmpfs_pin)?;
    let bytes = plan.pin_bytes.to_string();
    in_cgroup(&cg, &["write", &tmpfs_file.to_string_lossy(), &bytes])?;
    let mut pins = vec![cg];
    for (i, name) in exp.cache_pins.iter().enumerate() {
        let f = plan.data_file(i);
        evict(&f)?;
        let cg = parent.child(name)?;
        in_cgroup(&cg, &["read", &f.to_string_lossy()])?;
        pins.push(cg);
    }
    for cg in &pins {
        parent.rmdir(cg)?;
    }
    let pin_names: Vec<String> = exp.pins().iter().map(|s| s.to_string()).collect();
    run.wait_event(&w, "offline", &pin_names, obs);

    run.step("zombies");
    thread::sleep(plan.zombie_after + Duration::from_millis(300));
    obs.kernel_dying = match (crate::sys::kernel_dying(), dying_before) {
        (Some(now), Some(before)) => Some(now - before),
        _ => None,
    };
    match snapshot(&w, plan.wait) {
        Ok((v, _)) => obs.snapshot = Some(v),
        Err(e) => obs.errors.push(format!("{e:#}")),
    }
    run.note_early_frees(&w, &pin_names, obs);

    run.step("unpin tmpfs");
    fs::remove_file(&tmpfs_file).with_context(|| format!("removing {}", tmpfs_file.display()))?;
    run.wait_event(&w, "free", std::slice::from_ref(&exp.tmpfs_pin), obs);
    run.note_early_frees(&w, &exp.cache_pins, obs);

    run.step("drop caches");
    match plan.release {
        Release::DropCaches => {
            fs::write("/proc/sys/vm/drop_caches", "1").context("writing drop_caches")?
        }
        Release::Fadvise => {
            for i in 0..plan.cache_pins {
                evict(&plan.data_file(i))?;
            }
        }
    }
    run.wait_event(&w, "free", &exp.cache_pins, obs);
    // Late events (id_release after free on old kernels) get a moment to arrive.
    thread::sleep(Duration::from_millis(200));

    let toggle = toggles(plan, family)
        .then(|| toggle_in(&mut run, &w, obs))
        .flatten();

    run.step("stop watch");
    let (code, out) = w.stop().context("stopping kmem-trace watch")?;
    if code != Some(0) {
        obs.errors.push(format!(
            "watch exited with {code:?}: {}",
            w.stderr.join(" | ")
        ));
    }
    let lines: Vec<&str> = out.lines().collect();
    obs.events = events(&lines);
    if let Some((tparent, from)) = toggle {
        let evs = events(&lines[from.min(lines.len())..]);
        obs.toggle = Some(Ok((evs, tparent.name.clone())));
    }
    obs.summary = summary(&out);
    obs.watch_stderr = w.stderr.clone();
    drop(parent);
    Ok(())
}

/// Whether the memory toggle runs in this family's watch: VMs (the host row
/// never toggled), cgroup v2 (`cgroup.subtree_control`), hook families (the
/// perf rows' hooks are the kprobe and tracepoint families' programs).
fn toggles(plan: &Plan, family: &str) -> bool {
    plan.exact && crate::sys::cgroup_v2() && crate::visibility::perf_hooks(family).is_none()
}

/// Runs the memory toggle in the running watch after the scenario's own
/// steps: first the watch's snapshot, which holds the scenario's own counters
/// for the clean end (the toggled memcgs are partly invisible to some
/// families), then the toggles. Their parent, kept until the watch stops,
/// and the output line their events start after; `None` with
/// `obs.toggle` saying why when they could not run.
fn toggle_in(run: &mut Run, w: &Tracer, obs: &mut Observation) -> Option<(TestParent, usize)> {
    run.step("memory toggle");
    let r = snapshot(w, run.plan.wait).and_then(|(v, from)| {
        obs.pre_toggle = Some(v);
        Ok((crate::toggle::steps(run.plan, run.family)?, from))
    });
    r.map_err(|e| obs.toggle = Some(Err(format!("{e:#}")))).ok()
}

/// Runs this binary's `child` mode inside `cgroup` and waits for it. Not a
/// shell and `head`: exec'ing other binaries can read their pages into the page
/// cache, charged to the test cgroup, and pin it for reasons of its own. This
/// binary's pages are resident already (it is running), and it is static.
pub fn in_cgroup(cgroup: &Path, op: &[&str]) -> Result<()> {
    let status = std::process::Command::new("/proc/self/exe")
        .arg("child")
        .arg(cgroup)
        .args(op)
        .stdin(std::process::Stdio::null())
        .status()
        .context("starting the guest's child mode")?;
    if !status.success() {
        anyhow::bail!("child {op:?} in {} failed: {status}", cgroup.display());
    }
    Ok(())
}

/// `child CGROUP write FILE BYTES` / `child CGROUP read FILE`: joins the cgroup,
/// then charges it with tmpfs pages it writes or page cache it reads.
pub fn child(args: &[String]) -> Result<()> {
    use std::io::{Read, Write};
    let [cgroup, op, file, rest @ ..] = args else {
        anyhow::bail!(
            "usage: child CGROUP write|write-sync FILE BYTES | child CGROUP read FILE | child CGROUP socket KIND PATH"
        );
    };
    fs::write(
        Path::new(cgroup).join("cgroup.procs"),
        std::process::id().to_string(),
    )
    .with_context(|| format!("joining {cgroup}"))?;
    let mut buf = vec![0x5au8; 64 << 10];
    match (op.as_str(), rest) {
        ("write" | "write-sync", [bytes]) => {
            let mut left: usize = bytes.parse().context("BYTES")?;
            let mut f = fs::File::create(file).with_context(|| format!("creating {file}"))?;
            while left > 0 {
                let n = left.min(buf.len());
                f.write_all(&buf[..n])?;
                left -= n;
            }
            // write-sync: written back from inside the memcg, which ties the
            // inode to the memcg's writeback context (cgroup v2).
            if op == "write-sync" {
                f.sync_all().with_context(|| format!("fsync {file}"))?;
            }
        }
        ("read", []) => {
            let mut f = fs::File::open(file).with_context(|| format!("opening {file}"))?;
            while f.read(&mut buf)? > 0 {}
        }
        // `file` is the socket kind here, `path` where to send it.
        ("socket", [path]) => crate::pin_socket::child_socket(file, path)?,
        _ => anyhow::bail!("unknown child operation {op:?}"),
    }
    Ok(())
}

/// Drops a file's clean pages from the page cache (`POSIX_FADV_DONTNEED`), so
/// the next read charges them to the reader's memcg — and a later call uncharges
/// them again.
pub fn evict(path: &Path) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: a valid open descriptor; the advice has no memory effects.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        anyhow::bail!(
            "posix_fadvise({}): {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        );
    }
    Ok(())
}

/// Waits until the kernel has no dying memcgs left over from an earlier run,
/// so every family starts from the same state (and gets the same memcg IDs).
pub fn settle(limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if crate::sys::kernel_dying() == Some(0) {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}
