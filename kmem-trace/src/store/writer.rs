//! The history writer: a thread that owns the SQLite connection and writes
//! batches as they come through a bounded channel. The event loop only ever
//! `try_send`s, so a slow disk costs history rows (counted), never events.

use std::{
    sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{samples::CountSample, Record, Store};

/// Batches waiting for the writer before new ones are dropped.
const QUEUE: usize = 1024;
/// At most this long between two deletions of rows older than the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// At least this long between two deletions (a tiny `--retain` must not make
/// the writer prune in a loop).
const PRUNE_MIN: Duration = Duration::from_secs(5);

/// How often the writer prunes: a quarter of the retention, between 5 s
/// (`PRUNE_MIN`) and an hour (`PRUNE_EVERY`), so the history stays within about 1.25
/// retention periods. An hourly prune alone let a `--retain 2m` history grow
/// for an hour.
pub fn prune_interval(retain: Duration) -> Duration {
    (retain / 4).clamp(PRUNE_MIN, PRUNE_EVERY)
}
/// How often the writer says it is alive when nothing happens.
const HEARTBEAT: Duration = Duration::from_secs(5);

enum Msg {
    Batch {
        offset_ns: i64,
        records: Vec<Record>,
    },
    Sample(CountSample),
    Stop,
}

/// What the writer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    pub batches: u64,
    pub records: u64,
    pub errors: u64,
    pub pruned: u64,
    pub last_error: Option<String>,
}

/// Handle to the writer thread.
pub struct Writer {
    tx: SyncSender<Msg>,
    handle: Option<JoinHandle<WriterStats>>,
    /// Records not written because the queue was full.
    pub dropped: u64,
}

/// Wall-clock now, ns since the epoch.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Writer {
    /// Starts the thread; it prunes at once and then every [`prune_interval`].
    pub fn spawn(store: Store, retain: Duration) -> Writer {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let handle = thread::Builder::new()
            .name("kmem-trace-history".into())
            .spawn(move || run(store, rx, retain))
            .ok();
        if handle.is_none() {
            log::warn!("could not start the history writer thread; history is off");
        }
        Writer {
            tx,
            handle,
            dropped: 0,
        }
    }

    /// Queues a batch without blocking; false (and counted) when it was dropped.
    pub fn send(&mut self, offset_ns: i64, records: Vec<Record>) -> bool {
        if records.is_empty() {
            return true;
        }
        let n = records.len() as u64;
        match self.tx.try_send(Msg::Batch { offset_ns, records }) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped += n;
                false
            }
        }
    }

    /// Queues a count sample without blocking; a full queue drops it.
    pub fn send_sample(&mut self, sample: CountSample) -> bool {
        self.tx.try_send(Msg::Sample(sample)).is_ok()
    }

    /// Writes what is queued and stops the thread.
    pub fn close(mut self) -> WriterStats {
        let _ = self.tx.send(Msg::Stop);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

fn run(mut store: Store, rx: Receiver<Msg>, retain: Duration) -> WriterStats {
    let mut stats = WriterStats::default();
    let fail = |stats: &mut WriterStats, what: &str, e: super::StoreError| {
        stats.errors += 1;
        if stats.errors <= 5 {
            log::warn!("history: {what}: {e}");
        }
        stats.last_error = Some(e.to_string());
    };
    let pid = std::process::id().to_string();
    for (k, v) in [
        ("writer_pid", pid.as_str()),
        ("running", "1"),
        ("heartbeat", &now_ns().to_string()),
    ] {
        if let Err(e) = store.set_meta(k, v) {
            fail(&mut stats, "writing meta", e);
        }
    }
    let mut last_prune: Option<Instant> = None;
    let every = prune_interval(retain);
    let mut last_beat = Instant::now();
    loop {
        if last_prune.is_none_or(|t| t.elapsed() >= every) {
            match store.prune(retain, now_ns()) {
                Ok(n) => stats.pruned += n as u64,
                Err(e) => fail(&mut stats, "pruning", e),
            }
            last_prune = Some(Instant::now());
        }
        let mut stop = false;
        let mut batches = Vec::new();
        let mut samples = Vec::new();
        match rx.recv_timeout(HEARTBEAT) {
            Ok(Msg::Batch { offset_ns, records }) => batches.push((offset_ns, records)),
            Ok(Msg::Sample(s)) => samples.push(s),
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => stop = true,
            Err(RecvTimeoutError::Timeout) => {}
        }
        // Whatever else is queued goes into the same transaction, in order.
        while !stop && batches.len() < 64 {
            match rx.try_recv() {
                Ok(Msg::Batch { offset_ns, records }) => batches.push((offset_ns, records)),
                Ok(Msg::Sample(s)) => samples.push(s),
                Ok(Msg::Stop) => stop = true,
                Err(_) => break,
            }
        }
        let now = now_ns();
        let beat = !batches.is_empty() || stop || last_beat.elapsed() >= HEARTBEAT;
        if !samples.is_empty() || beat {
            // One transaction for all of it: a commit per batch (and per meta
            // key) was a good part of the writer's CPU under churn.
            let now_s = now.to_string();
            let mut meta = Vec::with_capacity(2);
            if beat {
                meta.push(("heartbeat", now_s.as_str()));
            }
            if stop {
                meta.push(("running", "0"));
            }
            match store.write_all(&samples, &batches, &meta, now) {
                Ok(()) => {
                    stats.batches += batches.len() as u64;
                    stats.records += batches.iter().map(|b| b.1.len() as u64).sum::<u64>();
                }
                Err(e) => fail(&mut stats, "writing", e),
            }
            if beat {
                last_beat = Instant::now();
            }
        }
        if stop {
            return stats;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prune_interval_follows_the_retention() {
        let s = Duration::from_secs;
        assert_eq!(prune_interval(s(120)), s(30));
        assert_eq!(prune_interval(s(1)), PRUNE_MIN);
        assert_eq!(prune_interval(Duration::ZERO), PRUNE_MIN);
        assert_eq!(prune_interval(s(7 * 86_400)), PRUNE_EVERY);
        assert_eq!(prune_interval(Duration::MAX), PRUNE_EVERY);
    }
}
