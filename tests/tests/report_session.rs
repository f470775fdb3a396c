//! The incident report of a real session: a containerd-style pod cgroup under
//! the test's parent pins 16 MiB of tmpfs and is removed while `watch` records
//! the history; `report --format html` (history + a fresh census + doctor) must
//! then be one self-contained file with the timeline chart that names the pod,
//! its namespace and container, and render in headless Chromium.
//! Needs: root, a memory cgroup controller, BPF. Run it under
//! `flock /tmp/kmem-trace-kernel.lock` next to other root tests.

use std::{fs, time::Duration};

use kmem_trace_tests::{
    browser::{assert_self_contained, chromium, png_stats, screenshot, SERIES_COLOURS},
    kmem_trace_cmd,
    pod::{PodNames, PodSession},
    require_root, stdout_of, wait_for, zombie_ending, zombies_json, TestParent, Tracer,
};
use serde_json::Value;

const POD: &str = "checkout-report-0";
const NAMESPACE: &str = "kt-report";
const CONTAINER: &str = "leaker";

#[test]
fn html_report_of_a_session_with_pinned_zombies_names_the_pod() {
    if !require_root("html_report_of_a_session_with_pinned_zombies_names_the_pod") {
        return;
    }
    let mut parent = TestParent::new("report").unwrap();
    let names = PodNames {
        pod: POD,
        namespace: NAMESPACE,
        container: CONTAINER,
        image: "registry.example/kt/leaker:2",
    };
    let session = PodSession::new(&parent, &names).unwrap();
    let (db, cid) = (&session.db, &session.cid);
    let mut tracer = Tracer::start(&session.watch_args()).unwrap();
    session.pin_then_delete(&mut parent).unwrap();
    let mut last = Value::Null;
    let named = wait_for(Duration::from_secs(30), || {
        last = zombies_json(db).unwrap_or(Value::Null);
        zombie_ending(&last, cid).is_some_and(|z| z["owner"]["pod"] == POD)
    });
    assert!(named, "the history never named the pod: {last:#}");
    // A few seconds more of samples, then a clean stop (a last sample).
    std::thread::sleep(Duration::from_secs(3));
    let (code, _) = tracer.stop().unwrap();
    assert_eq!(code, Some(0), "{:?}", tracer.stderr);

    let html_path = session.scratch.path().join("report.html");
    stdout_of(
        kmem_trace_cmd()
            .unwrap()
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
            .arg(db)
            .arg("-o")
            .arg(&html_path),
    )
    .unwrap();
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
    assert_self_contained(&html);
    // The pod's appendix group names it; the container's row (full path on
    // hover) names the container and says what pins it.
    let group = html
        .split("<details class=\"grp\"")
        .find(|g| g.contains(&format!("{NAMESPACE}/{POD}</b>")))
        .expect("the pod's appendix group");
    let row = group
        .split("<tr>")
        .find(|r| r.contains(cid.as_str()) && r.contains("<td"))
        .expect("the container's appendix row");
    assert!(row.contains(&format!("{CONTAINER} · ")), "{row}");
    assert!(row.contains("MiB"), "pinned bytes: {row}");

    if let Some(chromium) = chromium() {
        let png = session.scratch.path().join("report.png");
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
