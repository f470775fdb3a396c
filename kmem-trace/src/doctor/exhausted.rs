//! The exhausted memcg ID space in the words an operator searches for: the
//! errno `mkdir` of a cgroup gets on this kernel (a table, by kernel range),
//! whether the node is (or may be) exhausted, and the remediation that works
//! on that kernel.

use super::{
    findings::{Finding, Severity, FIX_REBOOT},
    host::Facts,
};
use crate::{
    forecast::{dying_hold, DyingHold},
    probes::kernel::KernelVersion,
    store::samples::CountSample,
};

/// What `mkdir` of a cgroup fails with when no memcg ID is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MkdirErrno {
    pub name: &'static str,
    /// strerror(3), as `mkdir: cannot create directory '...': <words>` prints it.
    pub words: &'static str,
}

pub const ENOSPC: MkdirErrno = MkdirErrno {
    name: "ENOSPC",
    words: "No space left on device",
};
pub const EBUSY: MkdirErrno = MkdirErrno {
    name: "EBUSY",
    words: "Device or resource busy",
};

/// One row: kernels in `[since, until)` give `errno`.
#[derive(Clone, Copy, Debug)]
pub struct ErrnoRow {
    pub since: KernelVersion,
    pub until: KernelVersion,
    pub errno: MkdirErrno,
    pub cite: &'static str,
}

/// Only ranges seen failing are rows; other kernels are unknown (both words
/// are given). `mem_cgroup_alloc()` takes the ID from an IDR (`idr_alloc()`:
/// -ENOSPC when full) before 6.12, from an xarray since ("memcg: replace
/// memcg ID idr with xarray": `xa_alloc()` gives -EBUSY when the limit range
/// is full). That path is the same for cgroup v1 and v2, so a row holds for
/// both; the cite says which versions were measured.
pub const MKDIR_ERRNO: &[ErrnoRow] = &[
    ErrnoRow {
        since: KernelVersion(3, 10, 0),
        until: KernelVersion(3, 11, 0),
        errno: ENOSPC,
        cite: "3.10 (CentOS 7): idr_alloc() of the css/memcg ID returns -ENOSPC (issue 13)",
    },
    ErrnoRow {
        since: KernelVersion(5, 10, 0),
        until: KernelVersion(5, 11, 0),
        errno: ENOSPC,
        cite: "5.10.0-46 (Debian cloud, cgroup v1): idr_alloc() in mem_cgroup_alloc() returns \
               -ENOSPC; mkdir fails with ENOSPC (cargo xtask vm-test --scenario exhaustion)",
    },
    ErrnoRow {
        since: KernelVersion(6, 1, 0),
        until: KernelVersion(6, 2, 0),
        errno: ENOSPC,
        cite:
            "6.1.0-57 (Debian cloud, cgroup v1 and v2): idr_alloc() in mem_cgroup_alloc() \
               returns -ENOSPC; mkdir fails with ENOSPC (cargo xtask vm-test --scenario exhaustion)",
    },
    ErrnoRow {
        since: KernelVersion(6, 12, 0),
        until: KernelVersion(7, 4, 0),
        errno: EBUSY,
        cite: "6.12.118 and 7.3.4 (Debian cloud, cgroup v2): mkdir fails with EBUSY at the \
               65,535th memcg (cargo xtask vm-test --scenario exhaustion)",
    },
];

/// The errno of this kernel; `None`: not known for it.
pub fn mkdir_errno(v: Option<KernelVersion>) -> Option<&'static ErrnoRow> {
    let v = v?;
    MKDIR_ERRNO.iter().find(|r| v >= r.since && v < r.until)
}

/// `mkdir: cannot create directory '<path>': <words>` lines to search for.
fn search_words(v: Option<KernelVersion>) -> String {
    match mkdir_errno(v) {
        Some(r) => format!(
            "container and pod creation fail with \"mkdir: cannot create directory '...': {}\" ({}, {})",
            r.errno.words, r.errno.name, r.cite
        ),
        None => format!(
            "container and pod creation fail with \"mkdir: cannot create directory '...': {}\" \
             (ENOSPC, old kernels) or \"{}\" (EBUSY, 6.12 and newer); which one this kernel gives is not recorded",
            ENOSPC.words, EBUSY.words
        ),
    }
}

/// `mkdir fails with "Device or resource busy" (EBUSY)`, for titles.
fn short_words(v: Option<KernelVersion>) -> String {
    match mkdir_errno(v) {
        Some(r) => format!("mkdir fails with \"{}\" ({})", r.errno.words, r.errno.name),
        None => format!(
            "mkdir fails with \"{}\" (ENOSPC) or \"{}\" (EBUSY)",
            ENOSPC.words, EBUSY.words
        ),
    }
}

/// How old the tracer's last sample may be to count (samples come every
/// 10 s, `store::samples::SAMPLE_EVERY`).
pub const TRACER_FRESH_NS: i64 = 60_000_000_000;

/// The running tracer's count of ID-holding memcgs, from its last sample.
/// Without a census (no BPF cgroup iterator before 6.1) the kernel tells
/// how many memcgs are dying but not which still hold an ID (4.7+: only
/// those swap entries reference). The tracer saw every offline and ID
/// release since it started and counts the live memcgs before it by
/// number; the dying ones before it it cannot list, so its count is a
/// lower bound, exact in what it counts only when it missed no event and
/// a hook sees ID releases (`mem_cgroup_id_put_many()`): then reaching the
/// limit is certain.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct TracerIds {
    pub ids_in_use: u64,
    pub age_s: f64,
}

impl TracerIds {
    /// From the history's last sample: of this boot, at most
    /// [`TRACER_FRESH_NS`] old, with no ring-buffer drops, written by a
    /// tracer with fentry or kprobe hooks (tracepoints see no ID release)
    /// on a kernel where such a hook sees ID releases (`id_hook`); else `None`.
    pub fn from_sample(s: &CountSample, now_ns: i64, boot_id: &str, id_hook: bool) -> Option<Self> {
        let age = now_ns.saturating_sub(s.ts);
        let family_sees_ids = s.hooks.contains("fentry") || s.hooks.contains("kprobe");
        (s.boot_id == boot_id
            && (0..=TRACER_FRESH_NS).contains(&age)
            && s.drops == 0
            && id_hook
            && family_sees_ids)
            .then_some(TracerIds {
                ids_in_use: s.ids_in_use,
                age_s: age as f64 / 1e9,
            })
    }
}

/// Remediation for an exhausted or nearly exhausted ID space on this kernel.
fn remediation(f: &Facts) -> Vec<String> {
    match dying_hold(f.version) {
        Some(DyingHold::SwapHeld) => vec![
            "4.7+: dying memcgs keep their IDs only through swap entries; `kmem-trace report` \
             (or `census`) lists the dying memcgs holding swap and the pods they belonged to"
                .into(),
            "delete the tmpfs/shmem files those pods left (/dev/shm, emptyDir with medium: Memory) \
             and end the processes holding their memfds: freeing the swap entries gives the IDs back"
                .into(),
            "or `swapoff -a` (then `swapon -a`): swapping every entry back in releases the IDs; \
             it needs free RAM for the swapped-out pages"
                .into(),
            "restart the pods whose containers keep leaving swapped-out tmpfs behind \
             (the report's leaking owners)"
                .into(),
        ],
        Some(DyingHold::Every) => vec![
            "before 4.7 every dying memcg keeps its ID until it is freed: find its pin \
             (`kmem-trace report`); drop caches for page cache, delete tmpfs files"
                .into(),
            FIX_REBOOT.into(),
        ],
        None => vec![FIX_REBOOT.into()],
    }
}

/// The exhausted-state finding: critical when every ID is in use (or live
/// memcgs alone, or the running tracer's lower bound, fill the space), a
/// warning when it may be (IDs in use unknown, but live and dying memcgs
/// together reach the limit); none when the space is known not to be full.
pub fn finding(f: &Facts, id_limit: u32) -> Option<Finding> {
    let limit = id_limit as u64;
    // A memcg made now: whatever the counts say, the space is not exhausted.
    if f.mkdir_probe.as_ref().is_some_and(|p| p.made()) {
        return None;
    }
    if let Some(p) = f.mkdir_probe.as_ref().filter(|p| p.out_of_ids()) {
        return Some(Finding {
            id: "memcg-ids-exhausted",
            severity: Severity::Critical,
            title: format!(
                "memcg ID space exhausted: mkdir of a memcg fails with \"{}\" ({})",
                p.words.as_deref().unwrap_or(""),
                p.errno.as_deref().unwrap_or("")
            ),
            detail: format!(
                "doctor tried `mkdir {}` (--try-mkdir); {}",
                p.path,
                search_words(f.version)
            ),
            remediation: remediation(f),
        });
    }
    let visible = f.counts.as_ref().map(|c| c.visible);
    let total = f.counts.as_ref().and_then(|c| c.total());
    let (severity, title, detail) = match (f.ids_in_use, visible, total) {
        (Some(ids), _, _) if ids >= limit => (
            Severity::Critical,
            format!(
                "memcg ID space exhausted ({ids} of {id_limit} IDs in use): {}",
                short_words(f.version)
            ),
            search_words(f.version),
        ),
        (None, Some(live), _) if live >= limit => (
            Severity::Critical,
            format!(
                "memcg ID space exhausted ({live} live memcgs, {id_limit} IDs): {}",
                short_words(f.version)
            ),
            search_words(f.version),
        ),
        (None, _, _) if f.tracer_ids.is_some_and(|t| t.ids_in_use >= limit) => {
            let t = f.tracer_ids.expect("checked");
            (
                Severity::Critical,
                format!(
                    "memcg ID space exhausted ({} of {id_limit} IDs in use, counted by the running tracer): {}",
                    t.ids_in_use,
                    short_words(f.version)
                ),
                format!(
                    "{}; the tracer's count ({:.0} s old, no events lost, ID releases seen) is a lower bound: \
                     no census can tell which dying memcgs hold IDs on this kernel",
                    search_words(f.version),
                    t.age_s
                ),
            )
        }
        (None, _, Some(all)) if all >= limit => (
            Severity::Warning,
            format!("memcg ID space may be exhausted: {all} live and dying memcgs, {id_limit} IDs"),
            format!(
                "which dying memcgs still hold an ID is unknown; if they do, {}",
                search_words(f.version)
            ),
        ),
        _ => return None,
    };
    Some(Finding {
        id: "memcg-ids-exhausted",
        severity,
        title,
        detail,
        remediation: remediation(f),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_by_kernel_range() {
        let v = |a, b| Some(KernelVersion(a, b, 0));
        assert_eq!(mkdir_errno(v(3, 10)).unwrap().errno, ENOSPC);
        assert_eq!(mkdir_errno(v(6, 12)).unwrap().errno, EBUSY);
        assert_eq!(mkdir_errno(v(7, 3)).unwrap().errno, EBUSY);
        assert_eq!(mkdir_errno(v(5, 10)).unwrap().errno, ENOSPC);
        assert_eq!(mkdir_errno(v(6, 1)).unwrap().errno, ENOSPC);
        assert!(mkdir_errno(v(5, 15)).is_none(), "not measured");
        assert!(mkdir_errno(None).is_none());
        assert!(mkdir_errno(v(7, 4)).is_none(), "not seen yet");
        assert!(search_words(v(5, 15)).contains("No space left on device"));
        assert!(search_words(v(5, 15)).contains("Device or resource busy"));
        assert!(!search_words(v(6, 1)).contains("Device or resource busy"));
        assert!(!search_words(v(6, 12)).contains("No space left"));
    }

    fn sample(ts: i64, ids: u64, drops: u64) -> CountSample {
        CountSample {
            ts,
            boot_id: "b1".into(),
            live: 65235,
            dying: 300,
            zombies: 300,
            ids_in_use: ids,
            id_limit: 65535,
            drops,
            hooks: "fentry".into(),
        }
    }

    #[test]
    fn the_tracer_counts_only_fresh_complete_and_with_id_releases() {
        let now = 1_000_000_000_000;
        let ok = TracerIds::from_sample(&sample(now - 5_000_000_000, 65535, 0), now, "b1", true);
        assert_eq!(ok.map(|t| (t.ids_in_use, t.age_s)), Some((65535, 5.0)));
        let s = sample(now - 5_000_000_000, 65535, 0);
        assert_eq!(
            TracerIds::from_sample(&s, now, "b2", true),
            None,
            "another boot"
        );
        assert_eq!(
            TracerIds::from_sample(&s, now, "b1", false),
            None,
            "no ID hook"
        );
        let old = sample(now - 61_000_000_000, 65535, 0);
        assert_eq!(TracerIds::from_sample(&old, now, "b1", true), None, "stale");
        let lossy = sample(now - 1_000_000_000, 65535, 3);
        assert_eq!(
            TracerIds::from_sample(&lossy, now, "b1", true),
            None,
            "drops"
        );
    }
}
