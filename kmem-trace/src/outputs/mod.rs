//! Presenting what the lifecycle knows: one JSON object per line, or a human
//! header and event tail. Outputs only read; they never change the state.

pub mod aggregate;
pub mod json;
mod jsonw;
pub mod keys;
pub mod line;
pub mod tee;
pub mod text;
pub mod tui;

use std::{borrow::Cow, collections::HashMap, fmt, sync::Arc};

use serde::Serialize;

/// The clock lives at the crate root (every stage stamps with it); outputs use it most.
pub use crate::clock::Clock;
pub use keys::{Key, Keys};

use crate::{
    attribution::{Attribution, Attributor, OwnerCounts},
    decode::TraceEvent,
    lifecycle::{Applied, Counts, Lifecycle},
};

/// Errors of writing output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Labels of the hooks in use, by `Event::hook` number (`tp_btf cgroup_rmdir`).
pub type HookLabels = HashMap<u16, Arc<str>>;

/// Live status for headers.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    #[serde(flatten)]
    pub counts: Counts,
    pub drops: u64,
    pub hook_family: String,
    pub elapsed_s: f64,
    /// Leak rate and time until the ID space is used up (after a minute of samples).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forecast: Option<crate::forecast::Forecast>,
}

/// Offline → free latency summary (microseconds).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// Something about the tracer's own view rather than a memcg: a `--json`
/// record of its own kind, a note elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Health {
    /// Events lost because the event buffer was full: the ring buffer, or a
    /// CPU's perf buffer with the old-kernel object (`--transport`).
    Drops { new: u64, total: u64 },
    /// Kernel reads in the eBPF programs that faulted (those events carry
    /// unknown fields).
    ReadFaults { new: u64, total: u64 },
    /// Residents not reported because a memcg had `--residents` already.
    ResidentsCapped { new: u64, total: u64 },
    /// A recheck against the kernel (`census::recheck`).
    Recheck(crate::census::recheck::Recheck),
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Drops { new, total } => {
                write!(f, "{new} events dropped (event buffer full); total {total}")
            }
            Health::ReadFaults { new, total } => write!(
                f,
                "{new} kernel reads faulted in the eBPF programs (fields of those events are unknown); total {total}"
            ),
            Health::ResidentsCapped { new, total } => write!(
                f,
                "{new} residents not reported (memcgs already had --residents of them); total {total}"
            ),
            Health::Recheck(r) => {
                write!(
                    f,
                    "recheck ({}): {} gone unseen, {} found, {} went offline unseen, {} confirmed, {} unconfirmed; dying: kernel {}, tracked {}",
                    r.source,
                    r.gone,
                    r.found,
                    r.went_offline,
                    r.confirmed,
                    r.unconfirmed,
                    r.kernel_dying.map_or("unknown".into(), |d| d.to_string()),
                    r.tracked_dying
                )?;
                if let Some(why) = &r.why {
                    write!(f, " (no census: {why})")?;
                }
                Ok(())
            }
        }
    }
}

/// The end-of-run summary.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    #[serde(flatten)]
    pub status: Status,
    pub events: HashMap<&'static str, u64>,
    pub bad_records: u64,
    pub offline_to_free: Latency,
    /// In-kernel counters of the eBPF programs (live runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_faults: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub residents_capped: Option<u64>,
}

impl Summary {
    pub fn new(lc: &Lifecycle, status: Status, bad_records: u64) -> Summary {
        let events = kmem_trace_common::EventKind::ALL
            .iter()
            .filter(|k| **k != kmem_trace_common::EventKind::Census)
            .map(|k| (k.name(), lc.events[*k as usize]))
            .collect();
        let h = &lc.offline_to_free_us;
        let offline_to_free = if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                count: h.len(),
                p50_us: h.value_at_quantile(0.5),
                p99_us: h.value_at_quantile(0.99),
                max_us: h.max(),
            }
        };
        Summary {
            kind: "summary",
            status,
            events,
            bad_records,
            offline_to_free,
            read_faults: None,
            residents_capped: None,
        }
    }
}

/// The whole state, read-only, once per tick before [`Output::status`]: for
/// outputs that aggregate (the live view's owner table, the metrics).
pub struct Snapshot<'a> {
    pub lifecycle: &'a Lifecycle,
    pub attribution: &'a Attributor,
    /// Monotonic now (ns), for ages and zombies.
    pub now_ns: u64,
}

/// Where events, headers and the summary go.
pub trait Output {
    /// One event, with what the lifecycle made of it and the owner of its
    /// memcg (the attribution stage's view, when known).
    fn event(
        &mut self,
        ev: &TraceEvent,
        applied: &Applied,
        owner: Option<&Attribution>,
    ) -> Result<(), OutputError>;
    /// Memcgs per owner kind, sent before each [`Output::status`].
    fn owners(&mut self, _counts: &OwnerCounts) -> Result<(), OutputError> {
        Ok(())
    }
    fn status(&mut self, status: &Status) -> Result<(), OutputError>;
    fn summary(&mut self, summary: &Summary) -> Result<(), OutputError>;
    /// The summary so far, asked for with SIGUSR1 while the run goes on
    /// (`kind` "snapshot"). Outputs that show the counts live already (the
    /// live view, the metrics) have nothing to add.
    fn interim(&mut self, _summary: &Summary) -> Result<(), OutputError> {
        Ok(())
    }
    /// A line of information (drops, warnings); JSON output sends it to stderr.
    fn note(&mut self, msg: &str) -> Result<(), OutputError>;
    /// The whole state at a tick (see [`Snapshot`]).
    fn snapshot(&mut self, _s: &Snapshot<'_>) -> Result<(), OutputError> {
        Ok(())
    }
    /// What the tracer learnt about its own view (lost events, faulted
    /// reads, a recheck); a note unless the output has records for it.
    fn health(&mut self, h: &Health) -> Result<(), OutputError> {
        self.note(&h.to_string())
    }
    /// A key pressed in the live view; `Ok(false)` asks the run to stop.
    fn key(&mut self, _key: Key) -> Result<bool, OutputError> {
        Ok(true)
    }
}

/// The memcg ID and path an event line shows: what the lifecycle resolved,
/// else what the event itself carries, `?` where neither knows. Borrowed and
/// formatted straight into the line (no strings of their own per event).
pub fn id_and_path<'a>(ev: &'a TraceEvent, applied: &'a Applied) -> (LineId, Cow<'a, str>) {
    let id = LineId(applied.memcg_id.or(ev.memcg_id()));
    let path = match applied.path.as_deref() {
        Some(p) if !p.is_empty() => Cow::Borrowed(p),
        _ => match ev.name() {
            n if n.is_empty() => Cow::Borrowed("?"),
            n => n,
        },
    };
    (id, path)
}

/// A memcg ID in an event line, `?` when unknown; width and alignment apply
/// (`{:<5}`) either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineId(pub Option<u32>);

impl fmt::Display for LineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(id) => fmt::Display::fmt(&id, f),
            None => f.pad("?"),
        }
    }
}

/// Bytes of a page (counters are kept in pages).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::LineId;

    #[test]
    fn line_ids_pad_known_and_unknown_alike() {
        assert_eq!(format!("{:<5}|", LineId(Some(42))), "42   |");
        assert_eq!(format!("{:<5}|", LineId(None)), "?    |");
    }
}
