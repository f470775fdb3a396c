//! The VM scenario on a live kernel: a lifecycle churn, a tmpfs pin and
//! page-cache pins under a parent cgroup named for the run (and on cgroup v2 the
//! `+memory` toggle), traced by one `kmem-trace watch --json` per hook family at
//! once (`watches`); each watch's summary so far (SIGUSR1) while the pins hold
//! their memcgs gives the zombie verdict.

use std::{
    fs,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use kmem_trace_tests::TestParent;

use crate::{
    check::Expect,
    proto,
    watches::{Watch, Watches},
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

/// Runs the scenario once under every family's watch at once (`watches`);
/// failures are recorded per family, never propagated. `toggle`: also make and
/// kill memcgs with `+memory`/`-memory` (cgroup v2), for `toggle::judge`.
pub fn run_families(plan: &Plan, families: &[&str], kmem: bool, toggle: bool) -> Families {
    let mut out = Families {
        watches: Watches(Vec::new()),
        toggle: None,
    };
    let parent = match TestParent::new("vm-families").context("creating the parent") {
        Ok(p) => p,
        Err(e) => {
            let e = format!("{e:#}");
            out.watches.0 = families.iter().map(|f| Watch::failed(f, &e)).collect();
            out.toggle = Some(Err(e));
            return out;
        }
    };
    for f in families {
        out.watches.0.push(Watch::start(plan, f, &parent.name));
    }
    if let Err(e) = scenario(plan, parent, kmem, toggle, &mut out) {
        let e = format!("{e:#}");
        for w in &mut out.watches.0 {
            w.obs.errors.push(e.clone());
        }
    }
    out.watches.stop();
    out
}

/// What [`run_families`] observed.
pub struct Families {
    pub watches: Watches,
    /// The toggle's parent cgroup (its events are judged by `toggle`), or why
    /// it could not run; `None`: not asked for, or the scenario failed before.
    pub toggle: Option<Result<String, String>>,
}

fn step(what: &str) {
    proto::step(None, what);
}

fn scenario(
    plan: &Plan,
    mut parent: TestParent,
    kmem: bool,
    toggle: bool,
    out: &mut Families,
) -> Result<()> {
    let exp = plan.expect(kmem);
    let name = parent.name.clone();
    let w = &mut out.watches;
    let dying_before = crate::sys::kernel_dying();

    step("churn");
    let mut churn = Vec::new();
    for n in &exp.churn {
        churn.push(parent.child(n)?);
    }
    for c in &churn {
        parent.rmdir(c)?;
    }
    w.wait_event(&name, "free", &exp.churn, plan.wait);

    step("pins");
    let tmpfs_file = plan.shm_dir.join(format!("{name}-pin"));
    parent.track_file(&tmpfs_file);
    let cg = parent.child(&exp.tmpfs_pin)?;
    let bytes = plan.pin_bytes.to_string();
    in_cgroup(&cg, &["write", &tmpfs_file.to_string_lossy(), &bytes])?;
    let mut pins = vec![cg];
    for (i, n) in exp.cache_pins.iter().enumerate() {
        let f = plan.data_file(i);
        evict(&f)?;
        let cg = parent.child(n)?;
        in_cgroup(&cg, &["read", &f.to_string_lossy()])?;
        pins.push(cg);
    }
    for cg in &pins {
        parent.rmdir(cg)?;
    }
    let pin_names: Vec<String> = exp.pins().iter().map(|s| s.to_string()).collect();
    w.wait_event(&name, "offline", &pin_names, plan.wait);

    step("zombies");
    thread::sleep(plan.zombie_after + Duration::from_millis(300));
    let kernel_dying = match (crate::sys::kernel_dying(), dying_before) {
        (Some(now), Some(before)) => Some(now - before),
        _ => None,
    };
    w.zombie_snapshot(plan.wait);
    for x in &mut w.0 {
        x.obs.kernel_dying = kernel_dying;
    }
    w.note_early_frees(&name, &pin_names);

    step("unpin tmpfs");
    fs::remove_file(&tmpfs_file).with_context(|| format!("removing {}", tmpfs_file.display()))?;
    w.wait_event(
        &name,
        "free",
        std::slice::from_ref(&exp.tmpfs_pin),
        plan.wait,
    );
    w.note_early_frees(&name, &exp.cache_pins);

    step("drop caches");
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
    w.wait_event(&name, "free", &exp.cache_pins, plan.wait);
    let _toggled = if toggle {
        // Late events (id_release after free on old kernels) get a moment.
        thread::sleep(Duration::from_millis(200));
        w.scenario_summary(plan.wait);
        step("memory toggle");
        let run = crate::toggle::steps(plan);
        out.toggle = Some(match &run {
            Ok(p) => Ok(p.name.clone()),
            Err(e) => Err(format!("{e:#}")),
        });
        run.ok()
    } else {
        None
    };
    // Late events (id_release after free on old kernels) get a moment to arrive.
    thread::sleep(Duration::from_millis(200));
    step("stop watch");
    out.watches.stop();
    drop(parent);
    Ok(())
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
    crate::sys::wait_dying_back_to(0, limit)
}
