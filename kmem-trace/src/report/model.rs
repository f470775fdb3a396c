//! The incident report as data, built purely from what was gathered (doctor,
//! census, history): the verdict, node facts, timeline, owners, pin causes,
//! ID usage and forecast, remediation, and the zombie appendix. Every format
//! (`md`, `json`, `html`) renders this one value.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{
    causes,
    timeline::{self, Point},
    verdict,
};
use crate::{
    census::{Pin, PinCause},
    cgroupfs::CgroupVersion,
    doctor::{self, Finding, Severity},
    forecast::{self, Forecast},
    outputs::{aggregate::owner_columns, line::human_bytes},
    store::{samples::CountSample, HistoryRow},
    zombies::{TracerStatus, Zombie},
};

/// Everything gathered for a report (impure inputs, pure build).
pub struct Inputs {
    /// Wall-clock now and the start of the period (ns since the epoch).
    pub now: i64,
    pub since: i64,
    pub hostname: Option<String>,
    pub zombie_after_s: u64,
    pub doctor: doctor::Report,
    /// Where the current counts come from and the census totals, if one ran.
    pub census: Option<CensusView>,
    pub samples: Vec<CountSample>,
    /// History rows for the timeline when there are no samples.
    pub rows: Vec<HistoryRow>,
    /// Zombies (dying longer than `zombie_after`) with their attribution.
    pub zombies: Vec<Zombie>,
    /// Pin cause per memcg address (`0x...`), from the census.
    pub pins: HashMap<String, Pin>,
    pub tracer: Option<TracerStatus>,
    pub db: String,
    pub history: HistoryState,
    pub notes: Vec<String>,
}

/// What the report keeps of a census.
#[derive(Clone, Debug, Serialize)]
pub struct CensusView {
    /// `bpf_iterator` or `counts_only`.
    pub source: String,
    pub memcgs: Option<u64>,
    pub live: Option<u64>,
    pub dying: Option<u64>,
    /// Kernel memory pins memcgs on this kernel (before 5.9).
    pub kmem_pins: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

/// The one-paragraph answer.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub severity: Severity,
    pub text: String,
    /// Why the verdict is unknown, and what fixes that.
    pub reason: Option<String>,
    pub fix: Option<String>,
}

/// Whether the history could be read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "error")]
pub enum HistoryState {
    Read,
    /// No file at the path.
    Missing(String),
    /// A file (or a directory on its path) that cannot be opened or read.
    Unreadable(String),
}

/// Facts about the node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeFacts {
    pub hostname: Option<String>,
    pub kernel: Option<String>,
    pub cmdline: Option<String>,
    /// Cgroup versions mounted (`v1`, `v2`).
    pub cgroup_versions: Vec<CgroupVersion>,
    /// The memory controller's hierarchy and where it is mounted.
    pub memory_hierarchy: Option<String>,
    /// Kubelet's cgroup driver, as the paths show it.
    pub cgroup_driver: Option<String>,
    pub kubepods: Option<String>,
    /// Kernel-memory accounting, in words.
    pub kmem: String,
    /// What keeps removed memcgs dying on this kernel, from `leaks::TABLE`.
    pub leak_causes: String,
    pub nokmem: bool,
    /// Hook family of the tracer that wrote the history (or what `watch` would use).
    pub hook_family: String,
    pub hook_family_source: &'static str,
    pub uptime_s: Option<f64>,
}

/// One owner's zombies.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OwnerTotal {
    pub label: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub kind: String,
    pub zombies: u64,
    pub pinned_bytes: u64,
}

/// Zombies of one workload, and how fast it made them.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadTotal {
    pub namespace: String,
    /// `Deployment/web`, or `unknown` for pods whose labels were not seen.
    pub workload: String,
    pub zombies: usize,
    pub pinned_bytes: u64,
    /// Zombies per hour removed within the report's period; `None` when no
    /// zombie of it has a known removal time in the period.
    pub per_hour: Option<f64>,
}

/// Zombies held by one cause.
#[derive(Clone, Debug, Serialize)]
pub struct CauseTotal {
    #[serde(skip)]
    pub kind: PinCause,
    pub cause: String,
    /// Read from the counters at offline, not now: why nothing reads it now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at_offline: Option<String>,
    pub zombies: u64,
    pub pinned_bytes: u64,
    pub remedy: String,
}

/// ID usage now.
#[derive(Clone, Debug, Serialize)]
pub struct Ids {
    pub in_use: Option<u64>,
    pub limit: u32,
    pub percent: Option<f64>,
    pub forecast: Option<Forecast>,
    /// The forecast in words.
    pub outlook: String,
}

/// Current counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Now {
    pub live: Option<u64>,
    pub dying: Option<u64>,
    /// Dying memcgs older than the zombie age; `None` when they could not be listed.
    pub zombies: Option<u64>,
    /// Dying memcgs listed whose offline was never recorded.
    pub unknown_age: u64,
    pub source: String,
}

/// One zombie of the appendix with its pin cause.
#[derive(Clone, Debug, Serialize)]
pub struct AppendixRow {
    #[serde(flatten)]
    pub zombie: Zombie,
    pub cause: Option<String>,
    /// `cause` was read from the counters at offline (marked, with a legend).
    #[serde(skip)]
    pub cause_at_offline: bool,
}

/// The whole report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub generated_at: String,
    pub since: String,
    pub zombie_after_s: u64,
    pub verdict: Verdict,
    pub node: NodeFacts,
    pub now: Now,
    pub timeline: Vec<Point>,
    /// `samples`, `history rows (reconstructed)`, or `none`.
    pub timeline_source: String,
    pub owners: Vec<OwnerTotal>,
    /// Pods' owning workloads (Deployment, Job, ...) by zombies, with their leak rate.
    pub workloads: Vec<WorkloadTotal>,
    pub causes: Vec<CauseTotal>,
    /// Bytes held by dying memcgs node-wide by type (live ancestors' stats).
    pub dying_bytes_by_type: BTreeMap<String, u64>,
    pub ids: Ids,
    pub remediation: Vec<String>,
    pub findings: Vec<Finding>,
    pub zombies: Vec<AppendixRow>,
    pub tracer: Option<TracerStatus>,
    pub history_db: String,
    pub notes: Vec<String>,
}

/// Most owners listed in the "top owners" table.
pub const TOP_OWNERS: usize = 20;

/// RFC 3339 UTC to the second.
pub fn rfc3339(wall_ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(wall_ns.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A value as every format shows it, `?` when it could not be read.
pub fn or_unknown<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

/// An age in seconds as `2d4h` (coarse, like the forecast), `?` when unknown.
pub fn age(s: Option<f64>) -> String {
    or_unknown(s.map(|s| forecast::human_hours(s / 3600.0)))
}

/// A zombie's age: exact, a lower bound (`>2h`: seen dying that long ago, its
/// offline unseen), or `?`.
pub fn zombie_age(z: &Zombie) -> String {
    match (z.age_s, z.age_at_least_s) {
        (None, Some(s)) => format!(">{}", age(Some(s))),
        (a, _) => age(a),
    }
}

impl Report {
    /// Whether any pod's workload is known (else the workloads section says nothing).
    pub fn workloads_known(&self) -> bool {
        self.workloads.iter().any(|w| w.workload != "unknown")
    }

    /// `anon 1.0MiB, page cache 0B, ...`: what dying memcgs hold node-wide.
    pub fn dying_bytes_text(&self) -> Option<String> {
        let parts: Vec<String> = self
            .dying_bytes_by_type
            .iter()
            .map(|(k, v)| format!("{k} {}", human_bytes(*v)))
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Builds the report (pure).
pub fn build(i: Inputs) -> Report {
    let facts = &i.doctor.facts;
    let (timeline, timeline_source) = if !i.samples.is_empty() {
        (timeline::from_samples(&i.samples), "samples".to_string())
    } else if !i.rows.is_empty() {
        (
            timeline::from_rows(&i.rows, i.since, i.now, i.zombie_after_s),
            "history rows (reconstructed)".to_string(),
        )
    } else {
        (Vec::new(), "none".to_string())
    };
    let page = crate::outputs::page_size();
    // Zombies no census read are classified from their counters at offline.
    let kmem_pins = crate::census::pin::kmem_pins(
        facts
            .release
            .as_deref()
            .and_then(crate::probes::kernel::KernelVersion::parse),
    );
    let why_not_now = causes::why_not_now(
        facts.caps.iterators.available,
        i.census.as_ref().and_then(|c| c.fallback.as_deref()),
    );
    let zombie_causes = causes::of_rows(&i.zombies, &i.pins, page, kmem_pins);
    let appendix: Vec<AppendixRow> = i
        .zombies
        .iter()
        .map(|z| {
            let pin = i.pins.get(&z.memcg_addr);
            let mut zombie = z.clone();
            // A census zombie has no counters from its offline: the census read them now.
            if zombie.pinned_bytes.is_none() {
                zombie.pinned_bytes =
                    pin.map(|p| (p.user_pages + p.kmem_pages.unwrap_or(0)) * page);
            }
            let cause = zombie_causes.get(&z.memcg_addr);
            AppendixRow {
                cause: cause.map(|c| causes::short_label(*c)),
                cause_at_offline: cause.is_some_and(|c| c.basis == causes::Basis::AtOffline),
                zombie,
            }
        })
        .collect();
    let listed: Vec<Zombie> = appendix.iter().map(|a| a.zombie.clone()).collect();
    let (owners, owner_count) = owners(&listed);
    let workloads = workloads(&listed, (i.now - i.since).max(0) as f64 / 1e9);
    let causes = causes::totals(&appendix, &zombie_causes, &why_not_now);
    let now = now(&i, &appendix);
    let ids = ids(&i);
    let node = node(&i);
    let dying_bytes_by_type = facts
        .dying_bytes
        .map(|r| {
            BTreeMap::from([
                ("tmpfs/shmem".to_string(), r.shmem),
                ("page cache".to_string(), r.file),
                ("anon".to_string(), r.anon),
            ])
        })
        .unwrap_or_default();
    let remediation = verdict::remediation(&i.doctor.findings, &causes);
    let verdict = verdict::verdict(verdict::VerdictInputs {
        host: i.hostname.as_deref(),
        zombie_after_s: i.zombie_after_s,
        doctor_status: i.doctor.status,
        findings: &i.doctor.findings,
        now: &now,
        ids: &ids,
        owners: &owners,
        owner_count,
        causes: &causes,
        unknown: verdict::unknown(&i.history, &now, &i.db),
    });
    Report {
        kind: "report",
        generated_at: rfc3339(i.now),
        since: rfc3339(i.since),
        zombie_after_s: i.zombie_after_s,
        verdict,
        node,
        now,
        timeline,
        timeline_source,
        owners,
        workloads,
        causes,
        dying_bytes_by_type,
        ids,
        remediation,
        findings: i.doctor.findings.clone(),
        zombies: appendix,
        tracer: i.tracer.clone(),
        history_db: i.db.clone(),
        notes: i.notes.clone(),
    }
}

/// The top owners and how many there are in all.
fn owners(zombies: &[Zombie]) -> (Vec<OwnerTotal>, usize) {
    let mut by: HashMap<String, OwnerTotal> = HashMap::new();
    for z in zombies {
        let (label, cols, kind) = match &z.owner {
            Some(a) => (a.label(), owner_columns(a), a.owner.kind().to_string()),
            None => (
                z.path.clone(),
                ("none".into(), String::new(), z.path.clone()),
                "unknown".into(),
            ),
        };
        let e = by.entry(label.clone()).or_insert_with(|| OwnerTotal {
            label,
            namespace: cols.0,
            pod: cols.1,
            container: cols.2,
            kind,
            ..OwnerTotal::default()
        });
        e.zombies += 1;
        e.pinned_bytes += z.pinned_bytes.unwrap_or(0);
    }
    let mut v: Vec<OwnerTotal> = by.into_values().collect();
    v.sort_by(|a, b| {
        b.zombies
            .cmp(&a.zombies)
            .then(b.pinned_bytes.cmp(&a.pinned_bytes))
            .then_with(|| a.label.cmp(&b.label))
    });
    let n = v.len();
    v.truncate(TOP_OWNERS);
    (v, n)
}

/// The top workloads; a leak rate only from zombies whose removal (age) falls
/// in the period, so zombies of unknown age never make a rate up.
fn workloads(zombies: &[Zombie], period_s: f64) -> Vec<WorkloadTotal> {
    // Zombies of the period per workload, in one pass.
    let mut recent: HashMap<String, u64> = HashMap::new();
    for z in zombies
        .iter()
        .filter(|z| z.age_s.is_some_and(|a| a <= period_s))
    {
        if let Some(key) = crate::zombies::workload_of(z) {
            *recent.entry(key).or_default() += 1;
        }
    }
    crate::zombies::top_workloads(zombies)
        .into_iter()
        .map(|w| {
            let recent = recent
                .get(&format!("{}/{}", w.namespace, w.workload))
                .copied()
                .unwrap_or(0);
            WorkloadTotal {
                namespace: w.namespace,
                workload: w.workload,
                zombies: w.zombies,
                pinned_bytes: w.pinned_bytes,
                per_hour: (recent > 0 && period_s > 0.0).then(|| recent as f64 * 3600.0 / period_s),
            }
        })
        .collect()
}

/// Counts now: the census when it walked the memcg tree (the doctor took
/// the same counts), else the doctor's procfs counts, else the last sample.
/// Zombies are known only when the list is (the history or the census).
fn now(i: &Inputs, listed: &[AppendixRow]) -> Now {
    let f = &i.doctor.facts;
    let walked = i
        .census
        .as_ref()
        .filter(|c| c.source == "bpf_iterator" && c.dying.is_some());
    // A lower bound past the zombie threshold makes a zombie as surely as an age.
    let after = i.zombie_after_s as f64;
    let unknown_age = listed
        .iter()
        .filter(|a| a.zombie.age_s.is_none())
        .filter(|a| !a.zombie.age_at_least_s.is_some_and(|s| s >= after))
        .count() as u64;
    let zombies = (i.history == HistoryState::Read || walked.is_some())
        .then(|| listed.len() as u64 - unknown_age);
    let (live, dying, source) = match (walked, f.dying, i.samples.last()) {
        (Some(c), _, _) => (c.live, c.dying, "census (bpf iterator)".to_string()),
        (None, Some((d, basis)), _) => (
            f.counts.as_ref().map(|c| c.visible),
            Some(d),
            basis.label().to_string(),
        ),
        (None, None, Some(s)) => (
            Some(s.live),
            Some(s.dying),
            "last history sample".to_string(),
        ),
        (None, None, None) => (None, None, "nothing readable".to_string()),
    };
    Now {
        live,
        dying,
        zombies,
        unknown_age,
        source,
    }
}

/// The doctor's reading and forecast: the one snapshot (census-backed when a
/// census ran) and the one ID model ([`forecast`]) every section shows.
fn ids(i: &Inputs) -> Ids {
    let limit = i.doctor.id_limit;
    let in_use = i.doctor.facts.ids_in_use;
    let fc = i.doctor.forecast;
    let outlook = match &fc {
        Some(f) => f.outlook(),
        None => "no forecast: too little history and no uptime".into(),
    };
    let mut outlook = outlook;
    if let Some(first) = outlook.get(..1) {
        outlook = first.to_uppercase() + &outlook[1..];
    }
    Ids {
        in_use,
        limit,
        percent: in_use.map(|u| u as f64 * 100.0 / limit.max(1) as f64),
        forecast: fc,
        outlook,
    }
}

fn node(i: &Inputs) -> NodeFacts {
    let f = &i.doctor.facts;
    let mut versions: Vec<CgroupVersion> = f.mounts.iter().map(|m| m.version).collect();
    versions.sort_by_key(|v| *v != CgroupVersion::V1);
    versions.dedup();
    let kmem = match &f.kmem {
        Some(k) => format!(
            "{} under {}: {}",
            match k.active {
                Some(true) => "active",
                Some(false) => "inactive",
                None => "unknown",
            },
            k.path,
            k.why
        ),
        None if f.nokmem => "off (cgroup.memory=nokmem)".into(),
        None => "not applicable (no cgroup v1 kubepods memcg)".into(),
    };
    let (hook_family, hook_family_source) = match i.samples.last().filter(|s| !s.hooks.is_empty()) {
        Some(s) => (s.hooks.clone(), "history (the tracer that wrote it)"),
        None => (f.caps.hook_family.clone(), f.caps.how),
    };
    NodeFacts {
        hostname: i.hostname.clone(),
        kernel: f.release.clone(),
        cmdline: f.cmdline.as_ref().map(|c| c.trim().to_string()),
        cgroup_versions: versions,
        memory_hierarchy: f.memory.as_ref().map(|h| {
            format!(
                "{} at {}",
                h.version.name(),
                f.memory_mount().unwrap_or_default()
            )
        }),
        cgroup_driver: f.kubelet.driver.map(|d| d.name().to_string()),
        kubepods: f.kubelet.kubepods.clone(),
        kmem,
        leak_causes: f
            .release
            .as_deref()
            .and_then(crate::probes::kernel::KernelVersion::parse)
            .map(crate::leaks::describe)
            .unwrap_or_else(|| "unknown (kernel version unknown)".into()),
        nokmem: f.nokmem,
        hook_family,
        hook_family_source,
        uptime_s: f.uptime_s,
    }
}
