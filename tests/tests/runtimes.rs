//! Real container runtimes end to end, as their users drive them: podman
//! (plain and in a pod) and Docker (plain and dockershim-style pod containers
//! with kubelet's cgroup parent and labels). Each container pins its memcg
//! with a tmpfs file on the host and is removed; `zombies --json` (after the
//! tracer stopped, so with a census) must name runtime, container, image,
//! pod, namespace and workload (containerd: over CRI) where they exist, the creator, the residents
//! and the pin cause. Daemons are stopped and cgroups removed even on failure.
//! Run by `cargo xtask test`'s runtimes step; holds the kernel lock.

use std::{fs, path::Path, time::Duration};

use kmem_trace_tests::{
    lock::KernelLock,
    runtimes::{busybox_rootfs, run, wanted, Dockerd, Podman},
    zombie_ending, zombies_json, Scratch, TestParent, Tracer,
};
use serde_json::Value;

/// The container's command: 4 MiB into a host tmpfs file of its own.
fn pin(file: &str) -> String {
    format!("head -c 4194304 /dev/zero > /pin/{file}")
}

/// The tracer on a private history reading `roots` (and `cri`, a CRI socket)
/// for metadata.
fn tracer(db: &Path, roots: &[&Path], cri: Option<&Path>) -> Tracer {
    let mut args = vec![
        "watch".to_string(),
        "--json".into(),
        "--zombie-after".into(),
        "1s".into(),
        "--db".into(),
        db.display().to_string(),
    ];
    for r in roots {
        args.push("--runtime-root".into());
        args.push(r.display().to_string());
    }
    // No CRI socket of the host: only the runtime under test answers.
    let none = db.with_extension("no-cri.sock");
    args.push("--cri-socket".into());
    args.push(cri.unwrap_or(&none).display().to_string());
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Tracer::start(&a).unwrap()
}

/// Stops the tracer, then the zombie list (history + census, pin causes).
fn zombies_after_stop(mut t: Tracer, db: &Path) -> Value {
    let (code, _) = t.stop().unwrap();
    assert_eq!(code, Some(0), "tracer: {:?}", t.stderr);
    zombies_json(db).unwrap()
}

fn has_resident(z: &Value, comm: &str) -> bool {
    z["residents"]
        .as_array()
        .is_some_and(|r| r.iter().any(|t| t["comm"] == comm))
}

/// What every zombie of ours must say: tmpfs pin, a creator, the container's
/// `sh` as a resident (busybox runs `head` in it without exec), the runtime
/// and the image.
fn assert_common(z: &Value, runtime: &str, image: &str) {
    assert_eq!(z["owner"]["runtime"], runtime, "{z:#}");
    assert_eq!(z["owner"]["image"], image, "{z:#}");
    assert_eq!(z["pin_cause"], "tmpfs", "{z:#}");
    assert!(z["creator"]["comm"].is_string(), "{z:#}");
    assert!(has_resident(z, "sh"), "{z:#}");
    assert!(z["pinned_bytes"].as_u64().unwrap_or(0) >= 4 << 20, "{z:#}");
}

/// A host tmpfs directory the containers write their pin file into.
fn pin_dir(tag: &str) -> Scratch {
    Scratch::new(format!("/dev/shm/kmem-trace-rt-{tag}-{}", std::process::id()).into()).unwrap()
}

#[test]
fn podman_plain_and_pod_containers_are_named() {
    if !wanted("podman_plain_and_pod_containers_are_named") {
        return;
    }
    let _lock = KernelLock::take();
    let dir = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-rt-podman-{}", std::process::id())),
    )
    .unwrap();
    let pins = pin_dir("podman");
    let tar = busybox_rootfs(dir.path()).unwrap();
    let podman = Podman::new(dir.path()).unwrap();
    run(podman
        .cmd()
        .arg("import")
        .arg(&tar)
        .arg("localhost/kt-busybox:1"))
    .unwrap();
    fs::create_dir_all(podman.containers_dir()).unwrap();
    let db = dir.path().join("history.db");
    let t = tracer(&db, &[&podman.containers_dir()], None);
    let vol = format!("{}:/pin", pins.path().display());
    let plain = run(podman.cmd().args([
        "create",
        "--name",
        "kt-plain",
        "-v",
        &vol,
        "localhost/kt-busybox:1",
        "sh",
        "-c",
        &pin("plain"),
    ]))
    .unwrap();
    // Wait for the tracer to attribute the container while it exists.
    run(podman.cmd().args(["start", "-a", "kt-plain"])).unwrap();
    run(podman.cmd().args([
        "pod",
        "create",
        "--name",
        "kt-pod",
        "--infra-image",
        "localhost/kt-busybox:1",
        "--infra-command",
        "/pause",
    ]))
    .unwrap();
    let in_pod = run(podman.cmd().args([
        "create",
        "--pod",
        "kt-pod",
        "--name",
        "kt-inpod",
        "-v",
        &vol,
        "localhost/kt-busybox:1",
        "sh",
        "-c",
        &pin("inpod"),
    ]))
    .unwrap();
    run(podman.cmd().args(["start", "-a", "kt-inpod"])).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    run(podman.cmd().args(["rm", "kt-plain", "kt-inpod"])).unwrap();
    run(podman.cmd().args(["pod", "rm", "-f", "kt-pod"])).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let z = zombies_after_stop(t, &db);
    let p = zombie_ending(&z, &format!("libpod-{plain}"))
        .unwrap_or_else(|| panic!("plain zombie missing: {z:#}"));
    assert_common(p, "podman", "localhost/kt-busybox:1");
    assert_eq!(p["owner"]["kind"], "container", "{p:#}");
    assert_eq!(p["owner"]["container"], "kt-plain", "{p:#}");
    assert!(
        p["path"].as_str().unwrap().starts_with("/libpod_parent/"),
        "{p:#}"
    );
    let q = zombie_ending(&z, &format!("libpod-{in_pod}"))
        .unwrap_or_else(|| panic!("pod zombie missing: {z:#}"));
    assert_common(q, "podman", "localhost/kt-busybox:1");
    assert_eq!(q["owner"]["container"], "kt-inpod", "{q:#}");
    assert_eq!(q["owner"]["pod"], "kt-pod", "{q:#}");
    assert!(q["owner"]["pod_uid"].is_string(), "{q:#}");
    // The pins go first, so the zombies are freed before the cgroups are removed.
    drop(pins);
    drop(podman);
}

#[test]
fn docker_plain_and_dockershim_pod_containers_are_named() {
    if !wanted("docker_plain_and_dockershim_pod_containers_are_named") {
        return;
    }
    let _lock = KernelLock::take();
    let dir = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-rt-docker-{}", std::process::id())),
    )
    .unwrap();
    let pins = pin_dir("docker");
    let tar = busybox_rootfs(dir.path()).unwrap();
    // Every cgroup below a parent of this test (removed on drop).
    let parent = TestParent::new("rt-docker").unwrap();
    let docker = Dockerd::start(dir.path()).unwrap();
    run(docker.cmd().arg("import").arg(&tar).arg("kt-busybox:1")).unwrap();
    let db = dir.path().join("history.db");
    let t = tracer(&db, &[&docker.containers_dir()], None);
    let vol = format!("{}:/pin", pins.path().display());
    let plain_parent = format!("/{}/docker", parent.name);
    let plain = run(docker.cmd().args([
        "run",
        "--name",
        "kt-plain",
        "--network",
        "none",
        "--cgroup-parent",
        &plain_parent,
        "-v",
        &vol,
        "kt-busybox:1",
        "sh",
        "-c",
        &pin("plain"),
    ]))
    .unwrap_or_default();
    let plain = if plain.is_empty() {
        run(docker.cmd().args(["inspect", "-f", "{{.Id}}", "kt-plain"])).unwrap()
    } else {
        plain
    };
    // dockershim (kubelet 1.12): a sandbox with the pod's labels, the app
    // container joining its IPC namespace, both under the pod's cgroup.
    let uid = "8f1c2d3e-4b5a-4c6d-9e8f-0a1b2c3d4e5f";
    let pod = "web-7d4b9c8f6-x2x9k";
    let pod_parent = format!("/{}/kubepods/burstable/pod{uid}", parent.name);
    let kube = |kind: &str, container: &str| {
        vec![
            "--label".to_string(),
            format!("io.kubernetes.docker.type={kind}"),
            "--label".into(),
            format!("io.kubernetes.container.name={container}"),
            "--label".into(),
            format!("io.kubernetes.pod.name={pod}"),
            "--label".into(),
            "io.kubernetes.pod.namespace=shop".into(),
            "--label".into(),
            format!("io.kubernetes.pod.uid={uid}"),
        ]
    };
    let mut sb = vec![
        "run",
        "-d",
        "--name",
        "k8s_POD_web",
        "--network",
        "none",
        "--ipc",
        "shareable",
        "--cgroup-parent",
        &pod_parent,
        "--label",
        "app=web",
        "--label",
        "pod-template-hash=7d4b9c8f6",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    sb.extend(kube("podsandbox", "POD"));
    sb.extend(["kt-busybox:1", "sleep", "3600"].map(String::from));
    let sandbox = run(docker.cmd().args(&sb)).unwrap();
    let ipc = format!("container:{sandbox}");
    let mut app = vec![
        "create",
        "--name",
        "k8s_app_web",
        "--network",
        "none",
        "--ipc",
        &ipc,
        "--cgroup-parent",
        &pod_parent,
        "-v",
        &vol,
        "--label",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    app.push(format!("io.kubernetes.sandbox.id={sandbox}"));
    app.extend(kube("container", "app"));
    app.extend(["kt-busybox:1", "sh", "-c", &pin("app")].map(String::from));
    let app_id = run(docker.cmd().args(&app)).unwrap();
    run(docker.cmd().args(["start", "-a", "k8s_app_web"])).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    run(docker.cmd().args(["rm", "kt-plain", "k8s_app_web"])).unwrap();
    run(docker.cmd().args(["rm", "-f", "k8s_POD_web"])).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let z = zombies_after_stop(t, &db);
    let p = zombie_ending(&z, &plain).unwrap_or_else(|| panic!("plain zombie missing: {z:#}"));
    assert_common(p, "docker", "kt-busybox:1");
    assert_eq!(p["owner"]["container"], "kt-plain", "{p:#}");
    let a = zombie_ending(&z, &app_id).unwrap_or_else(|| panic!("pod zombie missing: {z:#}"));
    assert_common(a, "docker", "kt-busybox:1");
    assert_eq!(a["owner"]["kind"], "pod", "{a:#}");
    assert_eq!(a["owner"]["namespace"], "shop", "{a:#}");
    assert_eq!(a["owner"]["pod"], pod, "{a:#}");
    assert_eq!(a["owner"]["container"], "app", "{a:#}");
    assert_eq!(a["owner"]["workload"], "Deployment/web", "{a:#}");
    // Other zombies of the host may rank higher: find ours among the top.
    let top = z["top_workloads"].as_array().unwrap();
    assert!(
        top.iter().any(|w| w["workload"] == "Deployment/web"
            && w["namespace"] == "shop"
            && w["zombies"] == 1),
        "{top:#?}"
    );
    drop(pins);
    drop(docker);
    drop(parent);
}

#[test]
fn containerd_cri_pod_containers_are_named() {
    if !wanted("containerd_cri_pod_containers_are_named") {
        return;
    }
    let _lock = KernelLock::take();
    let dir = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-rt-containerd-{}", std::process::id())),
    )
    .unwrap();
    let pins = pin_dir("containerd");
    let tar = busybox_rootfs(dir.path()).unwrap();
    let parent = TestParent::new("rt-cri").unwrap();
    let containerd = kmem_trace_tests::cri::Containerd::start(dir.path(), &tar).unwrap();
    fs::create_dir_all(containerd.bundles()).unwrap();
    let db = dir.path().join("history.db");
    let t = tracer(&db, &[&containerd.bundles()], Some(&containerd.socket()));
    let uid = "3c4d5e6f-7a8b-4c9d-8e0f-1a2b3c4d5e6f";
    let cgroup_parent = format!("/{}/kubepods/burstable/pod{uid}", parent.name);
    let pod = kmem_trace_tests::cri::Pod {
        name: "backup-29425980-kx7p2",
        namespace: "ops",
        uid,
        labels: &[
            ("batch.kubernetes.io/job-name", "backup-29425980"),
            ("job-name", "backup-29425980"),
        ],
        cgroup_parent: &cgroup_parent,
    };
    let cmd = pin("cri");
    let (_sandbox, app) = kmem_trace_tests::cri::run_pod(
        &containerd.socket(),
        &pod,
        "dump",
        &["sh", "-c", &cmd],
        pins.path(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let z = zombies_after_stop(t, &db);
    let a = zombie_ending(&z, &app).unwrap_or_else(|| panic!("CRI zombie missing: {z:#}"));
    assert_common(a, "containerd", kmem_trace_tests::cri::IMAGE);
    assert_eq!(a["owner"]["kind"], "pod", "{a:#}");
    assert_eq!(a["owner"]["namespace"], "ops", "{a:#}");
    assert_eq!(a["owner"]["pod"], pod.name, "{a:#}");
    assert_eq!(a["owner"]["container"], "dump", "{a:#}");
    assert_eq!(a["owner"]["pod_uid"], uid, "{a:#}");
    // The pod's labels come over CRI: a CronJob's Job.
    assert_eq!(a["owner"]["workload"], "CronJob/backup", "{a:#}");
    drop(pins);
    drop(containerd);
    drop(parent);
}
