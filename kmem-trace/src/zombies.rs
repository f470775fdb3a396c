//! `kmem-trace zombies`: every dying memcg with its ID, age, path, owner
//! (namespace/pod/container), creator, residents and pinned bytes. The memcgs
//! come from any source that yields [`Memcg`]s (a census of the kernel, when
//! one is available) or from the history alone; either way they are joined
//! with the history, which keeps the owner long after the pod is gone.

use std::{io::Write, path::PathBuf, time::Duration};

use serde::Serialize;

use crate::{
    attribution::Attribution,
    census::PinCause,
    clock::Clock,
    lifecycle::{Memcg, State, Task},
    outputs::{line::human_bytes, page_size, text::Term},
    store::{reconcile::same, writer::now_ns, HistoryRow, Store, StoreError},
};

/// Errors of `zombies`.
#[derive(Debug, thiserror::Error)]
pub enum ZombiesError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Settings of `zombies`.
#[derive(Clone, Debug)]
pub struct ZombiesConfig {
    pub db: PathBuf,
    pub older_than: Option<Duration>,
    pub json: bool,
}

/// A process as shown by `zombies`.
#[derive(Clone, Debug, Serialize)]
pub struct TaskView {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    pub ppid: u32,
    pub pcomm: String,
    /// When it was seen (RFC 3339).
    pub seen: String,
}

impl TaskView {
    fn new(t: &Task, clock: &Clock) -> TaskView {
        TaskView {
            pid: t.pid,
            tgid: t.tgid,
            comm: t.comm().to_string(),
            ppid: t.ppid,
            pcomm: t.pcomm().to_string(),
            seen: clock.rfc3339(t.ts_ns),
        }
    }

    /// `comm (tgid)`, how every output names a process (escaped: a
    /// process picks its own name).
    pub fn label(&self) -> String {
        format!("{} ({})", Term(&self.comm), self.tgid)
    }
}

/// One dying memcg.
#[derive(Clone, Debug, Serialize)]
pub struct Zombie {
    /// 0 when unknown (the kernel hands out IDs from 1).
    pub memcg_id: u32,
    pub memcg_addr: String,
    pub cgroup_id: u64,
    pub path: String,
    /// Seconds since offline; `null` when the offline was not seen.
    pub age_s: Option<f64>,
    /// Without a seen offline: it was already dying this many seconds ago
    /// (first seen dying by the start-up census, a recheck or a restart), so
    /// its age is at least this. `null` when nothing bounds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_at_least_s: Option<f64>,
    pub offline_at: Option<String>,
    #[serde(serialize_with = "owner_view")]
    pub owner: Option<Attribution>,
    pub owner_label: Option<String>,
    pub creator: Option<TaskView>,
    pub residents: Vec<TaskView>,
    pub residents_dropped: u32,
    pub last_resident: Option<TaskView>,
    /// Bytes still charged (memory page counter at offline, or now for a census).
    pub pinned_bytes: Option<u64>,
    /// When the byte counters were read: at its offline (the tracer's event)
    /// or by a census (now, or at a tracer's start-up census).
    pub counters_at: CountersAt,
    pub kmem_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub kmem_active: bool,
    /// What keeps it (census only): page cache, tmpfs, anon, swap, sockets...
    pub pin_cause: Option<PinCause>,
    /// The cause comes from the memcg's own counters (else an ancestor's split).
    pub pin_exact: bool,
    /// `history`, `census`, or `census+history`.
    pub source: &'static str,
}

/// When a zombie's counters were read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CountersAt {
    /// By the offline hook, as the memcg went dying (what it held then).
    Offline,
    /// By a census (the BPF iterator), when it ran.
    Census,
    /// Not read.
    #[default]
    None,
}

impl Zombie {
    /// The memcg ID as every output shows it, `-` when unknown.
    pub fn id_text(&self) -> String {
        match self.memcg_id {
            0 => "-".into(),
            id => id.to_string(),
        }
    }
}

/// Whether a tracer is writing the history now.
#[derive(Clone, Debug, Serialize)]
pub struct TracerStatus {
    pub running: bool,
    pub pid: Option<u32>,
    /// Last time the tracer's writer said it was alive (RFC 3339).
    pub last_heartbeat: Option<String>,
    /// The last tracer stopped cleanly (not killed).
    pub stopped: bool,
}

/// The whole answer.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub db: String,
    pub tracer: TracerStatus,
    pub count: usize,
    /// Workloads with the most zombies, most first (pods only; at most 10).
    pub top_workloads: Vec<WorkloadCount>,
    pub zombies: Vec<Zombie>,
}

/// Zombies of one workload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkloadCount {
    pub namespace: String,
    /// `Deployment/web`, or `unknown` for pods whose labels were not seen.
    pub workload: String,
    pub zombies: usize,
    pub pinned_bytes: u64,
}

/// `namespace/Kind/name` of a pod zombie's workload (the key of
/// [`top_workloads`]); `None` for zombies of no pod.
pub fn workload_of(z: &Zombie) -> Option<String> {
    let a = z.owner.as_ref().filter(|a| a.owner.kind() == "pod")?;
    Some(crate::outputs::aggregate::workload_key(Some(a)))
}

/// Most workloads listed in [`Report::top_workloads`].
const TOP_WORKLOADS: usize = 10;

/// The workloads with most zombies (pods only), ties by pinned bytes.
pub fn top_workloads(zombies: &[Zombie]) -> Vec<WorkloadCount> {
    let mut by: std::collections::HashMap<String, WorkloadCount> = Default::default();
    for z in zombies {
        let Some(key) = workload_of(z) else {
            continue;
        };
        let (ns, w) = key.split_once('/').unwrap_or((&key, ""));
        let e = by.entry(key.clone()).or_insert_with(|| WorkloadCount {
            namespace: ns.to_string(),
            workload: w.to_string(),
            zombies: 0,
            pinned_bytes: 0,
        });
        e.zombies += 1;
        e.pinned_bytes += z.pinned_bytes.unwrap_or(0);
    }
    let mut v: Vec<WorkloadCount> = by.into_values().collect();
    v.sort_by(|a, b| {
        (b.zombies, b.pinned_bytes, &a.namespace, &a.workload).cmp(&(
            a.zombies,
            a.pinned_bytes,
            &b.namespace,
            &b.workload,
        ))
    });
    v.truncate(TOP_WORKLOADS);
    v
}

/// The owner as the flat view events use.
fn owner_view<S: serde::Serializer>(a: &Option<Attribution>, s: S) -> Result<S::Ok, S::Error> {
    a.as_ref().map(Attribution::view).serialize(s)
}

/// Joins dying memcgs with the history. `census`: the kernel's list from any
/// source (authoritative, the history adds owner and processes); without it
/// the history's dying rows are the list.
pub fn join(
    rows: &[HistoryRow],
    census: Option<&[Memcg]>,
    clock: &Clock,
    now_wall: i64,
    older_than: Option<Duration>,
) -> Vec<Zombie> {
    let page = page_size();
    let mut out: Vec<Zombie> = Vec::new();
    let mut push = |m: &Memcg, row: Option<&HistoryRow>, source: &'static str| {
        let attr = row
            .and_then(|r| r.attribution.clone())
            .or_else(|| (!m.path.is_empty()).then(|| Attribution::of_path(&m.path)));
        let offline_wall = row
            .and_then(|r| r.wall.offline)
            .or(m.offline_ns.get().map(|o| o as i64 + clock.offset_ns));
        let age_s = offline_wall.map(|w| (now_wall - w).max(0) as f64 / 1e9);
        if let (Some(min), Some(age)) = (older_than, age_s) {
            if age < min.as_secs_f64() {
                return;
            }
        }
        // The history keeps processes and times; the census has current counters.
        let hist = row.map(|r| &r.memcg);
        let procs = hist.unwrap_or(m);
        // At offline only where the offline was seen: a memcg dying before
        // the tracer started has the start-up census's reading there
        // (`census::seed`).
        let at = |x: &Memcg| match (x.at_offline().mem_pages, x.offline_ns.get()) {
            (None, _) => CountersAt::None,
            (Some(_), Some(_)) => CountersAt::Offline,
            (Some(_), None) => CountersAt::Census,
        };
        let (counters, counters_at) =
            if let Some(now) = m.census_counters().filter(|c| c.mem_pages.is_some()) {
                (now, CountersAt::Census)
            } else if m.at_offline().mem_pages.is_some() {
                (m.at_offline(), at(m))
            } else {
                match hist {
                    Some(h) => (h.at_offline(), at(h)),
                    None => (m.at_offline(), CountersAt::None),
                }
            };
        out.push(Zombie {
            // The kernel zeroes `memcg->id.id` when it gives the ID back at
            // offline (4.6+, `mem_cgroup_id_remove()`): the census then reads
            // 0, and the history keeps the ID the events showed.
            memcg_id: match (m.memcg_id, hist.map(|h| h.memcg_id)) {
                (0, Some(h)) => h,
                (id, _) => id,
            },
            memcg_addr: format!("{:#x}", m.addr),
            cgroup_id: m.cgroup_id,
            path: if m.path.is_empty() {
                hist.map(|h| h.path.to_string()).unwrap_or_default()
            } else {
                m.path.to_string()
            },
            age_s,
            age_at_least_s: row
                .and_then(|r| r.wall.dying_by)
                .filter(|_| age_s.is_none())
                .map(|w| (now_wall - w).max(0) as f64 / 1e9),
            offline_at: offline_wall.map(|w| Clock::from_offset(0).rfc3339(w.max(0) as u64)),
            owner_label: attr.as_ref().map(Attribution::label),
            owner: attr,
            creator: procs.creator().map(|t| TaskView::new(t, clock)),
            residents: procs
                .residents()
                .iter()
                .map(|t| TaskView::new(t, clock))
                .collect(),
            residents_dropped: procs.residents_dropped,
            last_resident: procs.last_resident().map(|t| TaskView::new(t, clock)),
            pinned_bytes: counters.mem_pages.map(|p| p * page),
            counters_at,
            kmem_bytes: counters.kmem_pages.map(|p| p * page),
            swap_bytes: counters.swap_pages.map(|p| p * page),
            kmem_active: m.kmem_active || procs.kmem_active,
            pin_cause: m.pin().map(|p| p.cause),
            pin_exact: m.pin().is_some_and(|p| p.exact),
            source,
        });
    };
    match census {
        Some(census) => {
            for m in census.iter().filter(|m| m.state == State::Dying) {
                let row = rows.iter().find(|r| same(&r.memcg, m));
                push(
                    m,
                    row,
                    if row.is_some() {
                        "census+history"
                    } else {
                        "census"
                    },
                );
            }
        }
        None => {
            for r in rows.iter().filter(|r| r.memcg.state == State::Dying) {
                push(&r.memcg, Some(r), "history");
            }
        }
    }
    // Oldest first; unknown ages (offline unseen) first of all.
    out.sort_by(|a, b| {
        b.age_s
            .unwrap_or(f64::MAX)
            .total_cmp(&a.age_s.unwrap_or(f64::MAX))
    });
    out
}

/// Whether a tracer is writing the history now: it holds the writer lock
/// (`store::lock`). The heartbeat only decides when the lock cannot be
/// tested (its file unreadable to us): a `running` flag in the database is
/// not enough, another tracer's stop cleared it while the first still ran.
fn tracer_status(store: &Store, now_wall: i64) -> TracerStatus {
    let beat: Option<i64> = store
        .meta("heartbeat")
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok());
    let meta_pid = store
        .meta("writer_pid")
        .ok()
        .flatten()
        .and_then(|s| s.parse().ok());
    let stopped = store.meta("running").ok().flatten().as_deref() == Some("0");
    let (running, pid) = match crate::store::lock::writer_pid(store.path()) {
        Ok(Some(pid)) => (true, Some(pid).filter(|p| *p != 0).or(meta_pid)),
        Ok(None) => (false, None),
        // A tracer killed with -9 never says it stopped: its heartbeat gets old.
        Err(_) => {
            let running = !stopped && beat.is_some_and(|b| now_wall - b < 30_000_000_000);
            (running, running.then_some(meta_pid).flatten())
        }
    };
    TracerStatus {
        running,
        pid,
        last_heartbeat: beat
            .filter(|b| *b > 0)
            .map(|b| Clock::from_offset(0).rfc3339(b as u64)),
        stopped: !running && stopped,
    }
}

/// Builds the report from the open history `store` (`cfg.db` names it) and
/// a census, when given.
pub fn report(
    store: &Store,
    cfg: &ZombiesConfig,
    census: Option<&[Memcg]>,
) -> Result<Report, ZombiesError> {
    let clock = Clock::measure();
    let now = now_ns();
    let rows = if census.is_some() {
        store.open_rows(clock.offset_ns)?
    } else {
        store.dying(clock.offset_ns)?
    };
    let zombies = join(&rows, census, &clock, now, cfg.older_than);
    Ok(Report {
        kind: "zombies",
        db: cfg.db.display().to_string(),
        tracer: tracer_status(store, now),
        count: zombies.len(),
        top_workloads: top_workloads(&zombies),
        zombies,
    })
}

/// Writes the report as one JSON document or as a human table.
pub fn render(r: &Report, json: bool, w: &mut dyn Write) -> Result<(), ZombiesError> {
    if json {
        serde_json::to_writer_pretty(&mut *w, r)?;
        writeln!(w)?;
        return Ok(());
    }
    if !r.tracer.running {
        writeln!(
            w,
            "# no tracer is writing {} ({} {}); memcgs freed since then still show",
            Term(&r.db),
            if r.tracer.stopped {
                "stopped at"
            } else {
                "last heartbeat"
            },
            r.tracer.last_heartbeat.as_deref().unwrap_or("never")
        )?;
    }
    writeln!(w, "{} dying memcgs", r.count)?;
    if r.zombies.is_empty() {
        return Ok(());
    }
    if !r.top_workloads.is_empty() {
        writeln!(w, "top workloads:")?;
        for t in &r.top_workloads {
            writeln!(
                w,
                "  {:>5}  {:>9}  {}/{}",
                t.zombies,
                human_bytes(t.pinned_bytes),
                Term(&t.namespace),
                Term(&t.workload)
            )?;
        }
    }
    writeln!(
        w,
        "{:<6} {:>9} {:>9}  {:<40} PATH",
        "ID", "AGE", "PINNED", "OWNER"
    )?;
    for z in &r.zombies {
        let coarse = |s: f64| {
            let t = humantime::format_duration(Duration::from_secs(s as u64)).to_string();
            t.split(' ').take(2).collect::<Vec<_>>().join("")
        };
        let age = match (z.age_s, z.age_at_least_s) {
            (Some(s), _) => coarse(s),
            (None, Some(s)) => format!(">{}", coarse(s)),
            (None, None) => "?".into(),
        };
        writeln!(
            w,
            "{:<6} {:>9} {:>9}  {:<40} {}",
            z.id_text(),
            age,
            z.pinned_bytes
                .map(human_bytes)
                .unwrap_or_else(|| "?".into()),
            // A plain path owner is the path column already.
            Term(match &z.owner {
                Some(o) if o.owner.kind() != "path" => z.owner_label.as_deref().unwrap_or("?"),
                _ => "-",
            }),
            Term(&z.path)
        )?;
        if let Some(wl) = z.owner.as_ref().and_then(|o| o.view().workload) {
            writeln!(w, "       workload {}", Term(&wl))?;
        }
        if let Some(p) = z.pin_cause {
            let how = if z.pin_exact { "" } else { " (approximate)" };
            writeln!(w, "       pinned by {}{how}", p.name())?;
        }
        let task = |t: &TaskView| format!("{} <- {} ({})", t.label(), Term(&t.pcomm), t.ppid);
        if let Some(c) = &z.creator {
            writeln!(w, "       created by {}", task(c))?;
        }
        if !z.residents.is_empty() {
            let names: Vec<String> = z.residents.iter().map(TaskView::label).collect();
            let more = if z.residents_dropped > 0 {
                format!(" and {} more", z.residents_dropped)
            } else {
                String::new()
            };
            writeln!(w, "       residents {}{more}", names.join(", "))?;
        }
        if let Some(l) = &z.last_resident {
            writeln!(w, "       last resident {}", task(l))?;
        }
    }
    Ok(())
}

/// `kmem-trace zombies`: the report from the history, on stdout.
pub fn command(args: &crate::cli::ZombiesArgs) -> Result<(), ZombiesError> {
    let cfg = ZombiesConfig {
        db: args.db.clone(),
        older_than: args.older_than,
        json: args.json,
    };
    let store = Store::open_existing(&cfg.db)?;
    let mut r = report(&store, &cfg, None)?;
    if !r.tracer.running {
        // No tracer keeps the history current: the kernel's own list (the
        // census) is authoritative; the history adds owners and processes.
        match crate::census::memcgs(&crate::census::CensusConfig::default()) {
            Ok(memcgs) => r = report(&store, &cfg, Some(&memcgs))?,
            Err(e) => log::info!("zombies without a census: {e}"),
        }
    }
    let mut out = std::io::stdout().lock();
    render(&r, cfg.json, &mut out)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
#[path = "zombies_tests.rs"]
mod tests;
