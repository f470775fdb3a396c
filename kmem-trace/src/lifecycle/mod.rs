//! The memcg state machine: Live → Dying (offline seen) → Freed, keyed by kernel
//! address and by memcg ID, with the cgroup tree for paths. A zombie is a memcg
//! dying for longer than `zombie_after`. Pure: fed by decoded events, the census
//! and the history; no I/O.

mod ids;
pub mod intern;
pub mod keymap;
mod memcg;
pub mod task;
pub mod tree;

use std::sync::Arc;

use hdrhistogram::Histogram;
use kmem_trace_common::{flags, EventKind, MEMCG_ID_MAX};
use serde::Serialize;

use ids::IdIndex;
pub use keymap::KeyMap;
pub use memcg::{Memcg, Stamp};
pub use task::{Comm, NameTable, Names, Task};
pub use tree::{CgroupKey, CgroupTree};

use crate::decode::TraceEvent;

/// Errors of the lifecycle configuration.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("--id-limit must be between 1 and {MEMCG_ID_MAX}, got {0}")]
    IdLimit(u32),
}

/// How the state machine interprets events.
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// A memcg dying longer than this is a zombie.
    pub zombie_after_ns: u64,
    /// Size of the memcg ID space (65535).
    pub id_limit: u32,
    /// When no hook sees `id_release`: the kernel frees the ID at offline
    /// (4.6+, `mem_cgroup_css_offline()` → `mem_cgroup_id_put()`) unless swap
    /// entries still hold it.
    pub id_freed_at_offline: bool,
    /// Residents kept per memcg.
    pub max_residents: usize,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            zombie_after_ns: 60_000_000_000,
            id_limit: MEMCG_ID_MAX,
            id_freed_at_offline: true,
            max_residents: 8,
        }
    }
}

impl LifecycleConfig {
    pub fn validate(&self) -> Result<(), LifecycleError> {
        if self.id_limit == 0 || self.id_limit > MEMCG_ID_MAX {
            return Err(LifecycleError::IdLimit(self.id_limit));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Live,
    Dying,
    Freed,
}

/// Where kmem-trace learned about a memcg.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Seen from its creation by the probes.
    Traced,
    /// Found by the census at start (created before kmem-trace ran).
    Census,
    /// Restored from the history database.
    History,
    /// First seen at a later lifecycle point (created before kmem-trace ran).
    Partial,
}

/// Something inconsistent the event stream showed (kept and counted, never fatal).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Anomaly {
    /// A lifecycle event for a memcg kmem-trace never saw created.
    Untracked,
    /// A new memcg at an address still held by one never seen freed.
    MissedFree,
    /// A memcg ID handed out again while another memcg held it.
    IdReused,
}

/// What applying one event did.
#[derive(Clone, Debug)]
pub struct Applied {
    pub addr: Option<u64>,
    pub memcg_id: Option<u32>,
    pub path: Option<Arc<str>>,
    /// State after the event.
    pub state: Option<State>,
    /// The final record of a memcg this event freed.
    pub freed: Option<Box<Memcg>>,
    pub anomaly: Option<Anomaly>,
}

impl Applied {
    fn none(anomaly: Option<Anomaly>) -> Applied {
        Applied {
            addr: None,
            memcg_id: None,
            path: None,
            state: None,
            freed: None,
            anomaly,
        }
    }
}

/// Counts for headers, summaries and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub live: u64,
    pub dying: u64,
    pub zombies: u64,
    pub ids_in_use: u64,
    pub id_limit: u32,
    pub freed: u64,
    pub untracked: u64,
    pub missed_frees: u64,
    pub ids_reused: u64,
    /// Memcgs the history or a recheck holds that no event or census has
    /// confirmed since (they may be gone): not in live, dying or zombies.
    pub unconfirmed: u64,
    /// Live memcgs the kernel had at start that no census could list (see
    /// [`Lifecycle::set_unlisted_live`]): counted in `live` and `ids_in_use`.
    pub unlisted_live: u64,
}

/// The state machine.
pub struct Lifecycle {
    cfg: LifecycleConfig,
    /// Boxed: a `Memcg` is ~0.5 KiB and the table keeps up to half its
    /// buckets empty, so inline values would double the memory at 65,535
    /// memcgs (docs/PERFORMANCE.md); the box is also what `Applied::freed` hands out.
    memcgs: KeyMap<u64, Box<Memcg>>,
    by_id: IdIndex,
    pub tree: CgroupTree,
    /// Task names shared by the memcgs' creators and residents.
    names: NameTable,
    /// Offline → free latency in microseconds.
    pub offline_to_free_us: Histogram<u64>,
    /// Events applied, indexed by `EventKind as usize`.
    pub events: [u64; 16],
    freed: u64,
    untracked: u64,
    missed_frees: u64,
    ids_reused: u64,
    unlisted: Unlisted,
}

/// Live memcgs that predate the run and that no census listed: without the
/// BPF cgroup iterator (before 6.1) the start-up census only counts them, so
/// the root memcg and every cgroup directory that existed at start are known
/// by number, not by address. A live memcg holds its ID (given back at
/// offline at the earliest, `mem_cgroup_css_offline()` →
/// `mem_cgroup_id_put()`), so without them the ID gauge stays short of the
/// kernel's count (one short on 5.10: the root, which never has an event).
#[derive(Clone, Copy, Debug, Default)]
struct Unlisted {
    live: u64,
    /// Monotonic ns of the count: an alloc before it was counted in it.
    at_ns: u64,
}

impl Unlisted {
    /// One of them became known by an event or the history.
    fn named(&mut self) {
        self.live = self.live.saturating_sub(1);
    }
}

impl Lifecycle {
    pub fn new(cfg: LifecycleConfig) -> Result<Lifecycle, LifecycleError> {
        cfg.validate()?;
        Ok(Lifecycle {
            cfg,
            memcgs: KeyMap::default(),
            by_id: IdIndex::default(),
            tree: CgroupTree::default(),
            names: NameTable::default(),
            // 1 µs .. ~1 year, 3 significant digits.
            offline_to_free_us: Histogram::new_with_bounds(1, 31_536_000_000_000, 3)
                .expect("static bounds"),
            events: [0; 16],
            freed: 0,
            untracked: 0,
            missed_frees: 0,
            ids_reused: 0,
            unlisted: Unlisted::default(),
        })
    }

    /// The counts-only census found `live` live memcgs (the root and the
    /// visible directories) at monotonic `at_ns` that it could not list; they
    /// count as live and ID-holding until an event or the history names them.
    pub fn set_unlisted_live(&mut self, live: u64, at_ns: u64) {
        let known = self
            .memcgs()
            .filter(|m| m.state == State::Live && !m.unconfirmed)
            .count() as u64;
        self.unlisted = Unlisted {
            live: live.saturating_sub(known),
            at_ns,
        };
    }

    pub fn config(&self) -> &LifecycleConfig {
        &self.cfg
    }

    /// Adds a cgroup directory found by scanning cgroupfs.
    pub fn seed_cgroup(&mut self, key: CgroupKey, parent: u64, name: &str) {
        self.tree.insert(key, parent, name);
    }

    /// Adds (or replaces) a memcg found by the census or restored from history.
    pub fn seed_memcg(&mut self, mut m: Memcg) {
        if let Some(key) = m.key() {
            if m.path.is_empty() {
                m.path = self.tree.path(key);
            }
            self.tree.set_memcg(key, m.addr);
        }
        if m.memcg_id != 0 && !m.id_released {
            self.by_id.insert(m.memcg_id, m.addr);
        }
        if m.state == State::Live && !m.unconfirmed && !self.memcgs.contains_key(&m.addr) {
            // The history's live memcg, whose directory still exists: one of
            // the unlisted, now named.
            self.unlisted.named();
        }
        self.memcgs.insert(m.addr, Box::new(m));
    }

    pub fn get(&self, addr: u64) -> Option<&Memcg> {
        self.memcgs.get(&addr).map(|m| &**m)
    }

    pub fn get_mut(&mut self, addr: u64) -> Option<&mut Memcg> {
        self.memcgs.get_mut(&addr).map(|m| &mut **m)
    }

    pub fn by_memcg_id(&self, id: u32) -> Option<&Memcg> {
        self.by_id.get(id).and_then(|a| self.get(a))
    }

    pub fn by_cgroup(&self, key: CgroupKey) -> Option<&Memcg> {
        self.tree.memcg(key).and_then(|a| self.get(a))
    }

    /// Every memcg not yet freed.
    pub fn memcgs(&self) -> impl Iterator<Item = &Memcg> {
        self.memcgs.values().map(|m| &**m)
    }

    pub fn dying(&self) -> impl Iterator<Item = &Memcg> {
        self.memcgs().filter(|m| m.state == State::Dying)
    }

    pub fn counts(&self, now_ns: u64) -> Counts {
        let mut c = Counts {
            id_limit: self.cfg.id_limit,
            freed: self.freed,
            untracked: self.untracked,
            missed_frees: self.missed_frees,
            ids_reused: self.ids_reused,
            live: self.unlisted.live,
            ids_in_use: self.unlisted.live,
            unlisted_live: self.unlisted.live,
            ..Counts::default()
        };
        for m in self.memcgs.values() {
            if m.unconfirmed {
                c.unconfirmed += 1;
                continue;
            }
            match m.state {
                State::Live => c.live += 1,
                State::Dying => {
                    c.dying += 1;
                    if m.is_zombie(now_ns, self.cfg.zombie_after_ns) {
                        c.zombies += 1;
                    }
                }
                State::Freed => {}
            }
            if !m.id_released && m.state != State::Freed {
                c.ids_in_use += 1;
            }
        }
        c
    }

    /// Applies one event. Unknown memcgs and inconsistencies are counted, never fatal.
    pub fn apply(&mut self, ev: &TraceEvent) -> Applied {
        self.events[ev.kind as usize] += 1;
        match ev.kind {
            EventKind::Alloc => self.on_alloc(ev),
            EventKind::Free => self.on_free(ev),
            EventKind::Census => {
                // Census records are turned into `Memcg`s by the census module.
                Applied::none(None)
            }
            _ => self.on_transition(ev),
        }
    }

    fn on_alloc(&mut self, ev: &TraceEvent) -> Applied {
        let Some(addr) = ev.memcg_addr() else {
            self.untracked += 1;
            return Applied::none(Some(Anomaly::Untracked));
        };
        let mut anomaly = None;
        if let Some(m) = self.memcgs.get_mut(&addr) {
            // The census runs after the probes are attached, so a memcg created
            // in between is in the census and its alloc still queued: the same
            // memcg, not a missed free.
            let same_cgroup = ev
                .cgroup_key()
                .is_none_or(|k| m.key().is_none_or(|mk| mk == k));
            if m.origin == Origin::Census && m.memcg_id == ev.raw.memcg_id && same_cgroup {
                m.origin = Origin::Traced;
                m.alloc_ns = Stamp::at(ev.ts_ns());
                m.set_creator(Task::actor_in(ev, &mut self.names));
                return self.on_transition(ev);
            }
        }
        if ev.ts_ns() < self.unlisted.at_ns {
            // Created before the count, so counted in it: named now.
            self.unlisted.named();
        }
        if let Some(old) = self.memcgs.remove(&addr) {
            // The address was reused: the old memcg was freed without us seeing it.
            self.missed_frees += 1;
            anomaly = Some(Anomaly::MissedFree);
            self.forget(&old);
        }
        let id = ev.raw.memcg_id;
        if let Some(holder) = self.by_id.insert(id, addr) {
            if let Some(h) = self.memcgs.get_mut(&holder) {
                // The kernel only hands out a free ID: the holder's release was unseen.
                h.id_released = true;
                self.ids_reused += 1;
                anomaly = anomaly.or(Some(Anomaly::IdReused));
            }
        }
        let mut m = Memcg::new(addr, id, Origin::Traced);
        m.alloc_ns = Stamp::at(ev.ts_ns());
        m.set_creator(Task::actor_in(ev, &mut self.names));
        self.memcgs.insert(addr, Box::new(m));
        let mut applied = self.on_transition(ev);
        applied.anomaly = anomaly.or(applied.anomaly);
        applied
    }

    /// Every event other than alloc and free: find (or start) the memcg and
    /// update it.
    fn on_transition(&mut self, ev: &TraceEvent) -> Applied {
        let Some(addr) = self.resolve(ev) else {
            self.untracked += 1;
            return Applied::none(Some(Anomaly::Untracked));
        };
        let mut anomaly = None;
        if !self.memcgs.contains_key(&addr) {
            // Created before kmem-trace started and not in the census.
            self.untracked += 1;
            anomaly = Some(Anomaly::Untracked);
            let mut m = Memcg::new(addr, ev.raw.memcg_id, Origin::Partial);
            // Live at start (an offline, a process joining, kmem activated;
            // an online before the count), so among the unlisted.
            let was_live = match ev.kind {
                EventKind::Offline | EventKind::Resident | EventKind::KmemActivate => true,
                EventKind::Online => ev.ts_ns() < self.unlisted.at_ns,
                _ => false,
            };
            if was_live {
                self.unlisted.named();
            }
            if ev.kind == EventKind::Online {
                m.set_creator(Task::actor_in(ev, &mut self.names));
            }
            if ev.memcg_id().is_some() && !self.by_id.contains(ev.raw.memcg_id) {
                self.by_id.insert(ev.raw.memcg_id, addr);
            }
            self.memcgs.insert(addr, Box::new(m));
        }
        self.learn_cgroup(addr, ev);
        let cfg_id_at_offline = self.cfg.id_freed_at_offline;
        let max_residents = self.cfg.max_residents;
        let m = self.memcgs.get_mut(&addr).expect("inserted above");
        // An event about it: the kernel still has it.
        m.unconfirmed = false;
        let ts = ev.ts_ns();
        match ev.kind {
            EventKind::Online => {
                m.online_ns.set_once(ts);
                if m.creator().is_none() {
                    m.set_creator(Task::actor_in(ev, &mut self.names));
                }
            }
            EventKind::KmemActivate => m.kmem_active = true,
            EventKind::Offline => {
                m.state = State::Dying;
                m.offline_ns = Stamp::at(ts);
                let c = ev.counters();
                m.set_at_offline(c);
                if ev.has(flags::KMEM_ACTIVE) {
                    m.kmem_active = true;
                }
                // Swap entries keep the ID (mem_cgroup_id_get_many() at swap-out).
                if cfg_id_at_offline && c.swap_pages.unwrap_or(0) == 0 {
                    m.id_released = true;
                }
            }
            EventKind::Released => {
                m.released_ns = Stamp::at(ts);
                if m.state == State::Live {
                    m.state = State::Dying;
                }
            }
            EventKind::IdRelease => m.id_released = true,
            EventKind::Resident => {
                let t = Task::subject_in(ev, &mut self.names);
                if let Some(r) = m.resident_mut(t.tgid) {
                    // A process already inside keeps its place in the list
                    // (first seen); on exec() it takes the name of what it
                    // runs now.
                    if ev.has(flags::EXEC) {
                        r.rename(t.comm(), &mut self.names);
                    }
                } else if m.residents().len() < max_residents {
                    m.push_resident(t.clone());
                } else {
                    m.residents_dropped += 1;
                }
                m.set_last_resident(Some(t));
            }
            EventKind::Alloc | EventKind::Free | EventKind::Census => {}
        }
        let (id, path, state, released) = (m.memcg_id, m.path.clone(), m.state, m.id_released);
        if (ev.kind == EventKind::IdRelease || released) && self.by_id.get(id) == Some(addr) {
            self.by_id.remove(id);
        }
        Applied {
            addr: Some(addr),
            memcg_id: Some(id),
            path: Some(path),
            state: Some(state),
            freed: None,
            anomaly,
        }
    }

    fn on_free(&mut self, ev: &TraceEvent) -> Applied {
        let Some(addr) = self.resolve(ev) else {
            self.untracked += 1;
            return Applied::none(Some(Anomaly::Untracked));
        };
        let Some(mut m) = self.memcgs.remove(&addr) else {
            self.untracked += 1;
            let mut a = Applied::none(Some(Anomaly::Untracked));
            a.addr = Some(addr);
            a.memcg_id = ev.memcg_id();
            return a;
        };
        m.state = State::Freed;
        m.free_ns = Stamp::at(ev.ts_ns());
        m.set_at_free(ev.counters());
        m.id_released = true;
        if let Some(off) = m.offline_ns.get() {
            let us = (ev.ts_ns().saturating_sub(off) / 1000).max(1);
            let _ = self.offline_to_free_us.record(us);
        }
        self.freed += 1;
        self.forget(&m);
        Applied {
            addr: Some(addr),
            memcg_id: Some(m.memcg_id),
            path: Some(m.path.clone()),
            state: Some(State::Freed),
            freed: Some(m),
            anomaly: None,
        }
    }

    /// The memcg an event is about: its address, or (hooks without the memcg,
    /// such as `cgroup_release`) the memcg recorded for its cgroup.
    fn resolve(&self, ev: &TraceEvent) -> Option<u64> {
        ev.memcg_addr()
            .or_else(|| ev.cgroup_key().and_then(|k| self.tree.memcg(k)))
    }

    /// Records cgroup identity and path the first time an event carries them.
    fn learn_cgroup(&mut self, addr: u64, ev: &TraceEvent) {
        let Some(key) = ev.cgroup_key() else { return };
        let parent = if ev.has(flags::ROOT) {
            0
        } else {
            ev.raw.parent_cgroup_id
        };
        if ev.raw.level == 1 && !self.tree.contains((key.0, parent)) {
            // A level-1 cgroup's parent is the hierarchy root.
            self.tree.insert((key.0, parent), 0, "");
        }
        self.tree.insert(key, parent, &ev.name());
        let m = self.memcgs.get_mut(&addr).expect("caller checked");
        if m.cgroup_id == 0 {
            m.hierarchy_id = key.0;
            m.cgroup_id = key.1;
            m.level = ev.raw.level;
            self.tree.set_memcg(key, addr);
        }
        if m.path.is_empty() || m.path.contains('?') {
            m.path = self.tree.path(key);
        }
    }

    /// Removes a memcg the kernel no longer has, whose free no event showed
    /// (dropped from the ring buffer, or freed while no tracer ran): found
    /// by a recheck. Counted as a missed free; its time of free is unknown.
    pub fn remove_gone(&mut self, addr: u64) -> Option<Box<Memcg>> {
        let mut m = self.memcgs.remove(&addr)?;
        m.state = State::Freed;
        m.id_released = true;
        m.unconfirmed = false;
        self.missed_frees += 1;
        self.forget(&m);
        Some(m)
    }

    /// Drops the indexes of a memcg that is gone.
    fn forget(&mut self, m: &Memcg) {
        if self.by_id.get(m.memcg_id) == Some(m.addr) {
            self.by_id.remove(m.memcg_id);
        }
        if let Some(key) = m.key() {
            if self.tree.memcg(key) == Some(m.addr) {
                self.tree.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests;
