//! The churn driver: memcg lifecycles (mkdir, a forked child moves itself in
//! and charges a page, rmdir) under a parent cgroup named for the run that is
//! always removed. The bench process itself never enters a test cgroup: only
//! the children it forks do, and they only make raw system calls before
//! `_exit`.

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The memory controller's cgroup root: cgroup v1 `memory`, else cgroup2 with memory.
pub fn memory_root() -> Result<PathBuf> {
    let h = kmem_trace::cgroupfs::preferred_memory_hierarchy(Path::new("/"))
        .context("the bench needs a memory cgroup controller")?;
    Ok(h.mount)
}

/// Memory cgroups the kernel holds (`/proc/cgroups`, live and dying).
pub fn kernel_memcgs() -> Option<u64> {
    let s = fs::read_to_string("/proc/cgroups").ok()?;
    s.lines()
        .find(|l| l.starts_with("memory\t") || l.starts_with("memory "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
}

/// Waits until the kernel has freed the memcgs of earlier runs (back to
/// `baseline`, or no progress for a while), so one run's frees do not land in
/// the next run's timing.
pub fn settle(baseline: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = u64::MAX;
    let mut stalled = Instant::now();
    while Instant::now() < deadline {
        let Some(n) = kernel_memcgs() else { return };
        if n <= baseline {
            return;
        }
        if n < last {
            last = n;
            stalled = Instant::now();
        } else if stalled.elapsed() > Duration::from_secs(2) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A parent cgroup named for this bench run; removed with everything below it
/// when dropped, also on error or panic.
pub struct RunParent {
    pub path: PathBuf,
    pub name: String,
}

impl RunParent {
    pub fn new(root: &Path, tag: &str) -> Result<RunParent> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let name = format!("kmem-trace-bench-{tag}-{}-{nanos}", std::process::id());
        let path = root.join(&name);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let st = path.join("cgroup.subtree_control");
        if st.exists() {
            fs::write(&st, "+memory").context("enabling +memory in the bench parent")?;
        }
        Ok(RunParent { path, name })
    }
}

impl Drop for RunParent {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// rmdir a cgroup tree bottom-up, retrying briefly (tasks exiting).
fn remove_tree(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_tree(&e.path());
            }
        }
    }
    for _ in 0..250 {
        match fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    eprintln!("bench: warning: could not remove {}", path.display());
}

/// In the forked child: move into the cgroup whose `cgroup.procs` is `fd`,
/// fault in one fresh anonymous page (charged to the new memcg), exit.
/// Only system calls: the parent may have other threads.
fn child(fd: i32) -> ! {
    // SAFETY: raw system calls on our own fd and a fresh private mapping.
    unsafe {
        if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
            libc::_exit(2);
        }
        let p = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            libc::_exit(3);
        }
        std::ptr::write_volatile(p.cast::<u8>(), 1);
        libc::_exit(0)
    }
}

/// One lifecycle of the memcg at `dir`: mkdir, a child charges a page in it and
/// exits, rmdir.
pub fn lifecycle(dir: &Path) -> Result<()> {
    fs::create_dir(dir).with_context(|| format!("mkdir {}", dir.display()))?;
    let procs = File::options()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", dir.display()))?;
    // SAFETY: the child only makes system calls (see `child`).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        child(procs.as_raw_fd());
    }
    drop(procs);
    let mut status = 0;
    // SAFETY: waiting for the child we just forked.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        bail!("waitpid: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!(
            "the churn child failed in {} (status {status:#x})",
            dir.display()
        );
    }
    // The exited task can keep the cgroup busy for a moment.
    for i in 0.. {
        match fs::remove_dir(dir) {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && i < 500 => {
                thread::sleep(Duration::from_micros(50))
            }
            Err(e) => return Err(e).with_context(|| format!("rmdir {}", dir.display())),
        }
    }
    Ok(())
}

/// How to churn.
#[derive(Clone, Copy, Debug)]
pub struct Churn {
    pub lifecycles: usize,
    /// Parallel workers (each its own thread and children).
    pub jobs: usize,
    /// Lifecycles per second over all workers; `None`: as fast as possible.
    pub rate: Option<f64>,
}

/// CPU time (user + system) of `who` (`RUSAGE_THREAD`, `RUSAGE_CHILDREN`).
fn rusage(who: i32) -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(who, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// What one churn run took.
pub struct Took {
    pub wall: Duration,
    /// CPU of the workers and their children: the work the syscalls did
    /// in line, including probes that run inside them; not kworkers nor the
    /// tracer's own process.
    pub cpu_s: f64,
}

/// Runs `c.lifecycles` lifecycles under `parent` (names prefixed `tag`).
pub fn churn(parent: &Path, tag: &str, c: Churn) -> Result<Took> {
    let children0 = rusage(libc::RUSAGE_CHILDREN);
    let jobs = c.jobs.max(1);
    let per = c.lifecycles.div_ceil(jobs);
    let start = Instant::now();
    let results: Vec<Result<f64>> = thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|w| {
                let n = per.min(c.lifecycles.saturating_sub(w * per));
                let dir = parent.to_path_buf();
                s.spawn(move || -> Result<f64> {
                    let cpu0 = rusage(libc::RUSAGE_THREAD);
                    for i in 0..n {
                        if let Some(rate) = c.rate {
                            // Worker w's i-th slot in a global schedule.
                            let slot = (i * jobs + w) as f64 / rate;
                            let at = start + Duration::from_secs_f64(slot);
                            let now = Instant::now();
                            if at > now {
                                thread::sleep(at - now);
                            }
                        }
                        lifecycle(&dir.join(format!("{tag}-{w}-{i}")))?;
                    }
                    Ok(rusage(libc::RUSAGE_THREAD) - cpu0)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("churn worker panicked")))
            })
            .collect()
    });
    let wall = start.elapsed();
    let mut cpu_s = rusage(libc::RUSAGE_CHILDREN) - children0;
    for r in results {
        cpu_s += r?;
    }
    Ok(Took { wall, cpu_s })
}
