//! Census records → memcgs, reconciliation, pin causes and seeding, on
//! synthetic records shaped like the iterator's (pre-order, root first).

use std::path::PathBuf;

use kmem_trace_common::{census_flags, flags, CensusSummary, Event, EventKind, CENSUS_MAGIC};

use super::*;
use crate::{
    decode::TraceEvent,
    lifecycle::{Lifecycle, LifecycleConfig},
};

const HIER: u32 = 4;

#[allow(clippy::too_many_arguments)]
fn rec(
    addr: u64,
    id: u32,
    cg: u64,
    parent: u64,
    level: u32,
    name: &str,
    dying: bool,
    mem: u64,
) -> Event {
    let mut e = Event::ZERO;
    e.kind = EventKind::Census as u32;
    e.ts_ns = 1_000;
    e.memcg_addr = addr;
    e.memcg_id = id;
    e.cgroup_id = cg;
    e.parent_cgroup_id = parent;
    e.hierarchy_id = HIER;
    e.level = level;
    e.flags = flags::MEM_COUNTER | flags::KMEM_COUNTER | flags::SWAP_COUNTER | flags::KMEM_ACTIVE;
    if parent == 0 {
        e.flags |= flags::ROOT;
    }
    if dying {
        e.flags |= flags::DYING;
    }
    e.mem_pages = mem;
    e.kmem_pages = 2;
    // v1: the swap counter is memsw = memory + swap.
    e.swap_pages = mem;
    e.aux = if dying { 0 } else { 1 };
    e.name[..name.len()].copy_from_slice(name.as_bytes());
    e.name_len = name.len() as u16;
    e
}

fn hierarchy(version: CgroupVersion) -> MemoryHierarchy {
    MemoryHierarchy {
        version,
        mount: PathBuf::from("/nonexistent/memory"),
        hierarchy_id: HIER,
    }
}

/// `/`, `/kubepods` (live), `/kubepods/pod1` (dying, 4096 pages), its child
/// `/kubepods/pod1/c1` (dying), `/system` (live).
fn records() -> Vec<Event> {
    vec![
        rec(0x1000, 1, 1, 0, 0, "", false, 100_000),
        rec(0x2000, 2, 10, 1, 1, "kubepods", false, 9000),
        rec(0x3000, 0, 11, 10, 2, "pod1", true, 4100),
        rec(0x4000, 0, 12, 11, 3, "c1", true, 4096),
        rec(0x5000, 5, 20, 1, 1, "system", false, 50),
    ]
}

fn summary(visited: u64, online: u64, dying: u64) -> CensusSummary {
    CensusSummary {
        magic: CENSUS_MAGIC,
        flags: census_flags::COMPLETE,
        visited,
        online,
        dying,
        emitted: visited,
        start_ns: 1_000,
        ..CensusSummary::default()
    }
}

#[test]
fn records_become_memcgs_with_paths_states_and_ids() {
    let c = from_raw(hierarchy(CgroupVersion::V1), &records(), &summary(5, 3, 2));
    assert_eq!(c.source, Source::BpfIterator);
    assert_eq!(c.memcgs.len(), 5);
    let paths: Vec<&str> = c.memcgs.iter().map(|m| &*m.path).collect();
    assert_eq!(
        paths,
        [
            "/",
            "/kubepods",
            "/kubepods/pod1",
            "/kubepods/pod1/c1",
            "/system"
        ]
    );
    let c1 = &c.memcgs[3];
    assert_eq!(c1.state, State::Dying);
    assert_eq!(c1.origin, Origin::Census);
    assert!(c1.id_released, "id.ref 0: the ID is back in the pool");
    assert!(c1.kmem_active);
    assert_eq!(c1.level, 3);
    assert_eq!(c1.key(), Some((HIER, 12)));
    // memsw minus memory: no swap.
    assert_eq!(
        c1.census_counters().unwrap(),
        crate::decode::Counters {
            mem_pages: Some(4096),
            kmem_pages: Some(2),
            swap_pages: Some(0)
        }
    );
    assert!(!c.memcgs[1].id_released);
    assert_eq!(c.dying().count(), 2);
    assert!(c.problems.is_empty());
    assert_eq!(c.nodes.len(), 5);
}

#[test]
fn lost_records_and_faults_are_problems() {
    let mut s = summary(5, 3, 2);
    s.dropped = 2;
    s.flags = census_flags::FAULT;
    let mut recs = records();
    recs.truncate(3);
    recs[2].kind = 77; // not a census record
    let c = from_raw(hierarchy(CgroupVersion::V1), &recs, &s);
    assert_eq!(c.memcgs.len(), 2);
    assert_eq!(c.problems.len(), 3, "{:?}", c.problems);
    assert!(!c.consistent());
    // Totals come from the in-kernel counts, complete even with lost records.
    assert_eq!(c.totals.dying, Some(2));
}

#[test]
fn reconciliation_matches_v1_counts_and_reports_mismatches() {
    let c = from_raw(hierarchy(CgroupVersion::V1), &records(), &summary(5, 3, 2));
    let k = KernelCounts {
        num_cgroups: Some(5),
        visible: 3,
        ..KernelCounts::default()
    };
    let checks = reconcile(&c, &k, &k);
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|x| x.matches), "{checks:?}");
    // The kernel counts one more dying memcg than the walk found.
    let more = KernelCounts {
        num_cgroups: Some(6),
        ..k.clone()
    };
    let checks = reconcile(&c, &more, &more);
    let bad: Vec<&Check> = checks.iter().filter(|x| !x.matches).collect();
    assert_eq!(bad.len(), 2);
    assert!(bad[1]
        .note
        .as_deref()
        .unwrap()
        .contains("released but not yet freed"));
    // Counts that changed during the census match either reading.
    let checks = reconcile(&c, &k, &more);
    assert!(checks.iter().all(|x| x.matches), "{checks:?}");
}

#[test]
fn reconciliation_on_v2_uses_cgroup_stat() {
    let c = from_raw(hierarchy(CgroupVersion::V2), &records(), &summary(5, 3, 2));
    let k = KernelCounts {
        visible: 3,
        nr_descendants: Some(2),
        nr_dying_descendants: Some(2),
        nr_subsys_memory: Some(3),
        nr_dying_subsys_memory: Some(2),
        ..KernelCounts::default()
    };
    let checks = reconcile(&c, &k, &k);
    assert_eq!(checks.len(), 3);
    assert!(checks.iter().all(|x| x.matches), "{checks:?}");
    assert!(checks[0].what.contains("nr_dying_subsys_memory"));
    let old = KernelCounts {
        nr_subsys_memory: None,
        nr_dying_subsys_memory: None,
        nr_dying_descendants: Some(5),
        ..k
    };
    let checks = reconcile(&c, &old, &old);
    assert!(!checks[0].matches);
    assert!(checks[0]
        .note
        .as_deref()
        .unwrap()
        .contains("every controller"));
}

#[test]
fn pins_use_the_nearest_live_ancestors_stats() {
    let c = from_raw(hierarchy(CgroupVersion::V1), &records(), &summary(5, 3, 2));
    // /kubepods holds 16 MiB of shmem beyond its (no) live children: tmpfs.
    let read = |path: &str| -> Option<pin::MemStat> {
        (path == "/kubepods").then(|| {
            pin::MemStat::parse(
                "cache 0\nrss 0\nshmem 0\ntotal_cache 16777216\ntotal_rss 0\ntotal_shmem 16777216\n",
                CgroupVersion::V1,
            )
        })
    };
    let mut c = c;
    c.kmem_pins = false;
    let pins = pins(&c, &read);
    assert_eq!(pins.len(), 2);
    assert_eq!(pins[&0x4000].cause, PinCause::Tmpfs);
    assert_eq!(pins[&0x3000].cause, PinCause::Tmpfs);
    assert_eq!(pins[&0x4000].user_pages, 4094);
    assert_eq!(parent_path("/a/b"), "/a");
    assert_eq!(parent_path("/a"), "/");
    assert_eq!(parent_path("/"), "/");
}

#[test]
fn unflushed_own_counters_fall_back_to_the_ancestors_split() {
    let mut c = from_raw(hierarchy(CgroupVersion::V1), &records(), &summary(5, 3, 2));
    c.kmem_pins = false;
    // c1's own counters read zero right after rmdir (rstat not yet flushed)
    // while its page counter holds 4096 pages: the ancestor's split decides.
    c.own.insert(
        0x4000,
        OwnStats {
            file: Some(0),
            shmem: Some(0),
            anon: Some(0),
            ..OwnStats::default()
        },
    );
    let read = |path: &str| -> Option<pin::MemStat> {
        (path == "/kubepods").then(|| {
            pin::MemStat::parse(
                "cache 0\nrss 0\nshmem 0\ntotal_cache 16777216\ntotal_rss 0\ntotal_shmem 16777216\n",
                CgroupVersion::V1,
            )
        })
    };
    let p = pins(&c, &read)[&0x4000];
    assert_eq!((p.cause, p.exact), (PinCause::Tmpfs, false), "{p:?}");
}

#[test]
fn seeding_gives_watch_the_pre_existing_zombies() {
    let c = from_raw(hierarchy(CgroupVersion::V1), &records(), &summary(5, 3, 2));
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    assert_eq!(seed(&mut lc, &c), 5);
    let counts = lc.counts(2_000);
    assert_eq!((counts.live, counts.dying, counts.zombies), (3, 2, 2));
    assert_eq!(
        &*lc.by_cgroup((HIER, 12)).unwrap().path,
        "/kubepods/pod1/c1"
    );
    // Seeding again adds nothing (events applied meanwhile win).
    assert_eq!(seed(&mut lc, &c), 0);

    // The free of a census zombie is tracked, not an anomaly.
    let mut free = Event::ZERO;
    free.kind = EventKind::Free as u32;
    free.ts_ns = 5_000;
    free.memcg_addr = 0x4000;
    free.cgroup_id = 12;
    free.hierarchy_id = HIER;
    let a = lc.apply(&TraceEvent::from_raw(free).unwrap());
    assert!(a.anomaly.is_none());
    assert_eq!(lc.counts(6_000).dying, 1);

    // An alloc queued before the census for a memcg it already found: same memcg.
    let mut alloc = records()[4];
    alloc.kind = EventKind::Alloc as u32;
    alloc.flags &= !flags::DYING;
    let a = lc.apply(&TraceEvent::from_raw(alloc).unwrap());
    assert!(a.anomaly.is_none(), "{:?}", a.anomaly);
    let m = lc.get(0x5000).unwrap();
    assert_eq!(m.origin, Origin::Traced);
    assert!(m.creator().is_some());
}

#[test]
fn hostile_cgroup_names_are_escaped_in_the_table() {
    let mut c = from_raw(hierarchy(CgroupVersion::V1), &records(), &summary(5, 3, 2));
    for (m, name) in c.memcgs.iter_mut().zip(crate::outputs::text::HOSTILE) {
        m.path = format!("/kubepods/{name}").into();
    }
    c.problems
        .push(format!("lost {}", crate::outputs::text::HOSTILE[0]));
    let mut text = Vec::new();
    render::text(&c, true, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    crate::outputs::text::assert_inert(&text);
    assert!(text.contains("/kubepods/\\x1b"), "{text}");
}

#[test]
fn output_lists_dying_memcgs_and_says_counts_only() {
    let mut c = from_raw(hierarchy(CgroupVersion::V1), &records(), &summary(5, 3, 2));
    c.pins = pins(&c, &|_| None);
    let mut text = Vec::new();
    render::text(&c, false, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("BPF iterator"), "{text}");
    assert!(text.contains("memcgs 5: 3 online, 2 dying"), "{text}");
    assert!(text.contains("/kubepods/pod1/c1"), "{text}");
    assert!(
        !text.contains("/system"),
        "live memcgs only with --all: {text}"
    );
    assert!(text.contains("pinned by ("), "{text}");

    let mut json = Vec::new();
    render::json(&c, &mut json).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["kind"], "census");
    assert_eq!(v["source"], "bpf_iterator");
    assert_eq!(v["memcgs"].as_array().unwrap().len(), 5);
    assert_eq!(v["memcgs"][3]["state"], "dying");
    assert_eq!(v["memcgs"][3]["addr"], "0x4000");
    assert_eq!(
        v["memcgs"][3]["mem_bytes"],
        4096 * crate::outputs::page_size()
    );

    let k = KernelCounts {
        num_cgroups: Some(40),
        visible: 6,
        ..KernelCounts::default()
    };
    let only = counts_only(hierarchy(CgroupVersion::V1), k, "no BTF".into());
    let mut text = Vec::new();
    render::text(&only, false, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("COUNTS ONLY (no BPF census: no BTF)"),
        "{text}"
    );
    assert!(text.contains("memcgs 40: 6 online, 34 dying"), "{text}");
}
