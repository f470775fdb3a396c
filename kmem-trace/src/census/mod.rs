//! The census: every memcg the kernel holds right now, dying ones included,
//! as `lifecycle::Memcg` seeds with `Origin::Census`, reconciled with the
//! counts procfs and cgroupfs give, with a pin cause for each dying memcg.
//!
//! Sources, best first: the BPF iterator (`probes::census`, 6.1+ with BTF),
//! which reads each memcg; else counts only (`counts`), on any kernel.
//!
//! For other modules (`watch`, `zombies`):
//! - [`take`] runs a census and never fails for lack of BPF: it falls back to
//!   counts only and says why in [`Census::fallback`].
//! - [`memcgs`] returns the census as `Vec<Memcg>` (what `zombies` uses when no
//!   tracer runs), or [`CensusError::CountsOnly`] with the counts when only
//!   counts are available.
//! - [`seed`] feeds a census into a running `Lifecycle` (what `watch` does at start).

pub mod counts;
pub mod pin;
pub mod recheck;
pub mod render;
pub mod residents;

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
};

use kmem_trace_common::{census_flags, flags, CensusSummary, Event, EventKind};
use serde::Serialize;

pub use counts::{DyingBasis, KernelCounts};
pub use pin::{OwnStats, Pin, PinCause, Residual};

use crate::{
    cgroupfs::{self, CgroupVersion, MemoryHierarchy},
    decode::TraceEvent,
    lifecycle::{CgroupKey, CgroupTree, Lifecycle, Memcg, Origin, State},
    probes::{
        census::{self as probe, CensusProbeConfig, CensusTiming},
        kernel::{self, KernelVersion},
    },
};

/// Errors of taking a census.
#[derive(Debug, thiserror::Error)]
pub enum CensusError {
    #[error(transparent)]
    Cgroupfs(#[from] cgroupfs::CgroupfsError),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("only counts are available ({reason}); run as root on a kernel with BTF and the cgroup BPF iterator (6.1+) for the memcgs themselves")]
    CountsOnly { reason: String, counts: Box<Census> },
}

/// How to take a census.
#[derive(Clone, Debug)]
pub struct CensusConfig {
    /// `/`, or where the host's root is mounted (`--host-root`).
    pub host_root: PathBuf,
    pub btf: Option<PathBuf>,
    /// Skip BPF: counts from procfs and cgroupfs only.
    pub counts_only: bool,
}

impl Default for CensusConfig {
    fn default() -> Self {
        CensusConfig {
            host_root: PathBuf::from("/"),
            btf: None,
            counts_only: false,
        }
    }
}

/// Where the census came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Every memcg read by the `iter/cgroup` program.
    BpfIterator,
    /// Counts from procfs and cgroupfs only: no per-memcg detail.
    CountsOnly,
}

/// Memcg totals of the census.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub memcgs: Option<u64>,
    pub online: Option<u64>,
    pub dying: Option<u64>,
}

/// One comparison of the census with a kernel count.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub what: String,
    pub census: u64,
    pub kernel: u64,
    pub matches: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A census of one memory hierarchy.
#[derive(Clone, Debug, Serialize)]
pub struct Census {
    pub source: Source,
    /// Why the BPF iterator was not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub hierarchy: MemoryHierarchy,
    pub totals: Totals,
    /// The procfs/cgroupfs counts after the census.
    pub kernel: KernelCounts,
    /// How the counts-only dying number was obtained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dying_basis: Option<DyingBasis>,
    /// Reconciliation with the kernel counts.
    pub checks: Vec<Check>,
    /// Things that make the census incomplete (lost records, a failed read).
    pub problems: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<CensusTiming>,
    /// Time spent reading the procfs/cgroupfs counts for reconciliation (µs):
    /// a walk of every cgroup directory, not part of the census itself.
    pub counts_us: u64,
    /// Every memcg, parents before children (empty for counts only).
    #[serde(skip)]
    pub memcgs: Vec<Memcg>,
    /// Pin cause of each dying memcg, by address.
    #[serde(skip)]
    pub pins: HashMap<u64, Pin>,
    /// Each memcg's own page-state counters, by address, where the census
    /// program could read them (see `pin`).
    #[serde(skip)]
    pub own: HashMap<u64, OwnStats>,
    /// `(key, parent cgroup id, leaf name)` of every memcg's cgroup, for the
    /// lifecycle's cgroup tree.
    #[serde(skip)]
    pub nodes: Vec<(CgroupKey, u64, String)>,
    /// Whether kernel memory pins memcgs on this kernel (before 5.9).
    pub kmem_pins: bool,
    /// Monotonic time of the walk (ns), 0 for counts only.
    #[serde(skip)]
    pub taken_at_ns: u64,
}

impl Census {
    /// Dying memcgs (none for counts only).
    pub fn dying(&self) -> impl Iterator<Item = &Memcg> {
        self.memcgs.iter().filter(|m| m.state == State::Dying)
    }

    /// True when every check matched and nothing was lost.
    pub fn consistent(&self) -> bool {
        self.problems.is_empty() && self.checks.iter().all(|c| c.matches)
    }
}

/// Takes a census of the memory hierarchy: BPF iterator if it can, else counts.
/// Fails only when no memory controller is mounted or procfs cannot be read.
pub fn take(cfg: &CensusConfig) -> Result<Census, CensusError> {
    let h = cgroupfs::preferred_memory_hierarchy(&cfg.host_root)?;
    if cfg.counts_only {
        let k = KernelCounts::read(&cfg.host_root, &h)?;
        return Ok(counts_only(h, k, "--counts-only".into()));
    }
    // Only the kernel's counters before (cheap); the cgroupfs walk once, after.
    let mut before = KernelCounts::read_counters(&cfg.host_root, &h)?;
    let pcfg = CensusProbeConfig {
        root: h.mount.clone(),
        btf: cfg.btf.clone(),
        expected: before.total().unwrap_or(1024),
    };
    match probe::run(&pcfg) {
        Ok(raw) => {
            let t = std::time::Instant::now();
            let after = KernelCounts::read(&cfg.host_root, &h)?;
            before.visible = after.visible;
            let counts_us = t.elapsed().as_micros() as u64;
            let mut c = from_raw(h, &raw.records, &raw.summary);
            c.counts_us = counts_us;
            c.timing = Some(raw.timing);
            c.checks = reconcile(&c, &before, &after);
            c.kernel = after;
            c.kmem_pins = pin::kmem_pins(KernelVersion::parse(&kernel::release()));
            c.pins = pins(&c, &|path| read_stat(&c.hierarchy, path));
            for m in &mut c.memcgs {
                if let Some(p) = c.pins.get(&m.addr) {
                    m.set_pin(Some(*p));
                }
            }
            Ok(c)
        }
        Err(e) => {
            log::info!("census: no BPF iterator ({e}); counting only");
            let k = KernelCounts::read(&cfg.host_root, &h)?;
            Ok(counts_only(h, k, e.to_string()))
        }
    }
}

/// The census as lifecycle seeds (`Origin::Census`), parents before children.
/// `zombies` uses this when no tracer runs. Counts-only censuses are returned
/// as [`CensusError::CountsOnly`], carrying the counts.
pub fn memcgs(cfg: &CensusConfig) -> Result<Vec<Memcg>, CensusError> {
    let c = take(cfg)?;
    match c.source {
        Source::BpfIterator => Ok(c.memcgs),
        Source::CountsOnly => Err(CensusError::CountsOnly {
            reason: c.fallback.clone().unwrap_or_default(),
            counts: Box::new(c),
        }),
    }
}

/// Feeds a census into the lifecycle: the cgroup tree, then every memcg it
/// does not already know (events applied before win). Returns memcgs added.
pub fn seed(lc: &mut Lifecycle, census: &Census) -> usize {
    for (key, parent, name) in &census.nodes {
        if !lc.tree.contains(*key) {
            lc.seed_cgroup(*key, *parent, name);
        }
    }
    let mut n = 0;
    for m in &census.memcgs {
        if lc.get(m.addr).is_none() {
            let mut m = m.clone();
            // Dying before the tracer started: its offline was never seen, so
            // what it holds is what the census read (the zombie lists and the
            // history show it as the counters at offline).
            if m.state == State::Dying
                && m.offline_ns.is_none()
                && m.at_offline().mem_pages.is_none()
            {
                if let Some(c) = m.census_counters() {
                    m.set_at_offline(c);
                }
            }
            lc.seed_memcg(m);
            n += 1;
        }
    }
    n
}

/// What `watch` does at start: takes a census and seeds the lifecycle, so the
/// memcgs (and zombies) that predate the run are known from the first second.
/// Never fails the run: without the iterator it says what is missing.
pub fn seed_watch(lc: &mut Lifecycle, btf: Option<PathBuf>) {
    let cfg = CensusConfig {
        btf,
        ..CensusConfig::default()
    };
    match take(&cfg) {
        Ok(mut c) if c.source == Source::BpfIterator => {
            let max = lc.config().max_residents;
            let mount = c.hierarchy.mount.clone();
            residents::fill(&mut c.memcgs, &mount, max);
            let n = seed(lc, &c);
            log::info!(
                "census: {n} pre-existing memcgs seeded ({} dying)",
                c.totals.dying.unwrap_or(0)
            );
            for p in &c.problems {
                log::warn!("census: {p}");
            }
            for ch in c.checks.iter().filter(|ch| !ch.matches) {
                log::warn!(
                    "census mismatch: {}: census {}, kernel {}",
                    ch.what,
                    ch.census,
                    ch.kernel
                );
            }
        }
        Ok(c) => {
            // The live ones hold IDs: counted (not listed) from the start, so
            // the ID gauge includes the root and what predates the run.
            let live = c.totals.online.unwrap_or(0);
            lc.set_unlisted_live(live, crate::clock::Clock::mono_now());
            log::warn!(
                "census: counts only ({}): {live} live and {} dying memcgs predate this run and are not listed (the live ones are counted as holding IDs)",
                c.fallback.as_deref().unwrap_or("no BPF iterator"),
                c.totals
                    .dying
                    .map(|d| d.to_string())
                    .unwrap_or_else(|| "?".into())
            );
        }
        Err(e) => log::warn!("census: {e}"),
    }
}

fn counts_only(h: MemoryHierarchy, k: KernelCounts, reason: String) -> Census {
    let dying = k.dying();
    Census {
        source: Source::CountsOnly,
        fallback: Some(reason),
        hierarchy: h,
        totals: Totals {
            memcgs: k.total(),
            online: Some(k.visible),
            dying: dying.map(|d| d.0),
        },
        dying_basis: dying.map(|d| d.1),
        kernel: k,
        checks: Vec::new(),
        problems: Vec::new(),
        timing: None,
        counts_us: 0,
        memcgs: Vec::new(),
        pins: HashMap::new(),
        own: HashMap::new(),
        nodes: Vec::new(),
        kmem_pins: true,
        taken_at_ns: 0,
    }
}

/// Turns iterator records into a census (pure). Records come in pre-order,
/// so every parent's cgroup is known before its children's.
pub fn from_raw(h: MemoryHierarchy, records: &[Event], summary: &CensusSummary) -> Census {
    let mut tree = CgroupTree::default();
    let mut nodes = Vec::with_capacity(records.len());
    let mut evs = Vec::with_capacity(records.len());
    let mut problems = Vec::new();
    let mut bad = 0;
    for r in records {
        match TraceEvent::from_raw(*r) {
            Ok(ev) if ev.kind == EventKind::Census => {
                if let Some(key) = ev.cgroup_key() {
                    let parent = if ev.has(flags::ROOT) {
                        0
                    } else {
                        ev.raw.parent_cgroup_id
                    };
                    let name = ev.name().into_owned();
                    tree.insert(key, parent, &name);
                    nodes.push((key, parent, name));
                }
                evs.push(ev);
            }
            _ => bad += 1,
        }
    }
    let mut memcgs = Vec::with_capacity(evs.len());
    let mut own = HashMap::new();
    for ev in &evs {
        if let Some(o) = OwnStats::from_event(&ev.raw) {
            own.insert(
                ev.raw.memcg_addr,
                o.with_swap_counter(ev.counters().swap_pages),
            );
        }
        let mut m = Memcg::new(ev.raw.memcg_addr, ev.raw.memcg_id, Origin::Census);
        if let Some(key) = ev.cgroup_key() {
            m.hierarchy_id = key.0;
            m.cgroup_id = key.1;
            m.path = tree.path(key);
        }
        m.level = ev.raw.level;
        m.state = if ev.has(flags::DYING) {
            State::Dying
        } else {
            State::Live
        };
        m.kmem_active = ev.has(flags::KMEM_ACTIVE);
        // `aux` is memcg->id.ref (u64::MAX when unreadable): 0 once the ID is
        // back in the kernel's pool (4.6+, mem_cgroup_id_put_many()).
        m.id_released = ev.raw.aux == 0;
        m.set_census_counters(Some(ev.counters()));
        memcgs.push(m);
    }
    if bad > 0 {
        problems.push(format!(
            "{bad} records did not decode; the eBPF object does not match this binary"
        ));
    }
    if summary.dropped > 0 {
        problems.push(format!(
            "{} of {} memcgs have no record (ring buffer full); counts are still complete",
            summary.dropped, summary.visited
        ));
    }
    if summary.flags & census_flags::FAULT != 0 {
        problems.push("a kernel read failed during the walk; it stopped there".into());
    }
    if summary.flags & census_flags::TRUNCATED != 0 {
        problems.push("the walk hit its step limit before it was complete".into());
    }
    Census {
        source: Source::BpfIterator,
        fallback: None,
        hierarchy: h,
        totals: Totals {
            memcgs: Some(summary.visited),
            online: Some(summary.online),
            dying: Some(summary.dying),
        },
        kernel: KernelCounts::default(),
        dying_basis: None,
        checks: Vec::new(),
        problems,
        timing: None,
        counts_us: 0,
        memcgs,
        pins: HashMap::new(),
        own,
        nodes,
        kmem_pins: true,
        taken_at_ns: summary.start_ns,
    }
}

/// Compares the census with the kernel counts read before and after it; a
/// count matches if it equals either (the system may have changed meanwhile).
pub fn reconcile(c: &Census, before: &KernelCounts, after: &KernelCounts) -> Vec<Check> {
    let t = c.totals;
    let changed = before != after;
    let note = |extra: Option<&str>| -> Option<String> {
        match (changed, extra) {
            (true, Some(e)) => Some(format!("{e}; the counts changed during the census")),
            (true, None) => Some("the counts changed during the census".into()),
            (false, e) => e.map(str::to_string),
        }
    };
    let mut checks = Vec::new();
    let mut add = |what: &str,
                   census: Option<u64>,
                   f: &dyn Fn(&KernelCounts) -> Option<u64>,
                   extra: Option<&str>| {
        let (Some(census), Some(k)) = (census, f(after)) else {
            return;
        };
        let matches = census == k || f(before) == Some(census);
        checks.push(Check {
            what: what.into(),
            census,
            kernel: k,
            matches,
            note: if matches { None } else { note(extra) },
        });
    };
    match c.hierarchy.version {
        CgroupVersion::V1 => {
            add(
                "memcgs vs memory num_cgroups of /proc/cgroups",
                t.memcgs,
                &|k| k.num_cgroups,
                None,
            );
            add(
                "dying vs num_cgroups minus visible directories",
                t.dying,
                &|k| k.dying().map(|d| d.0),
                Some("a memcg released but not yet freed is counted by the kernel, not walked"),
            );
            add(
                "online vs visible directories",
                t.online,
                &|k| Some(k.visible),
                None,
            );
        }
        CgroupVersion::V2 => {
            if after.nr_dying_subsys_memory.is_some() {
                add(
                    "dying vs nr_dying_subsys_memory of cgroup.stat",
                    t.dying,
                    &|k| k.nr_dying_subsys_memory,
                    None,
                );
                add(
                    "online vs nr_subsys_memory of cgroup.stat",
                    t.online,
                    &|k| k.nr_subsys_memory,
                    None,
                );
            } else {
                add(
                    "dying vs nr_dying_descendants of cgroup.stat",
                    t.dying,
                    &|k| k.nr_dying_descendants,
                    Some("nr_dying_descendants counts dying cgroups of every controller"),
                );
            }
            add(
                "online vs cgroups with the memory controller",
                t.online,
                &|k| Some(k.visible),
                None,
            );
        }
    }
    checks
}

/// Reads `memory.stat` of a live cgroup (`path` relative to the hierarchy root).
pub fn read_stat(h: &MemoryHierarchy, path: &str) -> Option<pin::MemStat> {
    let p = h
        .mount
        .join(path.trim_start_matches('/'))
        .join("memory.stat");
    let text = fs::read_to_string(p).ok()?;
    Some(pin::MemStat::parse(&text, h.version))
}

/// Pin cause of every dying memcg. User pages are split by the residual of the
/// nearest live ancestor (`read` gives a live cgroup's `memory.stat`).
pub fn pins(c: &Census, read: &dyn Fn(&str) -> Option<pin::MemStat>) -> HashMap<u64, Pin> {
    let live: HashSet<&str> = c
        .memcgs
        .iter()
        .filter(|m| m.state == State::Live)
        .map(|m| &*m.path)
        .collect();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in &live {
        if *p != "/" {
            children.entry(parent_path(p)).or_default().push(p);
        }
    }
    let mut residuals: HashMap<&str, Option<Residual>> = HashMap::new();
    let mut out = HashMap::new();
    for m in c.dying() {
        let own = c.own.get(&m.addr);
        let now = m.census_counters();
        let off = m.offline_ns.is_some().then(|| m.at_offline());
        let p = pin::classify(off.as_ref(), now.as_ref(), own, None, c.kmem_pins);
        if p.exact {
            // Its own counters told: no ancestor's memory.stat needed.
            out.insert(m.addr, p);
            continue;
        }
        let mut anc = parent_path(&m.path);
        while anc != "/" && !live.contains(anc) {
            anc = parent_path(anc);
        }
        let r = residuals.entry(anc).or_insert_with(|| {
            let own = read(anc)?;
            let kids: Vec<pin::MemStat> = children
                .get(anc)
                .map(|v| v.iter().filter_map(|k| read(k)).collect())
                .unwrap_or_default();
            Some(own.residual(&kids))
        });
        out.insert(
            m.addr,
            pin::classify(off.as_ref(), now.as_ref(), own, r.as_ref(), c.kmem_pins),
        );
    }
    out
}

/// `/a/b` → `/a`, `/a` → `/`.
fn parent_path(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

#[cfg(test)]
mod tests;
