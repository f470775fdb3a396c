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
//! that holds is a failure (`pin_census`). All pins are made under one parent
//! and one watch, with one census, and released one at a time (`pin_run`):
//! a kmem-trace start costs about 2 s of CPU under TCG.

use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{bail, Context, Result};
use kmem_trace::{
    leaks::{self, Cause, IdRelease},
    probes::kernel::KernelVersion,
};
use serde_json::{json, Value};

use crate::pin_run::Pin;

/// The swap device: the VM's second virtio disk (`/dev/vdb`), a copy-on-write
/// snapshot of an empty image.
const SWAP_DEV: &str = "/dev/vdb";
/// Socket kinds created in the memcg.
const SOCKETS: [&str; 3] = ["udp", "tcp", "unix"];

/// Runs every scenario this kernel supports; the `pins` protocol record.
pub fn check(plan: &crate::scenario::Plan) -> Value {
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
    let mut pins: Vec<Pin> = names.into_iter().map(|(n, c)| Pin::new(n, c)).collect();
    if let Err(e) = crate::pin_run::run(plan, &mut pins) {
        for p in &mut pins {
            p.out.errors.push(format!("{e:#}"));
        }
    }
    scenarios.extend(pins.iter().map(|p| p.out.json(&p.name, p.cause)));
    if swap.is_ok() {
        swapoff();
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
pub fn swapoff() {
    let _ = Command::new("/bin/busybox")
        .args(["swapoff", SWAP_DEV])
        .stderr(std::process::Stdio::null())
        .status();
}

/// What one scenario showed.
#[derive(Default)]
pub struct Outcome {
    /// The kernel counted the memcg dying while the pin held.
    pub kernel_dying: Option<bool>,
    /// Swapped-out bytes before rmdir (swap only).
    pub swapped: Option<u64>,
    pub census: Value,
    /// The census entry of the pinned memcg, when listed.
    pub entry: Option<Value>,
    /// What finally freed the memcg (writeback only).
    pub freed_by: Option<&'static str>,
    /// When the trace saw the ID released: "offline", "release" or "not seen".
    pub id_release: String,
    pub errors: Vec<String>,
    /// Kernel behaviour the scenario saw beyond the leak table's row.
    pub findings: Vec<String>,
}

impl Outcome {
    pub fn json(&self, name: &str, cause: Cause) -> Value {
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

/// Whether `p` is a mount point (its device differs from its parent's).
pub fn is_mount(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |q: &Path| fs::metadata(q).map(|m| m.dev()).ok();
    match (dev(p), p.parent().and_then(dev)) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

pub fn read_u64(p: &Path) -> Option<u64> {
    fs::read_to_string(p).ok()?.trim().parse().ok()
}
