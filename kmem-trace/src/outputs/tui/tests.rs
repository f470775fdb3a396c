//! The live view rendered into ratatui's `TestBackend` (no terminal, no root):
//! from a recorded kernel session through the pipeline, after keys, and a
//! kubelet-style layout with long paths and hostile names at 80×24 and 160×48.

use std::time::Duration;

use ratatui::{backend::TestBackend, Terminal};

use super::{
    model::Model,
    render,
    tail::{sample, OwnerName, TailEvent},
};
use crate::{
    attribution::Attribution,
    decode::{decode_recording, TraceEvent},
    forecast::{Basis, Forecast},
    lifecycle::{Applied, Lifecycle, LifecycleConfig},
    outputs::{
        aggregate::{owner_rows, OwnerRow},
        page_size,
        text::{assert_inert, HOSTILE},
        Clock, HookLabels, Key, Output, OutputError, Snapshot, Status, Summary,
    },
    watch::Pipeline,
};
use kmem_trace_common::EventKind;

const CHURN: &[u8] = include_bytes!("../../../tests/fixtures/churn-6.18-v1.kmt");

/// The screen as text, one line per row.
fn screen(m: &Model, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render::draw(f, m)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

/// Keeps what the live view would: status, owners and the tail.
struct ModelOutput(Model, Clock);

impl Output for ModelOutput {
    fn event(
        &mut self,
        ev: &TraceEvent,
        a: &Applied,
        o: Option<&Attribution>,
    ) -> Result<(), OutputError> {
        let e = TailEvent::new(&self.1, &HookLabels::new(), page_size(), ev, a, o);
        self.0.push_event(e);
        Ok(())
    }
    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<(), OutputError> {
        self.0.set_owners(owner_rows(s), s.now_ns);
        Ok(())
    }
    fn status(&mut self, s: &Status) -> Result<(), OutputError> {
        self.0.set_status(s);
        Ok(())
    }
    fn summary(&mut self, _s: &Summary) -> Result<(), OutputError> {
        Ok(())
    }
    fn note(&mut self, msg: &str) -> Result<(), OutputError> {
        self.0.push_note(msg);
        Ok(())
    }
}

fn churn_model() -> Model {
    let (_, events) = decode_recording(CHURN).unwrap();
    let lc = Lifecycle::new(LifecycleConfig {
        zombie_after_ns: 1_000_000_000,
        ..LifecycleConfig::default()
    })
    .unwrap();
    let mut out = ModelOutput(Model::new(), Clock::measure());
    {
        let mut pipe = Pipeline::new(lc, &mut out);
        let half = events.len() / 2;
        for e in &events[..half] {
            pipe.feed_event(e).unwrap();
        }
        pipe.status(
            0,
            "tracepoint",
            Duration::from_secs(1),
            events[half].ts_ns(),
        )
        .unwrap();
        for e in &events[half..] {
            pipe.feed_event(e).unwrap();
        }
        let last = events.last().unwrap().ts_ns();
        pipe.note("2 events dropped (event buffer full); total 2")
            .unwrap();
        pipe.status(2, "tracepoint", Duration::from_secs(2), last)
            .unwrap();
    }
    out.0
}

#[test]
fn a_recorded_session_renders_every_panel() {
    let m = churn_model();
    let s = screen(&m, 160, 48);
    for want in [
        "kmem-trace watch · hooks tracepoint",
        "live memcgs",
        "dying (removed, not freed)",
        "2 of 3 dying",
        "memcg IDs (of 65535)",
        "forecast after a minute",
        "drops 2 · hooks tracepoint",
        "owners by zombies",
        "OWNER (namespace/pod/container)",
        "LEAK/h",
        "PINNED",
        "dying: now 3, max 3",
        "lifecycle events",
        "! 2 events dropped",
        "offline",
        "q quit · s sort (zombies) · / filter",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    // The fixture's pinned children lead the owner table with their bytes
    // (grouped under their parent: open the group to see them).
    let mut m = m;
    m.key(Key::Enter);
    let s = screen(&m, 160, 48);
    assert!(
        s.contains("owners by zombies (3 of 3)"),
        "owners, not lines:\n{s}"
    );
    let first_row = s
        .lines()
        .find(|l| l.contains(" c3 ") || l.contains(" c4 "))
        .unwrap_or_else(|| panic!("no zombie owner row in\n{s}"));
    assert!(first_row.contains("KiB"), "{first_row}");
    // The same session is usable at 80x24.
    let s = screen(&m, 80, 24);
    assert!(s.contains("zombies 2") && s.contains("LEAK/h"), "{s}");
    assert!(s.contains("offline"), "{s}");
}

#[test]
fn keys_change_the_rendered_view() {
    let mut m = churn_model();
    m.key(Key::Char('s'));
    m.key(Key::Char('s'));
    m.key(Key::Char('/'));
    for c in "c4".chars() {
        m.key(Key::Char(c));
    }
    let typing = screen(&m, 160, 48);
    assert!(typing.contains("filter (owner or path): c4█"), "{typing}");
    m.key(Key::Enter);
    let s = screen(&m, 160, 48);
    assert!(s.contains("owners by pinned bytes (1 of"), "{s}");
    assert!(s.contains("/c4") && !s.contains("/c3 "), "{s}");
    assert!(s.contains("/ filter (c4) · Esc clears"), "{s}");
    // The tail takes the same filter: only c4's lines and the note.
    let tail: Vec<&str> = s
        .lines()
        .skip_while(|l| !l.contains("lifecycle events"))
        .skip(1)
        .filter(|l| l.contains(':'))
        .collect();
    assert!(!tail.is_empty(), "{s}");
    assert!(
        tail.iter().all(|l| l.contains("c4") || l.contains("! ")),
        "{tail:?}"
    );
}

/// A kubelet-style node: pods with long generated names, a batch job
/// directory of 15 children, and events with 64-hex container paths.
fn kubepods_model(names: &[&str]) -> Model {
    let mut m = Model::new();
    let cid = |i: usize| format!("{i:x}{}", "0123456789abcdef".repeat(4))[..64].to_string();
    let uid = |i: usize| format!("5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c{i:02}");
    let mut rows = Vec::new();
    for (i, (ns, pod, c)) in [
        ("shop-production", "cart-7d9f8b6c4-x2x9q", "istio-proxy"),
        ("shop-production", "checkout-5f6d7c8b9-qwert", "app"),
        ("monitoring", "node-exporter-abcde", "node-exporter"),
    ]
    .into_iter()
    .enumerate()
    {
        let (ns, pod, c) = match names.get(i) {
            Some(h) => (ns, *h, *h),
            None => (ns, pod, c),
        };
        rows.push(OwnerRow {
            namespace: ns.into(),
            pod: pod.into(),
            container: c.into(),
            kind: "pod",
            workload: format!("Deployment/{}", pod.rsplitn(3, '-').last().unwrap_or(pod)),
            zombies: 10 - i as u64,
            dying: 12,
            live: 1,
            pinned_bytes: (20 + i as u64) << 20,
            path: format!("/kubepods/burstable/pod{}/{}", uid(i), cid(i)),
        });
    }
    for t in 1..=15 {
        let p = format!("/batch/job-42/task-{t}");
        rows.push(OwnerRow {
            namespace: "none".into(),
            container: p.clone(),
            path: p,
            kind: "path",
            zombies: 1,
            dying: 1,
            ..OwnerRow::default()
        });
    }
    m.set_owners(rows.clone(), 0);
    // Ten minutes later cart has three more zombies.
    rows[0].zombies += 3;
    m.set_owners(rows, 600_000_000_000);
    for i in 0..30 {
        let mut e = sample(
            if i % 2 == 0 {
                EventKind::Offline
            } else {
                EventKind::Free
            },
            &format!("/kubepods/burstable/pod{}/{}", uid(i % 3), cid(i % 3)),
            names.first().copied().unwrap_or("containerd-shim"),
        );
        e.owner = Some(OwnerName {
            namespace: "shop-production".into(),
            pod: names
                .first()
                .copied()
                .unwrap_or("cart-7d9f8b6c4-x2x9q")
                .into(),
            container: "istio-proxy".into(),
        });
        e.mem_bytes = Some(13 << 20);
        e.hook = Some("tp_btf cgroup_rmdir".into());
        m.push_event(e);
        m.push_event(sample(
            EventKind::Resident,
            "/system.slice/cron.service",
            "bash",
        ));
    }
    m
}

#[test]
fn kubepods_fit_80x24_and_160x48() {
    let m = kubepods_model(&[]);
    let small = screen(&m, 80, 24);
    let big = screen(&m, 160, 48);
    eprintln!("{small}\n{big}");
    for s in [&small, &big] {
        assert!(s.contains("q quit"), "{s}");
        assert!(
            s.contains("▸ /batch/job-42 (15)"),
            "job group is one row:\n{s}"
        );
        // Residents stay out of the tail until asked for.
        assert!(!s.contains("cron.service"), "{s}");
        let events: Vec<&str> = s.lines().filter(|l| l.contains(" offline ")).collect();
        assert!(events.len() >= 3, "{s}");
        for l in events {
            assert!(l.contains("mem=13.0MiB"), "mem= pushed off: {l}");
            assert!(l.contains("(4242)"), "command pushed off: {l}");
            assert!(
                l.contains("2x9q") && l.contains("istio-proxy"),
                "owner: {l}"
            );
        }
    }
    // The owner table keeps the container and the pod suffix at 80 columns.
    let cart = small
        .lines()
        .find(|l| l.contains("istio-proxy") && l.contains("+18.0"));
    assert!(cart.is_some_and(|l| l.contains("x2x9q")), "{small}");
    // Wide: the hook, the whole owner name, the leak note and the sparkline.
    assert!(big.contains("via tp_btf cgroup_rmdir"), "{big}");
    assert!(
        big.contains("shop-production/cart-7d9f8b6c4-x2x9q/istio-proxy"),
        "{big}"
    );
    assert!(big.contains("LEAK = net zombies/h since start"), "{big}");
    // Which workload: a column when wide, and the filter finds owners by it.
    assert!(
        big.contains("WORKLOAD") && big.contains("Deployment/cart"),
        "{big}"
    );
    assert!(!small.contains("WORKLOAD"), "{small}");
    let mut f = kubepods_model(&[]);
    for c in "/deployment/checkout".chars() {
        f.key(Key::Char(c));
    }
    f.key(Key::Enter);
    let only = screen(&f, 160, 48);
    assert!(
        only.contains("checkout-5f6d7c8b9-qwert") && !only.contains("x2x9q/istio"),
        "{only}"
    );
    assert!(big.contains("dying: now"), "{big}");
    // `r` brings the residents back.
    let mut m = m;
    m.key(Key::Char('r'));
    assert!(screen(&m, 80, 24).contains("cron.service"));
}

#[test]
fn hostile_names_are_escaped_in_every_pane() {
    for h in HOSTILE {
        let mut m = kubepods_model(&[h, h, h]);
        m.push_note(h);
        m.key(Key::Char('r'));
        // Down to sizes too small for the layout: inert, and no panic.
        for (w, hgt) in [(80, 24), (160, 48), (40, 12), (12, 5)] {
            let s = screen(&m, w, hgt);
            assert_inert(&s);
        }
    }
    let m = kubepods_model(&["\x1b]0;owned\x07"]);
    assert!(screen(&m, 160, 48).contains("\\x1b]0;owned\\x07"));
}

#[test]
fn the_forecast_and_a_tiny_terminal_render() {
    let mut m = Model::new();
    let mut st = Status {
        counts: Default::default(),
        drops: 0,
        hook_family: "fentry".into(),
        elapsed_s: 120.0,
        forecast: Some(Forecast {
            basis: Basis::Running,
            window_s: 120.0,
            zombies_per_hour: 30.0,
            ids_per_hour: Some(30.0),
            ids_in_use: Some(60_000),
            id_limit: 65_535,
            hours_to_exhaustion: Some(184.5),
        }),
    };
    st.counts.ids_in_use = 60_000;
    st.counts.id_limit = 65_535;
    m.set_status(&st);
    let s = screen(&m, 120, 30);
    assert!(s.contains("60000/65535 (91.6%)"), "{s}");
    assert!(s.contains("leak +30.0/h · full in 7d16h"), "{s}");
    // Too small for the layout: still draws without panicking.
    let _ = screen(&m, 20, 6);
    let s = screen(&Model::new(), 80, 24);
    assert!(s.contains("forecast after a minute"), "{s}");
}
