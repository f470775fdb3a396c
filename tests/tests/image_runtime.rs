//! The built image as the DaemonSet runs it, beside a real containerd: podman
//! runs `target/image/kmem-trace.oci.tar` (`KMEM_TRACE_IMAGE`) with the
//! manifest's capabilities (no privileged), read-only root and host mounts,
//! `--host-root=/host` and only containerd's task bundles mounted under it (no
//! CRI socket, as in deploy/base/daemonset.yaml). A CRI pod pins its memcg and
//! is deleted; the history the container wrote on the host path must name the
//! pod from the bundle files read through `--host-root`.
//! Run by `cargo xtask test`'s runtimes step (which builds the image first);
//! holds the kernel lock.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::Duration,
};

use kmem_trace_tests::{
    cri::{self, Containerd},
    lock::KernelLock,
    runtimes::{busybox_rootfs, run, wanted, Podman},
    wait_for, zombie_ending, zombies_json, Scratch, TestParent,
};

/// The DaemonSet's capabilities (deploy/base/daemonset.yaml, as `cargo xtask soak`).
const CAPS: &str = "BPF,PERFMON,SYSLOG,SYS_ADMIN";
/// Where the manifest mounts containerd's k8s.io task bundles.
const BUNDLES_IN_IMAGE: &str = "/host/run/containerd/io.containerd.runtime.v2.task/k8s.io";
const PORT: u16 = 19481;

/// HTTP status of `GET path` on the container's port, if it answers.
fn status(path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", PORT)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// `podman run -d` of the image as the manifest runs it.
fn run_image(podman: &Podman, reference: &str, bundles: &Path, history: &Path) {
    let mounts = [
        "/sys/fs/cgroup:/sys/fs/cgroup:ro".to_string(),
        "/sys/kernel/btf:/sys/kernel/btf:ro".into(),
        "/sys/kernel/tracing:/sys/kernel/tracing:ro".into(),
        format!("{}:{BUNDLES_IN_IMAGE}:ro", bundles.display()),
        format!("{}:/var/lib/kmem-trace", history.display()),
    ];
    let mut c = podman.cmd();
    c.args([
        "run",
        "-d",
        "--name",
        "kt-image",
        "--pid=host",
        "--network=host",
    ])
    .args([
        "--user",
        "0",
        "--cap-drop=all",
        &format!("--cap-add={CAPS}"),
    ])
    .args(["--security-opt", "no-new-privileges", "--read-only"])
    .arg("--read-only-tmpfs=false");
    for m in &mounts {
        c.arg("-v").arg(m);
    }
    c.args([
        reference,
        "serve",
        &format!("--listen=[127.0.0.1]:{PORT}"),
        "--host-root=/host",
        "--db=/var/lib/kmem-trace/history.db",
        "--zombie-after=1s",
    ]);
    run(&mut c).unwrap();
}

#[test]
fn the_image_names_a_cri_pod_through_host_root() {
    if !wanted("the_image_names_a_cri_pod_through_host_root") {
        return;
    }
    let Some(image) = std::env::var_os("KMEM_TRACE_IMAGE") else {
        eprintln!(
            "skipped: KMEM_TRACE_IMAGE (the archive of `cargo xtask image`) is not set; \
             `cargo xtask test` sets it"
        );
        return;
    };
    let _lock = KernelLock::take();
    let dir = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-rt-image-{}", std::process::id())),
    )
    .unwrap();
    let pins = Scratch::new(format!("/dev/shm/kmem-trace-rt-image-{}", std::process::id()).into())
        .unwrap();
    let history = dir.path().join("history");
    fs::create_dir_all(&history).unwrap();
    let tar = busybox_rootfs(dir.path()).unwrap();
    let parent = TestParent::new("rt-image").unwrap();
    let containerd = Containerd::start(dir.path(), &tar).unwrap();
    fs::create_dir_all(containerd.bundles()).unwrap();
    let podman = Podman::new(dir.path()).unwrap();
    let loaded = run(podman.cmd().args(["load", "-q", "-i"]).arg(&image)).unwrap();
    // "Loaded image: localhost/kmem-trace:0.1.0"
    let reference = loaded
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string();
    run_image(&podman, &reference, &containerd.bundles(), &history);
    // Ready: probes attached and the history writable (`/readyz`).
    let ready = wait_for(Duration::from_secs(120), || status("/readyz") == Some(200));
    let logs = || run(podman.cmd().args(["logs", "kt-image"])).unwrap_or_default();
    assert!(ready, "the image never became ready: {}", logs());

    let uid = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b";
    let cgroup_parent = format!("/{}/kubepods/besteffort/pod{uid}", parent.name);
    let pod = cri::Pod {
        name: "web-7d9c6b5f4-q2x8z",
        namespace: "shop",
        uid,
        labels: &[("app", "web"), ("pod-template-hash", "7d9c6b5f4")],
        cgroup_parent: &cgroup_parent,
    };
    let cmd = "head -c 4194304 /dev/zero > /pin/image";
    let (_sandbox, app) = cri::run_pod(
        &containerd.socket(),
        &pod,
        "app",
        &["sh", "-c", cmd],
        pins.path(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SIGTERM, as kubelet stops the pod: serve detaches and closes the history.
    run(podman.cmd().args(["stop", "-t", "20", "kt-image"])).unwrap();
    let code = run(podman
        .cmd()
        .args(["inspect", "-f", "{{.State.ExitCode}}", "kt-image"]))
    .unwrap();
    assert_eq!(code.trim(), "0", "serve in the image: {}", logs());

    let z = zombies_json(&history.join("history.db")).unwrap();
    let a = zombie_ending(&z, &app).unwrap_or_else(|| panic!("CRI zombie missing: {z:#}"));
    assert_eq!(a["owner"]["runtime"], "containerd", "{a:#}");
    assert_eq!(a["owner"]["kind"], "pod", "{a:#}");
    assert_eq!(a["owner"]["namespace"], "shop", "{a:#}");
    assert_eq!(a["owner"]["pod"], pod.name, "{a:#}");
    assert_eq!(a["owner"]["pod_uid"], uid, "{a:#}");
    assert_eq!(a["owner"]["container"], "app", "{a:#}");
    assert_eq!(a["owner"]["image"], cri::IMAGE, "{a:#}");
    assert_eq!(a["pin_cause"], "tmpfs", "{a:#}");
    // The pod's labels come only over CRI, which the manifest does not mount:
    // the workload is unknown rather than guessed from the pod's name.
    eprintln!("workload without CRI: {}", a["owner"]["workload"]);
    drop(podman);
    drop(pins);
    drop(containerd);
    drop(parent);
}
