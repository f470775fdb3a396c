//! The event tail of the live view. Events are kept as fields, not lines,
//! and laid out for the pane's width when drawn ([`TailEvent::fit`]): the
//! owner and path share what is left after fixed columns, so `mem=`, the
//! command and the hook never leave the screen. Lifecycle events and notes
//! sit in one ring, resident lines (a process entering a memcg: fork, exec,
//! attach) in another, so a flood of residents from unrelated cgroups never
//! pushes lifecycle events out; residents are shown only on request.
//! Everything a workload or the kernel named is escaped ([`term`]).

use std::{collections::VecDeque, sync::Arc};

use super::fit;
use crate::{
    attribution::Attribution,
    decode::TraceEvent,
    lifecycle::Applied,
    outputs::{
        aggregate::{owner_columns, owner_label},
        id_and_path,
        line::human_bytes,
        text::term,
        Clock, HookLabels, LineId,
    },
};
use kmem_trace_common::EventKind;

/// Lines kept per ring.
pub const TAIL: usize = 500;

/// The owner of an event's memcg, as the owner table names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerName {
    pub namespace: String,
    /// Empty for owners that are no pod.
    pub pod: String,
    pub container: String,
}

impl OwnerName {
    /// `namespace/pod/container` (the container alone for non-pods), raw.
    pub fn label(&self) -> String {
        owner_label(&self.namespace, &self.pod, &self.container)
    }

    /// Escaped and fitted into `w` characters.
    pub fn fit(&self, w: usize) -> String {
        fit_owner(&self.namespace, &self.pod, &self.container, w)
    }
}

/// An owner's columns escaped and fitted into `w` characters, as the tail and
/// the owner table show them: `namespace/pod/container` ([`fit::owner`]), or
/// for owners that are no pod (empty `pod`) the owner alone, cut in its middle.
pub fn fit_owner(namespace: &str, pod: &str, container: &str, w: usize) -> String {
    if pod.is_empty() {
        fit::middle(&term(container), w)
    } else {
        fit::owner(&term(namespace), &term(pod), &term(container), w)
    }
}

/// One event as the tail shows it (raw text; escaped when laid out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TailEvent {
    /// `HH:MM:SS.mmm`.
    pub time: String,
    pub kind: EventKind,
    pub id: LineId,
    pub path: String,
    /// `None` when the owner is the path itself (nothing to add).
    pub owner: Option<OwnerName>,
    pub mem_bytes: Option<u64>,
    pub comm: String,
    pub pid: u32,
    pub hook: Option<Arc<str>>,
}

/// The kind in at most 8 characters.
fn kind_name(k: EventKind) -> &'static str {
    match k {
        EventKind::IdRelease => "id_rel",
        EventKind::KmemActivate => "kmem_on",
        k => k.name(),
    }
}

impl TailEvent {
    /// The fields of `ev` as the lifecycle and the attribution resolved them.
    pub fn new(
        clock: &Clock,
        hooks: &HookLabels,
        page: u64,
        ev: &TraceEvent,
        applied: &Applied,
        owner: Option<&Attribution>,
    ) -> TailEvent {
        let (id, path) = id_and_path(ev, applied);
        let owner = owner.filter(|o| o.owner.kind() != "path").map(|o| {
            let (namespace, pod, container) = owner_columns(o);
            OwnerName {
                namespace,
                pod,
                container,
            }
        });
        TailEvent {
            time: clock.hms(ev.ts_ns()),
            kind: ev.kind,
            id,
            path: path.into_owned(),
            owner,
            mem_bytes: ev.counters().mem_pages.map(|p| p * page),
            comm: ev.comm().into_owned(),
            pid: ev.raw.tgid,
            hook: hooks.get(&ev.raw.hook).cloned(),
        }
    }

    pub fn resident(&self) -> bool {
        self.kind == EventKind::Resident
    }

    /// Whether `needle` (lower case) is in the owner's name or the path: the
    /// fields the owner table's filter looks at too.
    pub fn matches(&self, needle: &str) -> bool {
        self.path.to_lowercase().contains(needle)
            || self
                .owner
                .as_ref()
                .is_some_and(|o| o.label().to_lowercase().contains(needle))
    }

    /// The line in `w` characters: time, kind, ID, then owner and path in
    /// what the fixed columns (`mem=`, command, hook) leave.
    pub fn fit(&self, w: usize) -> String {
        let time = if w >= 100 {
            self.time.as_str()
        } else {
            self.time.get(..8).unwrap_or(&self.time)
        };
        let mut cols = vec![format!(
            "{time} {:<8} #{:<5}",
            kind_name(self.kind),
            self.id
        )];
        let comm_w: usize = if w >= 100 { 24 } else { 16 };
        let pid = format!(" ({})", self.pid);
        let comm = format!(
            "{}{pid}",
            fit::head(&term(&self.comm), comm_w.saturating_sub(pid.len()))
        );
        let mem = self
            .mem_bytes
            .map(|b| format!("mem={}", human_bytes(b)))
            .unwrap_or_default();
        let hook = match &self.hook {
            Some(h) if w >= 150 => format!("via {}", term(h)),
            _ => String::new(),
        };
        // Fixed columns, each with the two spaces before it.
        let fixed = fit::width(&cols[0])
            + 2
            + 2
            + 13
            + 2
            + comm_w
            + if hook.is_empty() { 0 } else { 2 + 24 };
        let flex = w.saturating_sub(fixed);
        let path = term(&self.path);
        match &self.owner {
            Some(o) => {
                // The owner first; the path where at least 12 characters remain.
                let ow = (flex * 55 / 100).max(fit::width(&o.label()).min(flex));
                let pw = flex.saturating_sub(ow + 2);
                if pw >= 12 {
                    cols.push(format!("{:<ow$}", o.fit(ow)));
                    cols.push(format!("{:<pw$}", fit::path(&path, pw)));
                } else {
                    cols.push(format!("{:<flex$}", o.fit(flex)));
                }
            }
            None => cols.push(format!("{:<flex$}", fit::path(&path, flex))),
        }
        cols.push(format!("{mem:<13}"));
        cols.push(format!("{comm:<comm_w$}"));
        if !hook.is_empty() {
            cols.push(fit::head(&hook, 24));
        }
        let line = cols.join("  ");
        fit::head(line.trim_end(), w)
    }
}

/// A line of the tail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailLine {
    Event(TailEvent),
    /// Drops, warnings: shown highlighted, whatever the filter.
    Note(String),
}

/// The two rings, with a sequence number per line to merge them in order.
#[derive(Clone, Debug, Default)]
pub struct Tail {
    lifecycle: VecDeque<(u64, TailLine)>,
    residents: VecDeque<(u64, TailLine)>,
    seq: u64,
    /// Events seen (for the tail's title).
    pub events: u64,
    pub residents_seen: u64,
}

fn push(ring: &mut VecDeque<(u64, TailLine)>, seq: u64, l: TailLine) {
    if ring.len() == TAIL {
        ring.pop_front();
    }
    ring.push_back((seq, l));
}

impl Tail {
    pub fn push_event(&mut self, e: TailEvent) {
        self.seq += 1;
        self.events += 1;
        if e.resident() {
            self.residents_seen += 1;
            push(&mut self.residents, self.seq, TailLine::Event(e));
        } else {
            push(&mut self.lifecycle, self.seq, TailLine::Event(e));
        }
    }

    pub fn push_note(&mut self, text: &str) {
        self.seq += 1;
        push(
            &mut self.lifecycle,
            self.seq,
            TailLine::Note(text.to_string()),
        );
    }

    /// Lines kept (both rings).
    pub fn len(&self) -> usize {
        self.lifecycle.len() + self.residents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last `n` lines that `keep` takes, oldest first; residents only
    /// `with_residents`. Notes are always kept.
    pub fn last(
        &self,
        n: usize,
        with_residents: bool,
        keep: impl Fn(&TailEvent) -> bool,
    ) -> Vec<&TailLine> {
        let ok = |(_, l): &&(u64, TailLine)| match l {
            TailLine::Note(_) => true,
            TailLine::Event(e) => keep(e),
        };
        let mut a = self.lifecycle.iter().rev().filter(ok).peekable();
        let mut r = self
            .residents
            .iter()
            .rev()
            .filter(|_| with_residents)
            .filter(ok)
            .peekable();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let next = match (a.peek(), r.peek()) {
                (Some(x), Some(y)) if x.0 > y.0 => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => r.next(),
                (Some(_), None) => a.next(),
                (None, None) => None,
            };
            match next {
                Some((_, l)) => out.push(l),
                None => break,
            }
        }
        out.reverse();
        out
    }
}

/// An event with a path and a command, for tests.
#[cfg(test)]
pub fn sample(kind: EventKind, path: &str, comm: &str) -> TailEvent {
    TailEvent {
        time: "12:34:56.789".into(),
        kind,
        id: LineId(Some(42)),
        path: path.into(),
        owner: None,
        mem_bytes: None,
        comm: comm.into(),
        pid: 4242,
        hook: None,
    }
}
