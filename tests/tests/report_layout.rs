//! The HTML report's layout with a realistic appendix: 220 zombies in pods
//! with 64-hex container IDs, a job directory with 15 children and systemd
//! units, rendered by headless Chromium at 1280 px and at a 390 px phone
//! width. The page must be no wider than the window at either width (no
//! 4-character path column, no table past the edge) and far shorter than one
//! row per zombie; the appendix is grouped by owner and long groups fold.
//! Screenshots are kept in `KMEM_TRACE_SCREENSHOTS` (a directory) when set.
//! No root needed (`--no-bpf`, `--host-root` fixture).

use std::{fs, path::PathBuf, sync::Arc};

use kmem_trace::{
    attribution::{Attribution, ContainerMeta},
    decode::Counters,
    lifecycle::{Memcg, Origin, Stamp, State},
    store::{writer::now_ns, Record, Store},
};
use kmem_trace_tests::{
    browser::{
        assert_self_contained, chromium, framed, page_size, png_stats, screenshot, MIN_WINDOW,
    },
    kmem_trace_cmd, stdout_of, Scratch,
};

const MIN: i64 = 60_000_000_000;

fn record(i: u64, path: String, meta: Option<ContainerMeta>) -> Record {
    let mut m = Memcg::new(
        0xffff_8880_0000_0000 + i * 0x1000,
        300 + i as u32,
        Origin::Traced,
    );
    m.cgroup_id = 10_000 + i;
    m.hierarchy_id = 4;
    m.path = Arc::from(path);
    m.state = State::Dying;
    m.alloc_ns = Stamp::at(1_000);
    m.offline_ns = Stamp::at(3_000 + i * 1_000_000_000);
    m.set_at_offline(Counters {
        mem_pages: Some(256 * (i % 7 + 1)),
        ..Counters::default()
    });
    let mut a = Attribution::of_path(&m.path);
    a.meta = meta.map(Box::new);
    Record {
        memcg: m,
        attribution: Some(Arc::new(a)),
    }
}

fn records() -> Vec<Record> {
    let mut v = Vec::new();
    // 200 containers in 8 pods of 3 namespaces, kubelet's systemd layout.
    for i in 0..200u64 {
        let pod = i % 8;
        let uid = format!("0f0e0d0c-4d1c-4c35-9b8e-2f8f3a1e9c{pod:02x}");
        let cid = format!("{:064x}", 0xfeed_0000_0000 + i);
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{cid}.scope",
            uid.replace('-', "_")
        );
        let meta = ContainerMeta {
            pod_name: Some(format!("checkout-service-with-a-long-name-7d4b9f-{pod}").into()),
            namespace: Some(["shop", "payments-prod-eu-west-1", "batch"][pod as usize % 3].into()),
            container_name: Some(
                if i % 2 == 0 {
                    "app"
                } else {
                    "istio-proxy-sidecar"
                }
                .into(),
            ),
            image: Some("registry.example.com/team/checkout-service:2026.12.06-abcdef0".into()),
            pod_uid: Some(uid.clone().into()),
            ..ContainerMeta::default()
        };
        v.push(record(i, path, Some(meta)));
    }
    // A job directory with 15 children: one owner.
    for k in 0..15u64 {
        v.push(record(
            200 + k,
            format!("/jobs/nightly-reindex/run-{k:04}-attempt-1"),
            None,
        ));
    }
    for k in 0..5u64 {
        v.push(record(
            215 + k,
            format!("/system.slice/backup-agent-{k}.service"),
            None,
        ));
    }
    v
}

#[test]
fn the_appendix_fits_a_laptop_and_a_phone() {
    let dir = Scratch::new(
        std::env::temp_dir().join(format!("kmem-trace-report-layout-{}", std::process::id())),
    )
    .unwrap();
    let db = dir.path().join("history.db");
    let now = now_ns();
    Store::open(&db)
        .unwrap()
        .write(&records(), now - 30 * MIN - 3_000, now)
        .unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../kmem-trace/tests/fixtures/doctor/centos7-kmem-leak");
    let html_path = dir.path().join("report.html");
    stdout_of(
        kmem_trace_cmd()
            .unwrap()
            .args([
                "report",
                "--format",
                "html",
                "--no-bpf",
                "--zombie-after",
                "1s",
            ])
            .arg("--db")
            .arg(&db)
            .arg("--host-root")
            .arg(&fixture)
            .arg("-o")
            .arg(&html_path),
    )
    .unwrap();
    let html = fs::read_to_string(&html_path).unwrap();
    assert_self_contained(&html);
    assert!(
        html.contains("Appendix: every zombie (220), by owner"),
        "all 220 listed"
    );
    // Grouped: 8 pods, the job directory, 5 units.
    assert_eq!(html.matches("<details class=\"grp\"").count(), 14);
    assert!(html.contains("<b class=\"mono\">/jobs/nightly-reindex</b> · 15 zombies"));
    // 64-hex IDs are elided in the rows, whole on hover.
    assert!(html.contains("title=\"/kubepods.slice/"));
    let Some(chromium) = chromium() else {
        eprintln!("skipped the layout check: chromium is not installed");
        return;
    };
    let keep = std::env::var_os("KMEM_TRACE_SCREENSHOTS").map(PathBuf::from);
    for (w, h) in [(1280u32, 800u32), (390, 844)] {
        let (sw, sh) = page_size(&chromium, &html_path, w, h).unwrap();
        eprintln!("{w} px window: page {sw}×{sh} px");
        assert!(
            sw <= w as u64,
            "the page is {sw} px wide in a {w} px window"
        );
        // One row per zombie unfolded was ~40,000 px; folded groups are a few screens.
        assert!(sh < 12_000, "the page is {sh} px tall at {w} px");
        // Below Chromium's smallest window the page is shown in a frame of
        // the phone's width (the grey margin to its right is the wrapper).
        let png = dir.path().join(format!("report-{w}.png"));
        let (page, win) = if w < MIN_WINDOW {
            (framed(&html_path, w, h).unwrap(), MIN_WINDOW)
        } else {
            (html_path.clone(), w)
        };
        screenshot(&chromium, &page, &png, win, h).unwrap();
        let st = png_stats(&png, &[]).unwrap();
        assert_eq!((st.width, st.height), (win, h));
        assert!(st.non_white > 0.05 && st.variance > 200.0, "blank: {st:?}");
        if let Some(k) = &keep {
            fs::create_dir_all(k).unwrap();
            fs::copy(&png, k.join(format!("report-{w}.png"))).unwrap();
            fs::copy(&html_path, k.join("report.html")).unwrap();
        }
    }
}
