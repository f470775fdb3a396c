//! A real Prometheus (Debian's `prometheus`, on loopback, a temporary data
//! directory, a 1 s scrape interval) scrapes `kmem-trace serve`, and kmem-trace
//! metrics are read back through Prometheus's HTTP API. Both processes are
//! ours and are stopped by PID at the end, also when an assertion fails.
//! Needs: root (BPF), a memory cgroup controller, the prometheus package.
//! Run it under `flock /tmp/kmem-trace-kernel.lock` next to other root tests.

use std::{
    fs,
    io::Write,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use kmem_trace_tests::{http_get, require_root, wait_for, Scratch, TestParent, Tracer};
use serde_json::Value;

/// A child process killed by PID and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:port (HTTP/1.0: the body ends with the connection).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get(port, path, "").map(|(code, _, body)| (code, body))
}

/// `promtool check metrics` on `text`: (success, what it said).
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

/// The value of an instant query's first sample.
fn query(port: u16, q: &str) -> Option<f64> {
    let (code, body) = get(port, &format!("/api/v1/query?query={q}"))?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn prometheus_bin() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/prometheus");
    if p.exists() {
        return Some(p);
    }
    if std::env::var_os("KMEM_TRACE_REQUIRE_ROOT_TESTS").is_some() {
        panic!("prometheus is not installed (cargo xtask test installs Debian's prometheus)");
    }
    None
}

#[test]
fn prometheus_scrapes_serve_and_answers_with_its_metrics() {
    if !require_root("prometheus_scrapes_serve_and_answers_with_its_metrics") {
        return;
    }
    let Some(prom_bin) = prometheus_bin() else {
        eprintln!("skipped: prometheus is not installed");
        return;
    };
    let parent = TestParent::new("prom").unwrap();
    let dir = Scratch::new(std::env::temp_dir().join(format!("{}-prom", parent.name))).unwrap();
    fs::create_dir_all(dir.path().join("data")).unwrap();
    let (metrics_port, prom_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{metrics_port}");
    let _serve = Tracer::start(&[
        "serve",
        "--listen",
        &listen,
        "--no-history",
        "--zombie-after",
        "1s",
    ])
    .unwrap();
    // The gauges are set from the first status tick on.
    let mut text = String::new();
    let ready = wait_for(Duration::from_secs(10), || {
        text = get(metrics_port, "/metrics")
            .filter(|(code, _)| *code == 200)
            .map(|(_, t)| t)
            .unwrap_or_default();
        text.contains("kmem_trace_memcg_id_limit 65535")
    });
    assert!(ready, "serve's metrics: {text}");
    // Without an Accept header: the text format 0.0.4, clean for promtool.
    let (ok, said) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics: {said}\n{text}");
    assert!(text.contains("kmem_trace_pinned_bytes "), "{text}");
    // Prometheus's own Accept header gets OpenMetrics.
    let (code, head, om) = http_get(
        metrics_port,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
         text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n",
    )
    .unwrap();
    assert_eq!(code, 200);
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");

    let config = dir.path().join("prometheus.yml");
    fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: kmem-trace\n    static_configs:\n      - targets: ['{listen}']\n        labels:\n          node: test\n"
        ),
    )
    .unwrap();
    let log = fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prom = Proc(
        Command::new(prom_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus"),
    );

    // The target is up and a gauge comes back through the query API.
    let mut up = None;
    let scraped = wait_for(Duration::from_secs(60), || {
        up = query(prom_port, "up%7Bjob%3D%22kmem-trace%22%7D");
        up == Some(1.0)
    });
    let plog = fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(scraped, "target not up ({up:?}); prometheus log:\n{plog}");
    let limit = query(
        prom_port,
        "kmem_trace_memcg_id_limit%7Bnode%3D%22test%22%7D",
    );
    assert_eq!(limit, Some(65535.0));
    let pinned = query(prom_port, "kmem_trace_pinned_bytes%7Bnode%3D%22test%22%7D");
    assert!(pinned.is_some_and(|v| v >= 0.0), "pinned_bytes: {pinned:?}");

    // Churn moves a counter, and Prometheus sees it move.
    let c = parent.child("prom-churn").unwrap();
    parent.rmdir(&c).unwrap();
    let mut offline = None;
    let seen = wait_for(Duration::from_secs(30), || {
        offline = query(
            prom_port,
            "kmem_trace_events_total%7Bkind%3D%22offline%22%7D",
        );
        offline.is_some_and(|v| v >= 1.0)
    });
    assert!(seen, "offline events not scraped: {offline:?}");
    // The rule file of deploy/ loads in this Prometheus too.
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/prometheus/rules.yml");
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output();
    assert!(
        check.is_ok_and(|o| o.status.success()),
        "promtool check rules failed"
    );
}

/// Every alert of deploy/prometheus/rules.yml has a `runbook_url` whose
/// anchor is a section of docs/runbook.md (a heading named as the alert).
#[test]
fn every_alert_links_its_runbook_section() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let rules = fs::read_to_string(root.join("deploy/prometheus/rules.yml")).unwrap();
    let runbook = fs::read_to_string(root.join("docs/runbook.md")).unwrap();
    let anchors: Vec<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();
    let mut alerts = 0;
    let mut current: Option<String> = None;
    for line in rules.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix("- alert: ") {
            assert!(current.is_none(), "alert {current:?} has no runbook_url");
            current = Some(a.trim().to_string());
            alerts += 1;
        } else if let Some(u) = line.strip_prefix("runbook_url: ") {
            let alert = current.take().expect("runbook_url outside an alert");
            let anchor = u
                .trim_matches('"')
                .rsplit_once("docs/runbook.md#")
                .map(|(_, a)| a);
            assert_eq!(anchor, Some(alert.to_lowercase().as_str()), "{alert}: {u}");
            assert!(
                anchors.contains(&alert.to_lowercase()),
                "no runbook section for {alert}"
            );
        }
    }
    assert!(current.is_none(), "alert {current:?} has no runbook_url");
    assert!(alerts >= 6, "{alerts} alerts");
}
