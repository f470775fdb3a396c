//! The leak-behaviour table: for each pin cause and kernel range, whether a
//! removed memcg stays dying, when its ID goes back to the allocator and which
//! kernel symbol gives it back, each row citing the commit or series that set
//! it. The VM matrix checks every row it can on every kernel; doctor, report and
//! the README say from it what keeps memcgs dying on the running kernel.
//!
//! Kernels between rows are "unknown": the table says what was read in the
//! kernel source or seen in a VM, never a guess.

use serde::Serialize;

use crate::probes::kernel::KernelVersion;

/// What holds a removed memcg's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// shmem pages (a tmpfs file, a memfd) charged to the memcg, on the LRU.
    Tmpfs,
    /// File pages read into the page cache by the memcg's tasks, on the LRU.
    PageCache,
    /// Pages swapped out from the memcg: the swap entries record its ID.
    Swap,
    /// A socket created in the memcg (`sk->sk_memcg`), alive elsewhere.
    Socket,
    /// Kernel objects (slab) charged to the memcg.
    Slab,
    /// An inode the memcg wrote, tied to its writeback context (cgroup v2).
    Writeback,
}

impl Cause {
    pub const ALL: [Cause; 6] = [
        Cause::Tmpfs,
        Cause::PageCache,
        Cause::Swap,
        Cause::Socket,
        Cause::Slab,
        Cause::Writeback,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Cause::Tmpfs => "tmpfs",
            Cause::PageCache => "page cache",
            Cause::Swap => "swap",
            Cause::Socket => "sockets",
            Cause::Slab => "slab",
            Cause::Writeback => "writeback",
        }
    }
}

/// When the memcg's private ID (16 bits, `MEM_CGROUP_ID_MAX`) is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IdRelease {
    /// At offline (rmdir), even while the memcg stays dying.
    Offline,
    /// Only when the memcg is freed.
    Free,
    /// When the last swap entry recording it is freed or swapped in.
    SwapIn,
}

impl IdRelease {
    pub fn name(self) -> &'static str {
        match self {
            IdRelease::Offline => "offline",
            IdRelease::Free => "free",
            IdRelease::SwapIn => "swap-in or swap free",
        }
    }
}

/// One row: `cause` on kernels `since <= version < until`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Row {
    pub cause: Cause,
    pub since: KernelVersion,
    pub until: KernelVersion,
    /// The memcg stays dying while the cause holds.
    pub stays_dying: bool,
    pub id_release: IdRelease,
    /// Kernel function that gives the ID back (its last reference put).
    pub releaser: &'static str,
    /// Commit or series that set this behaviour.
    pub cite: &'static str,
    /// Kernels this row was checked on in a VM (empty: read in the source).
    pub seen_on: &'static str,
}

const fn v(major: u32, minor: u32) -> KernelVersion {
    KernelVersion(major, minor, 0)
}
const ANY: KernelVersion = KernelVersion::MAX;
const OLD: KernelVersion = KernelVersion::MIN;

/// Private memcg IDs, released at offline unless swap entries still hold them.
const ID_AT_OFFLINE: &str = "73f576c04b94 \"mm: memcontrol: fix cgroup creation failure after many small jobs\" (Johannes Weiner, 4.7)";
/// LRU folios reparented to the parent at offline.
const LRU_REPARENT: &str = "series \"mm: memcontrol: eliminate the problem of dying memory cgroup for LRU folios\" (Muchun Song, Qi Zheng; v4 February 2026); merge release not confirmed: 6.18 still pins, 7.2.13 does not";
/// Slab objects charged through obj_cgroup, reparented at offline.
const SLAB_REPARENT: &str = "series \"The new cgroup slab memory controller\" (Roman Gushchin, 5.9): bf4f059954dc \"mm: memcg/slab: obj_cgroup API\", 10befea91b61 \"mm: memcg/slab: use a single set of kmem_caches for all allocations\"";
/// Sockets: the css reference `sk->sk_memcg` holds (commit not looked up).
const SOCK_REF: &str = "mem_cgroup_sk_alloc() takes a css reference for sk->sk_memcg, dropped when the socket is freed (cgroup v2; on v1 only with a kmem.tcp limit); ID at offline: 73f576c04b94";
/// Swap: entries hold ID references, not css references.
const SWAP_REF: &str = "73f576c04b94: swap entries hold the memcg's ID (mem_cgroup_id_get_many at swap-out), which holds its css";
/// Writeback: an inode's cgroup writeback context holds the memcg's css.
const CGWB: &str = "an inode's bdi_writeback (inode->i_wb) holds the memcg's css; c22d70a162d3 \"writeback, cgroup: release dying cgwbs by switching attached inodes\" (Roman Gushchin, 5.15) moves clean inodes to the parent at offline, not those with dirty data; ID at offline: 73f576c04b94";
/// The ID put before 7.x and after it (the rename to private IDs).
const PUT_MANY: &str = "mem_cgroup_id_put_many";
const PRIVATE_PUT: &str = "mem_cgroup_private_id_put (inline)";

/// Builds a row; one line per row in the table below.
#[allow(clippy::too_many_arguments)]
const fn row(
    cause: Cause,
    since: KernelVersion,
    until: KernelVersion,
    stays_dying: bool,
    id_release: IdRelease,
    releaser: &'static str,
    cite: &'static str,
    seen_on: &'static str,
) -> Row {
    Row {
        cause,
        since,
        until,
        stays_dying,
        id_release,
        releaser,
        cite,
        seen_on,
    }
}

use Cause::*;
use IdRelease::{Free as AtFree, Offline as AtOffline, SwapIn};

#[rustfmt::skip]
pub static TABLE: &[Row] = &[
    // LRU pages (tmpfs, page cache) hold the memcg's css until they are freed or
    // reclaimed; from the 7.x series they move to the parent at offline.
    row(Tmpfs, OLD, v(4, 7), true, AtFree, "mem_cgroup_css_free", ID_AT_OFFLINE, ""),
    row(Tmpfs, v(4, 7), v(6, 19), true, AtOffline, PUT_MANY, ID_AT_OFFLINE, "5.10, 6.1, 6.12, 6.18"),
    row(Tmpfs, v(7, 2), ANY, false, AtOffline, PRIVATE_PUT, LRU_REPARENT, "7.2.13, 7.3.4"),
    row(PageCache, OLD, v(4, 7), true, AtFree, "mem_cgroup_css_free", ID_AT_OFFLINE, ""),
    row(PageCache, v(4, 7), v(6, 19), true, AtOffline, PUT_MANY, ID_AT_OFFLINE, "5.10, 6.1, 6.12, 6.18"),
    row(PageCache, v(7, 2), ANY, false, AtOffline, PRIVATE_PUT, LRU_REPARENT, "7.2.13, 7.3.4"),
    // Swap entries record the memcg's ID and hold an ID reference each (not a
    // css reference): the ID stays taken until they go (mem_cgroup_uncharge_swap).
    row(Swap, v(4, 7), v(6, 19), true, SwapIn, PUT_MANY, SWAP_REF, "6.12 (VM matrix, cgroup v2)"),
    row(Swap, v(7, 2), ANY, true, SwapIn, PRIVATE_PUT, SWAP_REF, "7.2.13, 7.3.4 (VM matrix)"),
    // A socket's sk_memcg holds a css reference (mem_cgroup_sk_alloc) until the
    // socket is freed; the ID goes at offline as for every css-only pin.
    row(Socket, v(4, 7), v(6, 19), true, AtOffline, PUT_MANY, SOCK_REF, "6.12 (VM matrix, cgroup v2)"),
    row(Socket, v(7, 2), ANY, true, AtOffline, PRIVATE_PUT, SOCK_REF, "7.2.13, 7.3.4 (VM matrix)"),
    // Slab: per-memcg kmem caches pinned the memcg until 5.9; since then objects
    // point at an obj_cgroup that is reparented at offline.
    row(Slab, v(4, 7), v(5, 9), true, AtOffline, PUT_MANY, ID_AT_OFFLINE, ""),
    row(Slab, v(5, 9), v(6, 19), false, AtOffline, PUT_MANY, SLAB_REPARENT, ""),
    row(Slab, v(7, 2), ANY, false, AtOffline, PRIVATE_PUT, SLAB_REPARENT, ""),
    // An inode written from the memcg keeps its cgroup writeback context (cgroup
    // v2), which holds the memcg's css; seen surviving sync and drop_caches.
    // Only an inode still dirty at offline: cleanup_offline_cgwbs_workfn()
    // (c22d70a162d3, 5.15) moves clean inodes to the parent's context but skips
    // a context with dirty IO (wb_has_dirty_io()) until the next memcg offline;
    // a file fsynced before rmdir was freed at rmdir on 6.12.118 and 7.3.4.
    row(Writeback, v(6, 12), v(6, 19), true, AtOffline, PUT_MANY, CGWB, "6.12 (VM matrix, cgroup v2, ext4)"),
    row(Writeback, v(7, 2), ANY, true, AtOffline, PRIVATE_PUT, CGWB, "7.3.4 (VM matrix, cgroup v2, ext4)"),
];

/// The row for `cause` on kernel `version`; `None` where the table does not know.
pub fn lookup(cause: Cause, version: KernelVersion) -> Option<&'static Row> {
    TABLE
        .iter()
        .find(|r| r.cause == cause && r.since <= version && version < r.until)
}

/// The first kernel whose rows give a dying memcg's ID back before it is
/// freed (at offline, or when its swap entries go): before it every dying
/// memcg holds its ID (the forecast's ID model, `forecast::dying_hold`).
pub fn ids_released_before_free_since() -> KernelVersion {
    TABLE
        .iter()
        .filter(|r| r.id_release != IdRelease::Free)
        .map(|r| r.since)
        .min()
        .unwrap_or(ANY)
}

/// The first kernel on which `cause` no longer keeps removed memcgs dying
/// (its first row with `stays_dying` false); [`KernelVersion::MAX`] when it
/// always does. Slab: 5.9, when objects moved to the reparented obj_cgroup.
pub fn stops_pinning_since(cause: Cause) -> KernelVersion {
    TABLE
        .iter()
        .filter(|r| r.cause == cause && !r.stays_dying)
        .map(|r| r.since)
        .min()
        .unwrap_or(ANY)
}

/// What keeps memcgs dying on kernel `version`, in words, from the table:
/// "page cache and tmpfs no longer pin here; swap and sockets still do".
pub fn describe(version: KernelVersion) -> String {
    let mut pins = Vec::new();
    let mut gone = Vec::new();
    let mut unknown = Vec::new();
    for cause in Cause::ALL {
        match lookup(cause, version) {
            Some(r) if r.stays_dying => pins.push(cause.name()),
            Some(_) => gone.push(cause.name()),
            None => unknown.push(cause.name()),
        }
    }
    let mut parts = Vec::new();
    let s = |items: &[&str]| if items.len() == 1 { "s" } else { "" };
    if !gone.is_empty() {
        parts.push(format!("{} no longer pin{} here", join(&gone), s(&gone)));
    }
    if !pins.is_empty() {
        let still = if gone.is_empty() { "" } else { " still" };
        parts.push(format!(
            "{}{still} keep{} removed memcgs dying",
            join(&pins),
            s(&pins)
        ));
    }
    if !unknown.is_empty() {
        parts.push(format!("unknown for {}", join(&unknown)));
    }
    format!("on {version}: {}", parts.join("; "))
}

/// What the running kernel does, in words (for doctor and report).
pub fn running_kernel() -> String {
    match KernelVersion::parse(&crate::probes::kernel::release()) {
        Some(v) => describe(v),
        None => "this kernel's version is unknown, so what keeps memcgs dying here is too".into(),
    }
}

/// The table as Markdown, for the README (kept equal by a test).
pub fn markdown() -> String {
    let mut s = String::from(
        "| pin cause | kernels | removed memcg stays dying | ID released at | released by | set by | checked on |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for r in TABLE {
        let kernels = match (r.since == OLD, r.until == ANY) {
            (true, _) => format!("before {}", r.until),
            (false, true) => format!("{}+", r.since),
            (false, false) => format!("{} to before {}", r.since, r.until),
        };
        s.push_str(&format!(
            "| {} | {kernels} | {} | {} | `{}` | {} | {} |\n",
            r.cause.name(),
            if r.stays_dying { "yes" } else { "no" },
            r.id_release.name(),
            r.releaser,
            r.cite,
            if r.seen_on.is_empty() {
                "source only"
            } else {
                r.seen_on
            },
        ));
    }
    s
}

fn join(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_one_cause_do_not_overlap_and_all_cite() {
        for a in TABLE {
            assert!(a.since < a.until, "{a:?}");
            assert!(!a.cite.is_empty() && !a.releaser.is_empty(), "{a:?}");
            for b in TABLE {
                if std::ptr::eq(a, b) || a.cause != b.cause {
                    continue;
                }
                assert!(a.until <= b.since || b.until <= a.since, "{a:?} / {b:?}");
            }
        }
    }

    #[test]
    fn lru_pins_end_with_7x_and_swap_stays() {
        let k612 = KernelVersion(6, 12, 118);
        let k73 = KernelVersion(7, 3, 4);
        assert!(lookup(Tmpfs, k612).unwrap().stays_dying);
        assert!(!lookup(Tmpfs, k73).unwrap().stays_dying);
        assert!(!lookup(PageCache, k73).unwrap().stays_dying);
        assert!(lookup(Swap, k73).unwrap().stays_dying);
        assert_eq!(lookup(Swap, k73).unwrap().id_release, SwapIn);
        assert_eq!(lookup(Socket, k612).unwrap().id_release, AtOffline);
        // The merge release of the LRU series is not confirmed: unknown there.
        assert!(lookup(Tmpfs, KernelVersion(7, 0, 10)).is_none());
        assert!(!lookup(Slab, KernelVersion(5, 10, 0)).unwrap().stays_dying);
        assert!(lookup(Slab, KernelVersion(4, 19, 0)).unwrap().stays_dying);
        assert_eq!(stops_pinning_since(Slab), KernelVersion(5, 9, 0));
        assert_eq!(ids_released_before_free_since(), KernelVersion(4, 7, 0));
    }

    #[test]
    fn the_readme_shows_this_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        // KMEM_TRACE_BLESS=1 rewrites the block from the table.
        if std::env::var_os("KMEM_TRACE_BLESS").is_some() {
            let (head, rest) = readme
                .split_once("<!-- leak-table:start -->\n")
                .expect("start marker");
            let (_, tail) = rest
                .split_once("<!-- leak-table:end -->")
                .expect("end marker");
            let new = format!(
                "{head}<!-- leak-table:start -->\n{}<!-- leak-table:end -->{tail}",
                markdown()
            );
            std::fs::write(path, new).expect("writing README.md");
            return;
        }
        let block = readme
            .split_once("<!-- leak-table:start -->\n")
            .and_then(|(_, rest)| rest.split_once("<!-- leak-table:end -->"))
            .map(|(b, _)| b)
            .expect("README.md has the leak-table markers");
        assert_eq!(
            block,
            markdown(),
            "README.md's leak table differs from leaks::TABLE"
        );
    }

    #[test]
    fn described_in_words() {
        assert_eq!(
            describe(KernelVersion(7, 3, 4)),
            "on 7.3.4: tmpfs, page cache and slab no longer pin here; \
             swap, sockets and writeback still keep removed memcgs dying"
        );
        assert_eq!(
            describe(KernelVersion(6, 1, 0)),
            "on 6.1: slab no longer pins here; tmpfs, page cache, swap and sockets still \
             keep removed memcgs dying; unknown for writeback"
        );
        assert!(describe(KernelVersion(7, 1, 0)).contains("unknown for tmpfs, page cache"));
    }
}
