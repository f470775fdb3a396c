//! Root integration test of the whole pipeline on the real kernel: a churn of
//! memcgs, some pinned by tmpfs files, traced by `kmem-trace watch --json`.
//! Needs: root, a memory cgroup controller, BPF with tp_btf.

use std::{
    collections::{HashMap, HashSet},
    fs,
    path::PathBuf,
    time::Duration,
};

use kmem_trace_tests::{json_lines, require_root, wait_for, TestParent, Tracer};
use serde_json::Value;

const N: usize = 200;
const PINNED: usize = 50;

/// Events of one kind whose path lies under our parent.
fn ours<'a>(events: &'a [Value], parent: &str, kind: &str) -> Vec<&'a Value> {
    let prefix = format!("/{parent}/");
    events
        .iter()
        .filter(|e| e["kind"] == kind && e["path"].as_str().is_some_and(|p| p.starts_with(&prefix)))
        .collect()
}

#[test]
fn churn_with_tmpfs_pins() {
    if !require_root("churn_with_tmpfs_pins") {
        return;
    }
    let mut parent = TestParent::new("churn").unwrap();
    let shm = PathBuf::from(format!("/dev/shm/{}", parent.name));
    fs::create_dir_all(&shm).unwrap();
    let t0 = std::time::Instant::now();
    let mut tracer =
        Tracer::start(&["watch", "--json", "--no-history", "--zombie-after", "1s"]).unwrap();
    eprintln!("{:?} tracer ready", t0.elapsed());

    let mut cgroups = Vec::new();
    for i in 0..N {
        cgroups.push(parent.child(&format!("c{i}")).unwrap());
    }
    // A child process in each memcg writes 64 KiB to a tmpfs file: page cache
    // charged to that memcg, which pins it after rmdir while the file exists.
    for (i, cg) in cgroups.iter().enumerate() {
        let f = shm.join(format!("f{i}"));
        parent.track_file(&f);
        parent
            .run_in(cg, &format!("head -c 65536 /dev/zero > '{}'", f.display()))
            .unwrap();
    }
    for i in PINNED..N {
        fs::remove_file(shm.join(format!("f{i}"))).unwrap();
    }
    eprintln!("{:?} memcgs charged", t0.elapsed());
    for cg in &cgroups {
        parent.rmdir(cg).unwrap();
    }
    eprintln!("{:?} memcgs removed", t0.elapsed());

    // The unpinned memcgs are freed; the pinned ones stay dying.
    let freed_unpinned = wait_for(Duration::from_secs(30), || {
        ours(&tracer.json(), &parent.name, "free").len() >= N - PINNED
    });
    assert!(
        freed_unpinned,
        "only {} of {} unpinned memcgs were freed",
        ours(&tracer.json(), &parent.name, "free").len(),
        N - PINNED
    );
    eprintln!("{:?} unpinned memcgs freed", t0.elapsed());
    std::thread::sleep(Duration::from_secs(2));
    let events = tracer.json();
    let freed: HashSet<&str> = ours(&events, &parent.name, "free")
        .iter()
        .filter_map(|e| e["path"].as_str())
        .collect();
    for i in 0..PINNED {
        let p = format!("/{}/c{i}", parent.name);
        assert!(
            !freed.contains(p.as_str()),
            "{p} was freed while its tmpfs file still exists"
        );
    }
    assert_eq!(freed.len(), N - PINNED);

    // Deleting the files frees the pinned memcgs within a bound.
    for i in 0..PINNED {
        fs::remove_file(shm.join(format!("f{i}"))).unwrap();
    }
    let all_freed = wait_for(Duration::from_secs(30), || {
        ours(&tracer.json(), &parent.name, "free").len() >= N
    });
    eprintln!("{:?} pinned memcgs freed", t0.elapsed());
    let (code, out) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "stderr: {:?}", tracer.stderr);
    let events = json_lines(&out).unwrap();
    assert!(
        all_freed,
        "pinned memcgs not freed 30s after their files were deleted"
    );

    let allocs = ours(&events, &parent.name, "alloc");
    let offlines = ours(&events, &parent.name, "offline");
    assert_eq!(allocs.len(), N, "alloc events");
    assert_eq!(offlines.len(), N, "offline events");
    let ids: HashSet<u64> = allocs
        .iter()
        .map(|e| e["memcg_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), N, "memcg IDs of live memcgs must be distinct");
    // Every offline of a pinned memcg reported the tmpfs pages it held.
    let by_path: HashMap<&str, &Value> = offlines
        .iter()
        .map(|e| (e["path"].as_str().unwrap(), *e))
        .collect();
    for i in 0..PINNED {
        let e = by_path[format!("/{}/c{i}", parent.name).as_str()];
        assert!(e["mem_bytes"].as_u64().unwrap() >= 65536, "{e}");
        assert_eq!(e["state"], "dying");
    }
    let summary = events.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(summary["drops"], 0);
    fs::remove_dir_all(&shm).unwrap();
}
