//! Root integration test of attribution that outlives the pod: a containerd-style
//! task bundle with CRI annotations and a `kubepods/burstable/pod<uid>/<id>`
//! cgroup under the test's parent; a resident process pins memory in tmpfs; the
//! cgroup and then the bundle are removed. `zombies --json` must still name the
//! pod, namespace, container and resident, also after `kill -9` of the tracer
//! and a restart (history + reconcile); the restarted tracer then sees the
//! memcg freed, with its owner, once the tmpfs file is deleted.
//! Needs: root, a memory cgroup controller, BPF with tp_btf.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use kmem_trace_tests::{kmem_trace_bin, require_root, wait_for, TestParent, Tracer};
use serde_json::Value;

const POD: &str = "web-attr-0";
const NAMESPACE: &str = "kt-attr";
const CONTAINER: &str = "pinner";
const IMAGE: &str = "registry.example/kmem-trace/pinner:1.0";

/// A scratch directory removed on drop (runtime root and history database).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A containerd task bundle as the CRI plugin leaves it for a running container.
fn write_bundle(root: &Path, cid: &str, sandbox: &str, uid: &str) -> PathBuf {
    let dir = root.join(cid);
    fs::create_dir_all(dir.join("rootfs")).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.1.0",
        "process": {"args": ["/pinner"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": CONTAINER,
            "io.kubernetes.cri.image-name": IMAGE,
            "io.kubernetes.cri.sandbox-id": sandbox,
            "io.kubernetes.cri.sandbox-name": POD,
            "io.kubernetes.cri.sandbox-namespace": NAMESPACE,
            "io.kubernetes.cri.sandbox-uid": uid,
        },
        "linux": {"cgroupsPath": format!("/kubepods/burstable/pod{uid}/{cid}")},
    });
    fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    fs::write(dir.join("init.pid"), "1").unwrap();
    dir
}

/// `kmem-trace zombies --json --db DB`, parsed.
fn zombies(db: &Path) -> Value {
    let out = Command::new(kmem_trace_bin().unwrap())
        .args(["zombies", "--json", "--db"])
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zombies failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The zombie entry of the container cgroup, if listed.
fn entry(report: &Value, cid: &str) -> Option<Value> {
    report["zombies"]
        .as_array()?
        .iter()
        .find(|z| z["path"].as_str().is_some_and(|p| p.ends_with(cid)))
        .cloned()
}

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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let scratch = Scratch(std::env::temp_dir().join(format!("kmem-trace-attr-{}", parent.name)));
    let runtime = scratch.0.join("k8s.io");
    fs::create_dir_all(&runtime).unwrap();
    let db = scratch.0.join("history.db");
    let uid = format!(
        "{:08x}-4d1c-4c35-9b8e-{:012x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    );
    let cid = format!("{:064x}", nanos ^ 0x5eed);
    let sandbox = format!("{:064x}", nanos ^ 0xbeef);
    let bundle = write_bundle(&runtime, &cid, &sandbox, &uid);

    let args = [
        "watch",
        "--json",
        "--zombie-after",
        "1s",
        "--db",
        db.to_str().unwrap(),
        "--runtime-root",
        runtime.to_str().unwrap(),
    ];
    let mut tracer = Tracer::start(&args).unwrap();

    // The kubelet's cgroupfs layout below the test's parent.
    let levels = [
        "kubepods".to_string(),
        "kubepods/burstable".to_string(),
        format!("kubepods/burstable/pod{uid}"),
        format!("kubepods/burstable/pod{uid}/{cid}"),
    ];
    let dirs: Vec<PathBuf> = levels.iter().map(|l| parent.child(l).unwrap()).collect();
    let container = dirs.last().unwrap().clone();
    let pin = PathBuf::from(format!("/dev/shm/{}-pin", parent.name));
    parent.track_file(&pin);
    // `sh` enters by attach, forks `head`, which execs and fills the tmpfs file.
    parent
        .run_in(
            &container,
            &format!("head -c 16777216 /dev/zero > '{}'", pin.display()),
        )
        .unwrap();
    for d in dirs.iter().rev() {
        parent.rmdir(d).unwrap();
    }
    fs::remove_dir_all(&bundle).unwrap();

    let mut last = Value::Null;
    let named = wait_for(Duration::from_secs(20), || {
        last = zombies(&db);
        entry(&last, &cid).is_some_and(|z| names_everything(&z))
    });
    assert!(named, "zombies did not name the pod: {last:#}");
    let z = entry(&last, &cid).unwrap();
    assert_eq!(z["owner"]["pod_uid"], uid.as_str());
    assert_eq!(z["owner"]["container_id"], cid.as_str());
    // The pod-level cgroup is pinned by its child and named from the container.
    let pod_level = last["zombies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["path"].as_str().unwrap().ends_with(&format!("pod{uid}")))
        .cloned()
        .expect("pod-level memcg listed");
    assert_eq!(pod_level["owner"]["pod"], POD, "{pod_level:#}");

    // kill -9: the history keeps what was written.
    let (code, _) = tracer.stop_with(libc::SIGKILL).unwrap();
    assert_eq!(code, None, "killed by a signal");
    let after_kill = zombies(&db);
    assert!(
        entry(&after_kill, &cid).is_some_and(|z| names_everything(&z)),
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
    let again = zombies(&db);
    assert!(
        entry(&again, &cid).is_some_and(|z| names_everything(&z)),
        "{again:#}"
    );

    // Deleting the file frees the memcg; the restarted tracer names its owner.
    fs::remove_file(&pin).unwrap();
    let freed_with_owner = |events: &[Value]| {
        events.iter().any(|e| {
            e["kind"] == "free"
                && e["path"].as_str().is_some_and(|p| p.ends_with(&cid))
                && e["owner"]["pod"] == POD
        })
    };
    let freed = wait_for(Duration::from_secs(30), || freed_with_owner(&tracer.json()));
    let gone = wait_for(Duration::from_secs(10), || {
        entry(&zombies(&db), &cid).is_none()
    });
    let still = entry(&zombies(&db), &cid);
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "stderr: {:?}", tracer.stderr);
    assert!(
        freed,
        "no free event with the owner after the restart; the memcg as listed: {still:#?}"
    );
    assert!(gone, "the freed memcg is still listed as a zombie");
}
