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
/// memcgs alone fill the space), a warning when it may be (IDs in use
/// unknown, but live and dying memcgs together reach the limit); none when
/// the space is known not to be full.
pub fn finding(f: &Facts, id_limit: u32) -> Option<Finding> {
    let limit = id_limit as u64;
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
}
