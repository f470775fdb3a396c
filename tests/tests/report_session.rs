//! The incident report of a real session: a containerd-style pod cgroup under
//! the test's parent pins 16 MiB of tmpfs and is removed while `watch` records
//! the history; `report --format html` (history + a fresh census + doctor) must
//! then be one self-contained file with the timeline chart that names the pod,
//! its namespace and container, and render in headless Chromium.
//! Needs: root, a memory cgroup controller, BPF. Run it under
//! `flock /tmp/kmem-trace-kernel.lock` next to other root tests.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use kmem_trace_tests::{
    browser::{chromium, png_stats, screenshot, SERIES_COLOURS},
    kmem_trace_bin, require_root, wait_for, TestParent, Tracer,
};
use serde_json::Value;

const POD: &str = "checkout-report-0";
const NAMESPACE: &str = "kt-report";
const CONTAINER: &str = "leaker";

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write_bundle(root: &Path, cid: &str, uid: &str) -> PathBuf {
    let dir = root.join(cid);
    fs::create_dir_all(&dir).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.1.0",
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": CONTAINER,
            "io.kubernetes.cri.image-name": "registry.example/kt/leaker:2",
            "io.kubernetes.cri.sandbox-name": POD,
            "io.kubernetes.cri.sandbox-namespace": NAMESPACE,
            "io.kubernetes.cri.sandbox-uid": uid,
        },
    });
    fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir
}

fn zombies_json(db: &Path) -> Value {
    let out = Command::new(kmem_trace_bin().unwrap())
        .args(["zombies", "--json", "--db"])
        .arg(db)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

#[test]
fn html_report_of_a_session_with_pinned_zombies_names_the_pod() {
    if !require_root("html_report_of_a_session_with_pinned_zombies_names_the_pod") {
        return;
    }
    let mut parent = TestParent::new("report").unwrap();
    let scratch = Scratch(std::env::temp_dir().join(format!("{}-report", parent.name)));
    let runtime = scratch.0.join("k8s.io");
    fs::create_dir_all(&runtime).unwrap();
    let db = scratch.0.join("history.db");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let uid = format!(
        "{:08x}-7a1c-4c35-9b8e-{:012x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    );
    let cid = format!("{:064x}", nanos ^ 0xc0ffee);
    let bundle = write_bundle(&runtime, &cid, &uid);
    let mut tracer = Tracer::start(&[
        "watch",
        "--json",
        "--zombie-after",
        "1s",
        "--db",
        db.to_str().unwrap(),
        "--runtime-root",
        runtime.to_str().unwrap(),
    ])
    .unwrap();

    let levels = [
        "kubepods".to_string(),
        "kubepods/burstable".to_string(),
        format!("kubepods/burstable/pod{uid}"),
        format!("kubepods/burstable/pod{uid}/{cid}"),
    ];
    let dirs: Vec<PathBuf> = levels.iter().map(|l| parent.child(l).unwrap()).collect();
    let pin = PathBuf::from(format!("/dev/shm/{}-pin", parent.name));
    parent.track_file(&pin);
    parent
        .run_in(
            dirs.last().unwrap(),
            &format!("head -c 16777216 /dev/zero > '{}'", pin.display()),
        )
        .unwrap();
    for d in dirs.iter().rev() {
        parent.rmdir(d).unwrap();
    }
    fs::remove_dir_all(&bundle).unwrap();
    let mut last = Value::Null;
    let named = wait_for(Duration::from_secs(30), || {
        last = zombies_json(&db);
        last["zombies"].as_array().is_some_and(|z| {
            z.iter().any(|z| {
                z["path"].as_str().is_some_and(|p| p.ends_with(&cid)) && z["owner"]["pod"] == POD
            })
        })
    });
    assert!(named, "the history never named the pod: {last:#}");
    // A few seconds more of samples, then a clean stop (a last sample).
    std::thread::sleep(Duration::from_secs(3));
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "{:?}", tracer.stderr);

    let html_path = scratch.0.join("report.html");
    let out = Command::new(kmem_trace_bin().unwrap())
        .args([
            "report",
            "--format",
            "html",
            "--zombie-after",
            "1s",
            "--since",
            "1h",
        ])
        .arg("--db")
        .arg(&db)
        .arg("-o")
        .arg(&html_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = fs::read_to_string(&html_path).unwrap();
    for want in [
        POD,
        NAMESPACE,
        CONTAINER,
        cid.as_str(),
        "<svg",
        "source: samples",
    ] {
        assert!(html.contains(want), "report lacks {want:?}");
    }
    assert_eq!(
        html.matches("<polyline").count(),
        3,
        "a chart with three series"
    );
    let lower = html.to_lowercase();
    for bad in [
        "<script",
        "<link",
        "src=\"http",
        "href=\"http",
        "@import",
        "url(",
    ] {
        assert!(!lower.contains(bad), "external resource {bad:?}");
    }
    // The pinned container's row names its pod and says what pins it.
    let row = html
        .split("<tr>")
        .find(|r| r.contains(&cid) && r.contains("<td"))
        .expect("the container's appendix row");
    assert!(
        row.contains(&format!("{NAMESPACE}/{POD}/{CONTAINER}")),
        "{row}"
    );
    assert!(row.contains("MiB"), "pinned bytes: {row}");

    if let Some(chromium) = chromium() {
        let png = scratch.0.join("report.png");
        screenshot(&chromium, &html_path, &png, 1200, 1400).unwrap();
        let st = png_stats(&png, &SERIES_COLOURS).unwrap();
        eprintln!("screenshot: {st:?}");
        assert!(
            st.non_white > 0.05 && st.variance > 200.0,
            "blank page: {st:?}"
        );
        assert!(
            st.colour_hits.iter().all(|h| *h > 20),
            "chart not visible: {st:?}"
        );
    }
}
