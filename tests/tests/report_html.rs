//! `kmem-trace report --format html` through the binary, on a history written
//! with the store's own API (pod-owned zombies pinning tmpfs, two hours of
//! count samples) and the CentOS 7 doctor fixture as the host: one
//! self-contained file that names the owners, rendered by headless Chromium
//! into a screenshot that shows the page and the chart's three series.
//! No root needed (no BPF: `--no-bpf`, `--host-root` fixture).

use std::{fs, path::PathBuf, sync::Arc};

use kmem_trace::{
    attribution::{Attribution, ContainerMeta},
    decode::Counters,
    lifecycle::{Memcg, Origin, Stamp, State},
    store::{samples::CountSample, writer::now_ns, Record, Store},
};
use kmem_trace_tests::{
    browser::{assert_self_contained, chromium, png_stats, screenshot, SERIES_COLOURS},
    kmem_trace_cmd, stdout_of, Scratch,
};

const MIN: i64 = 60_000_000_000;

fn zombie(i: u64, container: &str) -> Record {
    let uid = "0f0e0d0c-4d1c-4c35-9b8e-2f8f3a1e9c7d";
    let cid = format!("{:064x}", 0xfeed_0000 + i);
    let mut m = Memcg::new(
        0xffff_8880_0000_0000 + i * 0x1000,
        200 + i as u32,
        Origin::Traced,
    );
    m.cgroup_id = 9000 + i;
    m.hierarchy_id = 4;
    m.level = 4;
    m.path = Arc::from(format!("/kubepods/burstable/pod{uid}/{cid}"));
    m.state = State::Dying;
    // Monotonic times; the offset passed to `write` makes them wall-clock.
    m.alloc_ns = Stamp::at(1_000);
    m.online_ns = Stamp::at(2_000);
    m.offline_ns = Stamp::at(3_000 + i);
    m.kmem_active = true;
    m.set_at_offline(Counters {
        mem_pages: Some(4096 * (i + 1)),
        ..Counters::default()
    });
    let mut a = Attribution::of_path(&m.path);
    a.meta = Some(Box::new(ContainerMeta {
        pod_name: Some("web-7d4b9".into()),
        namespace: Some("shop".into()),
        container_name: Some(container.into()),
        image: Some("registry.example/shop/web:1.4".into()),
        pod_uid: Some(uid.into()),
        ..ContainerMeta::default()
    }));
    Record {
        memcg: m,
        attribution: Some(Arc::new(a)),
    }
}

#[test]
fn html_report_is_self_contained_names_owners_and_renders_a_chart() {
    let dir = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-report-html-{}", std::process::id())),
    )
    .unwrap();
    let db = dir.path().join("history.db");
    let now = now_ns();
    {
        let mut s = Store::open(&db).unwrap();
        // Offline 30 minutes ago.
        let records: Vec<Record> = (0..4)
            .map(|i| zombie(i, if i < 3 { "nginx" } else { "sidecar" }))
            .collect();
        s.write(&records, now - 30 * MIN - 3_000, now).unwrap();
        for k in 0..=120 {
            s.write_sample(&CountSample {
                ts: now - (120 - k) * MIN,
                live: 250 + (k as u64 % 5) * 3,
                dying: 20 + k as u64 / 3,
                zombies: 15 + k as u64 / 3,
                ids_in_use: 250,
                id_limit: 65_535,
                hooks: "tracepoint".into(),
                ..CountSample::default()
            })
            .unwrap();
        }
    }
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("kmem-trace/tests/fixtures/doctor/centos7-kmem-leak");
    let html_path = dir.path().join("report.html");
    stdout_of(
        kmem_trace_cmd()
            .unwrap()
            .args(["report", "--format", "html", "--no-bpf", "--since", "3h"])
            .arg("--db")
            .arg(&db)
            .arg("--host-root")
            .arg(&fixture)
            .arg("-o")
            .arg(&html_path),
    )
    .unwrap();
    let html = fs::read_to_string(&html_path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for want in [
        "shop",
        "web-7d4b9",
        "nginx",
        "sidecar",
        "registry.example/shop/web:1.4",
        "<svg",
    ] {
        assert!(html.contains(want), "report lacks {want:?}");
    }
    assert_eq!(html.matches("<polyline").count(), 3, "three series");
    // One file: nothing it loads from elsewhere.
    assert_self_contained(&html);
    assert!(
        html.contains("CRITICAL"),
        "the fixture's kmem leak is critical"
    );

    let Some(chromium) = chromium() else {
        eprintln!("skipped the screenshot: chromium is not installed");
        return;
    };
    let png = dir.path().join("report.png");
    screenshot(&chromium, &html_path, &png, 1200, 1400).unwrap();
    let st = png_stats(&png, &SERIES_COLOURS).unwrap();
    eprintln!("screenshot {png:?}: {st:?}");
    assert_eq!((st.width, st.height), (1200, 1400));
    assert!(st.non_white > 0.05, "mostly blank: {st:?}");
    assert!(st.variance > 200.0, "flat image: {st:?}");
    for (hits, name) in st.colour_hits.iter().zip(["live", "dying", "zombies"]) {
        assert!(*hits > 100, "the {name} series is not visible: {st:?}");
    }
}
