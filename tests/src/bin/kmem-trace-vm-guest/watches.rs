//! The scenario's watches: one `kmem-trace watch --json` per hook family, all
//! running over the same scenario, each judged on its own output. Starting a
//! tracer costs about 2 s of guest CPU under TCG and a scenario about 4 s, so one
//! scenario seen by every family at once takes a third of the time of one
//! scenario per family, and the families see the very same memcgs.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;
use kmem_trace_tests::Tracer;
use serde_json::Value;

use crate::{
    check::{lives, watch_blind, Ev, Observation},
    proto,
    scenario::Plan,
};

/// The `watch` arguments of `family`'s tracer.
fn args(plan: &Plan, family: &str, zombie_after: &str) -> Vec<String> {
    // No history database: a VM would create one at every start, and the
    // host's default one is not this test's to fill.
    let mut args: Vec<String> = ["watch", "--json", "--no-history"].map(String::from).into();
    let hooks = match crate::visibility::perf_hooks(family) {
        // The old-kernel object forced: hooks chosen per point as on a node
        // where auto picks it (kprobes, else classic tracepoints), or its
        // tracepoint programs alone.
        Some(hooks) => {
            args.extend(["--transport", "perf"].map(String::from));
            hooks
        }
        None => family,
    };
    args.extend(["--hooks", hooks, "--zombie-after", zombie_after].map(String::from));
    for (f, forced) in &plan.forced {
        if f == family {
            args.extend(["--force-symbol".to_string(), forced.clone()]);
        }
    }
    args
}

/// A tracer's output so far, each line parsed once: polling re-parsed
/// everything every 100 ms, which under TCG cost a tenth of the guest's CPU.
#[derive(Default)]
pub struct Seen {
    lines: usize,
    events: Vec<Ev>,
    /// SIGUSR1's `"kind":"snapshot"` records, in order.
    snapshots: Vec<Value>,
    /// The `"kind":"summary"` record, once the tracer stopped.
    summary: Option<Value>,
}

impl Seen {
    pub fn refresh(&mut self, t: &Tracer) -> &[Ev] {
        let lines = t.lines();
        for l in &lines[self.lines.min(lines.len())..] {
            let Ok(v) = serde_json::from_str::<Value>(l) else {
                continue;
            };
            match v["kind"].as_str() {
                Some("snapshot") => self.snapshots.push(v),
                Some("summary") => self.summary = Some(v),
                _ => self.events.extend(Ev::from_json(&v)),
            }
        }
        self.lines = lines.len();
        &self.events
    }
}

/// One family's tracer and what it has shown so far.
pub struct Watch {
    tracer: Option<Tracer>,
    seen: Seen,
    pub obs: Observation,
}

impl Watch {
    /// Starts `family`'s tracer; a failure is recorded in its observation.
    pub fn start(plan: &Plan, family: &str, parent: &str) -> Watch {
        proto::step(Some(family), "start watch");
        let zombie_after = format!("{}ms", plan.zombie_after.as_millis());
        let a = args(plan, family, &zombie_after);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut obs = Observation {
            family: family.to_string(),
            parent: parent.to_string(),
            ..Observation::default()
        };
        let tracer = match Tracer::start(&a).context("starting kmem-trace watch") {
            Ok(t) => {
                obs.watch_blind = watch_blind(&t.stderr);
                Some(t)
            }
            Err(e) => {
                obs.errors.push(format!("{e:#}"));
                None
            }
        };
        Watch {
            tracer,
            seen: Seen::default(),
            obs,
        }
    }

    /// A family whose scenario could not start.
    pub fn failed(family: &str, why: &str) -> Watch {
        Watch {
            tracer: None,
            seen: Seen::default(),
            obs: Observation {
                family: family.to_string(),
                errors: vec![why.to_string()],
                ..Observation::default()
            },
        }
    }

    /// The events so far.
    fn refresh(&mut self) -> &[Ev] {
        match &self.tracer {
            Some(t) => self.seen.refresh(t),
            None => &self.seen.events,
        }
    }

    /// Names (relative to `parent`) with a `kind` event so far.
    pub fn with_event(&mut self, parent: &str, kind: &str) -> Vec<String> {
        lives(self.refresh(), parent)
            .into_iter()
            .filter(|l| l.count(kind) > 0)
            .filter_map(|l| l.rel)
            .collect()
    }

    /// Whether this watch can show `kind` at all (running, and not blind to it).
    fn sees(&self, kind: &str) -> bool {
        self.tracer.is_some() && !self.obs.watch_blind.iter().any(|b| b == kind)
    }

    /// Records pinned memcgs whose free was seen while their pin should hold.
    pub fn note_early_frees(&mut self, parent: &str, pinned: &[String]) {
        let freed = self.with_event(parent, "free");
        for n in pinned {
            if freed.contains(n) && !self.obs.freed_early.contains(n) {
                self.obs.freed_early.push(n.clone());
            }
        }
    }

    /// Asks for the summary so far (SIGUSR1) and waits for it; `None` (and
    /// an error) when it does not come within `limit`.
    fn snapshot(&mut self, limit: Duration) -> Option<Value> {
        let t = self.tracer.as_ref()?;
        self.seen.refresh(t);
        let before = self.seen.snapshots.len();
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(t.pid() as i32, libc::SIGUSR1) };
        let deadline = Instant::now() + limit;
        loop {
            self.seen.refresh(t);
            if self.seen.snapshots.len() > before {
                return self.seen.snapshots.last().cloned();
            }
            if Instant::now() > deadline {
                self.obs
                    .errors
                    .push(format!("no snapshot record within {limit:?} of SIGUSR1"));
                return None;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the tracer and keeps its events, summary and stderr.
    pub fn stop(&mut self) {
        let Some(mut t) = self.tracer.take() else {
            return;
        };
        match t.stop() {
            Ok((code, _)) => {
                if code != Some(0) {
                    self.obs.errors.push(format!(
                        "watch exited with {code:?}: {}",
                        t.stderr.join(" | ")
                    ));
                }
                // The tracer's whole output is in its lines now.
                self.seen.refresh(&t);
                self.obs.events = self.seen.events.clone();
                self.obs.summary = self.seen.summary.clone();
            }
            Err(e) => self
                .obs
                .errors
                .push(format!("stopping kmem-trace watch: {e:#}")),
        }
        self.obs.watch_stderr = t.stderr.clone();
    }
}

/// Every family's watch at once.
pub struct Watches(pub Vec<Watch>);

impl Watches {
    /// Waits until every watch that can see `kind` shows it for every name in
    /// `names`; a watch still missing some when `wait` is up gets the error.
    /// When no watch can see `kind`, just lets the kernel catch up.
    pub fn wait_event(&mut self, parent: &str, kind: &str, names: &[String], wait: Duration) {
        if !self.0.iter().any(|w| w.sees(kind)) {
            thread::sleep(Duration::from_millis(500));
            return;
        }
        let deadline = Instant::now() + wait;
        loop {
            let mut late = Vec::new();
            for (i, w) in self.0.iter_mut().enumerate() {
                if !w.sees(kind) {
                    continue;
                }
                let have = w.with_event(parent, kind);
                let missing: Vec<String> = names
                    .iter()
                    .filter(|n| !have.contains(n))
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    late.push((i, missing));
                }
            }
            if late.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                for (i, missing) in late {
                    self.0[i]
                        .obs
                        .errors
                        .push(format!("no {kind} event within {wait:?} for {missing:?}"));
                }
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn note_early_frees(&mut self, parent: &str, pinned: &[String]) {
        for w in &mut self.0 {
            w.note_early_frees(parent, pinned);
        }
    }

    /// Every watch's summary so far while the pins hold: the zombie verdict.
    pub fn zombie_snapshot(&mut self, limit: Duration) {
        for w in &mut self.0 {
            w.obs.snapshot = w.snapshot(limit);
        }
    }

    /// Every watch's summary at the end of the scenario, before the toggle:
    /// the clean-end check's. A family blind to toggles sees the toggled
    /// memcg's free without its alloc ("untracked"), the documented limit
    /// the toggle check judges; the scenario's own memcgs must end clean.
    pub fn scenario_summary(&mut self, limit: Duration) {
        for w in &mut self.0 {
            w.obs.pre_toggle = w.snapshot(limit);
        }
    }

    pub fn stop(&mut self) {
        for w in &mut self.0 {
            w.stop();
        }
    }
}
