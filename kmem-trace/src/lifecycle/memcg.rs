//! One memcg as kmem-trace knows it, laid out compactly: a node can hold
//! 65,535 of them (the whole 16-bit ID space), so a `Memcg` keeps its
//! timestamps without `Option` padding, its page counters packed, its
//! processes (creator, residents, last resident) in one exactly sized
//! allocation and what only some memcgs have (counters at free, census
//! counters) in a box (docs/PERFORMANCE.md: 432 → 152 bytes plus processes).

use std::{num::NonZeroU64, sync::Arc};

use serde::{ser::SerializeStruct, Serialize};

use super::{CgroupKey, Origin, State, Task};
use crate::decode::Counters;

/// A monotonic timestamp in ns, or none: 8 bytes where `Option<u64>` takes 16.
/// The kernel's monotonic clock (`bpf_ktime_get_ns`, counting from boot) is
/// never 0 at a hook, so 0 stands for "not seen".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stamp(Option<NonZeroU64>);

impl Stamp {
    pub const NONE: Stamp = Stamp(None);

    /// `ns`, or none for 0.
    pub fn at(ns: u64) -> Stamp {
        Stamp(NonZeroU64::new(ns))
    }

    pub fn get(self) -> Option<u64> {
        self.0.map(NonZeroU64::get)
    }

    pub fn is_some(self) -> bool {
        self.0.is_some()
    }

    pub fn is_none(self) -> bool {
        self.0.is_none()
    }

    /// Keeps the first time seen.
    pub fn set_once(&mut self, ns: u64) {
        if self.0.is_none() {
            *self = Stamp::at(ns);
        }
    }
}

impl From<Option<u64>> for Stamp {
    fn from(v: Option<u64>) -> Stamp {
        v.map_or(Stamp::NONE, Stamp::at)
    }
}

impl Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get().serialize(s)
    }
}

/// Page counters without `Option` padding: values plus a presence mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Packed {
    v: [u64; 3],
}

impl Packed {
    fn pack(c: Counters) -> (Packed, u8) {
        let f = [c.mem_pages, c.kmem_pages, c.swap_pages];
        let mut mask = 0;
        let mut v = [0; 3];
        for (i, x) in f.iter().enumerate() {
            if let Some(x) = x {
                v[i] = *x;
                mask |= 1 << i;
            }
        }
        (Packed { v }, mask)
    }

    fn unpack(self, mask: u8) -> Counters {
        let at = |i: usize| (mask & (1 << i) != 0).then_some(self.v[i]);
        Counters {
            mem_pages: at(0),
            kmem_pages: at(1),
            swap_pages: at(2),
        }
    }
}

/// What only some memcgs carry: counters at free (a freed memcg's last
/// record) and the census's counters (memcgs the census found).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Extra {
    at_free: Counters,
    census: Option<Counters>,
    /// What pins it, as the census classified it.
    pin: Option<crate::census::Pin>,
}

/// Creator, residents and the last resident in one allocation of exactly
/// their size: `[creator?] [residents...] [last resident?]`. The last
/// resident is usually one of the residents (the process that entered last)
/// and is then only an index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Procs {
    tasks: Box<[Task]>,
    creator: bool,
    /// The last resident is its own (final) element, not one of the residents.
    own_last: bool,
    /// Index of the last resident in `tasks`, [`NO_LAST`] when none.
    last: u32,
}

const NO_LAST: u32 = u32::MAX;

impl Procs {
    fn new() -> Procs {
        Procs {
            tasks: Box::default(),
            creator: false,
            own_last: false,
            last: NO_LAST,
        }
    }

    fn res_range(&self) -> std::ops::Range<usize> {
        self.creator as usize..self.tasks.len() - self.own_last as usize
    }

    fn insert(&mut self, at: usize, t: Task) {
        let mut v = std::mem::take(&mut self.tasks).into_vec();
        v.reserve_exact(1);
        v.insert(at, t);
        self.tasks = v.into_boxed_slice();
        if self.last != NO_LAST && self.last as usize >= at {
            self.last += 1;
        }
    }

    fn remove(&mut self, at: usize) {
        let mut v = std::mem::take(&mut self.tasks).into_vec();
        v.remove(at);
        self.tasks = v.into_boxed_slice();
    }

    fn set_creator(&mut self, t: Task) {
        if self.creator {
            self.tasks[0] = t;
        } else {
            self.insert(0, t);
            self.creator = true;
        }
    }

    fn push_resident(&mut self, t: Task) {
        let at = self.res_range().end;
        self.insert(at, t);
    }

    fn set_last(&mut self, t: Option<Task>) {
        let Some(t) = t else {
            if self.own_last {
                self.remove(self.tasks.len() - 1);
                self.own_last = false;
            }
            self.last = NO_LAST;
            return;
        };
        let r = self.res_range();
        if let Some(i) = self.tasks[r.clone()].iter().rposition(|x| *x == t) {
            if self.own_last {
                self.remove(self.tasks.len() - 1);
                self.own_last = false;
            }
            self.last = (r.start + i) as u32;
        } else if self.own_last {
            let i = self.tasks.len() - 1;
            self.tasks[i] = t;
        } else {
            let at = self.tasks.len();
            self.last = NO_LAST;
            self.insert(at, t);
            self.own_last = true;
            self.last = at as u32;
        }
    }
}

/// One memcg as kmem-trace knows it.
#[derive(Clone, Debug)]
pub struct Memcg {
    pub addr: u64,
    pub cgroup_id: u64,
    pub path: Arc<str>,
    pub alloc_ns: Stamp,
    pub online_ns: Stamp,
    pub offline_ns: Stamp,
    pub released_ns: Stamp,
    pub free_ns: Stamp,
    at_offline: Packed,
    procs: Procs,
    extra: Option<Box<Extra>>,
    pub memcg_id: u32,
    pub hierarchy_id: u32,
    pub level: u32,
    /// Residents not kept because `max_residents` was reached.
    pub residents_dropped: u32,
    pub state: State,
    pub origin: Origin,
    pub kmem_active: bool,
    pub id_released: bool,
    /// Which of `at_offline`'s counters are present.
    at_offline_mask: u8,
    /// Restored from the history (or found offline by a recheck) and not
    /// seen by the kernel since: it may have been freed while no tracer
    /// watched. Not a zombie, not counted as dying, until an event or a
    /// census confirms it (`census::recheck`).
    pub unconfirmed: bool,
}

impl Memcg {
    pub fn new(addr: u64, memcg_id: u32, origin: Origin) -> Memcg {
        Memcg {
            addr,
            cgroup_id: 0,
            path: Arc::from(""),
            alloc_ns: Stamp::NONE,
            online_ns: Stamp::NONE,
            offline_ns: Stamp::NONE,
            released_ns: Stamp::NONE,
            free_ns: Stamp::NONE,
            at_offline: Packed::default(),
            procs: Procs::new(),
            extra: None,
            memcg_id,
            hierarchy_id: 0,
            level: 0,
            residents_dropped: 0,
            state: State::Live,
            origin,
            kmem_active: false,
            id_released: false,
            at_offline_mask: 0,
            unconfirmed: false,
        }
    }

    /// Dying for at least `zombie_after_ns` at `now_ns`; a memcg found dying by
    /// the census (offline time unknown) counts as a zombie right away.
    pub fn is_zombie(&self, now_ns: u64, zombie_after_ns: u64) -> bool {
        self.state == State::Dying
            && !self.unconfirmed
            && self
                .offline_ns
                .get()
                .is_none_or(|off| now_ns.saturating_sub(off) >= zombie_after_ns)
    }

    pub fn key(&self) -> Option<CgroupKey> {
        (self.cgroup_id != 0).then_some((self.hierarchy_id, self.cgroup_id))
    }

    /// Page counters when the memcg went offline.
    pub fn at_offline(&self) -> Counters {
        self.at_offline.unpack(self.at_offline_mask)
    }

    pub fn set_at_offline(&mut self, c: Counters) {
        (self.at_offline, self.at_offline_mask) = Packed::pack(c);
    }

    /// Page counters when the memcg was freed (hooks that see the memcg at free).
    pub fn at_free(&self) -> Counters {
        self.extra.as_ref().map(|e| e.at_free).unwrap_or_default()
    }

    pub fn set_at_free(&mut self, c: Counters) {
        if c != Counters::default() || self.extra.is_some() {
            self.extra.get_or_insert_default().at_free = c;
        }
    }

    /// Page counters the census read (a dying memcg found by the census has
    /// no counters from its offline); `crate::census::pin` classifies them.
    pub fn census_counters(&self) -> Option<Counters> {
        self.extra.as_ref().and_then(|e| e.census)
    }

    /// What pins this dying memcg, as the census found (`crate::census::pins`).
    pub fn pin(&self) -> Option<crate::census::Pin> {
        self.extra.as_ref().and_then(|e| e.pin)
    }

    pub fn set_pin(&mut self, p: Option<crate::census::Pin>) {
        if p.is_some() || self.extra.is_some() {
            self.extra.get_or_insert_default().pin = p;
        }
    }

    pub fn set_census_counters(&mut self, c: Option<Counters>) {
        if c.is_some() || self.extra.is_some() {
            self.extra.get_or_insert_default().census = c;
        }
    }

    /// The task that created the memcg.
    pub fn creator(&self) -> Option<&Task> {
        self.procs.creator.then(|| &self.procs.tasks[0])
    }

    pub fn set_creator(&mut self, t: Task) {
        self.procs.set_creator(t);
    }

    /// Processes that entered, in the order first seen (at most `max_residents`).
    pub fn residents(&self) -> &[Task] {
        &self.procs.tasks[self.procs.res_range()]
    }

    /// The resident with thread-group id `tgid`. Call [`Memcg::set_last_resident`]
    /// after changing it: the last resident may be this very entry.
    pub fn resident_mut(&mut self, tgid: u32) -> Option<&mut Task> {
        let r = self.procs.res_range();
        self.procs.tasks[r].iter_mut().find(|t| t.tgid == tgid)
    }

    pub fn push_resident(&mut self, t: Task) {
        self.procs.push_resident(t);
    }

    /// Replaces the residents (restoring from the history).
    pub fn set_residents(&mut self, ts: Vec<Task>) {
        let last = self.last_resident().cloned();
        let creator = self.creator().cloned();
        self.procs = Procs::new();
        if let Some(c) = creator {
            self.procs.set_creator(c);
        }
        let mut v = std::mem::take(&mut self.procs.tasks).into_vec();
        v.extend(ts);
        self.procs.tasks = v.into_boxed_slice();
        self.procs.set_last(last);
    }

    /// The process seen entering (or exec'ing in) last, kept even when the
    /// resident list was full.
    pub fn last_resident(&self) -> Option<&Task> {
        (self.procs.last != NO_LAST).then(|| &self.procs.tasks[self.procs.last as usize])
    }

    pub fn set_last_resident(&mut self, t: Option<Task>) {
        self.procs.set_last(t);
    }
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

/// The JSON of a memcg, field for field what it was before the compact layout.
impl Serialize for Memcg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let census = self.census_counters();
        let mut st = s.serialize_struct("Memcg", 21 + census.is_some() as usize)?;
        st.serialize_field("addr", &hex(self.addr))?;
        st.serialize_field("memcg_id", &self.memcg_id)?;
        st.serialize_field("hierarchy_id", &self.hierarchy_id)?;
        st.serialize_field("cgroup_id", &self.cgroup_id)?;
        st.serialize_field("level", &self.level)?;
        st.serialize_field("path", &self.path)?;
        st.serialize_field("state", &self.state)?;
        st.serialize_field("kmem_active", &self.kmem_active)?;
        st.serialize_field("id_released", &self.id_released)?;
        st.serialize_field("alloc_ns", &self.alloc_ns)?;
        st.serialize_field("online_ns", &self.online_ns)?;
        st.serialize_field("offline_ns", &self.offline_ns)?;
        st.serialize_field("released_ns", &self.released_ns)?;
        st.serialize_field("free_ns", &self.free_ns)?;
        st.serialize_field("at_offline", &self.at_offline())?;
        st.serialize_field("at_free", &self.at_free())?;
        st.serialize_field("creator", &self.creator())?;
        st.serialize_field("residents", self.residents())?;
        st.serialize_field("residents_dropped", &self.residents_dropped)?;
        st.serialize_field("last_resident", &self.last_resident())?;
        st.serialize_field("origin", &self.origin)?;
        if let Some(c) = census {
            st.serialize_field("census_counters", &c)?;
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Comm;

    fn t(tgid: u32, ts: u64) -> Task {
        Task::new(tgid, tgid, Comm::new("x"), 1, Comm::new("p"), ts)
    }

    #[test]
    fn processes_share_one_allocation_and_the_last_resident_follows() {
        let mut m = Memcg::new(1, 1, Origin::Traced);
        assert!(m.creator().is_none() && m.residents().is_empty());
        m.push_resident(t(10, 1));
        m.set_last_resident(Some(t(10, 1)));
        assert_eq!(m.procs.tasks.len(), 1, "the last resident is an index");
        m.set_creator(t(5, 0));
        assert_eq!(m.creator().unwrap().tgid, 5);
        assert_eq!(m.last_resident().unwrap().tgid, 10);
        m.push_resident(t(11, 2));
        m.set_last_resident(Some(t(12, 3)));
        assert_eq!(
            m.procs.tasks.len(),
            4,
            "a last resident not in the list is kept"
        );
        assert_eq!(
            m.residents().iter().map(|t| t.tgid).collect::<Vec<_>>(),
            [10, 11]
        );
        assert_eq!(m.last_resident().unwrap().tgid, 12);
        m.push_resident(t(13, 4));
        assert_eq!(m.last_resident().unwrap().tgid, 12);
        m.set_last_resident(Some(t(13, 4)));
        assert_eq!(m.procs.tasks.len(), 4);
        assert_eq!(m.last_resident(), Some(&t(13, 4)));
        m.resident_mut(13)
            .unwrap()
            .rename(Comm::new("renamed"), &mut Default::default());
        m.set_last_resident(Some(t(13, 5)));
        assert_eq!(m.residents()[2].comm().as_str(), "renamed");
        assert_eq!(m.last_resident().unwrap().ts_ns, 5);
        m.set_residents(vec![t(20, 6)]);
        assert_eq!(m.creator().unwrap().tgid, 5);
        assert_eq!(m.residents(), [t(20, 6)]);
        assert_eq!(m.last_resident().unwrap().ts_ns, 5);
        m.set_last_resident(None);
        assert!(m.last_resident().is_none());
        assert_eq!(m.procs.tasks.len(), 2);
    }

    #[test]
    fn counters_and_stamps_round_trip() {
        let mut m = Memcg::new(1, 1, Origin::Traced);
        let c = Counters {
            mem_pages: Some(0),
            kmem_pages: None,
            swap_pages: Some(7),
        };
        m.set_at_offline(c);
        assert_eq!(m.at_offline(), c);
        assert!(m.extra.is_none());
        m.set_at_free(Counters::default());
        assert!(m.extra.is_none(), "nothing to keep, no box");
        m.set_at_free(c);
        assert_eq!(m.at_free(), c);
        assert_eq!(m.census_counters(), None);
        m.offline_ns.set_once(5);
        m.offline_ns.set_once(6);
        assert_eq!(m.offline_ns.get(), Some(5));
        assert_eq!(Stamp::from(Some(0)).get(), None);
    }

    #[test]
    fn is_small() {
        assert!(
            std::mem::size_of::<Memcg>() <= 160,
            "{}",
            std::mem::size_of::<Memcg>()
        );
    }
}
