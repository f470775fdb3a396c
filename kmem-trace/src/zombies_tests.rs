//! Joining dying memcgs with the history, filtering by age, and both renderings.

use std::sync::Arc;

use super::*;
use crate::{
    attribution::{ContainerMeta, Runtime},
    decode::Counters,
    lifecycle::{Comm, Origin, Stamp},
    store::WallTimes,
};

const OFF: i64 = 1_700_000_000_000_000_000;
const UID: &str = "5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d";
const CID: &str = "4c1f0e5b9d2a7c3e8f6b1a0d9e8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c";

fn task(pid: u32, comm: &str) -> Task {
    Task::new(
        pid,
        pid,
        Comm::new(comm),
        1,
        Comm::new("containerd-shim"),
        1_000,
    )
}

fn row(addr: u64, id: u32, offline_wall: i64) -> HistoryRow {
    let mut m = Memcg::new(addr, id, Origin::History);
    m.cgroup_id = 100 + id as u64;
    m.state = State::Dying;
    m.path = Arc::from(format!("/kubepods/burstable/pod{UID}/{CID}"));
    m.offline_ns = Stamp::at((offline_wall - OFF) as u64);
    m.set_at_offline(Counters {
        mem_pages: Some(4096),
        ..Counters::default()
    });
    m.set_creator(task(10, "runc"));
    m.set_residents(vec![task(11, "sh"), task(12, "head")]);
    m.set_last_resident(Some(task(12, "head")));
    HistoryRow {
        row_id: id as i64,
        state: "dying".into(),
        memcg: m,
        wall: WallTimes {
            offline: Some(offline_wall),
            ..WallTimes::default()
        },
        attribution: Some(Attribution {
            owner: crate::attribution::path::parse(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            meta: Some(Box::new(ContainerMeta {
                source: Some(Runtime::Containerd),
                pod_name: Some("web-1".into()),
                namespace: Some("shop".into()),
                container_name: Some("nginx".into()),
                workload: Some(crate::attribution::Workload {
                    kind: crate::attribution::WorkloadKind::Deployment,
                    name: "web".into(),
                }),
                ..ContainerMeta::default()
            })),
        }),
    }
}

const NOW: i64 = OFF + 7_200_000_000_000; // two hours after the epoch of the rows

#[test]
fn history_rows_are_the_list_without_a_census() {
    let clock = Clock::from_offset(OFF);
    let rows = vec![
        row(0x10, 1, NOW - 3_600_000_000_000),
        row(0x20, 2, NOW - 60_000_000_000),
    ];
    let z = join(&rows, None, &clock, NOW, None);
    assert_eq!(z.len(), 2);
    assert_eq!(z[0].memcg_id, 1, "oldest first");
    assert_eq!(z[0].age_s, Some(3600.0));
    assert_eq!(z[0].owner_label.as_deref(), Some("shop/web-1/nginx"));
    assert_eq!(z[0].residents.len(), 2);
    assert_eq!(z[0].last_resident.as_ref().unwrap().comm, "head");
    assert_eq!(z[0].pinned_bytes, Some(4096 * page_size()));
    assert_eq!(z[0].source, "history");
    let old = join(&rows, None, &clock, NOW, Some(Duration::from_secs(600)));
    assert_eq!(old.len(), 1);
}

#[test]
fn a_census_is_joined_with_the_history() {
    let clock = Clock::from_offset(OFF);
    let rows = vec![
        row(0x10, 1, NOW - 3_600_000_000_000),
        row(0x30, 3, NOW - 10),
    ];
    let mut known = Memcg::new(0x10, 1, Origin::Census);
    known.cgroup_id = 101;
    known.state = State::Dying;
    known.set_at_offline(Counters {
        mem_pages: Some(10),
        ..Counters::default()
    });
    let mut unknown = Memcg::new(0x20, 2, Origin::Census);
    unknown.state = State::Dying;
    unknown.path = Arc::from("/system.slice/cron.service");
    let live = Memcg::new(0x40, 4, Origin::Census);
    let census = [known, unknown, live];
    let z = join(&rows, Some(&census), &clock, NOW, None);
    assert_eq!(z.len(), 2, "row 0x30 is gone from the kernel, 0x40 is live");
    let k = z.iter().find(|z| z.memcg_id == 1).unwrap();
    assert_eq!(k.source, "census+history");
    assert_eq!(k.owner_label.as_deref(), Some("shop/web-1/nginx"));
    assert_eq!(
        k.pinned_bytes,
        Some(10 * page_size()),
        "the census counters are current"
    );
    assert_eq!(k.path, format!("/kubepods/burstable/pod{UID}/{CID}"));
    let u = z.iter().find(|z| z.memcg_id == 2).unwrap();
    assert_eq!(
        (u.source, u.owner_label.as_deref(), u.age_s),
        ("census", Some("cron.service"), None)
    );
}

/// A one-zombie report of `db` with no tracer running.
fn listing(db: &str, top_workloads: Vec<WorkloadCount>, zombies: Vec<Zombie>) -> Report {
    Report {
        kind: "zombies",
        db: db.into(),
        tracer: TracerStatus {
            running: false,
            pid: None,
            last_heartbeat: None,
            stopped: false,
        },
        count: 1,
        zombies,
        top_workloads,
    }
}

fn rendered(r: &Report, json: bool) -> String {
    let mut buf = Vec::new();
    render(r, json, &mut buf).unwrap();
    String::from_utf8(buf).unwrap()
}

#[test]
fn renders_json_and_a_table() {
    let clock = Clock::from_offset(OFF);
    let rows = vec![row(0x10, 1, NOW - 3_600_000_000_000)];
    let zombies = join(&rows, None, &clock, NOW, None);
    let r = listing("/tmp/h.db", top_workloads(&zombies), zombies);
    let v: serde_json::Value = serde_json::from_str(&rendered(&r, true)).unwrap();
    let z = &v["zombies"][0];
    assert_eq!(z["owner"]["namespace"], "shop");
    assert_eq!(z["owner"]["pod"], "web-1");
    assert_eq!(z["owner"]["container"], "nginx");
    assert_eq!(z["owner"]["pod_uid"], UID);
    assert_eq!(z["residents"][1]["comm"], "head");
    assert_eq!(z["creator"]["comm"], "runc");
    assert_eq!(z["owner"]["workload"], "Deployment/web");
    assert_eq!(v["top_workloads"][0]["workload"], "Deployment/web");
    assert_eq!(v["top_workloads"][0]["namespace"], "shop");
    assert_eq!(v["top_workloads"][0]["zombies"], 1);
    let text = rendered(&r, false);
    assert!(text.contains("no tracer is writing"), "{text}");
    assert!(text.contains("shop/web-1/nginx"), "{text}");
    assert!(text.contains("residents sh (11), head (12)"), "{text}");
    assert!(text.contains(" 1h "), "{text}");
    assert!(text.contains("top workloads:"), "{text}");
    assert!(text.contains("workload Deployment/web"), "{text}");
}

#[test]
fn a_released_id_read_as_zero_by_the_census_shows_the_history_id() {
    let clock = Clock::from_offset(OFF);
    let rows = vec![row(0x10, 7, NOW - 3_600_000_000_000)];
    // 4.6+: the kernel zeroed memcg->id.id at offline; the census reads 0.
    let mut m = Memcg::new(0x10, 0, Origin::Census);
    m.state = State::Dying;
    let mut other = Memcg::new(0x20, 0, Origin::Census);
    other.state = State::Dying;
    let z = join(&rows, Some(&[m, other]), &clock, NOW, None);
    let with_row = z.iter().find(|z| z.memcg_addr == "0x10").unwrap();
    assert_eq!(
        (with_row.memcg_id, with_row.id_text()),
        (7, "7".to_string())
    );
    let without = z.iter().find(|z| z.memcg_addr == "0x20").unwrap();
    assert_eq!(without.id_text(), "-", "unknown, not 0");
}

#[test]
fn hostile_names_reach_the_table_escaped() {
    let clock = Clock::from_offset(OFF);
    for name in crate::outputs::text::HOSTILE {
        let mut r = row(0x10, 1, NOW - 3_600_000_000_000);
        r.memcg.path = Arc::from(format!("/jobs/{name}"));
        r.memcg.set_creator(task(10, name));
        r.memcg.set_residents(vec![task(11, name)]);
        r.memcg.set_last_resident(Some(task(11, name)));
        r.attribution = Some(crate::attribution::Attribution::of_path(&format!(
            "/jobs/{name}"
        )));
        let top = vec![WorkloadCount {
            namespace: name.to_string(),
            workload: format!("Deployment/{name}"),
            zombies: 1,
            pinned_bytes: 0,
        }];
        let rep = listing(
            &format!("/tmp/{name}.db"),
            top,
            join(&[r], None, &clock, NOW, None),
        );
        let text = rendered(&rep, false);
        crate::outputs::text::assert_inert(&text);
        assert!(text.contains("/Deployment/"), "{text}");
        assert!(text.contains("/jobs/"), "{text}");
    }
}

#[test]
fn a_tracer_is_writing_while_it_holds_the_lock_whatever_the_meta_says() {
    let dir = std::env::temp_dir().join(format!("kmem-trace-zstatus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("h.db");
    let writer = Store::open(&db).unwrap();
    // Another tracer's clean stop wrote `running = 0` (the old signal).
    writer.set_meta("running", "0").unwrap();
    writer.set_meta("heartbeat", "1").unwrap();
    let reader = Store::open_existing(&db).unwrap();
    let s = tracer_status(&reader, i64::MAX);
    assert!(s.running && !s.stopped, "{s:?}");
    assert_eq!(s.pid, Some(std::process::id()));
    drop(writer);
    let s = tracer_status(&reader, 2);
    assert!(!s.running && s.stopped && s.pid.is_none(), "{s:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unseen_offline_gives_a_lower_bound_not_an_age() {
    let clock = Clock::from_offset(OFF);
    let mut r = row(0x10, 7, NOW);
    r.memcg.offline_ns = Stamp::default();
    r.wall = WallTimes {
        dying_by: Some(NOW - 7_200_000_000_000),
        ..WallTimes::default()
    };
    let z = join(&[r], None, &clock, NOW, None);
    assert_eq!(z[0].age_s, None, "the offline was not seen");
    assert_eq!(z[0].age_at_least_s, Some(7200.0));
    let text = rendered(&listing("/tmp/h.db", Vec::new(), z), false);
    assert!(text.contains(">2h"), "{text}");
}
