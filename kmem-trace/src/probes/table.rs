//! The probe table: for each memcg lifecycle point, the hooks that can observe it,
//! in order of preference, with symbol alternatives and the kernels each row is
//! meant for. Choosing a hook is data plus the static checks here; `probes/mod.rs`
//! then tries to load and attach the survivors and falls back on failure.

use std::fmt;

use kmem_trace_common::{hook, EventKind};
use serde::Serialize;

use super::kernel::KernelVersion;

/// A lifecycle point kmem-trace reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Point {
    Alloc,
    Online,
    Offline,
    Released,
    Free,
    IdRelease,
    KmemActivate,
}

impl Point {
    pub const ALL: [Point; 7] = [
        Point::Alloc,
        Point::Online,
        Point::Offline,
        Point::Released,
        Point::Free,
        Point::IdRelease,
        Point::KmemActivate,
    ];

    pub fn kind(self) -> EventKind {
        match self {
            Point::Alloc => EventKind::Alloc,
            Point::Online => EventKind::Online,
            Point::Offline => EventKind::Offline,
            Point::Released => EventKind::Released,
            Point::Free => EventKind::Free,
            Point::IdRelease => EventKind::IdRelease,
            Point::KmemActivate => EventKind::KmemActivate,
        }
    }

    pub fn name(self) -> &'static str {
        self.kind().name()
    }
}

/// Hook families, in the order `auto` prefers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Fentry, Family::Kprobe, Family::Tracepoint];

    pub fn name(self) -> &'static str {
        match self {
            Family::Fentry => "fentry",
            Family::Kprobe => "kprobe",
            Family::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `--hooks`: a forced family or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum HookMode {
    #[default]
    Auto,
    Fentry,
    Kprobe,
    Tracepoint,
}

impl HookMode {
    pub fn allows(self, f: Family) -> bool {
        match self {
            HookMode::Auto => true,
            HookMode::Fentry => f == Family::Fentry,
            HookMode::Kprobe => f == Family::Kprobe,
            HookMode::Tracepoint => f == Family::Tracepoint,
        }
    }
}

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    Fentry,
    Fexit,
    Kprobe,
    /// A return probe; `Row::entry` names the kprobe that stashes the arguments.
    Kretprobe,
    /// BTF tracepoint; the symbol is the tracepoint name.
    TpBtf,
    /// Raw tracepoint; the symbol is the tracepoint name.
    RawTp,
    /// Classic (tracefs) tracepoint; the symbol is `category/name`.
    Tracepoint,
}

impl Attach {
    pub fn name(self) -> &'static str {
        match self {
            Attach::Fentry => "fentry",
            Attach::Fexit => "fexit",
            Attach::Kprobe => "kprobe",
            Attach::Kretprobe => "kretprobe",
            Attach::TpBtf => "tp_btf",
            Attach::RawTp => "raw_tp",
            Attach::Tracepoint => "tracepoint",
        }
    }
}

/// One row of the probe table.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Row {
    pub point: Point,
    pub family: Family,
    pub attach: Attach,
    /// eBPF program name in the object.
    pub program: &'static str,
    /// For `Kretprobe`: the entry kprobe attached to the same symbol.
    pub entry: Option<&'static str>,
    /// `Event::hook` value the program writes.
    pub hook_id: u16,
    /// Symbol (function or tracepoint) alternatives, most preferred first.
    pub symbols: &'static [&'static str],
    /// Kernel functions whose addresses the program needs from kallsyms.
    pub needs_kallsyms: &'static [&'static str],
    /// Kernels the row is meant for: `since <= version < until`.
    pub since: KernelVersion,
    pub until: KernelVersion,
    /// The point is inferred from neighbouring state, not seen directly.
    pub inferred: bool,
    pub note: &'static str,
}

impl Row {
    /// Whether the hook sees memcgs that cgroup v2 creates or kills without a
    /// directory operation: writing `+memory`/`-memory` to a parent's
    /// `cgroup.subtree_control` runs `cgroup_apply_control_enable()` (css
    /// alloc and online) or `cgroup_apply_control_disable()` (`kill_css()`,
    /// offline), never `cgroup_mkdir()`/`cgroup_rmdir()`. The memcg's own
    /// functions and the css work items see them; the mkdir/rmdir tracepoints
    /// do not (the tracepoint family is blind to toggles there).
    pub fn sees_toggles(&self) -> bool {
        !(self.symbols == MKDIR || self.symbols == RMDIR)
    }

    /// The first kernel the row is meant for on `arch` (Rust's names,
    /// `std::env::consts::ARCH`): its own `since`, or later where
    /// [`ARCH_FLOORS`] says the architecture got the attach type later.
    pub fn since_on(&self, arch: &str) -> KernelVersion {
        ARCH_FLOORS
            .iter()
            .filter(|f| f.arch == arch && f.attach == self.attach)
            .map(|f| f.since)
            .fold(self.since, KernelVersion::max)
    }
}

/// An attach type an architecture got later than x86_64, where the rows' own
/// `since` is x86_64's.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ArchFloor {
    /// Rust's name of the architecture (`aarch64`).
    pub arch: &'static str,
    pub attach: Attach,
    pub since: KernelVersion,
    pub note: &'static str,
}

/// Per-architecture floors. kprobes, raw and classic tracepoints and tp_btf
/// work on arm64 from the same kernels as on x86_64.
pub static ARCH_FLOORS: &[ArchFloor] = &[
    // BPF trampolines came to arm64 in 6.0 (efc9909fdce0), but attaching one
    // to a kernel function goes through ftrace direct calls
    // (`bpf_trampoline_update()` -> `register_ftrace_direct()`), which arm64
    // got in 6.4 (2aa6ac03516d); before, the attach fails with ENOTSUPP (524).
    // Seen in the arm64 VM matrix: 6.1.0-57 arm64, every fentry/fexit hook 524.
    ArchFloor {
        arch: "aarch64",
        attach: Attach::Fentry,
        since: v(6, 4),
        note: "fentry on a kernel function needs ftrace direct calls on arm64: commit 2aa6ac03516d (\"arm64: ftrace: Add direct call support\"), 6.4; BPF trampolines alone (efc9909fdce0, 6.0) attach only to BPF programs",
    },
    ArchFloor {
        arch: "aarch64",
        attach: Attach::Fexit,
        since: v(6, 4),
        note: "fexit on a kernel function needs ftrace direct calls on arm64: commit 2aa6ac03516d, 6.4",
    },
];

const fn v(major: u32, minor: u32) -> KernelVersion {
    KernelVersion(major, minor, 0)
}
const ANY: KernelVersion = KernelVersion::MAX;

/// Builds a row; the long argument list keeps the table below one line per hook.
#[allow(clippy::too_many_arguments)]
const fn row(
    point: Point,
    family: Family,
    attach: Attach,
    program: &'static str,
    hook_id: u16,
    symbols: &'static [&'static str],
    since: KernelVersion,
    note: &'static str,
) -> Row {
    Row {
        point,
        family,
        attach,
        program,
        entry: None,
        hook_id,
        symbols,
        needs_kallsyms: &[],
        since,
        until: ANY,
        inferred: false,
        note,
    }
}

const fn ret(mut r: Row, entry: &'static str) -> Row {
    r.entry = Some(entry);
    r
}
const fn inferred(mut r: Row) -> Row {
    r.inferred = true;
    r
}
const fn until(mut r: Row, until: KernelVersion) -> Row {
    r.until = until;
    r
}
const fn needs(mut r: Row, syms: &'static [&'static str]) -> Row {
    r.needs_kallsyms = syms;
    r
}

use Attach::*;
use Family::{Fentry as FE, Kprobe as KP, Tracepoint as TP};
use Point::*;

const CSS_ALLOC: &[&str] = &["mem_cgroup_css_alloc"];
const CSS_ONLINE: &[&str] = &["mem_cgroup_css_online"];
const CSS_OFFLINE: &[&str] = &["mem_cgroup_css_offline"];
const CSS_RELEASED: &[&str] = &["mem_cgroup_css_released"];
const CSS_FREE: &[&str] = &["mem_cgroup_css_free"];
const ID_PUT: &[&str] = &["mem_cgroup_id_put_many"];
/// GCC splits `memcg_offline_kmem()` after its `mem_cgroup_kmem_disabled()`
/// check; only the `.part.0` clone is in kallsyms (6.1 to 6.18).
const KMEM_OFFLINE: &[&str] = &["memcg_offline_kmem", "memcg_offline_kmem.part.0"];
const KMEM_ONLINE: &[&str] = &["memcg_online_kmem", "memcg_online_kmem.part.0"];
const MKDIR: &[&str] = &["cgroup_mkdir"];
const RMDIR: &[&str] = &["cgroup_rmdir"];
const RELEASE: &[&str] = &["cgroup_release"];
const WQ_START: &[&str] = &["workqueue_execute_start"];
const WQ_START_TP: &[&str] = &["workqueue/workqueue_execute_start"];

/// A classic tracepoint's symbol as (category, name):
/// `workqueue/workqueue_execute_start`; no category for other symbols.
pub fn tracepoint_parts(symbol: &str) -> (&str, &str) {
    symbol.rsplit_once('/').unwrap_or(("", symbol))
}

/// The tracepoint name of a symbol ([`tracepoint_parts`] without the category).
pub fn tracepoint_name(symbol: &str) -> &str {
    tracepoint_parts(symbol).1
}

/// The oldest kernel an object can load on: the old-kernel object's floor
/// (perf buffers, `bpf_probe_read`, no global data; its helpers are audited
/// against 4.18's set, `probes::audit`). Rows for older kernels (3.10's
/// `memcg_activate_kmem`, 4.1 kprobes, 4.17 raw tracepoints) were claims no
/// object could keep; `doctor` still judges those kernels from procfs.
const FLOOR: KernelVersion = v(4, 18);

/// fentry needs BTF trampolines (5.5) and tp_btf 5.5, both only in the
/// ring-buffer object; kprobe, raw_tp (4.17) and classic tracepoint rows are
/// in both objects, from the 4.18 floor. The cgroup_mkdir/rmdir/release
/// tracepoints are 4.13 (commit ed1777fd9c2f).
#[rustfmt::skip]
pub static TABLE: &[Row] = &[
    // alloc
    row(Alloc, FE, Fexit, "kt_fexit_css_alloc", hook::FENTRY_CSS_ALLOC, CSS_ALLOC, v(5, 5), "returns the css with memcg->id assigned by mem_cgroup_alloc()"),
    // No entry kprobe: the return value alone is the new css (an empty entry
    // name made every kprobe-family run blind to alloc).
    row(Alloc, KP, Kretprobe, "kt_kretprobe_css_alloc", hook::KPROBE_CSS_ALLOC, CSS_ALLOC, FLOOR, "return value is the new css"),
    row(Alloc, TP, TpBtf, "kt_tp_cgroup_mkdir", hook::TP_CGROUP_MKDIR, MKDIR, v(5, 5), "cgroup_create() allocated the memcg css before the tracepoint"),
    row(Alloc, TP, RawTp, "kt_raw_cgroup_mkdir", hook::RAW_CGROUP_MKDIR, MKDIR, FLOOR, "as tp_btf, without BTF typing"),
    // online
    row(Online, FE, Fexit, "kt_fexit_css_online", hook::FENTRY_CSS_ONLINE, CSS_ONLINE, v(5, 5), "after mem_cgroup_css_online() returned 0"),
    ret(row(Online, KP, Kretprobe, "kt_kretprobe_css_online", hook::KPROBE_CSS_ONLINE, CSS_ONLINE, FLOOR, "entry kprobe stashes the css"), "kt_kprobe_css_online"),
    row(Online, TP, TpBtf, "kt_tp_cgroup_mkdir", hook::TP_CGROUP_MKDIR, MKDIR, v(5, 5), "online_css() ran inside cgroup_mkdir()"),
    row(Online, TP, RawTp, "kt_raw_cgroup_mkdir", hook::RAW_CGROUP_MKDIR, MKDIR, FLOOR, "as tp_btf, without BTF typing"),
    // offline
    row(Offline, FE, Fentry, "kt_fentry_css_offline", hook::FENTRY_CSS_OFFLINE, CSS_OFFLINE, v(5, 5), "page counters read at entry"),
    row(Offline, KP, Kprobe, "kt_kprobe_css_offline", hook::KPROBE_CSS_OFFLINE, CSS_OFFLINE, FLOOR, "page counters read at entry"),
    // Fallback inside mem_cgroup_css_offline(): its first argument is the memcg, whose
    // css sits at offset 0, so the same program reads it. Fires only with kmem
    // accounting on (not with cgroup.memory=nokmem) and never for the root.
    row(Offline, KP, Kprobe, "kt_kprobe_css_offline", hook::KPROBE_CSS_OFFLINE, KMEM_OFFLINE, FLOOR, "memcg_offline_kmem(): kmem accounting on only"),
    row(Offline, TP, TpBtf, "kt_tp_cgroup_rmdir", hook::TP_CGROUP_RMDIR, RMDIR, v(5, 5), "rmdir; offline_css() follows from a work item"),
    row(Offline, TP, RawTp, "kt_raw_cgroup_rmdir", hook::RAW_CGROUP_RMDIR, RMDIR, FLOOR, "as tp_btf, without BTF typing"),
    // released
    row(Released, FE, Fentry, "kt_fentry_css_released", hook::FENTRY_CSS_RELEASED, CSS_RELEASED, v(5, 5), "last css reference dropped"),
    row(Released, KP, Kprobe, "kt_kprobe_css_released", hook::KPROBE_CSS_RELEASED, CSS_RELEASED, FLOOR, "last css reference dropped"),
    needs(row(Released, TP, TpBtf, "kt_tp_workqueue_start", hook::TP_CSS_RELEASE_WORK, WQ_START, v(5, 5), "css_release_work_fn work item of a memory css"), &["css_release_work_fn"]),
    needs(row(Released, TP, RawTp, "kt_raw_workqueue_start", hook::RAW_CSS_RELEASE_WORK, WQ_START, FLOOR, "as tp_btf, without BTF typing"), &["css_release_work_fn"]),
    needs(row(Released, TP, Tracepoint, "kt_tpc_workqueue_start", hook::TPC_CSS_RELEASE_WORK, WQ_START_TP, FLOOR, "as tp_btf; the record carries the work function (needs tracefs)"), &["css_release_work_fn"]),
    // free
    row(Free, FE, Fentry, "kt_fentry_css_free", hook::FENTRY_CSS_FREE, CSS_FREE, v(5, 5), "memcg freed"),
    row(Free, KP, Kprobe, "kt_kprobe_css_free", hook::KPROBE_CSS_FREE, CSS_FREE, FLOOR, "memcg freed"),
    needs(row(Free, TP, TpBtf, "kt_tp_workqueue_start", hook::TP_CSS_FREE_WORK, WQ_START, v(5, 5), "css_free_rwork_fn work item of a memory css (calls mem_cgroup_css_free)"), &["css_free_rwork_fn"]),
    needs(row(Free, TP, RawTp, "kt_raw_workqueue_start", hook::RAW_CSS_FREE_WORK, WQ_START, FLOOR, "as tp_btf, without BTF typing"), &["css_free_rwork_fn"]),
    needs(row(Free, TP, Tracepoint, "kt_tpc_workqueue_start", hook::TPC_CSS_FREE_WORK, WQ_START_TP, FLOOR, "as tp_btf; the record carries the work function (needs tracefs)"), &["css_free_rwork_fn"]),
    row(Free, TP, TpBtf, "kt_tp_cgroup_release", hook::TP_CGROUP_RELEASE, RELEASE, v(5, 5), "the cgroup's own release, after its memcg was freed"),
    row(Free, TP, RawTp, "kt_raw_cgroup_release", hook::RAW_CGROUP_RELEASE, RELEASE, FLOOR, "as tp_btf, without BTF typing"),
    // id_release: no tracepoint sees mem_cgroup_id_remove(). By 7.2 the private
    // ID's put is the inline mem_cgroup_private_id_put() (memcg IDs renamed
    // "private"; the xarray is mem_cgroup_private_ids): no symbol to hook, so no
    // family sees the release there. It happens in mem_cgroup_css_offline() for
    // a memcg without swap entries, else when its last swap entry goes
    // (kmem_trace::leaks). 6.19 to 7.1 are untested: the rows end at 7.2, the
    // first kernel seen without the symbol.
    until(row(IdRelease, FE, Fentry, "kt_fentry_id_put_many", hook::FENTRY_ID_PUT, ID_PUT, v(5, 5), "reference count before the put equals n"), v(7, 2)),
    // kprobe: the count read before the put misses concurrent puts; the return
    // probe sees id.id zeroed by mem_cgroup_id_remove() and claims it once.
    until(ret(row(IdRelease, KP, Kretprobe, "kt_kretprobe_id_put_many", hook::KPROBE_ID_PUT, ID_PUT, FLOOR, "id.id is 0 after the put; one report per memcg"), "kt_kprobe_id_put_many"), v(7, 2)),
    // kmem_activate: direct where the kernel has a function, else inferred at online
    until(row(KmemActivate, FE, Fexit, "kt_fexit_kmem_online", hook::FENTRY_KMEM_ONLINE, KMEM_ONLINE, v(5, 5), "memcg_online_kmem() returned 0"), v(6, 1)),
    inferred(row(KmemActivate, FE, Fexit, "kt_fexit_css_online", hook::FENTRY_CSS_ONLINE, CSS_ONLINE, v(5, 5), "kmemcg_id/objcg set after online")),
    until(ret(row(KmemActivate, KP, Kretprobe, "kt_kretprobe_kmem_online", hook::KPROBE_KMEM_ONLINE, KMEM_ONLINE, FLOOR, "memcg_online_kmem() returned 0"), "kt_kprobe_kmem_online"), v(6, 1)),
    inferred(ret(row(KmemActivate, KP, Kretprobe, "kt_kretprobe_css_online", hook::KPROBE_CSS_ONLINE, CSS_ONLINE, FLOOR, "kmemcg_id/objcg set after online"), "kt_kprobe_css_online")),
    inferred(row(KmemActivate, TP, TpBtf, "kt_tp_cgroup_mkdir", hook::TP_CGROUP_MKDIR, MKDIR, v(5, 5), "kmemcg_id/objcg set at mkdir")),
    inferred(row(KmemActivate, TP, RawTp, "kt_raw_cgroup_mkdir", hook::RAW_CGROUP_MKDIR, MKDIR, FLOOR, "kmemcg_id/objcg set at mkdir")),
];

/// Where the VM kernel matrix (`cargo xtask vm-test`) found a symbol the table
/// names: in `/proc/kallsyms` for functions, as an attachable tracepoint for
/// tracepoints. Kernels outside a range are untested, not unsupported; the
/// matrix prints symbols it sees outside these ranges, so this grows with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Seen {
    pub symbol: &'static str,
    /// First and last kernel series it was seen on; `None`: on no tested kernel.
    pub range: Option<(KernelVersion, KernelVersion)>,
    pub note: &'static str,
}

const fn seen(
    symbol: &'static str,
    first: KernelVersion,
    last: KernelVersion,
    note: &'static str,
) -> Seen {
    Seen {
        symbol,
        range: Some((first, last)),
        note,
    }
}
const fn never(symbol: &'static str, note: &'static str) -> Seen {
    Seen {
        symbol,
        range: None,
        note,
    }
}

/// Tested: Debian 5.10.0-46 (bullseye), 6.1.0-57 and 6.12.117 (amd64 and
/// cloud-amd64), 7.2.13 (sid) and 7.3.4 (trixie-backports, cloud-amd64) in the
/// VM matrix, and 6.18 (this project's build machine, no kprobes) as its host row.
#[rustfmt::skip]
pub static SEEN: &[Seen] = &[
    seen("mem_cgroup_css_alloc", v(5, 10), v(7, 3), ""),
    seen("mem_cgroup_css_online", v(5, 10), v(7, 3), ""),
    seen("mem_cgroup_css_offline", v(5, 10), v(7, 3), ""),
    seen("mem_cgroup_css_released", v(5, 10), v(7, 3), ""),
    seen("mem_cgroup_css_free", v(5, 10), v(7, 3), ""),
    seen("mem_cgroup_id_put_many", v(5, 10), v(6, 18), "mem_cgroup_id_put() is an inline wrapper; gone on 7.2 and 7.3 (inline mem_cgroup_private_id_put())"),
    seen("memcg_offline_kmem.part.0", v(5, 10), v(6, 18), "GCC partial-inlining clone; not on 7.2 and 7.3"),
    never("memcg_offline_kmem", "only its .part.0 clone is a symbol on 5.10 to 6.18"),
    never("memcg_online_kmem", "inlined into mem_cgroup_css_online() on 5.10 to 6.18"),
    never("memcg_online_kmem.part.0", "no clone on 5.10 to 6.18"),
    seen("css_release_work_fn", v(5, 10), v(7, 3), "kallsyms address for the workqueue hook"),
    seen("css_free_rwork_fn", v(5, 10), v(7, 3), "kallsyms address for the workqueue hook"),
    seen("cgroup_mkdir", v(5, 10), v(7, 3), "tracepoint"),
    seen("cgroup_rmdir", v(5, 10), v(7, 3), "tracepoint"),
    seen("cgroup_release", v(5, 10), v(7, 3), "tracepoint"),
    seen("workqueue_execute_start", v(5, 10), v(7, 3), "tracepoint"),
];

/// The context slot where the fexit programs read the traced function's return
/// value (shared with `kmem-trace-ebpf/src/fentry.rs`): rows whose function has
/// another parameter count in BTF are refused instead of misread.
const FEXIT_RET_SLOT: u32 = kmem_trace_common::FEXIT_RET_SLOT as u32;

/// Whether the object of `transport` has the row's program: the old-kernel
/// object has no fentry/fexit or BTF tracepoint programs (they need kernel BTF).
pub fn in_object(row: &Row, transport: super::Transport) -> bool {
    match transport {
        super::Transport::Ringbuf => true,
        super::Transport::Perf => {
            !matches!(row.attach, Attach::Fentry | Attach::Fexit | Attach::TpBtf)
        }
    }
}

/// The rows for one point that a mode allows, in order of preference.
pub fn candidates(point: Point, mode: HookMode) -> Vec<&'static Row> {
    let mut rows: Vec<&Row> = TABLE
        .iter()
        .filter(|r| r.point == point && mode.allows(r.family))
        .collect();
    // Stable sort keeps the table's order within a family.
    rows.sort_by_key(|r| r.family);
    rows
}

/// The rows for one point that a mode allows and the transport's object
/// carries, in order of preference.
pub fn loadable(
    point: Point,
    mode: HookMode,
    transport: super::Transport,
) -> impl Iterator<Item = &'static Row> {
    candidates(point, mode)
        .into_iter()
        .filter(move |r| in_object(r, transport))
}

/// What static checks need to know about the kernel.
pub trait KernelFacts {
    fn version(&self) -> Option<KernelVersion>;
    /// `Err(reason)` when the family cannot work at all on this kernel.
    fn family_usable(&self, family: Family) -> Result<(), String>;
    /// Whether the symbol exists for this attach type (kallsyms / BTF func / tracepoint).
    fn has_symbol(&self, attach: Attach, symbol: &str) -> bool;
    fn has_kallsyms_addr(&self, symbol: &str) -> bool;
    /// Parameters of the function's BTF prototype, where known.
    fn fexit_params(&self, symbol: &str) -> Option<u32>;
    /// The architecture the programs run on (Rust's name): this binary's.
    fn arch(&self) -> &str {
        std::env::consts::ARCH
    }
}

/// Static check of one row: the symbol to use, or why the row cannot work.
pub fn check(
    row: &Row,
    facts: &dyn KernelFacts,
    forced_symbol: Option<&str>,
) -> Result<String, String> {
    if let Some(ver) = facts.version() {
        let since = row.since_on(facts.arch());
        if ver < since || ver >= row.until {
            return Err(format!(
                "meant for kernels {since}{}{}, this is {ver}",
                if row.until == ANY {
                    "+".to_string()
                } else {
                    format!(" to before {}", row.until)
                },
                if since == row.since {
                    String::new()
                } else {
                    format!(" on {}", facts.arch())
                }
            ));
        }
    }
    facts.family_usable(row.family)?;
    for sym in row.needs_kallsyms {
        if !facts.has_kallsyms_addr(sym) {
            return Err(format!("{sym} has no address in /proc/kallsyms"));
        }
    }
    let sym = match forced_symbol {
        Some(sym) if facts.has_symbol(row.attach, sym) => sym,
        Some(sym) => {
            return Err(format!(
                "forced symbol {sym} not found for {}",
                row.attach.name()
            ))
        }
        None => row
            .symbols
            .iter()
            .find(|s| facts.has_symbol(row.attach, s))
            .ok_or_else(|| {
                let place = match row.attach {
                    Attach::Kprobe | Attach::Kretprobe => "in /proc/kallsyms",
                    Attach::Fentry | Attach::Fexit => "as a BTF function",
                    Attach::TpBtf => "as a BTF tracepoint",
                    Attach::RawTp | Attach::Tracepoint => "as a tracepoint",
                };
                format!("none of {} exists {place}", row.symbols.join(", "))
            })?,
    };
    // An fexit program reads the return value at a fixed slot: a function
    // with another parameter count would have an argument misread as it.
    if row.attach == Attach::Fexit {
        if let Some(n) = facts.fexit_params(sym).filter(|&n| n != FEXIT_RET_SLOT) {
            return Err(format!(
                "{sym} takes {n} parameters in BTF; the fexit program reads the return value after {FEXIT_RET_SLOT}"
            ));
        }
    }
    Ok(sym.to_string())
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
