//! The live view rendered into ratatui's `TestBackend` (no terminal, no root):
//! from a recorded kernel session through the pipeline, and after keys.

use std::time::Duration;

use ratatui::{backend::TestBackend, Terminal};

use super::{model::Model, render};
use crate::{
    attribution::Attribution,
    decode::{decode_recording, TraceEvent},
    forecast::{Basis, Forecast},
    lifecycle::{Applied, Lifecycle, LifecycleConfig},
    outputs::{aggregate::owner_rows, Output, OutputError, Snapshot, Status, Summary},
    watch::Pipeline,
};

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
struct ModelOutput(Model);

impl Output for ModelOutput {
    fn event(
        &mut self,
        ev: &TraceEvent,
        a: &Applied,
        _o: Option<&Attribution>,
    ) -> Result<(), OutputError> {
        let path = a.path.as_deref().unwrap_or("?").to_string();
        self.0.push_event(format!("{} {path}", ev.kind.name()));
        Ok(())
    }
    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<(), OutputError> {
        self.0.set_owners(owner_rows(s));
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
    let mut out = ModelOutput(Model::new());
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
        pipe.note("2 events dropped (ring buffer full); total 2")
            .unwrap();
        pipe.status(2, "tracepoint", Duration::from_secs(2), last)
            .unwrap();
    }
    out.0
}

#[test]
fn a_recorded_session_renders_every_panel() {
    let m = churn_model();
    let s = screen(&m, 140, 40);
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
        "PINNED",
        "dying: now 3, max 3",
        "events",
        "! 2 events dropped",
        "offline",
        "q quit · s sort (zombies) · / filter",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    // The fixture's pinned children lead the owner table with their bytes.
    let first_row = s
        .lines()
        .find(|l| l.contains("/c3") || l.contains("/c4"))
        .unwrap_or_else(|| panic!("no zombie owner row in\n{s}"));
    assert!(first_row.contains("KiB"), "{first_row}");
}

#[test]
fn keys_change_the_rendered_view() {
    let mut m = churn_model();
    m.key(super::Key::Char('s'));
    m.key(super::Key::Char('/'));
    for c in "c4".chars() {
        m.key(super::Key::Char(c));
    }
    let typing = screen(&m, 140, 40);
    assert!(typing.contains("filter: c4█"), "{typing}");
    m.key(super::Key::Enter);
    let s = screen(&m, 140, 40);
    assert!(s.contains("owners by pinned bytes (1 of"), "{s}");
    assert!(s.contains("/c4") && !s.contains("/c3 "), "{s}");
    assert!(s.contains("/ filter (c4) · Esc clears"), "{s}");
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
    let _ = screen(&Model::new(), 80, 24);
}
