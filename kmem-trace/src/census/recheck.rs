//! Rechecking the tracer's state against the kernel while it runs: every
//! few minutes, and soon after the ring buffer dropped events (a dropped
//! offline or free leaves a memcg live or dying for good otherwise). With
//! the BPF iterator the census is the kernel's own list and wins; without
//! it (kernels before 6.1, an iterator failure) only cgroupfs and
//! `/proc/cgroups` counts are there: a live memcg whose directory is gone
//! went offline unseen and may be freed already, so it becomes
//! *unconfirmed*; a kernel that counts no dying memcg at all has none.
//!
//! The census is taken on a thread of its own ([`Worker`]), never on the one
//! that drains the ring buffer; memcgs an event touched while it ran are
//! left as the events made them (the census may predate those events).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        mpsc::{self, Receiver, TryRecvError},
        Arc,
    },
    time::{Duration, Instant},
};

use serde::Serialize;

use super::{take, CensusConfig, Source};
use crate::{
    cgroupfs,
    lifecycle::{CgroupKey, Lifecycle, Memcg, State},
    store::reconcile::same,
};

/// How often the state is rechecked without drops.
pub const EVERY: Duration = Duration::from_secs(600);
/// How long after the last drop a recheck waits (drops come in bursts).
pub const AFTER_DROPS: Duration = Duration::from_secs(5);
/// Least time between two rechecks.
pub const MIN_GAP: Duration = Duration::from_secs(60);

/// What the kernel says, as one recheck could read it.
#[derive(Debug)]
pub enum View {
    /// The BPF iterator's complete list of memcgs, with their cgroups.
    Census {
        memcgs: Vec<Memcg>,
        nodes: Vec<(CgroupKey, u64, String)>,
    },
    /// The cgroup directories that exist with a memcg ([`cgroupfs::Dir::memory`])
    /// and the kernel's count of dying memcgs.
    Counts {
        dirs: HashSet<CgroupKey>,
        dying: Option<u64>,
        why: String,
    },
}

/// What one recheck changed (a `recheck` record of `--json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Recheck {
    /// `census` or `counts`.
    pub source: &'static str,
    /// Memcgs the kernel no longer has: their free was not seen.
    pub gone: u64,
    /// Memcgs the kernel has that the tracer did not know.
    pub found: u64,
    /// Live memcgs the kernel shows removed.
    pub went_offline: u64,
    /// Unconfirmed memcgs the census found.
    pub confirmed: u64,
    /// Memcgs that cannot be confirmed without a census (after this recheck).
    pub unconfirmed: u64,
    /// Dying memcgs by the kernel's count, and as the tracer holds them.
    pub kernel_dying: Option<u64>,
    pub tracked_dying: u64,
    /// Memcgs left alone because an event touched them during the recheck.
    pub skipped: u64,
    /// Why there was no census (counts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// A recheck applied: its report, the memcgs it removed (to close their
/// history rows) and the ones it changed.
#[derive(Debug, Default)]
pub struct Outcome {
    pub report: Recheck,
    pub gone: Vec<Box<Memcg>>,
    pub changed: Vec<u64>,
}

/// Applies `view` to `lc`, leaving the `touched` addresses alone.
pub fn apply(lc: &mut Lifecycle, view: View, touched: &HashSet<u64>) -> Outcome {
    let mut out = Outcome::default();
    let addrs: Vec<u64> = lc
        .memcgs()
        .filter(|m| m.state != State::Freed)
        .map(|m| m.addr)
        .collect();
    out.report.skipped = addrs.iter().filter(|a| touched.contains(a)).count() as u64;
    let addrs = addrs.into_iter().filter(|a| !touched.contains(a));
    match view {
        View::Census { memcgs, nodes } => {
            out.report.source = "census";
            out.report.kernel_dying =
                Some(memcgs.iter().filter(|m| m.state == State::Dying).count() as u64);
            let by_addr: HashMap<u64, &Memcg> = memcgs.iter().map(|m| (m.addr, m)).collect();
            for addr in addrs {
                let Some(m) = lc.get_mut(addr) else { continue };
                match by_addr.get(&addr).filter(|c| same(m, c)) {
                    Some(c) => {
                        let mut changed = false;
                        if m.unconfirmed {
                            m.unconfirmed = false;
                            out.report.confirmed += 1;
                            changed = true;
                        }
                        if c.state == State::Dying && m.state == State::Live {
                            m.state = State::Dying;
                            out.report.went_offline += 1;
                            changed = true;
                        }
                        if changed {
                            out.changed.push(addr);
                        }
                    }
                    None => out.gone.extend(lc.remove_gone(addr)),
                }
            }
            for (key, parent, name) in &nodes {
                if !lc.tree.contains(*key) {
                    lc.seed_cgroup(*key, *parent, name);
                }
            }
            for c in memcgs {
                if lc.get(c.addr).is_none() && !touched.contains(&c.addr) {
                    out.changed.push(c.addr);
                    out.report.found += 1;
                    lc.seed_memcg(c);
                }
            }
        }
        View::Counts { dirs, dying, why } => {
            out.report.source = "counts";
            out.report.why = Some(why);
            for addr in addrs {
                let Some(m) = lc.get_mut(addr) else { continue };
                if dying == Some(0) && m.state == State::Dying {
                    out.gone.extend(lc.remove_gone(addr));
                } else if m.state == State::Live && m.key().is_some_and(|k| !dirs.contains(&k)) {
                    m.state = State::Dying;
                    m.unconfirmed = true;
                    out.report.went_offline += 1;
                    out.changed.push(addr);
                }
            }
            out.report.kernel_dying = dying;
        }
    }
    out.report.gone = out.gone.len() as u64;
    let counts = lc.counts(0);
    out.report.tracked_dying = counts.dying;
    out.report.unconfirmed = counts.unconfirmed;
    out
}

/// Reads a [`View`] on a thread of its own; at most one at a time.
pub struct Worker {
    cfg: Arc<CensusConfig>,
    rx: Option<Receiver<Result<View, String>>>,
    last: Option<Instant>,
}

impl Worker {
    pub fn new(cfg: CensusConfig) -> Worker {
        Worker {
            cfg: Arc::new(cfg),
            rx: None,
            last: None,
        }
    }

    /// Whether a recheck is running.
    pub fn busy(&self) -> bool {
        self.rx.is_some()
    }

    /// Whether the periodic recheck is due (the start-up census counts as one).
    pub fn due(&self, started: Instant) -> bool {
        self.last.unwrap_or(started).elapsed() >= EVERY
    }

    /// When a recheck asked for after drops may start: [`AFTER_DROPS`] from
    /// now, and at least [`MIN_GAP`] after the last one (a census loads a
    /// BPF program: not every few seconds under sustained drops).
    pub fn after_drops(&self) -> Instant {
        let soon = Instant::now() + AFTER_DROPS;
        self.last.map_or(soon, |l| soon.max(l + MIN_GAP))
    }

    /// Starts a recheck unless one runs; false when one did.
    pub fn start(&mut self) -> bool {
        if self.busy() {
            return false;
        }
        let (tx, rx) = mpsc::channel();
        let cfg = self.cfg.clone();
        let spawned = std::thread::Builder::new()
            .name("kmem-trace-recheck".into())
            .spawn(move || {
                let _ = tx.send(read_view(&cfg));
                release_arena();
            });
        match spawned {
            Ok(_) => {
                self.rx = Some(rx);
                self.last = Some(Instant::now());
                true
            }
            Err(e) => {
                log::warn!("recheck: cannot start a thread: {e}");
                false
            }
        }
    }

    /// The finished recheck's view, if it finished.
    pub fn poll(&mut self) -> Option<Result<View, String>> {
        let r = match self.rx.as_ref()?.try_recv() {
            Ok(v) => v,
            Err(TryRecvError::Empty) => return None,
            Err(TryRecvError::Disconnected) => Err("the recheck thread ended".into()),
        };
        self.rx = None;
        Some(r)
    }
}

/// Gives the recheck thread's freed memory back to the kernel. glibc serves
/// each new thread from an arena of its own and keeps what it freed there:
/// a census (aya parsing the kernel's BTF to load its program) left about
/// 20 MiB resident for good after the first recheck (the 30-minute soak's
/// RSS went from 14 to 37 MiB at its 600th second, then stayed).
fn release_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own arenas; no pointer is passed.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The census if it is complete, else the counts.
fn read_view(cfg: &CensusConfig) -> Result<View, String> {
    let c = take(cfg).map_err(|e| e.to_string())?;
    if c.source == Source::BpfIterator && c.problems.is_empty() {
        return Ok(View::Census {
            memcgs: c.memcgs,
            nodes: c.nodes,
        });
    }
    let why = match c.source {
        Source::BpfIterator => format!("census incomplete: {}", c.problems.join("; ")),
        Source::CountsOnly => c
            .fallback
            .clone()
            .unwrap_or_else(|| "no BPF iterator".into()),
    };
    let mut dirs = HashSet::new();
    for h in cgroupfs::memory_hierarchies(&cfg.host_root).map_err(|e| e.to_string())? {
        let scanned = cgroupfs::scan(&h).map_err(|e| e.to_string())?;
        // A v2 directory without the memory controller has no memcg: a live
        // memcg of it went with a `-memory` toggle, which no cgroup_rmdir
        // shows (the tracepoint family's offline).
        dirs.extend(scanned.into_iter().filter(|d| d.memory).map(|d| d.key));
    }
    Ok(View::Counts {
        dirs,
        dying: confirmed_dying(cfg, &c),
        why,
    })
}

/// The kernel's dying count, where a "none" is trusted only when read twice.
/// `num_cgroups - directories` is read in two steps: a `mkdir` between them
/// makes a real dying memcg look like none (and a count below the
/// directories is such a race for sure), and "none" clears every dying memcg
/// the tracer holds.
fn confirmed_dying(cfg: &CensusConfig, c: &super::Census) -> Option<u64> {
    let raced = |k: &super::counts::KernelCounts| k.num_cgroups.is_some_and(|n| n < k.visible);
    if raced(&c.kernel) {
        return None;
    }
    if c.totals.dying != Some(0) {
        return c.totals.dying;
    }
    std::thread::sleep(Duration::from_millis(200));
    let again = take(&CensusConfig {
        counts_only: true,
        ..cfg.clone()
    })
    .ok()?;
    (!raced(&again.kernel) && again.totals.dying == Some(0)).then_some(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::{LifecycleConfig, Origin, Stamp};

    fn memcg(addr: u64, cgroup_id: u64, state: State) -> Memcg {
        let mut m = Memcg::new(addr, addr as u32, Origin::Traced);
        m.cgroup_id = cgroup_id;
        m.hierarchy_id = 4;
        m.state = state;
        if state == State::Dying {
            m.offline_ns = Stamp::at(1);
        }
        m
    }

    fn lifecycle(ms: &[Memcg]) -> Lifecycle {
        let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
        for m in ms {
            lc.seed_memcg(m.clone());
        }
        lc
    }

    #[test]
    fn a_census_removes_missed_frees_finds_missed_memcgs_and_confirms() {
        let mut unconfirmed = memcg(0x40, 400, State::Dying);
        unconfirmed.unconfirmed = true;
        let mut lc = lifecycle(&[
            memcg(0x10, 100, State::Live),  // its offline was dropped
            memcg(0x20, 200, State::Dying), // its free was dropped
            memcg(0x30, 300, State::Dying), // freed, but an event touched it
            unconfirmed,                    // restored without census
        ]);
        assert_eq!(lc.counts(u64::MAX).zombies, 2);
        let census = vec![
            memcg(0x10, 100, State::Dying),
            memcg(0x40, 400, State::Dying),
            memcg(0x50, 500, State::Dying), // created while events were lost
        ];
        let touched = HashSet::from([0x30]);
        let out = apply(
            &mut lc,
            View::Census {
                memcgs: census,
                nodes: vec![],
            },
            &touched,
        );
        let gone: Vec<u64> = out.gone.iter().map(|m| m.addr).collect();
        assert_eq!(gone, vec![0x20]);
        assert_eq!(
            (
                out.report.found,
                out.report.went_offline,
                out.report.confirmed,
                out.report.skipped
            ),
            (1, 1, 1, 1)
        );
        assert!(lc.get(0x20).is_none() && lc.get(0x30).is_some());
        let c = lc.counts(u64::MAX);
        assert_eq!(
            (c.live, c.dying, c.unconfirmed, c.missed_frees),
            (0, 4, 0, 1)
        );
    }

    /// The counts view of this machine (read-only: procfs and cgroupfs).
    #[test]
    fn the_counts_view_lists_this_hosts_memory_cgroups() {
        let cfg = CensusConfig {
            counts_only: true,
            ..CensusConfig::default()
        };
        match read_view(&cfg) {
            Ok(View::Counts { dirs, why, .. }) => {
                assert!(!dirs.is_empty(), "the root at least");
                assert_eq!(why, "--counts-only");
            }
            Ok(v) => panic!("counts only gave {v:?}"),
            Err(e) => eprintln!("skipped: no memory hierarchy here ({e})"),
        }
    }

    #[test]
    fn counts_only_make_vanished_live_memcgs_unconfirmed_and_zero_dying_clears() {
        let mut lc = lifecycle(&[
            memcg(0x10, 100, State::Live),
            memcg(0x20, 200, State::Live),
            memcg(0x30, 300, State::Dying),
        ]);
        let dirs = HashSet::from([(4, 100)]);
        let out = apply(
            &mut lc,
            View::Counts {
                dirs: dirs.clone(),
                dying: Some(5),
                why: "no BPF iterator".into(),
            },
            &HashSet::new(),
        );
        assert!(out.gone.is_empty());
        assert_eq!(out.changed, vec![0x20]);
        let c = lc.counts(u64::MAX);
        // 0x20 is not a zombie: it may be freed already.
        assert_eq!((c.live, c.dying, c.zombies, c.unconfirmed), (1, 1, 1, 1));
        // The kernel has no dying memcg at all: none of ours exists.
        let out = apply(
            &mut lc,
            View::Counts {
                dirs,
                dying: Some(0),
                why: String::new(),
            },
            &HashSet::new(),
        );
        assert_eq!(out.gone.len(), 2);
        let c = lc.counts(u64::MAX);
        assert_eq!((c.live, c.dying, c.unconfirmed), (1, 0, 0));
    }
}

#[cfg(test)]
mod pipeline_tests {
    use super::*;
    use crate::{
        lifecycle::{LifecycleConfig, Origin},
        outputs::{json::JsonOutput, Clock, Health, HookLabels},
        watch::Pipeline,
    };

    /// A recheck during `--json`: its record is in the stream, drops and
    /// faults are records too, and a memcg an event touched meanwhile stays.
    #[test]
    fn rechecks_drops_and_faults_are_json_records() {
        let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
        for (addr, state) in [(0x10, State::Dying), (0x20, State::Dying)] {
            let mut m = Memcg::new(addr, addr as u32, Origin::Traced);
            m.state = state;
            m.cgroup_id = addr;
            m.hierarchy_id = 4;
            lc.seed_memcg(m);
        }
        let mut out = JsonOutput::new(Vec::new(), Clock::from_offset(0), HookLabels::new());
        {
            let mut pipe = Pipeline::new(lc, &mut out);
            let path: Arc<str> = Arc::from("system.slice/gone.service");
            assert!(pipe.attribution.attribute_path(0x10, &path).is_some());
            pipe.health(&Health::Drops { new: 3, total: 3 }).unwrap();
            pipe.health(&Health::ReadFaults { new: 1, total: 1 })
                .unwrap();
            pipe.recheck_started();
            pipe.recheck(View::Census {
                memcgs: vec![],
                nodes: vec![],
            })
            .unwrap();
            assert!(pipe.lifecycle.get(0x10).is_none());
            // Its attribution went with it, as on an observed free.
            assert!(pipe.attribution.get(0x10).is_none());
            assert_eq!(pipe.lifecycle.counts(0).missed_frees, 2);
        }
        let text = String::from_utf8(out.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"kind": "drops", "new": 3, "total": 3})
        );
        assert_eq!(lines[1]["kind"], "read_faults");
        assert_eq!(
            (
                &lines[2]["kind"],
                &lines[2]["source"],
                &lines[2]["gone"],
                &lines[2]["kernel_dying"]
            ),
            (
                &serde_json::json!("recheck"),
                &serde_json::json!("census"),
                &serde_json::json!(2),
                &serde_json::json!(0)
            )
        );
    }
}
