//! The state machine on events recorded from this machine's kernel (6.18,
//! cgroup v1, tracepoint family) and on synthetic edge cases.

use kmem_trace_common::{flags, Event, EventKind};

use super::*;
use crate::decode::{decode_recording, TraceEvent};

const CHURN: &[u8] = include_bytes!("../../tests/fixtures/churn-6.18-v1.kmt");

fn replay(bytes: &[u8], cfg: LifecycleConfig) -> (Lifecycle, Vec<TraceEvent>, Vec<Applied>) {
    let (_, events) = decode_recording(bytes).unwrap();
    let mut lc = Lifecycle::new(cfg).unwrap();
    let applied = events.iter().map(|e| lc.apply(e)).collect();
    (lc, events, applied)
}

#[test]
fn recorded_churn_ends_with_the_pinned_memcgs_dying() {
    let (lc, events, applied) = replay(CHURN, LifecycleConfig::default());
    let n = |k: EventKind| events.iter().filter(|e| e.kind == k).count();
    assert_eq!(n(EventKind::Alloc), 9);
    assert_eq!(n(EventKind::Offline), 9);
    assert_eq!(n(EventKind::Free), 6);
    let last = events.last().unwrap().ts_ns();
    let c = lc.counts(last);
    assert_eq!((c.live, c.dying, c.freed), (0, 3, 6));
    assert_eq!(c.untracked, 0);
    // Two children kept their tmpfs file; their parent is held by them.
    let mut dying: Vec<String> = lc.dying().map(|m| m.path.to_string()).collect();
    dying.sort();
    assert_eq!(dying.len(), 3);
    assert!(dying[0].starts_with("/kmem-trace-fixture-"), "{dying:?}");
    assert!(
        dying[1].ends_with("/c3") && dying[2].ends_with("/c4"),
        "{dying:?}"
    );
    // Every memcg carried kmem accounting (on by default on 6.18 v1).
    assert!(lc.dying().all(|m| m.kmem_active));
    assert!(lc
        .dying()
        .all(|m| m.at_offline().mem_pages.unwrap_or(0) >= 16));
    assert_eq!(lc.offline_to_free_us.len(), 6);
    assert!(applied.iter().all(|a| a.anomaly.is_none()));
    // Creator of each memcg is the mkdir process.
    assert!(lc
        .dying()
        .all(|m| m.creator().unwrap().comm().as_str() == "mkdir"));
}

#[test]
fn zombie_verdict_follows_zombie_after() {
    let cfg = LifecycleConfig {
        zombie_after_ns: 1_000_000_000,
        ..LifecycleConfig::default()
    };
    let (lc, events, _) = replay(CHURN, cfg);
    let last = events.last().unwrap().ts_ns();
    // c3 and c4 were removed 2 s before the end, their parent just before it.
    assert_eq!(lc.counts(last).zombies, 2);
    assert_eq!(lc.counts(last + 5_000_000_000).zombies, 3);
    let (lc, _, _) = replay(CHURN, LifecycleConfig::default());
    assert_eq!(lc.counts(last).zombies, 0);
}

#[test]
fn memcg_ids_of_coexisting_memcgs_are_distinct() {
    let (_, events, _) = replay(CHURN, LifecycleConfig::default());
    let mut ids: Vec<u32> = events
        .iter()
        .filter(|e| e.kind == EventKind::Alloc)
        .map(|e| e.raw.memcg_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 9);
}

fn ev(kind: EventKind, addr: u64, id: u32, cgroup: u64, ts: u64) -> TraceEvent {
    let mut e = Event::ZERO;
    e.kind = kind as u32;
    e.memcg_addr = addr;
    e.memcg_id = id;
    e.cgroup_id = cgroup;
    e.parent_cgroup_id = 1;
    e.hierarchy_id = 4;
    e.level = 1;
    e.ts_ns = ts;
    e.name[..3].copy_from_slice(b"pod");
    e.name_len = 3;
    TraceEvent::from_raw(e).unwrap()
}

#[test]
fn free_without_memcg_is_resolved_by_cgroup() {
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    lc.apply(&ev(EventKind::Alloc, 0xa000, 7, 100, 1));
    lc.apply(&ev(EventKind::Offline, 0xa000, 7, 100, 2));
    let mut free = ev(EventKind::Free, 0, 0, 100, 3_000_000);
    free.raw.flags |= flags::NO_MEMCG;
    let a = lc.apply(&free);
    assert_eq!(a.memcg_id, Some(7));
    assert_eq!(a.state, Some(State::Freed));
    assert_eq!(a.freed.unwrap().path.as_ref(), "/pod");
    assert_eq!(lc.counts(4).freed, 1);
    assert_eq!(lc.offline_to_free_us.max(), 2999);
}

#[test]
fn unseen_events_are_counted_not_fatal() {
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    // Offline of a memcg created before start: tracked from here on.
    let a = lc.apply(&ev(EventKind::Offline, 0xb000, 9, 200, 1));
    assert_eq!(a.anomaly, Some(Anomaly::Untracked));
    assert_eq!(lc.get(0xb000).unwrap().origin, Origin::Partial);
    assert_eq!(lc.counts(2).dying, 1);
    // Free of a memcg never seen at all.
    let a = lc.apply(&ev(EventKind::Free, 0xc000, 10, 300, 2));
    assert_eq!(a.anomaly, Some(Anomaly::Untracked));
    // An alloc at an address still held: the old memcg's free was missed.
    lc.apply(&ev(EventKind::Alloc, 0xd000, 11, 400, 3));
    let a = lc.apply(&ev(EventKind::Alloc, 0xd000, 12, 401, 4));
    assert_eq!(a.anomaly, Some(Anomaly::MissedFree));
    assert_eq!(lc.counts(5).missed_frees, 1);
}

#[test]
fn reused_id_marks_the_old_holder_released() {
    let cfg = LifecycleConfig {
        id_freed_at_offline: false,
        ..LifecycleConfig::default()
    };
    let mut lc = Lifecycle::new(cfg).unwrap();
    lc.apply(&ev(EventKind::Alloc, 0x1000, 5, 10, 1));
    lc.apply(&ev(EventKind::Offline, 0x1000, 5, 10, 2));
    assert_eq!(lc.counts(3).ids_in_use, 1);
    let a = lc.apply(&ev(EventKind::Alloc, 0x2000, 5, 11, 4));
    assert_eq!(a.anomaly, Some(Anomaly::IdReused));
    assert!(lc.get(0x1000).unwrap().id_released);
    assert_eq!(lc.by_memcg_id(5).unwrap().addr, 0x2000);
    assert_eq!(lc.counts(5).ids_in_use, 1);
}

#[test]
fn ids_are_freed_at_offline_unless_swap_holds_them() {
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    lc.apply(&ev(EventKind::Alloc, 0x1000, 5, 10, 1));
    lc.apply(&ev(EventKind::Alloc, 0x2000, 6, 11, 1));
    lc.apply(&ev(EventKind::Offline, 0x1000, 5, 10, 2));
    let mut off = ev(EventKind::Offline, 0x2000, 6, 11, 2);
    off.raw.hierarchy_id = 0; // v2: the swap counter is swap itself
    off.raw.flags |= flags::SWAP_COUNTER;
    off.raw.swap_pages = 3;
    lc.apply(&off);
    assert!(lc.get(0x1000).unwrap().id_released);
    assert!(!lc.get(0x2000).unwrap().id_released);
    assert_eq!(lc.counts(3).ids_in_use, 1);
    // A real id_release event settles it.
    lc.apply(&ev(EventKind::IdRelease, 0x2000, 6, 11, 4));
    assert_eq!(lc.counts(5).ids_in_use, 0);
}

#[test]
fn residents_are_bounded_and_the_last_is_kept() {
    let cfg = LifecycleConfig {
        max_residents: 2,
        ..LifecycleConfig::default()
    };
    let mut lc = Lifecycle::new(cfg).unwrap();
    lc.apply(&ev(EventKind::Alloc, 0x1000, 5, 10, 1));
    for tgid in [100, 101, 101, 102, 103] {
        let mut r = ev(EventKind::Resident, 0x1000, 5, 10, 2);
        r.raw.tgid = tgid;
        r.raw.pid = tgid;
        lc.apply(&r);
    }
    let m = lc.get(0x1000).unwrap();
    assert_eq!(
        m.residents().iter().map(|t| t.tgid).collect::<Vec<_>>(),
        [100, 101]
    );
    assert_eq!(m.residents_dropped, 2);
    assert_eq!(m.last_resident().unwrap().tgid, 103);
}

#[test]
fn bad_id_limit_is_rejected() {
    let cfg = LifecycleConfig {
        id_limit: 70000,
        ..LifecycleConfig::default()
    };
    assert_eq!(
        Lifecycle::new(cfg).err().unwrap().to_string(),
        "--id-limit must be between 1 and 65535, got 70000"
    );
}

#[test]
fn exec_renames_a_resident_and_free_keeps_counters() {
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    lc.apply(&ev(EventKind::Alloc, 0x1000, 5, 10, 1));
    let resident = |tgid: u32, comm: &[u8], fl: u32, ts: u64| {
        let mut r = ev(EventKind::Resident, 0x1000, 5, 10, ts);
        r.raw.tgid = tgid;
        r.raw.pid = tgid;
        r.raw.flags |= fl;
        r.raw.comm = [0; 16];
        r.raw.comm[..comm.len()].copy_from_slice(comm);
        r
    };
    lc.apply(&resident(200, b"runc:[2:INIT]", flags::ATTACH, 2));
    lc.apply(&resident(200, b"nginx", flags::EXEC, 3));
    lc.apply(&resident(201, b"nginx", flags::FORK, 4));
    let m = lc.get(0x1000).unwrap();
    let names: Vec<(u32, String, u64)> = m
        .residents()
        .iter()
        .map(|t| (t.tgid, t.comm().to_string(), t.ts_ns))
        .collect();
    assert_eq!(
        names,
        [(200, "nginx".to_string(), 2), (201, "nginx".to_string(), 4)]
    );
    let mut free = ev(EventKind::Free, 0x1000, 5, 10, 9);
    free.raw.flags |= flags::MEM_COUNTER;
    free.raw.mem_pages = 3;
    let freed = lc.apply(&free).freed.unwrap();
    assert_eq!(freed.at_free().mem_pages, Some(3));
}

#[test]
fn unlisted_live_memcgs_count_until_named() {
    // A counts-only start: the root and two directories, no addresses.
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    lc.set_unlisted_live(3, 100);
    let c = lc.counts(100);
    assert_eq!((c.live, c.ids_in_use, c.unlisted_live), (3, 3, 3));
    // A memcg made after the count is new, not one of them.
    lc.apply(&ev(EventKind::Alloc, 0x1000, 5, 10, 150));
    assert_eq!(lc.counts(200).ids_in_use, 4);
    // One made just before the count (its alloc still queued) was counted.
    lc.apply(&ev(EventKind::Alloc, 0x2000, 6, 11, 90));
    assert_eq!(lc.counts(200).ids_in_use, 4);
    // A pre-existing directory removed: its offline names it.
    lc.apply(&ev(EventKind::Offline, 0x3000, 7, 12, 300));
    let c = lc.counts(400);
    assert_eq!((c.unlisted_live, c.live, c.dying), (1, 3, 1));
    // Its ID went back at offline; the root stays counted, never named.
    assert_eq!(c.ids_in_use, 3);
    // A free of an unknown memcg (dying before start) changes nothing.
    lc.apply(&ev(EventKind::Free, 0x4000, 8, 13, 500));
    assert_eq!(lc.counts(600).ids_in_use, 3);
}

#[test]
fn unlisted_live_memcgs_named_by_the_history() {
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    lc.set_unlisted_live(2, 100);
    let mut m = Memcg::new(0x5000, 9, Origin::History);
    m.state = State::Live;
    lc.seed_memcg(m);
    let c = lc.counts(200);
    assert_eq!((c.live, c.ids_in_use, c.unlisted_live), (2, 2, 1));
}
