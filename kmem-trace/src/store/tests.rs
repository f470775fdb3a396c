//! The history database on a temporary file: modes, migrations, upserts by
//! memcg identity, lost rows, retention, and a round trip of every field.

use std::{os::unix::fs::PermissionsExt, path::PathBuf, sync::Arc};

use super::*;
use crate::{
    attribution::Attribution,
    decode::Counters,
    lifecycle::{Comm, Memcg, Origin, Stamp, State, Task},
};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!(
            "kmem-trace-store-{tag}-{}-{nanos}",
            std::process::id()
        ));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const OFF: i64 = 1_700_000_000_000_000_000;
const NOW: i64 = OFF + 500_000_000_000;

fn task(pid: u32, comm: &str, ts: u64) -> Task {
    Task::new(
        pid,
        pid,
        Comm::new(comm),
        1,
        Comm::new("containerd-shim"),
        ts,
    )
}

fn memcg(addr: u64, id: u32, cgroup_id: u64, state: State) -> Memcg {
    let mut m = Memcg::new(addr, id, Origin::Traced);
    m.cgroup_id = cgroup_id;
    m.hierarchy_id = 4;
    m.level = 5;
    m.path =
        Arc::from("/kubepods/burstable/pod5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d/abcdef0123456789");
    m.state = state;
    m.alloc_ns = Stamp::at(1_000);
    m.online_ns = Stamp::at(1_100);
    m.set_creator(task(10, "runc", 1_000));
    m.set_residents(vec![
        task(11, "runc:[2:INIT]", 1_200),
        task(12, "nginx", 1_300),
    ]);
    m.set_last_resident(Some(task(12, "nginx", 1_300)));
    if state != State::Live {
        m.offline_ns = Stamp::at(2_000);
        m.set_at_offline(Counters {
            mem_pages: Some(4096),
            kmem_pages: None,
            swap_pages: Some(0),
        });
    }
    m
}

fn rec(m: Memcg) -> Record {
    Record {
        attribution: Some(Arc::new(Attribution::of_path(&m.path))),
        memcg: m,
    }
}

#[test]
fn creates_the_file_0600_and_tightens_a_loose_one() {
    let d = TempDir::new("mode");
    let db = d.0.join("sub/history.db");
    let s = Store::open(&db).unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(db.parent().unwrap()), 0o700);
    assert_eq!(s.schema_version().unwrap(), schema::VERSION);
    drop(s);
    fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
    Store::open(&db).unwrap();
    assert_eq!(mode(&db), 0o600);
}

#[test]
fn refuses_a_newer_schema_and_migrates_idempotently() {
    let d = TempDir::new("schema");
    let db = d.0.join("h.db");
    drop(Store::open(&db).unwrap());
    drop(Store::open(&db).unwrap()); // already current: nothing to do
    let c = Connection::open(&db).unwrap();
    c.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(c);
    let e = Store::open(&db).err().unwrap();
    assert!(matches!(e, StoreError::Newer { found: 99, .. }), "{e}");
    assert!(e.to_string().contains("upgrade kmem-trace"));
    let e = Store::open_existing(&d.0.join("none.db")).err().unwrap();
    assert!(matches!(e, StoreError::Missing(_)));
}

#[test]
fn round_trips_a_memcg_with_wall_clock_times() {
    let d = TempDir::new("roundtrip");
    let mut s = Store::open(&d.0.join("h.db")).unwrap();
    let m = memcg(0xffff_8880_1234_0000, 42, 777, State::Dying);
    s.write(&[rec(m.clone())], OFF, NOW).unwrap();
    let rows = s.dying(OFF).unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(r.state, "dying");
    assert_eq!(r.wall.offline, Some(OFF + 2_000));
    assert_eq!(r.wall.first_seen, NOW);
    let back = &r.memcg;
    assert_eq!(back.addr, m.addr);
    assert_eq!((back.memcg_id, back.cgroup_id, back.level), (42, 777, 5));
    assert_eq!(back.offline_ns.get(), Some(2_000));
    assert_eq!(back.at_offline(), m.at_offline());
    assert_eq!(back.creator(), m.creator());
    assert_eq!(back.residents(), m.residents());
    assert_eq!(back.last_resident(), m.last_resident());
    assert_eq!(
        r.attribution.as_ref().unwrap().owner.pod_uid(),
        Some("5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d")
    );
    // Read back with another clock offset: the same wall-clock instant.
    let later = s.dying(OFF + 10).unwrap();
    assert_eq!(later[0].memcg.offline_ns.get(), Some(1_990));
}

#[test]
fn updates_the_same_memcg_and_starts_a_new_row_for_a_new_one() {
    let d = TempDir::new("upsert");
    let mut s = Store::open(&d.0.join("h.db")).unwrap();
    let addr = 0xffff_8880_0000_1000;
    let mut live = memcg(addr, 7, 100, State::Live);
    live.set_residents(Vec::new());
    s.write(&[rec(live)], OFF, NOW).unwrap();
    // Offline: same row, counters and residents filled in, attribution kept.
    let dying = memcg(addr, 7, 100, State::Dying);
    s.write(
        &[Record {
            memcg: dying,
            attribution: None,
        }],
        OFF,
        NOW + 1,
    )
    .unwrap();
    let all = s.all(OFF).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, "dying");
    assert_eq!(all[0].memcg.residents().len(), 2);
    assert!(all[0].attribution.is_some());
    // Freed: the row is finished.
    let mut freed = memcg(addr, 7, 100, State::Freed);
    freed.free_ns = Stamp::at(3_000);
    freed.set_at_free(Counters {
        mem_pages: Some(0),
        ..Counters::default()
    });
    s.write(&[rec(freed)], OFF, NOW + 2).unwrap();
    // A new memcg at the same address with the same recycled ID: a new row.
    s.write(&[rec(memcg(addr, 7, 200, State::Live))], OFF, NOW + 3)
        .unwrap();
    let all = s.all(OFF).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].state.as_str(), all[0].wall.free),
        ("freed", Some(OFF + 3_000))
    );
    assert_eq!(all[0].memcg.at_free().mem_pages, Some(0));
    assert_eq!(
        (all[1].state.as_str(), all[1].memcg.cgroup_id),
        ("live", 200)
    );
    assert!(s.dying(OFF).unwrap().is_empty());
}

#[test]
fn open_rows_are_found_by_address_across_reopens_and_duplicates() {
    let d = TempDir::new("openrows");
    let db = d.0.join("h.db");
    let mut s = Store::open(&db).unwrap();
    // Many finished rows share the address and ID (the kernel reuses both).
    for i in 0..50 {
        let mut f = memcg(0x1000, 5, 100 + i, State::Freed);
        f.free_ns = Stamp::at(3_000);
        s.write(&[rec(f)], OFF, NOW).unwrap();
    }
    s.write(&[rec(memcg(0x1000, 5, 500, State::Live))], OFF, NOW + 1)
        .unwrap();
    // A restarted tracer finds the open row and updates it.
    drop(s);
    let mut s = Store::open(&db).unwrap();
    s.write(&[rec(memcg(0x1000, 5, 500, State::Dying))], OFF, NOW + 2)
        .unwrap();
    let open = s.open_rows(OFF).unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].state.as_str(), open[0].memcg.cgroup_id),
        ("dying", 500)
    );
    // Two open rows at one address (an older version could leave them): a
    // new memcg there closes both.
    let c = Connection::open(&db).unwrap();
    c.execute("UPDATE memcg SET state = 'live' WHERE cgroup_id = 101", [])
        .unwrap();
    drop(c);
    drop(s);
    let mut s = Store::open(&db).unwrap();
    s.write(&[rec(memcg(0x1000, 6, 600, State::Live))], OFF, NOW + 3)
        .unwrap();
    let open = s.open_rows(OFF).unwrap();
    let ids: Vec<u64> = open.iter().map(|r| r.memcg.cgroup_id).collect();
    assert_eq!(ids, [600]);
    assert_eq!(s.all(OFF).unwrap().len(), 52);
    // Freed: nothing open is left at the address, the next memcg is new.
    let mut f = memcg(0x1000, 6, 600, State::Freed);
    f.free_ns = Stamp::at(4_000);
    s.write(&[rec(f)], OFF, NOW + 4).unwrap();
    s.write(&[rec(memcg(0x1000, 6, 601, State::Live))], OFF, NOW + 5)
        .unwrap();
    let all = s.all(OFF).unwrap();
    assert_eq!(all.len(), 53);
    assert_eq!(all[51].state, "freed");
}

#[test]
fn an_address_taken_by_a_new_memcg_closes_the_old_row() {
    let d = TempDir::new("lost");
    let mut s = Store::open(&d.0.join("h.db")).unwrap();
    s.write(&[rec(memcg(0x1000, 5, 100, State::Dying))], OFF, NOW)
        .unwrap();
    s.write(&[rec(memcg(0x1000, 6, 101, State::Live))], OFF, NOW + 1)
        .unwrap();
    let all = s.all(OFF).unwrap();
    let states: Vec<&str> = all.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, vec!["lost", "live"]);
    // mark_lost and other boots
    let id = all[1].row_id;
    assert_eq!(s.mark_lost(&[id], NOW + 2).unwrap(), 1);
    s.write(&[rec(memcg(0x2000, 8, 102, State::Dying))], OFF, NOW + 3)
        .unwrap();
    let path = s.path().to_path_buf();
    drop(s); // one writer at a time
    let mut other = Store::open(&path).unwrap().with_boot_id("another-boot");
    assert_eq!(other.retire_other_boots(NOW + 4).unwrap(), 1);
    drop(other);
    assert!(Store::open_existing(&path)
        .unwrap()
        .dying(OFF)
        .unwrap()
        .is_empty());
}

#[test]
fn retention_deletes_only_old_finished_rows() {
    let d = TempDir::new("retain");
    let mut s = Store::open(&d.0.join("h.db")).unwrap();
    let day = 86_400_000_000_000i64;
    let mut old = memcg(0x1000, 1, 1, State::Freed);
    old.free_ns = Stamp::at(5);
    s.write(&[rec(old)], OFF, NOW - 20 * day).unwrap();
    s.write(
        &[rec(memcg(0x2000, 2, 2, State::Dying))],
        OFF,
        NOW - 20 * day,
    )
    .unwrap();
    let mut recent = memcg(0x3000, 3, 3, State::Freed);
    recent.free_ns = Stamp::at(5);
    s.write(&[rec(recent)], OFF, NOW - day).unwrap();
    assert_eq!(s.prune(DEFAULT_RETAIN, NOW).unwrap(), 1);
    let left: Vec<u64> = s.all(OFF).unwrap().iter().map(|r| r.memcg.addr).collect();
    assert_eq!(left, vec![0x2000, 0x3000]);
}

#[test]
fn rows_since_are_open_or_recent_rows_of_every_boot() {
    let d = TempDir::new("since");
    let db = d.0.join("h.db");
    let day = 86_400_000_000_000i64;
    let mut s = Store::open(&db).unwrap();
    let mut old = memcg(0x1000, 1, 1, State::Freed);
    old.free_ns = Stamp::at(5);
    s.write(&[rec(old)], OFF, NOW - 20 * day).unwrap();
    let open = memcg(0x2000, 2, 2, State::Dying);
    s.write(&[rec(open)], OFF, NOW - 20 * day).unwrap();
    drop(s);
    let mut other = Store::open(&db).unwrap().with_boot_id("another-boot");
    let mut recent = memcg(0x3000, 3, 3, State::Freed);
    recent.free_ns = Stamp::at(5);
    other.write(&[rec(recent)], OFF, NOW - day).unwrap();
    drop(other);
    let s = Store::open_existing(&db).unwrap();
    let addrs: Vec<u64> = s
        .rows_since(NOW - 2 * day, OFF)
        .unwrap()
        .iter()
        .map(|r| r.memcg.addr)
        .collect();
    assert_eq!(addrs, vec![0x2000, 0x3000]);
}

#[test]
fn the_writer_thread_writes_batches_and_meta() {
    let d = TempDir::new("writer");
    let db = d.0.join("h.db");
    let mut w = writer::Writer::spawn(Store::open(&db).unwrap(), DEFAULT_RETAIN);
    for i in 0..10u64 {
        assert!(w.send(
            OFF,
            vec![rec(memcg(0x1000 + i, i as u32 + 1, 100 + i, State::Dying))]
        ));
    }
    assert!(w.send(OFF, Vec::new()));
    let stats = w.close();
    assert_eq!((stats.records, stats.errors), (10, 0));
    let s = Store::open_existing(&db).unwrap();
    assert_eq!(s.dying(OFF).unwrap().len(), 10);
    assert_eq!(s.meta("running").unwrap().as_deref(), Some("0"));
    let beat: i64 = s.meta("heartbeat").unwrap().unwrap().parse().unwrap();
    assert!((writer::now_ns() - beat).abs() < 60_000_000_000);
    assert_eq!(
        s.meta("writer_pid").unwrap(),
        Some(std::process::id().to_string())
    );
}

#[test]
fn prepare_restores_history_and_records_census_memcgs() {
    use crate::{
        attribution::Attributor,
        clock::Clock,
        lifecycle::{Lifecycle, LifecycleConfig},
        store::feed::{open, prepare, HistoryConfig},
    };
    let d = TempDir::new("prepare");
    let db = d.0.join("h.db");
    let clock = Clock::measure();
    let now = writer::now_ns();
    // A dying memcg in the history, attributed while its pod lived.
    {
        let mut s = Store::open(&db).unwrap();
        let mut m = memcg(0x1000, 5, 100, State::Dying);
        m.offline_ns = Stamp::at(Clock::mono_now() - 1_000_000_000);
        s.write(&[rec(m)], clock.offset_ns, now).unwrap();
    }
    let cfg = HistoryConfig {
        db: Some(db.clone()),
        retain: DEFAULT_RETAIN,
        runtime_roots: vec![d.0.clone()],
        skip_if_busy: false,
        cri_sockets: vec![d.0.join("no.sock")],
    };
    // The census of this start found it again and one memcg the history lacks.
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    let mut again = Memcg::new(0x1000, 0, Origin::Census); // ID zeroed at offline
    again.state = State::Dying;
    again.cgroup_id = 100;
    again.hierarchy_id = 4;
    lc.seed_memcg(again);
    let mut other = Memcg::new(0x2000, 9, Origin::Census);
    other.cgroup_id = 200;
    other.hierarchy_id = 4;
    other.path = Arc::from("/system.slice/cron.service");
    lc.seed_memcg(other);
    let (attr, feed, restored): (Attributor, _, _) =
        prepare(&cfg, open(&cfg).unwrap(), &mut lc, clock).unwrap();
    assert_eq!((restored.memcgs, restored.dying, restored.lost), (1, 1, 0));
    let m = lc.get(0x1000).unwrap();
    assert_eq!(
        (m.origin, m.memcg_id, m.residents().len()),
        (Origin::History, 5, 2)
    );
    assert_eq!(
        attr.get(0x1000).unwrap().owner.pod_uid(),
        Some("5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d")
    );
    assert_eq!(attr.get(0x2000).unwrap().label(), "cron.service");
    feed.unwrap().close(&lc, &attr);
    let s = Store::open_existing(&db).unwrap();
    let rows = s.all(clock.offset_ns).unwrap();
    let states: Vec<(u64, &str)> = rows
        .iter()
        .map(|r| (r.memcg.addr, r.state.as_str()))
        .collect();
    assert_eq!(states, vec![(0x1000, "dying"), (0x2000, "live")]);
    assert_eq!(
        rows[1].attribution.as_ref().unwrap().label(),
        "cron.service"
    );
}

#[test]
fn a_second_writer_is_refused_and_readers_still_read() {
    let d = TempDir::new("writers");
    let db = d.0.join("h.db");
    let mut first = Store::open(&db).unwrap();
    first
        .write(&[rec(memcg(0x1000, 5, 100, State::Dying))], OFF, NOW)
        .unwrap();
    let e = Store::open(&db).err().unwrap();
    assert!(matches!(e, StoreError::Busy { pid: Some(p), .. } if p == std::process::id()));
    let msg = e.to_string();
    assert!(
        msg.contains(&db.display().to_string()) && msg.contains("another kmem-trace"),
        "{msg}"
    );
    // A reader is no writer: it opens, reads and sees who writes.
    let r = Store::open_existing(&db).unwrap();
    assert!(!r.is_writer() && first.is_writer());
    assert_eq!(r.dying(OFF).unwrap().len(), 1);
    assert_eq!(lock::writer_pid(&db).unwrap(), Some(std::process::id()));
    drop(first);
    assert_eq!(lock::writer_pid(&db).unwrap(), None);
    drop(Store::open(&db).unwrap());
}

#[test]
fn readers_never_create_or_migrate() {
    let d = TempDir::new("readers");
    let db = d.0.join("h.db");
    let c = Connection::open(&db).unwrap();
    schema::migrate(&mut Connection::open(&db).unwrap()).unwrap();
    c.execute_batch("DROP TABLE sample; PRAGMA user_version = 1")
        .unwrap();
    drop(c);
    let e = Store::open_existing(&db).err().unwrap();
    assert!(matches!(e, StoreError::Older { found: 1, .. }), "{e}");
    assert!(e.to_string().contains(&db.display().to_string()), "{e}");
    let c = Connection::open(&db).unwrap();
    assert_eq!(schema::version(&c).unwrap(), 1);
    assert!(!lock::lock_path(&db).exists());
    assert!(Store::open_existing(&d.0.join("none.db")).is_err());
    assert!(!d.0.join("none.db").exists());
}

#[test]
fn a_read_only_copy_is_read() {
    let d = TempDir::new("rocopy");
    let src = d.0.join("h.db");
    let mut s = Store::open(&src).unwrap();
    s.write(&[rec(memcg(0x1000, 5, 100, State::Dying))], OFF, NOW)
        .unwrap();
    drop(s);
    // A copy in a read-only directory, the file 0444, no -shm beside it:
    // SQLite cannot create the WAL index there (it said "Error code 14").
    let ro = d.0.join("ro");
    fs::create_dir(&ro).unwrap();
    let copy = ro.join("copy.db");
    fs::copy(&src, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o444)).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let r = Store::open_existing(&copy);
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    let rows = r.unwrap().dying(OFF).unwrap();
    assert_eq!(rows.len(), 1);
}

#[test]
fn symlinks_are_refused_for_the_writer() {
    let d = TempDir::new("symlink");
    let target = d.0.join("precious");
    fs::write(&target, "keep").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    let db = d.0.join("h.db");
    std::os::unix::fs::symlink(&target, &db).unwrap();
    let e = Store::open(&db).err().unwrap();
    assert!(matches!(e, StoreError::Symlink(_)), "{e}");
    let wal = d.0.join("g.db-wal");
    std::os::unix::fs::symlink(&target, &wal).unwrap();
    let e = Store::open(&d.0.join("g.db")).err().unwrap();
    assert!(matches!(e, StoreError::Symlink(_)), "{e}");
    assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    assert_eq!(
        fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o644
    );
}

#[test]
fn a_busy_history_is_skipped_only_when_asked() {
    use super::feed::{open, HistoryConfig};
    let d = TempDir::new("busy");
    let db = d.0.join("h.db");
    let _writer = Store::open(&db).unwrap();
    let mut cfg = HistoryConfig {
        db: Some(db.clone()),
        ..HistoryConfig::default()
    };
    assert!(matches!(open(&cfg), Err(StoreError::Busy { .. })));
    cfg.skip_if_busy = true;
    assert!(open(&cfg).unwrap().is_none());
}

#[test]
fn unconfirmed_rows_are_open_but_not_dying() {
    let d = TempDir::new("unconfirmed");
    let db = d.0.join("h.db");
    let mut s = Store::open(&db).unwrap();
    let mut m = memcg(0x1000, 5, 100, State::Dying);
    m.unconfirmed = true;
    s.write(
        &[rec(m), rec(memcg(0x2000, 6, 200, State::Dying))],
        OFF,
        NOW,
    )
    .unwrap();
    let open = s.open_rows(OFF).unwrap();
    let states: Vec<(&str, bool)> = open
        .iter()
        .map(|r| (r.state.as_str(), r.memcg.unconfirmed))
        .collect();
    assert_eq!(states, vec![("unconfirmed", true), ("dying", false)]);
    let dying: Vec<u64> = s.dying(OFF).unwrap().iter().map(|r| r.memcg.addr).collect();
    assert_eq!(dying, vec![0x2000]);
    // Confirmed later (an event, a census): a dying row again, same row.
    s.write(&[rec(memcg(0x1000, 5, 100, State::Dying))], OFF, NOW + 1)
        .unwrap();
    assert_eq!(s.dying(OFF).unwrap().len(), 2);
    assert_eq!(s.all(OFF).unwrap().len(), 2);
}

/// A restart without a census (kernels before 6.1, an iterator failure)
/// after the memcgs were freed unseen: the history's dying rows come back
/// unconfirmed, not as zombies, and say so in the history.
#[test]
fn a_restart_without_census_restores_unconfirmed_not_zombies() {
    use crate::{
        attribution::Attributor,
        clock::Clock,
        lifecycle::{Lifecycle, LifecycleConfig},
        store::feed::{open, prepare, HistoryConfig},
    };
    let d = TempDir::new("nocensus");
    let db = d.0.join("h.db");
    let clock = Clock::measure();
    {
        let mut s = Store::open(&db).unwrap();
        let mut m = memcg(0x1000, 5, 100, State::Dying);
        m.offline_ns = Stamp::at(Clock::mono_now().saturating_sub(3_600_000_000_000));
        s.write(&[rec(m)], clock.offset_ns, writer::now_ns())
            .unwrap();
    }
    let cfg = HistoryConfig {
        db: Some(db.clone()),
        runtime_roots: vec![d.0.clone()],
        ..HistoryConfig::default()
    };
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    let (attr, feed, restored): (Attributor, _, _) =
        prepare(&cfg, open(&cfg).unwrap(), &mut lc, clock).unwrap();
    assert_eq!((restored.memcgs, restored.lost), (1, 0));
    let c = lc.counts(Clock::mono_now());
    assert_eq!((c.dying, c.zombies, c.unconfirmed), (0, 0, 1));
    feed.unwrap().close(&lc, &attr);
    let s = Store::open_existing(&db).unwrap();
    let rows = s.all(clock.offset_ns).unwrap();
    assert_eq!(rows[0].state, "unconfirmed");
    assert!(s.dying(clock.offset_ns).unwrap().is_empty());
}

#[test]
fn a_memcg_first_seen_dying_without_an_offline_keeps_when() {
    let d = TempDir::new("dyingby");
    let mut s = Store::open(&d.0.join("h.db")).unwrap();
    // Found dying by the start-up census: no offline event.
    let mut census = memcg(0xffff_8880_0000_1000, 7, 70, State::Live);
    census.state = State::Dying;
    // Traced through its offline.
    let traced = memcg(0xffff_8880_0000_2000, 8, 80, State::Dying);
    s.write(&[rec(census.clone()), rec(traced)], OFF, NOW)
        .unwrap();
    // A later write keeps the first time it was seen dying.
    s.write(&[rec(census)], OFF, NOW + 1_000).unwrap();
    let rows = s.dying(OFF).unwrap();
    let by = |a: u64| {
        rows.iter()
            .find(|r| r.memcg.addr == a)
            .unwrap()
            .wall
            .dying_by
    };
    assert_eq!(by(0xffff_8880_0000_1000), Some(NOW));
    assert_eq!(by(0xffff_8880_0000_2000), None, "its age is known");
}
