//! Between the event loop and the history writer: remembers which memcgs
//! changed, and once per tick sends their current records (freed ones first)
//! as one batch. Also the start-up step: open the history, close rows of
//! earlier boots, and restore the memcgs still there with their attribution.

use std::{collections::HashSet, path::PathBuf, sync::Arc, time::Duration};

use super::{
    reconcile::{reconcile, Reconciled},
    writer::{now_ns, Writer, WriterStats},
    Record, Store, StoreError,
};
use crate::{
    attribution::{runtime_roots, Attribution, AttributionError, Attributor},
    clock::Clock,
    lifecycle::{Applied, Lifecycle, Memcg, Origin},
};

/// History and attribution settings of `watch`.
#[derive(Clone, Debug)]
pub struct HistoryConfig {
    /// `None`: no history (`--no-history`).
    pub db: Option<PathBuf>,
    pub retain: Duration,
    /// `--runtime-root`; empty means the defaults.
    pub runtime_roots: Vec<PathBuf>,
    /// `--no-history-if-busy`: another writer holding the database means
    /// no history, not an error.
    pub skip_if_busy: bool,
    /// `--cri-socket`; empty means the defaults.
    pub cri_sockets: Vec<PathBuf>,
}

impl HistoryConfig {
    /// From `watch`'s options.
    pub fn from_args(a: &crate::cli::HistoryArgs) -> HistoryConfig {
        HistoryConfig {
            db: (!a.no_history).then(|| a.db.clone()),
            retain: a.retain,
            runtime_roots: a.runtime_root.clone(),
            skip_if_busy: a.no_history_if_busy,
            cri_sockets: a.cri_socket.clone(),
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            db: Some(PathBuf::from(super::DEFAULT_DB)),
            retain: super::DEFAULT_RETAIN,
            runtime_roots: Vec::new(),
            skip_if_busy: false,
            cri_sockets: Vec::new(),
        }
    }
}

/// Errors of preparing attribution and history.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Attribution(#[from] AttributionError),
}

/// What start-up restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub memcgs: usize,
    pub dying: usize,
    pub lost: usize,
    pub other_boots: usize,
}

/// Opens the history for writing unless disabled, taking its writer lock:
/// called before the probes load, so a second tracer on the same database
/// is refused at once and loads nothing.
pub fn open(cfg: &HistoryConfig) -> Result<Option<Store>, StoreError> {
    match cfg.db.as_deref().map(Store::open).transpose() {
        Err(StoreError::Busy { path, pid }) if cfg.skip_if_busy => {
            let pid = pid.map_or("pid unknown".into(), |p| format!("pid {p}"));
            eprintln!(
                "kmem-trace: history {path} is being written by another kmem-trace ({pid}); \
                 running without history (--no-history-if-busy)"
            );
            Ok(None)
        }
        r => r,
    }
}

/// Builds the attribution stage and, with a history (from [`open`]),
/// restores the memcgs it still knows into `lc` (after cgroupfs seeding, and
/// after a census if one ran: census memcgs in `lc` are then the reference).
pub fn prepare(
    cfg: &HistoryConfig,
    store: Option<Store>,
    lc: &mut Lifecycle,
    clock: Clock,
) -> Result<(Attributor, Option<HistoryFeed>, Restored), PrepareError> {
    let mut attributor =
        Attributor::background(std::sync::Arc::new(crate::attribution::cri::Chain {
            cri: crate::attribution::cri::CriLookup::new(&cfg.cri_sockets),
            files: runtime_roots(&cfg.runtime_roots)?,
        }));
    let Some(mut store) = store else {
        return Ok((attributor, None, Restored::default()));
    };
    let now = now_ns();
    let mut restored = Restored {
        other_boots: store.retire_other_boots(now)?,
        ..Restored::default()
    };
    let rows = store.open_rows(clock.offset_ns)?;
    let census: Vec<Memcg> = lc
        .memcgs()
        .filter(|m| m.origin == Origin::Census)
        .cloned()
        .collect();
    let Reconciled {
        restore,
        lost,
        went_offline,
    } = reconcile(
        rows,
        |k| lc.tree.contains(k),
        (!census.is_empty()).then_some(census.as_slice()),
    );
    restored.lost = store.mark_lost(&lost, now)?;
    let mut feed = HistoryFeed::new(Writer::spawn(store, cfg.retain), clock);
    for (m, attr) in restore {
        restored.memcgs += 1;
        restored.dying += (m.state == crate::lifecycle::State::Dying) as usize;
        if let Some(a) = attr {
            attributor.seed(m.addr, m.path.clone(), a);
        }
        // Rewritten: went offline unseen, or now `unconfirmed` in the history too.
        if went_offline.contains(&m.addr) || m.unconfirmed {
            feed.dirty.insert(m.addr);
        }
        lc.seed_memcg(m);
    }
    // Memcgs the census found and the history did not know: attribute them now
    // (their containers may still exist) and record them.
    for m in lc.memcgs().filter(|m| m.origin == Origin::Census) {
        if attributor.get(m.addr).is_none() && attributor.attribute_path(m.addr, &m.path).is_some()
        {
            feed.dirty.insert(m.addr);
        }
    }
    Ok((attributor, Some(feed), restored))
}

/// Changed memcgs waiting for the next flush.
pub struct HistoryFeed {
    writer: Writer,
    dirty: HashSet<u64>,
    freed: Vec<Record>,
    clock: Clock,
    /// When the last count sample was sent (`samples::SAMPLE_EVERY` apart).
    last_sample: Option<std::time::Instant>,
}

impl HistoryFeed {
    pub fn new(writer: Writer, clock: Clock) -> HistoryFeed {
        HistoryFeed {
            writer,
            dirty: HashSet::new(),
            freed: Vec::new(),
            clock,
            last_sample: None,
        }
    }

    /// Sends a count sample for the report's timeline, at most once every
    /// `samples::SAMPLE_EVERY` unless `force` (the last one of a run).
    pub fn sample(&mut self, status: &crate::outputs::Status, force: bool) {
        let due = self
            .last_sample
            .is_none_or(|t| t.elapsed() >= super::samples::SAMPLE_EVERY);
        if !due && !force {
            return;
        }
        self.last_sample = Some(std::time::Instant::now());
        self.writer.send_sample(super::samples::CountSample {
            ts: now_ns(),
            boot_id: String::new(),
            live: status.counts.live,
            dying: status.counts.dying,
            zombies: status.counts.zombies,
            ids_in_use: status.counts.ids_in_use,
            id_limit: status.counts.id_limit,
            drops: status.drops,
            hooks: status.hook_family.clone(),
        });
    }

    /// Writes memcg `addr` again at the next flush (its attribution changed).
    pub fn touch(&mut self, addr: u64) {
        self.dirty.insert(addr);
    }

    /// Notes what an event changed. A freed memcg leaves the lifecycle, so its
    /// final record is kept here until the flush.
    pub fn observe(&mut self, applied: &Applied, owner: Option<&Arc<Attribution>>) {
        if let Some(m) = &applied.freed {
            self.freed(m, owner);
        } else if let Some(addr) = applied.addr {
            self.dirty.insert(addr);
        }
    }

    /// Keeps the final record of memcg `m`, freed (seen, or found gone by a
    /// recheck), for the next flush.
    pub fn freed(&mut self, m: &Memcg, owner: Option<&Arc<Attribution>>) {
        self.dirty.remove(&m.addr);
        self.freed.push(Record {
            memcg: m.clone(),
            attribution: owner.cloned(),
        });
    }

    /// Sends one batch: freed memcgs first (their addresses may already be
    /// reused by memcgs in the same batch), then the changed ones.
    pub fn flush(&mut self, lc: &Lifecycle, attrs: &Attributor) {
        if self.freed.is_empty() && self.dirty.is_empty() {
            return;
        }
        let mut batch: Vec<Record> = std::mem::take(&mut self.freed);
        for addr in self.dirty.drain() {
            if let Some(m) = lc.get(addr) {
                batch.push(Record {
                    memcg: m.clone(),
                    attribution: attrs.get(addr).cloned(),
                });
            }
        }
        let n = batch.len() as u64;
        if !self.writer.send(self.clock.offset_ns, batch) && self.writer.dropped == n {
            log::warn!("history writer is behind; dropping history records");
        }
    }

    /// Records not written because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.writer.dropped
    }

    /// Flushes and stops the writer.
    pub fn close(mut self, lc: &Lifecycle, attrs: &Attributor) -> WriterStats {
        self.flush(lc, attrs);
        self.writer.close()
    }
}
