//! Root integration test of attribution that outlives the pod: a containerd-style
//! task bundle with CRI annotations and a `kubepods/burstable/pod<uid>/<id>`
//! cgroup under the test's parent; a resident process pins memory in tmpfs; the
//! cgroup and then the bundle are removed. `zombies --json` must still name the
//! pod, namespace, container and resident, also after `kill -9` of the tracer
//! and a restart (history + reconcile); the restarted tracer then sees the
//! memcg freed, with its owner, once the tmpfs file is deleted.
//! Needs: root, a memory cgroup controller, BPF with tp_btf.

use std::{fs, time::Duration};

use kmem_trace_tests::{
    pod::{PodNames, PodSession},
    require_root, wait_for, zombie_ending, zombies_json, TestParent, Tracer,
};
use serde_json::Value;

const POD: &str = "web-attr-0";
const NAMESPACE: &str = "kt-attr";
const CONTAINER: &str = "pinner";
const IMAGE: &str = "registry.example/kmem-trace/pinner:1.0";

/// Names the pod, namespace, container and the resident that pinned memory.
fn names_everything(z: &Value) -> bool {
    let o = &z["owner"];
    let residents: Vec<&str> = z["residents"]
        .as_array()
        .map(|r| r.iter().filter_map(|t| t["comm"].as_str()).collect())
        .unwrap_or_default();
    o["kind"] == "pod"
        && o["pod"] == POD
        && o["namespace"] == NAMESPACE
        && o["container"] == CONTAINER
        && o["image"] == IMAGE
        && o["qos"] == "burstable"
        && residents.contains(&"head")
        && z["pinned_bytes"].as_u64().unwrap_or(0) >= 16 << 20
}

#[test]
fn attribution_survives_the_pod_and_a_tracer_restart() {
    if !require_root("attribution_survives_the_pod_and_a_tracer_restart") {
        return;
    }
    let mut parent = TestParent::new("attr").unwrap();
    let names = PodNames {
        pod: POD,
        namespace: NAMESPACE,
        container: CONTAINER,
        image: IMAGE,
    };
    let session = PodSession::new(&parent, &names).unwrap();
    let (db, uid, cid) = (&session.db, &session.uid, &session.cid);
    let args = session.watch_args();
    let mut tracer = Tracer::start(&args).unwrap();

    // The kubelet's cgroupfs layout below the test's parent, left pinned.
    let pin = session.pin_then_delete(&mut parent).unwrap();

    let mut last = Value::Null;
    let named = wait_for(Duration::from_secs(20), || {
        last = zombies_json(db).unwrap();
        zombie_ending(&last, cid).is_some_and(names_everything)
    });
    assert!(named, "zombies did not name the pod: {last:#}");
    let z = zombie_ending(&last, cid).unwrap();
    assert_eq!(z["owner"]["pod_uid"], uid.as_str());
    assert_eq!(z["owner"]["container_id"], cid.as_str());
    // The pod-level cgroup is pinned by its child and named from the container.
    let pod_level = zombie_ending(&last, &format!("pod{uid}")).expect("pod-level memcg listed");
    assert_eq!(pod_level["owner"]["pod"], POD, "{pod_level:#}");

    // kill -9: the history keeps what was written.
    let (code, _) = tracer.stop_with(libc::SIGKILL).unwrap();
    assert_eq!(code, None, "killed by a signal");
    let after_kill = zombies_json(db).unwrap();
    assert!(
        zombie_ending(&after_kill, cid).is_some_and(names_everything),
        "{after_kill:#}"
    );

    // Restart: the dying memcgs are restored with their owner.
    let mut tracer = Tracer::start(&args).unwrap();
    let restored = tracer
        .stderr
        .iter()
        .find(|l| l.contains("memcgs restored"))
        .cloned()
        .unwrap_or_default();
    assert!(
        !restored.contains(": 0 memcgs restored"),
        "nothing restored: {:?}",
        tracer.stderr
    );
    let again = zombies_json(db).unwrap();
    assert!(
        zombie_ending(&again, cid).is_some_and(names_everything),
        "{again:#}"
    );

    // Deleting the file frees the memcg; the restarted tracer names its owner.
    fs::remove_file(&pin).unwrap();
    let freed_with_owner = |events: &[Value]| {
        events.iter().any(|e| {
            e["kind"] == "free"
                && e["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(cid.as_str()))
                && e["owner"]["pod"] == POD
        })
    };
    let freed = wait_for(Duration::from_secs(30), || freed_with_owner(&tracer.json()));
    let gone = wait_for(Duration::from_secs(10), || {
        zombie_ending(&zombies_json(db).unwrap(), cid).is_none()
    });
    let still = zombie_ending(&zombies_json(db).unwrap(), cid).cloned();
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "stderr: {:?}", tracer.stderr);
    assert!(
        freed,
        "no free event with the owner after the restart; the memcg as listed: {still:#?}"
    );
    assert!(gone, "the freed memcg is still listed as a zombie");
}
