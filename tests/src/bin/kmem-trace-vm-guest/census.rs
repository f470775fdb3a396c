//! The matrix's census check, once per kernel (the census uses no lifecycle
//! hook): a memcg pinned by a tmpfs file and one pinned by page cache, each
//! below a live cgroup of its own so the pin's type can be told, are removed;
//! `kmem-trace census --json` must list both as dying with the right pin cause
//! and enough charged bytes, agree with the kernel's own counts, and stop
//! listing them once the pins are released.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use kmem_trace::leaks::Cause;
use kmem_trace_tests::TestParent;
use serde_json::{json, Value};

use crate::{
    kmem_trace_json,
    scenario::{evict, in_cgroup, Plan, Release},
};

/// One pinned memcg: the live cgroup above it, its own name, the pin cause
/// the census must report, and its cause in the leak table.
const PINS: [(&str, &str, &str, Cause); 2] = [
    ("tmpfs-holder", "tmpfs-pin", "tmpfs", Cause::Tmpfs),
    ("cache-holder", "cache-pin", "page_cache", Cause::PageCache),
];

/// Whether the leak table says this kernel keeps a memcg of `cause` dying
/// (unknown rows: expected to, as on every kernel before the 7.x series).
fn held(cause: Cause) -> bool {
    crate::rows::table_says(cause, &crate::sys::release()).unwrap_or(true)
}

/// Runs the check; the `census` protocol record (`status` pass, fail or
/// unsupported, `errors`, what was seen).
pub fn check(plan: &Plan) -> Value {
    let start = Instant::now();
    let mut errors = Vec::new();
    let mut seen = Value::Null;
    let status = match run(plan, &mut errors, &mut seen) {
        Ok(true) if errors.is_empty() => "pass",
        Ok(true) => "fail",
        Ok(false) if errors.is_empty() => "unsupported",
        Ok(false) => "fail",
        Err(e) => {
            errors.push(format!("{e:#}"));
            "fail"
        }
    };
    json!({
        "status": status,
        "errors": errors,
        "seen": seen,
        "seconds": start.elapsed().as_secs_f64(),
    })
}

/// `Ok(false)`: this kernel has no cgroup BPF iterator (census counts only).
fn run(plan: &Plan, errors: &mut Vec<String>, seen: &mut Value) -> Result<bool> {
    if plan.exact && !crate::scenario::settle(Duration::from_secs(5)) {
        errors.push("dying memcgs left from the family runs".into());
    }
    let mut parent = TestParent::new("vm-census").context("creating the parent")?;
    let dying_before = crate::sys::kernel_dying();
    let pname = parent.name.clone();
    let suffix = |leaf: &str| {
        let (holder, name, _, _) = PINS.iter().find(|p| p.1 == leaf).expect("a pin");
        format!("/{pname}/{holder}/{name}")
    };
    let tmpfs_file = plan.shm_dir.join(format!("{pname}-census"));
    parent.track_file(&tmpfs_file);
    let mut pinned = Vec::new();
    for (i, (holder, name, _, _)) in PINS.iter().enumerate() {
        let h = parent.child(holder)?;
        // cgroup v2: the holder must pass the memory controller down.
        let st = h.join("cgroup.subtree_control");
        if st.exists() {
            fs::write(&st, "+memory").context("enabling +memory below the holder")?;
        }
        let cg = parent.child(&format!("{holder}/{name}"))?;
        if i == 0 {
            let bytes = plan.pin_bytes.to_string();
            in_cgroup(&cg, &["write", &tmpfs_file.to_string_lossy(), &bytes])?;
        } else {
            let f = plan.data_file(0);
            evict(&f)?;
            in_cgroup(&cg, &["read", &f.to_string_lossy()])?;
        }
        pinned.push(cg);
    }
    for cg in &pinned {
        parent.rmdir(cg)?;
    }

    crate::proto::step(None, "census with pins");
    // Memcgs the kernel reparents at offline (7.x LRU folios) go a moment later.
    thread::sleep(Duration::from_millis(300));
    let doc = kmem_trace_json(&plan.kmem_trace, "census")?;
    let want = PINS.iter().filter(|p| held(p.3)).count();
    if doc["source"] != "bpf_iterator" {
        // Counts only (no cgroup iterator before 6.1): the pins the kernel
        // keeps must still be among the dying memcgs it counts.
        let dying = doc["totals"]["dying"].as_i64();
        if plan.exact && dying < Some(want as i64) {
            errors.push(format!(
                "counts only: {dying:?} dying memcgs, {want} pinned"
            ));
        }
        *seen = json!({"source": doc["source"], "fallback": doc["fallback"], "dying": dying});
        return Ok(false);
    }
    let mut found = Vec::new();
    for (_, name, cause, row) in PINS {
        match entry(&doc, &suffix(name)) {
            None if !held(row) => {}
            None => errors.push(format!("{name}: not listed by the census")),
            // The kernel kept what the table says it frees: the family runs
            // report that as a kernel finding; the census is judged as usual.
            Some(m) => {
                if m["state"] != "dying" {
                    errors.push(format!("{name}: state {} (expected dying)", m["state"]));
                }
                if m["pin"] != cause {
                    errors.push(format!("{name}: pin {} (expected {cause})", m["pin"]));
                }
                if m["mem_bytes"].as_u64().unwrap_or(0) < plan.pin_bytes {
                    errors.push(format!(
                        "{name}: {} bytes charged (expected at least {})",
                        m["mem_bytes"], plan.pin_bytes
                    ));
                }
                found.push(
                    json!({"name": name, "pin": m["pin"], "mem_bytes": m["mem_bytes"],
                                  "memcg_id": m["memcg_id"]}),
                );
            }
        }
    }
    // The kernel's counts are read at another moment than the walk: on a
    // shared host other cgroups can come and go in between.
    if plan.exact {
        if doc["consistent"] != true {
            errors.push(format!(
                "census and kernel counts disagree: totals {} kernel {}",
                doc["totals"], doc["kernel"]
            ));
        }
        let dying = doc["totals"]["dying"].as_i64();
        let kernel = crate::sys::kernel_dying();
        if dying != kernel {
            errors.push(format!(
                "census dying {dying:?}, the kernel's count {kernel:?}"
            ));
        }
    }

    crate::proto::step(None, "census after release");
    fs::remove_file(&tmpfs_file).with_context(|| format!("removing {}", tmpfs_file.display()))?;
    match plan.release {
        Release::DropCaches => {
            fs::write("/proc/sys/vm/drop_caches", "1").context("writing drop_caches")?
        }
        Release::Fadvise => evict(&plan.data_file(0))?,
    }
    let deadline = Instant::now() + plan.wait;
    if let (true, Some(before)) = (plan.exact, dying_before) {
        // A census is a kmem-trace start (about 2 s of CPU under TCG): ask
        // it once the kernel counts the pins' memcgs gone, not while they go.
        crate::sys::wait_dying_back_to(before, plan.wait);
    }
    let still = loop {
        let doc = kmem_trace_json(&plan.kmem_trace, "census")?;
        let still: Vec<&str> = PINS
            .iter()
            .map(|p| p.1)
            .filter(|n| entry(&doc, &suffix(n)).is_some())
            .collect();
        if still.is_empty() || Instant::now() > deadline {
            break still;
        }
        thread::sleep(Duration::from_millis(250));
    };
    if !still.is_empty() {
        errors.push(format!(
            "still listed {:?} after the pins were released: {still:?}",
            plan.wait
        ));
    }
    *seen = json!({
        "source": doc["source"],
        "dying": doc["totals"]["dying"],
        "consistent": doc["consistent"],
        "pins": found,
        "freed": still.is_empty(),
    });
    drop(parent);
    Ok(true)
}

/// The census entry whose path ends with `suffix`.
fn entry<'a>(doc: &'a Value, suffix: &str) -> Option<&'a Value> {
    doc["memcgs"]
        .as_array()?
        .iter()
        .find(|m| m["path"].as_str().is_some_and(|p| p.ends_with(suffix)))
}
