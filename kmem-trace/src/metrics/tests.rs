//! The exporter on a recorded kernel session, the namespace cardinality bound,
//! the listen-address policy and the HTTP endpoint over a real loopback socket.

use std::time::Duration;

use super::*;
use crate::{
    decode::decode_recording,
    lifecycle::{Lifecycle, LifecycleConfig},
    watch::Pipeline,
};

const CHURN: &[u8] = include_bytes!("../../tests/fixtures/churn-6.18-v1.kmt");

/// The value of the first sample line that starts with `prefix`.
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn churn_metrics() -> String {
    let (_, events) = decode_recording(CHURN).unwrap();
    let lc = Lifecycle::new(LifecycleConfig {
        zombie_after_ns: 1_000_000_000,
        ..LifecycleConfig::default()
    })
    .unwrap();
    let mut out = MetricsOutput::new(Metrics::new(DEFAULT_TOP_NAMESPACES));
    {
        let mut pipe = Pipeline::new(lc, &mut out);
        for e in &events {
            pipe.feed_event(e).unwrap();
        }
        let last = events.last().unwrap().ts_ns();
        pipe.status(3, "tracepoint", Duration::from_secs(5), last)
            .unwrap();
    }
    out.metrics().encode()
}

#[test]
fn a_recorded_session_sets_gauges_counters_and_the_latency_histogram() {
    let t = churn_metrics();
    assert_eq!(value(&t, "kmem_trace_dying_memcgs "), Some(3.0), "{t}");
    assert_eq!(value(&t, "kmem_trace_zombies "), Some(2.0), "{t}");
    assert_eq!(value(&t, "kmem_trace_live_memcgs "), Some(0.0));
    assert_eq!(value(&t, "kmem_trace_memcg_id_limit "), Some(65535.0));
    assert_eq!(
        value(&t, "kmem_trace_events_total{kind=\"alloc\"}"),
        Some(9.0)
    );
    assert_eq!(
        value(&t, "kmem_trace_events_total{kind=\"free\"}"),
        Some(6.0)
    );
    assert_eq!(value(&t, "kmem_trace_ring_drops_total "), Some(3.0));
    assert_eq!(
        value(&t, "kmem_trace_offline_to_free_seconds_count "),
        Some(6.0)
    );
    assert_eq!(
        value(&t, "kmem_trace_id_exhaustion_seconds "),
        Some(f64::INFINITY),
        "no forecast yet: +Inf"
    );
    // The fixture's cgroups are plain paths: their zombies count under "none".
    assert_eq!(
        value(&t, "kmem_trace_zombies_by_namespace{namespace=\"none\"}"),
        Some(2.0),
        "{t}"
    );
    assert!(
        t.contains("kmem_trace_info{hook_family=\"tracepoint\""),
        "{t}"
    );
    assert!(t.trim_end().ends_with("# EOF"));
}

#[test]
fn namespaces_are_bounded_with_an_other_bucket() {
    let mut out = MetricsOutput::new(Metrics::new(3));
    let counts: HashMap<String, u64> = (1..=50).map(|i| (format!("team-{i:02}"), i)).collect();
    out.set_namespaces(&counts);
    let t = out.metrics().encode();
    let series: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("kmem_trace_zombies_by_namespace{"))
        .collect();
    assert_eq!(series.len(), 4, "{series:?}");
    assert_eq!(
        value(&t, "kmem_trace_zombies_by_namespace{namespace=\"other\"}"),
        Some((1..=47).sum::<u64>() as f64)
    );
    // A namespace that no longer has zombies disappears.
    out.set_namespaces(&HashMap::from([("team-01".to_string(), 1)]));
    let t = out.metrics().encode();
    assert!(!t.contains("team-50"), "{t}");
    assert!(t.contains("namespace=\"team-01\""));
}

#[test]
fn workloads_are_bounded_like_namespaces() {
    let mut out = MetricsOutput::new(Metrics::new(2));
    let counts: HashMap<String, u64> = HashMap::from([
        ("shop/Deployment/web".to_string(), 5),
        ("shop/CronJob/backup".to_string(), 3),
        ("cache/unknown".to_string(), 1),
        ("none/none".to_string(), 1),
    ]);
    out.set_workloads(&counts);
    let t = out.metrics().encode();
    let series: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("kmem_trace_zombies_by_workload{"))
        .collect();
    assert_eq!(series.len(), 3, "{series:?}");
    assert_eq!(
        value(
            &t,
            "kmem_trace_zombies_by_workload{namespace=\"shop\",workload=\"Deployment/web\"}"
        ),
        Some(5.0),
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            "kmem_trace_zombies_by_workload{namespace=\"other\",workload=\"other\"}"
        ),
        Some(2.0),
        "{t}"
    );
}

#[test]
fn only_loopback_unless_listen_any() {
    assert!(listen_addr("127.0.0.1:9464", false).is_ok());
    assert!(listen_addr("[::1]:9464", false).is_ok());
    let e = listen_addr("0.0.0.0:9464", false).unwrap_err();
    assert!(e.to_string().contains("--listen-any"), "{e}");
    assert!(listen_addr("10.1.2.3:9464", true).is_ok());
    assert!(matches!(
        listen_addr("localhost", false),
        Err(MetricsError::Address(_))
    ));
}

#[test]
fn http_answers_get_metrics_and_refuses_the_rest() {
    let m = Metrics::new(5);
    let r = m.registry();
    let ok = String::from_utf8(http::respond(
        "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        &r,
    ))
    .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains(format::TEXT), "no Accept: the text format");
    assert!(ok.contains("kmem_trace_zombies"));
    let head = String::from_utf8(http::respond("HEAD /metrics HTTP/1.1\r\n\r\n", &r)).unwrap();
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body");
    let nf = String::from_utf8(http::respond("GET /nope HTTP/1.1\r\n\r\n", &r)).unwrap();
    assert!(nf.starts_with("HTTP/1.1 404"));
    let post = String::from_utf8(http::respond("POST /metrics HTTP/1.1\r\n\r\n", &r)).unwrap();
    assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET"));
}

#[test]
fn the_endpoint_serves_over_a_loopback_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let m = Metrics::new(5);
    m.live.set(42);
    let server = http::Server::bind("127.0.0.1:0".parse().unwrap(), m.registry()).unwrap();
    let addr = server.local_addr().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = rt.block_on(async move {
        tokio::spawn(server.run());
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        // A client that never finishes its request does not block others.
        let _slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s2 = tokio::net::TcpStream::connect(addr).await.unwrap();
        s2.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out2 = String::new();
        tokio::time::timeout(Duration::from_secs(5), s2.read_to_string(&mut out2))
            .await
            .unwrap()
            .unwrap();
        assert!(out2.contains("/metrics"));
        out
    });
    assert!(body.contains("kmem_trace_live_memcgs 42"), "{body}");
}

/// `promtool check metrics` on `text` (the 0.0.4 format it reads): its
/// complaints, or `None` without promtool (a failure where the root tests
/// are required: CI installs Debian's prometheus).
pub(crate) fn promtool_check(text: &str) -> Option<String> {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var_os("KMEM_TRACE_REQUIRE_ROOT_TESTS").is_none(),
                "promtool: {e}"
            );
            eprintln!("skipped promtool check metrics: {e}");
            return None;
        }
    };
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
    Some(if out.status.success() {
        said.trim().to_string()
    } else {
        format!("exit {:?}: {said}", out.status.code())
    })
}

#[test]
fn the_text_format_passes_promtool_check_metrics() {
    let om = churn_metrics();
    let text = format::to_text(&om);
    assert!(!text.contains("# EOF") && om.ends_with("# EOF\n"));
    assert!(text.contains("# HELP kmem_trace_events_total "), "{text}");
    if let Some(said) = promtool_check(&text) {
        assert_eq!(said, "", "promtool check metrics:\n{text}");
    }
}

#[test]
fn the_format_follows_the_accept_header() {
    let m = Metrics::new(5);
    let r = m.registry();
    let get = |accept: &str| {
        String::from_utf8(http::respond(
            &format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{accept}\r\n"),
            &r,
        ))
        .unwrap()
    };
    let om = get(
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert!(
        om.contains(&format!("Content-Type: {}\r\n", format::OPENMETRICS)),
        "{om}"
    );
    assert!(om.ends_with("# EOF\n"));
    assert!(om.contains("# TYPE kmem_trace_ring_drops counter"));
    let text = get("accept: text/plain\r\n");
    assert!(
        text.contains(&format!("Content-Type: {}\r\n", format::TEXT)),
        "{text}"
    );
    assert!(!text.contains("# EOF"));
    assert!(text.contains("# TYPE kmem_trace_ring_drops_total counter"));
}

#[test]
fn pinned_bytes_sums_the_dying_memcgs_readings() {
    let t = churn_metrics();
    let (_, events) = decode_recording(CHURN).unwrap();
    let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
    for e in &events {
        lc.apply(e);
    }
    let want: u64 = lc
        .memcgs()
        .filter(|m| m.state == crate::lifecycle::State::Dying)
        .filter_map(crate::outputs::aggregate::pinned_bytes)
        .sum();
    assert!(want > 0);
    assert_eq!(
        value(&t, "kmem_trace_pinned_bytes "),
        Some(want as f64),
        "{t}"
    );
}
