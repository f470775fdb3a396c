//! The pins that outlive 7.x's reparenting of LRU folios, once per kernel with
//! cgroup v2 (`memory.reclaim`, sockets charged to the memcg): a tmpfs file
//! written in the memcg and pushed out to swap on the second virtio disk, and
//! UDP, TCP and UNIX sockets created in the memcg and passed out with
//! SCM_RIGHTS, and a file written in the memcg on the ext4 scratch disk and
//! still dirty when it goes offline, kept past sync and `drop_caches` by the
//! inode's cgroup writeback association. For each: whether the kernel keeps the memcg dying, when the
//! trace saw its ID released, what `kmem-trace census` names as its cause, all
//! against the leak table (`kmem_trace::leaks`); a kernel that differs from its
//! row is a finding, not a failure; a census naming the wrong cause of a pin
//! that holds is a failure (`pin_census`).

use std::{
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use kmem_trace::{
    leaks::{self, Cause, IdRelease},
    probes::kernel::KernelVersion,
};
use kmem_trace_tests::{TestParent, Tracer};
use serde_json::{json, Value};

use crate::{
    check::{lives, Ev},
    kmem_trace_json,
    scenario::{in_cgroup, Plan},
};

/// The swap device: the VM's second virtio disk (`/dev/vdb`), a copy-on-write
/// snapshot of an empty image.
const SWAP_DEV: &str = "/dev/vdb";
/// Socket kinds created in the memcg.
const SOCKETS: [&str; 3] = ["udp", "tcp", "unix"];

/// Runs every scenario this kernel supports; the `pins` protocol record.
pub fn check(plan: &Plan) -> Value {
    let start = Instant::now();
    if !crate::sys::cgroup_v2() {
        return json!({"status": "unsupported",
            "why": "cgroup v1: no memory.reclaim, sockets charged only with a kmem.tcp limit"});
    }
    let mut scenarios = Vec::new();
    let swap = enable_swap();
    let mut names: Vec<(String, Cause)> = SOCKETS
        .iter()
        .map(|k| (format!("socket-{k}"), Cause::Socket))
        .collect();
    match &swap {
        Ok(()) => names.insert(0, ("swap".into(), Cause::Swap)),
        Err(e) => scenarios.push(json!({"name": "swap", "errors": [format!("{e:#}")]})),
    }
    names.push(("writeback-ext4".into(), Cause::Writeback));
    for (name, cause) in names {
        crate::proto::step(None, &format!("pin {name}"));
        let mut r = Outcome::default();
        if let Err(e) = run_one(plan, &name, cause, &mut r) {
            r.errors.push(format!("{e:#}"));
        }
        scenarios.push(r.json(&name, cause));
    }
    if swap.is_ok() {
        let _ = Command::new("/bin/busybox")
            .args(["swapoff", SWAP_DEV])
            .status();
    }
    let failed = scenarios
        .iter()
        .any(|s| s["errors"].as_array().is_some_and(|e| !e.is_empty()));
    json!({
        "status": if failed { "fail" } else { "pass" },
        "scenarios": scenarios,
        "seconds": start.elapsed().as_secs_f64(),
    })
}

pub fn enable_swap() -> Result<()> {
    if !Path::new(SWAP_DEV).exists() {
        bail!("no {SWAP_DEV}: the VM has no swap disk");
    }
    for args in [["mkswap", SWAP_DEV], ["swapon", SWAP_DEV]] {
        let st = Command::new("/bin/busybox")
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .context("running busybox")?;
        if !st.success() {
            bail!("busybox {} {SWAP_DEV}: {st}", args[0]);
        }
    }
    Ok(())
}

/// Turns the swap disk off (again: harmless when it is off already).
fn swapoff() {
    let _ = Command::new("/bin/busybox")
        .args(["swapoff", SWAP_DEV])
        .stderr(std::process::Stdio::null())
        .status();
}

/// What one scenario showed.
#[derive(Default)]
struct Outcome {
    /// The kernel counted the memcg dying while the pin held.
    kernel_dying: Option<bool>,
    /// Swapped-out bytes before rmdir (swap only).
    swapped: Option<u64>,
    census: Value,
    /// The census entry of the pinned memcg, when listed.
    entry: Option<Value>,
    /// What finally freed the memcg (writeback only).
    freed_by: Option<&'static str>,
    /// When the trace saw the ID released: "offline", "release" or "not seen".
    id_release: String,
    errors: Vec<String>,
    /// Kernel behaviour the scenario saw beyond the leak table's row.
    findings: Vec<String>,
}

impl Outcome {
    fn json(&self, name: &str, cause: Cause) -> Value {
        let row =
            KernelVersion::parse(&crate::sys::release()).and_then(|v| leaks::lookup(cause, v));
        let mut findings = self.findings.clone();
        let mut errors = self.errors.clone();
        let release = crate::sys::release();
        if let (Some(row), Some(dying)) = (row, self.kernel_dying) {
            if row.stays_dying != dying {
                findings.push(if dying {
                    format!("{} pins on {release} (table: freed at rmdir)", cause.name())
                } else {
                    format!("{} no longer pins on {release}", cause.name())
                });
            }
            let want = match row.id_release {
                IdRelease::Offline => "offline",
                IdRelease::SwapIn | IdRelease::Free => "release",
            };
            // Where the pin holds, the census must name it (a tracer check).
            if row.stays_dying && dying {
                let page = kmem_trace::outputs::page_size();
                errors.extend(crate::pin_census::errors(
                    cause,
                    self.entry.as_ref(),
                    self.swapped,
                    page,
                ));
            }
            if dying && self.id_release != "not seen" && self.id_release != want {
                findings.push(format!(
                    "{} on {release}: ID released at {} (table: {})",
                    cause.name(),
                    self.id_release,
                    row.id_release.name()
                ));
            }
        }
        json!({
            "name": name,
            "cause": cause.name(),
            "table": row.map(|r| json!({"stays_dying": r.stays_dying, "id_release": r.id_release.name(), "cite": r.cite})),
            "kernel_dying": self.kernel_dying,
            "swapped_bytes": self.swapped,
            "census": self.census,
            "id_release": self.id_release,
            "freed_by": self.freed_by,
            "findings": findings,
            "errors": errors,
        })
    }
}

fn run_one(plan: &Plan, name: &str, cause: Cause, out: &mut Outcome) -> Result<()> {
    if !crate::scenario::settle(Duration::from_secs(5)) {
        out.errors
            .push("dying memcgs left from earlier runs".into());
    }
    let mut parent = TestParent::new(&format!("vm-pin-{name}")).context("creating the parent")?;
    let args = ["watch", "--json", "--no-history", "--zombie-after", "100ms"];
    let mut w = Tracer::start(&args).context("starting kmem-trace watch")?;
    let before = crate::sys::kernel_dying().unwrap_or(0);
    let cg = parent.child(name)?;
    let tmpfs_file = plan.shm_dir.join(format!("{}-{name}", parent.name));
    parent.track_file(&tmpfs_file);
    let mut held: Vec<OwnedFd> = Vec::new();
    if cause == Cause::Swap {
        in_cgroup(
            &cg,
            &[
                "write",
                &tmpfs_file.to_string_lossy(),
                &plan.pin_bytes.to_string(),
            ],
        )?;
        // Reclaim may take more than one pass to write the shmem out.
        for _ in 0..4 {
            let _ = fs::write(cg.join("memory.reclaim"), "64M");
        }
        let swapped = read_u64(&cg.join("memory.swap.current"));
        out.swapped = swapped;
        if swapped.unwrap_or(0) < plan.pin_bytes / 2 {
            bail!(
                "memory.reclaim pushed {swapped:?} bytes to swap, expected about {}",
                plan.pin_bytes
            );
        }
    } else if cause == Cause::Writeback {
        if !is_mount(Path::new(crate::init::SCRATCH)) {
            bail!(
                "no writable ext4 at {}: the VM has no scratch disk (/dev/vdc)",
                crate::init::SCRATCH
            );
        }
        // Written, not fsynced: the inode must still be dirty when the memcg
        // goes offline. The last VM run fsynced it first, and 6.12 and 7.3
        // freed the memcg at rmdir: `cleanup_offline_cgwbs_workfn()` (run
        // from `wb_memcg_offline()`, c22d70a162d3 "writeback, cgroup: release
        // dying cgwbs by switching attached inodes", 5.15) moves the clean
        // inodes of an offline memcg's writeback context to the parent's, but
        // skips a context with dirty IO (`wb_has_dirty_io()`) and does not
        // come back to it until another memcg goes offline; the inode then
        // keeps the context, and it the memcg's css, past sync.
        let file = Path::new(crate::init::SCRATCH).join(name);
        let bytes = plan.pin_bytes.to_string();
        in_cgroup(&cg, &["write", &file.to_string_lossy(), &bytes])?;
    } else {
        let kind = name.trim_start_matches("socket-");
        held.push(socket_from(&cg, kind)?);
    }
    parent.rmdir(&cg)?;
    if cause == Cause::Writeback {
        // Offline runs after an RCU grace period (css_killed_work_fn()): let
        // it see the dirty inode before sync writes it (dirty pages expire
        // after 30 s, dirty_expire_centisecs). Then the pages are clean and
        // go with drop_caches; the inode stays.
        thread::sleep(Duration::from_millis(500));
        // SAFETY: sync(2) has no arguments.
        unsafe { libc::sync() };
        fs::write("/proc/sys/vm/drop_caches", "1").context("writing drop_caches")?;
    }
    thread::sleep(Duration::from_millis(300));
    let dying = crate::sys::kernel_dying().map(|n| n - before);
    out.kernel_dying = dying.map(|n| n > 0);
    let doc = kmem_trace_json(&plan.kmem_trace, "census")?;
    let suffix = format!("/{}/{name}", parent.name);
    out.entry = doc["memcgs"]
        .as_array()
        .and_then(|ms| {
            ms.iter()
                .find(|m| m["path"].as_str().is_some_and(|p| p.ends_with(&suffix)))
        })
        .cloned();
    out.census = match &out.entry {
        Some(m) => {
            json!({"pin": m["pin"], "pin_exact": m["pin_exact"], "mem_bytes": m["mem_bytes"],
                          "swap_bytes": m["swap_bytes"], "own_pages": m["own_pages"], "state": m["state"]})
        }
        None => json!({"listed": false, "source": doc["source"]}),
    };
    let released_at = w.lines().len();
    // Release the pin: the file (and its swap entries), the sockets. Freed
    // swap entries can wait in the per-CPU swap slots cache (6.12; the cache
    // is gone by 7.2): swapoff returns every entry, as swap-in would.
    let _ = fs::remove_file(&tmpfs_file);
    drop(held);
    if cause == Cause::Swap {
        swapoff();
    }
    let settled = || crate::sys::kernel_dying().is_some_and(|n| n <= before);
    if cause == Cause::Writeback {
        // Evicting the inode (drop_caches 2: dentries and inodes) detaches
        // its writeback context; deleting the file evicts it too.
        let _ = fs::write("/proc/sys/vm/drop_caches", "2");
        out.freed_by = Some("inode evicted (drop_caches 2)");
        if !kmem_trace_tests::wait_for(Duration::from_secs(5), settled) {
            let _ = fs::remove_file(Path::new(crate::init::SCRATCH).join(name));
            out.freed_by = Some("file deleted");
        }
        let _ = fs::remove_file(Path::new(crate::init::SCRATCH).join(name));
    }
    let gone = kmem_trace_tests::wait_for(plan.wait, settled);
    if !gone {
        let what = format!("still dying {:?} after its pin was released", plan.wait);
        if cause == Cause::Writeback {
            // What frees a writeback-pinned memcg is the kernel's business
            // (the leak table does not say): 7.3.4 kept it past inode eviction
            // and the file's deletion, with the file's pages still charged.
            out.findings.push(format!(
                "{}: {what} (inode evicted, file deleted)",
                cause.name()
            ));
        } else {
            out.errors.push(what);
        }
    }
    thread::sleep(Duration::from_millis(300));
    let (_, text) = w.stop().context("stopping kmem-trace watch")?;
    let evs: Vec<(usize, Ev)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, l)| Some((i, Ev::from_json(&serde_json::from_str(l).ok()?)?)))
        .collect();
    let all: Vec<Ev> = evs.iter().map(|(_, e)| e.clone()).collect();
    let ours = lives(&all, &parent.name)
        .into_iter()
        .find(|l| l.rel.as_deref() == Some(name));
    out.id_release = match ours.as_ref().and_then(|l| l.first("id_release")) {
        None => "not seen".into(),
        Some(id) => {
            let line = evs.iter().find(|(_, e)| e == id).map_or(0, |(i, _)| *i);
            if line < released_at {
                "offline"
            } else {
                "release"
            }
            .into()
        }
    };
    drop(parent);
    Ok(())
}

/// Whether `p` is a mount point (its device differs from its parent's).
fn is_mount(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |q: &Path| fs::metadata(q).map(|m| m.dev()).ok();
    match (dev(p), p.parent().and_then(dev)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// A socket of `kind` created by a child inside `cgroup` and passed back over a
/// UNIX socket with SCM_RIGHTS; the child has exited when this returns.
fn socket_from(cgroup: &Path, kind: &str) -> Result<OwnedFd> {
    let path = format!("/tmp/kmt-pass-{kind}");
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {path}"))?;
    let cg = cgroup.to_path_buf();
    let kind_s = kind.to_string();
    let p2 = path.clone();
    let child = thread::spawn(move || in_cgroup(&cg, &["socket", &kind_s, &p2]));
    let (stream, _) = listener
        .accept()
        .context("accepting the child's connection")?;
    let fd = recv_fd(&stream)?;
    child
        .join()
        .map_err(|_| anyhow::anyhow!("child thread panicked"))??;
    let _ = fs::remove_file(&path);
    Ok(fd)
}

/// `child CGROUP socket KIND PATH`: (already in the cgroup) creates the socket
/// and sends it to the UNIX socket at PATH.
pub fn child_socket(kind: &str, path: &str) -> Result<()> {
    let (domain, ty) = match kind {
        "udp" => (libc::AF_INET, libc::SOCK_DGRAM),
        "tcp" => (libc::AF_INET, libc::SOCK_STREAM),
        "unix" => (libc::AF_UNIX, libc::SOCK_STREAM),
        _ => bail!("unknown socket kind {kind:?}"),
    };
    // SAFETY: plain socket(2); the result is checked and owned below.
    let raw = unsafe { libc::socket(domain, ty, 0) };
    if raw < 0 {
        bail!("socket({kind}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: raw is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let stream = UnixStream::connect(path).with_context(|| format!("connecting {path}"))?;
    send_fd(&stream, sock.as_raw_fd())
}

const CMSG_SPACE: usize = 24; // CMSG_SPACE(sizeof(int)) on 64-bit Linux

fn send_fd(stream: &UnixStream, fd: RawFd) -> Result<()> {
    let mut byte = [0u8; 1];
    let mut buf = [0u8; CMSG_SPACE];
    // SAFETY: msghdr and cmsg built over local buffers that outlive sendmsg;
    // CMSG_* compute offsets inside `buf`, sized for one int.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        if libc::sendmsg(stream.as_raw_fd(), &msg, 0) < 0 {
            bail!("sendmsg: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fd(stream: &UnixStream) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut buf = [0u8; CMSG_SPACE];
    // SAFETY: as in send_fd; the received descriptor is checked before use.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = buf.len();
        if libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) < 1 {
            bail!("recvmsg: {}", std::io::Error::last_os_error());
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            bail!("no descriptor passed");
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
