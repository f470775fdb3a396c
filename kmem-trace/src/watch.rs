//! Runs the pipeline: probes → decode → lifecycle → outputs, live (`watch`) or
//! from a recording (`replay`). Owns the event loop, signals and the clean stop
//! (detach, drain what is queued, summary).

use std::{
    collections::HashSet,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    attribution::Attributor,
    census::recheck,
    cgroupfs,
    cli::{ProbeArgs, RunArgs},
    decode::{self, TraceEvent},
    lifecycle::{Lifecycle, LifecycleConfig},
    outputs::{
        Clock, Health, HookLabels, Key, Keys, Output, OutputError, Snapshot, Status, Summary,
    },
    probes::{self, ring::EventStream, ProbeConfig, ProbeReport, Probes},
    store::{
        self,
        feed::{HistoryConfig, HistoryFeed, PrepareError, Restored},
    },
};

/// Errors of running the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Probe(#[from] probes::ProbeError),
    #[error(transparent)]
    Lifecycle(#[from] crate::lifecycle::LifecycleError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("waiting for events: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cgroupfs(#[from] cgroupfs::CgroupfsError),
    #[error(transparent)]
    History(#[from] PrepareError),
}

/// Decode + lifecycle + output for one record at a time; shared by live and replay.
pub struct Pipeline<'o> {
    pub lifecycle: Lifecycle,
    /// The stage after the lifecycle: who each memcg belongs to.
    pub attribution: Attributor,
    /// Changed memcgs on their way to the history database.
    history: Option<HistoryFeed>,
    /// Samples for the leak-rate forecast in the header.
    forecast: Option<crate::forecast::Tracker>,
    out: &'o mut dyn Output,
    recorder: Option<BufWriter<File>>,
    pub bad_records: u64,
    pub events: u64,
    /// Memcgs events touched since a recheck started (it leaves them alone).
    touched: Option<HashSet<u64>>,
    /// The programs' read-fault and residents-capped counters, last read.
    kernel_counters: Option<(u64, u64)>,
}

impl<'o> Pipeline<'o> {
    pub fn new(lifecycle: Lifecycle, out: &'o mut dyn Output) -> Self {
        Pipeline {
            lifecycle,
            attribution: Attributor::paths_only(),
            history: None,
            forecast: crate::forecast::Tracker::new(3600.0).ok(),
            out,
            recorder: None,
            bad_records: 0,
            events: 0,
            touched: None,
            kernel_counters: None,
        }
    }

    /// Uses `attribution` (with container metadata) and writes the history.
    pub fn with_stages(mut self, attribution: Attributor, history: Option<HistoryFeed>) -> Self {
        self.attribution = attribution;
        self.history = history;
        self
    }

    /// Writes every raw record to `path` too (a recording with a header).
    pub fn record_to(&mut self, path: &Path, clock: Clock) -> Result<(), WatchError> {
        let f = crate::files::create_private(path).map_err(|source| WatchError::File {
            what: "creating",
            path: path.into(),
            source,
        })?;
        let mut w = BufWriter::new(f);
        decode::write_header(&mut w, clock.offset_ns)?;
        self.recorder = Some(w);
        Ok(())
    }

    /// One raw ring-buffer record. A record that does not decode is counted and
    /// reported, never fatal; it is still written to the recording.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), WatchError> {
        if let Some(r) = self.recorder.as_mut() {
            r.write_all(bytes)?;
        }
        match TraceEvent::decode(bytes) {
            Ok(ev) => ev.expand(|e| self.feed_event(e)),
            Err(e) => {
                self.bad_records += 1;
                if self.bad_records <= 10 {
                    self.out.note(&e.to_string())?;
                }
                Ok(())
            }
        }
    }

    pub fn feed_event(&mut self, ev: &TraceEvent) -> Result<(), WatchError> {
        self.events += 1;
        self.collect_meta();
        let applied = self.lifecycle.apply(ev);
        if let (Some(t), Some(a)) = (self.touched.as_mut(), applied.addr) {
            t.insert(a);
        }
        let owner = self.attribution.observe(&applied);
        if let Some(h) = self.history.as_mut() {
            h.observe(&applied, owner.as_ref());
        }
        self.out.event(ev, &applied, owner.as_deref())?;
        Ok(())
    }

    /// Container metadata the lookup worker found since the last call: the
    /// attributions it completed are written to the history again.
    fn collect_meta(&mut self) {
        for addr in self.attribution.poll() {
            if let Some(h) = self.history.as_mut() {
                h.touch(addr);
            }
        }
    }

    pub fn status(
        &mut self,
        drops: u64,
        family: &str,
        elapsed: Duration,
        now_ns: u64,
    ) -> Result<Status, WatchError> {
        let counts = self.lifecycle.counts(now_ns);
        let forecast = self.forecast.as_mut().and_then(|t| {
            t.push(crate::forecast::Sample::tracked(
                elapsed.as_secs_f64(),
                counts.live,
                counts.dying,
                counts.ids_in_use,
            ));
            t.forecast(counts.id_limit)
        });
        let status = Status {
            counts,
            drops,
            hook_family: family.to_string(),
            elapsed_s: elapsed.as_secs_f64(),
            forecast,
        };
        self.collect_meta();
        if let Some(h) = self.history.as_mut() {
            h.flush(&self.lifecycle, &self.attribution);
            h.sample(&status, false);
        }
        self.out.owners(&self.attribution.counts(&self.lifecycle))?;
        self.out.snapshot(&Snapshot {
            lifecycle: &self.lifecycle,
            attribution: &self.attribution,
            now_ns,
        })?;
        self.out.status(&status)?;
        Ok(status)
    }

    /// The counts now, for a summary (the stop's, SIGUSR1's): unlike
    /// [`Pipeline::status`], no forecast sample, history sample or output.
    pub fn status_now(&self, drops: u64, family: &str, elapsed: Duration) -> Status {
        Status {
            counts: self.lifecycle.counts(Clock::mono_now()),
            drops,
            hook_family: family.to_string(),
            elapsed_s: elapsed.as_secs_f64(),
            forecast: None,
        }
    }

    /// The summary so far (SIGUSR1), `kind` "snapshot"; the run goes on.
    pub fn interim(&mut self, status: Status) -> Result<Summary, WatchError> {
        let summary = self.summary_of(status, "snapshot");
        self.out.interim(&summary)?;
        Ok(summary)
    }

    fn summary_of(&self, status: Status, kind: &'static str) -> Summary {
        let mut summary = Summary::new(&self.lifecycle, status, self.bad_records);
        summary.kind = kind;
        if let Some((faults, capped)) = self.kernel_counters {
            summary.read_faults = Some(faults);
            summary.residents_capped = Some(capped);
        }
        summary
    }

    pub fn finish(&mut self, status: Status) -> Result<Summary, WatchError> {
        if let Some(mut r) = self.recorder.take() {
            r.flush()?;
        }
        self.collect_meta();
        if let Some(mut h) = self.history.take() {
            h.sample(&status, true);
            let dropped = h.dropped();
            let stats = h.close(&self.lifecycle, &self.attribution);
            if stats.errors > 0 || dropped > 0 {
                let why = stats.last_error.unwrap_or_default();
                self.out.note(&format!(
                    "history: {} write errors, {dropped} records dropped {why}",
                    stats.errors
                ))?;
            }
        }
        self.out.owners(&self.attribution.counts(&self.lifecycle))?;
        let summary = self.summary_of(status, "summary");
        self.out.summary(&summary)?;
        Ok(summary)
    }

    pub fn note(&mut self, msg: &str) -> Result<(), WatchError> {
        self.out.note(msg)?;
        Ok(())
    }

    /// A health record (drops, faults, a recheck) to the output.
    pub fn health(&mut self, h: &Health) -> Result<(), WatchError> {
        self.out.health(h)?;
        Ok(())
    }

    /// A recheck starts: remember what events touch until it is applied.
    pub fn recheck_started(&mut self) {
        self.touched = Some(HashSet::new());
    }

    /// Applies a finished recheck: memcgs the kernel no longer has close
    /// their history rows (freed, time unknown) and leave the attribution
    /// cache as an observed free does; changed ones are rewritten.
    pub fn recheck(&mut self, view: recheck::View) -> Result<(), WatchError> {
        let touched = self.touched.take().unwrap_or_default();
        let out = recheck::apply(&mut self.lifecycle, view, &touched);
        for m in out.gone {
            let owner = self.attribution.forget(m.addr);
            if let Some(h) = self.history.as_mut() {
                h.freed(&m, owner.as_ref());
            }
        }
        if let Some(h) = self.history.as_mut() {
            for addr in out.changed {
                h.touch(addr);
            }
        }
        self.health(&Health::Recheck(out.report))
    }

    /// The programs' in-kernel counters, for the summary.
    pub fn set_kernel_counters(&mut self, read_faults: u64, residents_capped: u64) {
        self.kernel_counters = Some((read_faults, residents_capped));
    }

    /// A key from the live view; false when it asks to stop.
    pub fn key(&mut self, key: Key) -> Result<bool, WatchError> {
        Ok(self.out.key(key)?)
    }
}

/// Settings of a live run.
pub struct WatchConfig {
    pub probe: ProbeConfig,
    pub lifecycle: LifecycleConfig,
    pub duration: Option<Duration>,
    pub record: Option<PathBuf>,
    /// Header refresh period.
    pub tick: Duration,
    /// History database, retention and container runtime roots.
    pub history: HistoryConfig,
}

impl WatchConfig {
    /// The settings `watch` and `serve` share, from their command lines.
    pub fn new(
        probe: &ProbeArgs,
        run: &RunArgs,
        history: HistoryConfig,
        residents: u32,
        tick: Duration,
    ) -> WatchConfig {
        WatchConfig {
            probe: ProbeConfig {
                ring_bytes: run.ring_buffer_size,
                // The kernel counts attach, fork and exec alike: leave room for execs.
                max_residents: residents.saturating_mul(2),
                ..probe.config()
            },
            lifecycle: LifecycleConfig {
                zombie_after_ns: run.zombie_after.as_nanos() as u64,
                id_limit: run.id_limit,
                max_residents: residents as usize,
                ..LifecycleConfig::default()
            },
            history,
            duration: run.duration,
            record: None,
            tick,
        }
    }
}

/// Builds the attribution stage and opens the history, restoring what it
/// knows of memcgs that still exist (call after [`start`], before
/// [`run_interactive`]).
pub fn prepare(
    cfg: &WatchConfig,
    history: Option<store::Store>,
    lc: &mut Lifecycle,
) -> Result<(Attributor, Option<HistoryFeed>, Restored), WatchError> {
    Ok(store::feed::prepare(
        &cfg.history,
        history,
        lc,
        Clock::measure(),
    )?)
}

/// What can fail before anything is loaded (call before [`start`]): the
/// privileges, the `--record` file (created 0600, no symlink followed), and
/// the history with its writer lock (a second writer is refused here).
pub fn preflight(cfg: &WatchConfig) -> Result<Option<store::Store>, WatchError> {
    // Without the privileges to trace, that is the error to show, not the
    // history's (a non-root user cannot open /var/lib/kmem-trace either).
    probes::kernel::check_own_privileges().map_err(probes::ProbeError::from)?;
    if let Some(path) = &cfg.record {
        crate::files::create_private(path).map_err(|source| WatchError::File {
            what: "creating",
            path: path.clone(),
            source,
        })?;
    }
    store::feed::open(&cfg.history).map_err(|e| WatchError::History(e.into()))
}

/// Labels for the hooks in use, from the probe report.
pub fn hook_labels(report: &ProbeReport) -> HookLabels {
    let mut labels = HookLabels::new();
    for p in &report.points {
        if let Some(a) = p.chosen() {
            let hook_id = probes::table::TABLE
                .iter()
                .find(|r| r.program == a.program && r.point == p.point)
                .map(|r| r.hook_id)
                .unwrap_or(0);
            labels.insert(hook_id, Arc::from(a.label()));
        }
    }
    for x in &report.extras {
        if x.outcome == probes::Outcome::Chosen {
            labels.insert(x.hook_id, Arc::from(x.label.as_str()));
        }
    }
    labels
}

/// Every directory of every memory hierarchy in cgroupfs, to seed the cgroup
/// tree. Fails when no memory controller is mounted; a hierarchy that cannot be
/// walked only costs path detail.
pub fn cgroupfs_dirs() -> Result<Vec<cgroupfs::Dir>, cgroupfs::CgroupfsError> {
    let mut dirs = Vec::new();
    for h in cgroupfs::memory_hierarchies(Path::new("/"))? {
        match cgroupfs::scan(&h) {
            Ok(d) => dirs.extend(d),
            Err(e) => log::warn!("{e}; paths of cgroups created before start will be partial"),
        }
    }
    Ok(dirs)
}

/// Starts the probes and returns them with the lifecycle ready to run.
pub fn start(cfg: &WatchConfig) -> Result<(Probes, Lifecycle), WatchError> {
    let mut lc_cfg = cfg.lifecycle.clone();
    // Before loading anything: with no memory controller there is nothing to watch.
    let dirs = cgroupfs_dirs()?;
    let probes = Probes::start(&cfg.probe)?;
    // If a hook sees id_release, trust it instead of inferring at offline;
    // inferred only where the kernel gives the ID back at offline
    // (forecast::dying_hold, the one ID model), held until free before 4.7.
    let no_id_hook = probes
        .report
        .points
        .iter()
        .any(|p| p.point == probes::Point::IdRelease && p.chosen.is_none());
    let version = probes::kernel::KernelVersion::parse(&probes::kernel::release());
    lc_cfg.id_freed_at_offline = no_id_hook
        && crate::forecast::dying_hold(version) == Some(crate::forecast::DyingHold::SwapHeld);
    let mut lc = Lifecycle::new(lc_cfg)?;
    for d in dirs {
        lc.seed_cgroup(d.key, d.parent, &d.name);
    }
    // After attaching, so nothing falls between the census and the probes.
    crate::census::seed_watch(&mut lc, cfg.probe.btf.clone());
    release_startup_memory();
    Ok((probes, lc))
}

/// Start-up parses the kernel BTF (twice: ours and aya's) and kallsyms, tens
/// of MiB at peak, all freed by now; glibc keeps freed pages unless asked, so
/// the idle tracer would stay at ~70 MiB resident instead of ~30
/// (docs/PERFORMANCE.md).
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Pause between ring-buffer reads (see `run_interactive`).
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// The next key of the live view; pending forever without one.
async fn next_key(keys: &mut Option<Keys>) -> Key {
    loop {
        match keys {
            Some(rx) => match rx.recv().await {
                Some(k) => return k,
                None => *keys = None,
            },
            None => std::future::pending::<()>().await,
        }
    }
}

/// SIGTERM and SIGINT (stop), SIGUSR1 (the summary so far), caught from the
/// start of a run (see `serve::trace`); one that arrived during start-up is
/// seen by the first turn of the loop, and an early SIGUSR1 does not kill.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers; call inside the runtime (`Runtime::enter`).
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// Runs until Ctrl-C, SIGTERM, `duration` or a key the output takes for a
/// stop (`q` in the live view; `keys` is `None` without one), then detaches,
/// drains and summarises. Everything already in the ring buffer when the
/// programs are detached is still processed. `stages` come from [`prepare`].
pub async fn run_interactive(
    cfg: &WatchConfig,
    mut probes: Probes,
    lifecycle: Lifecycle,
    stages: (Attributor, Option<HistoryFeed>),
    out: &mut dyn Output,
    mut keys: Option<Keys>,
    signals: Signals,
) -> Result<Summary, WatchError> {
    let Signals {
        term: mut sigterm,
        int: mut sigint,
        usr1: mut sigusr1,
    } = signals;
    let clock = Clock::measure();
    let family = probes.report.family_in_use();
    let events = probes
        .take_events()
        .ok_or(probes::ProbeError::Map("EVENTS"))?;
    let mut stream = EventStream::new(events)?;
    let mut pipe = Pipeline::new(lifecycle, out).with_stages(stages.0, stages.1);
    if let Some(path) = &cfg.record {
        pipe.record_to(path, clock)?;
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(cfg.tick);
    let deadline = cfg.duration.map(|d| tokio::time::Instant::now() + d);
    let sleep =
        tokio::time::sleep_until(deadline.unwrap_or_else(|| {
            tokio::time::Instant::now() + Duration::from_secs(86400 * 365 * 100)
        }));
    tokio::pin!(sleep);
    let mut counters = crate::counters::KernelCounters::default();
    let mut rechecks = recheck::Worker::new(crate::census::CensusConfig {
        btf: cfg.probe.btf.clone(),
        ..Default::default()
    });
    let mut recheck_at: Option<Instant> = None;
    loop {
        tokio::select! {
            batch = stream.ready() => {
                batch?.for_each(|b| pipe.feed(b))?;
                // Let records pile up before the next read. The ring buffer
                // notifies the reader only once it has caught up, so reading
                // at most every BATCH_PAUSE turns one wake-up per event into
                // one per pause under churn, which every mkdir/rmdir pays in
                // line (docs/PERFORMANCE.md). Events wait at most this long.
                tokio::time::sleep(BATCH_PAUSE).await;
            }
            _ = tick.tick() => {
                // A drain here too, so a missed wake-up can never stall the tail.
                stream.drain(|b| pipe.feed(b))?;
                if counters.read(&probes, &mut pipe, false)? {
                    recheck_at.get_or_insert_with(|| rechecks.after_drops());
                }
                if let Some(r) = rechecks.poll() {
                    match r {
                        Ok(view) => pipe.recheck(view)?,
                        Err(e) => pipe.note(&format!("recheck: {e}"))?,
                    }
                }
                let asked = recheck_at.is_some_and(|t| Instant::now() >= t);
                if (asked || rechecks.due(started)) && rechecks.start() {
                    pipe.recheck_started();
                    recheck_at = None;
                }
                pipe.status(counters.drops, &family, started.elapsed(), Clock::mono_now())?;
            }
            key = next_key(&mut keys) => {
                if !pipe.key(key)? {
                    break;
                }
            }
            _ = sigusr1.recv() => {
                // Everything the kernel sent until now counts, as at a stop;
                // the tick's history sample and forecast are the tick's.
                stream.drain(|b| pipe.feed(b))?;
                let status = pipe.status_now(probes.drops(), &family, started.elapsed());
                pipe.interim(status)?;
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = &mut sleep => break,
        }
    }
    probes.detach();
    stream.drain(|b| pipe.feed(b))?;
    counters.read(&probes, &mut pipe, true)?;
    let status = pipe.status_now(probes.drops(), &family, started.elapsed());
    pipe.finish(status)
}

/// A recording made with `watch --record`, read whole.
pub struct Recording {
    /// Wall clock of the recording machine (its monotonic clock's offset).
    pub clock: Clock,
    pub events: Vec<TraceEvent>,
    /// Bytes after the last complete record (a recorder killed mid-write).
    pub truncated: usize,
}

impl Recording {
    pub fn read(path: &Path) -> Result<Recording, WatchError> {
        let bytes = std::fs::read(path).map_err(|source| WatchError::File {
            what: "reading",
            path: path.into(),
            source,
        })?;
        let (header, events, truncated) = decode::decode_recording_lossy(&bytes)?;
        Ok(Recording {
            clock: Clock::from_offset(header.wall_offset_ns),
            events: events?,
            truncated,
        })
    }
}

/// Replays a recording through decode → lifecycle → output.
pub fn replay(
    rec: &Recording,
    lifecycle: Lifecycle,
    out: &mut dyn Output,
) -> Result<Summary, WatchError> {
    let mut pipe = Pipeline::new(lifecycle, out);
    let last_ts = rec.events.last().map(|e| e.ts_ns()).unwrap_or(0);
    for ev in &rec.events {
        pipe.feed_event(ev)?;
    }
    if rec.truncated != 0 {
        pipe.note(&decode::DecodeError::Truncated(rec.truncated).to_string())?;
    }
    let status = Status {
        counts: pipe.lifecycle.counts(last_ts),
        drops: 0,
        hook_family: "replay".into(),
        elapsed_s: 0.0,
        forecast: None,
    };
    pipe.finish(status)
}
