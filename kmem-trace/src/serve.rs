//! Running the pipeline with its outputs: the live view, plain lines or JSON
//! for `watch`, the Prometheus exporter next to any of them (`watch --metrics`),
//! and `kmem-trace serve` — the same tracer headless, metrics only.

use std::{
    io::BufWriter,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use crate::{
    attribution::{Attributor, RuntimeRoots},
    cli::ServeArgs,
    lifecycle::Lifecycle,
    metrics::{http::Server, listen_addr, Metrics, MetricsError, MetricsOutput},
    outputs::{
        json::JsonOutput, line::LineOutput, tee::Tee, tui, Clock, HookLabels, Output, OutputError,
        Status, Summary,
    },
    probes::Probes,
    store::feed::{HistoryConfig, HistoryFeed, Restored},
    watch::{self, WatchConfig, WatchError},
};

/// Errors of running the outputs and `serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Watch(#[from] WatchError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("starting the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// The metrics output and its bound endpoint.
pub struct Exporter {
    output: MetricsOutput,
    server: Server,
}

impl Exporter {
    /// Binds `addr` (loopback unless `any`) before anything is loaded, so a bad
    /// or taken address fails at once.
    pub fn bind(addr: &str, any: bool, top_namespaces: usize) -> Result<Exporter, MetricsError> {
        let addr = listen_addr(addr, any)?;
        let metrics = Metrics::new(top_namespaces);
        let server = Server::bind(addr, metrics.registry())?;
        Ok(Exporter {
            output: MetricsOutput::new(metrics),
            server,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.local_addr()
    }
}

/// The output people see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Primary {
    /// One JSON object per line.
    Json,
    /// Plain lines; `tty`: a redrawn header and tail.
    Lines { tty: bool },
    /// The live terminal view (falls back to lines if the terminal refuses).
    Live,
    /// Nothing on stdout (`serve`): notes and the summary go to stderr.
    Headless,
}

/// An output that only reports notes and the end to stderr.
struct Headless;

impl Output for Headless {
    fn event(
        &mut self,
        _ev: &crate::decode::TraceEvent,
        _applied: &crate::lifecycle::Applied,
        _owner: Option<&crate::attribution::Attribution>,
    ) -> Result<(), OutputError> {
        Ok(())
    }

    fn status(&mut self, _status: &Status) -> Result<(), OutputError> {
        Ok(())
    }

    fn summary(&mut self, s: &Summary) -> Result<(), OutputError> {
        let c = &s.status.counts;
        // "stopped" at the end, "snapshot" for SIGUSR1's (`interim`).
        let what = if s.kind == "snapshot" {
            "snapshot"
        } else {
            "stopped"
        };
        eprintln!(
            "kmem-trace: {what} after {:.0}s: live {} dying {} zombies {} unconfirmed {} IDs {}/{} drops {} \
             read faults {} residents capped {}",
            s.status.elapsed_s,
            c.live,
            c.dying,
            c.zombies,
            c.unconfirmed,
            c.ids_in_use,
            c.id_limit,
            s.status.drops,
            s.read_faults.unwrap_or(0),
            s.residents_capped.unwrap_or(0)
        );
        Ok(())
    }

    fn interim(&mut self, s: &Summary) -> Result<(), OutputError> {
        self.summary(s)
    }

    fn note(&mut self, msg: &str) -> Result<(), OutputError> {
        eprintln!("kmem-trace: {msg}");
        Ok(())
    }
}

/// What `watch` and `serve` share: takes the history's writer lock, loads
/// the probes, restores the history, says so on stderr, and runs the
/// pipeline into `primary` (and the exporter, when given).
///
/// SIGTERM and SIGINT are caught before anything else: start-up (probes,
/// census, history restore) takes seconds on a big node, and a signal then
/// must still end in the clean stop (detach, summary, exit 0), not the
/// default action.
pub fn trace(
    cfg: &WatchConfig,
    primary: Primary,
    exporter: Option<Exporter>,
    verbose: bool,
) -> Result<Summary, ServeError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let signals = {
        let _in_runtime = rt.enter();
        watch::Signals::install().map_err(WatchError::Io)?
    };
    let history = watch::preflight(cfg)?;
    let history_path = history.as_ref().map(|s| s.path().to_path_buf());
    let (probes, mut lifecycle) = watch::start(cfg)?;
    let (attribution, feed, restored) = watch::prepare(cfg, history, &mut lifecycle)?;
    if let Some(addr) = exporter.as_ref().and_then(Exporter::local_addr) {
        eprintln!("kmem-trace: metrics on http://{addr}/metrics");
    }
    announce(&probes, history_path.as_deref(), &restored, verbose);
    if let Some(x) = &exporter {
        x.server.health().attached(history_path.clone());
    }
    run(
        rt,
        signals,
        cfg,
        (probes, lifecycle),
        (attribution, feed),
        primary,
        exporter,
    )
}

/// Runs the live pipeline into `primary` (and the exporter, when given) on a
/// single-threaded runtime that also serves the metrics endpoint.
fn run(
    rt: tokio::runtime::Runtime,
    signals: watch::Signals,
    cfg: &WatchConfig,
    (probes, lifecycle): (Probes, Lifecycle),
    stages: (Attributor, Option<HistoryFeed>),
    primary: Primary,
    exporter: Option<Exporter>,
) -> Result<Summary, ServeError> {
    let labels = watch::hook_labels(&probes.report);
    // 64 KiB between writes (flushed at every tick anyway): an 8 KiB buffer
    // made a write, and a wake-up of whoever reads, every ~13 JSON lines.
    let stdout = || BufWriter::with_capacity(64 << 10, std::io::stdout().lock());
    let lines = |tty: bool, labels: HookLabels| -> Box<dyn Output> {
        Box::new(LineOutput::new(stdout(), Clock::measure(), labels, tty))
    };
    let mut keys = None;
    // Lives as long as the run: it stops its thread when dropped.
    let mut _reader = None;
    let mut first: Box<dyn Output> = match primary {
        Primary::Json => Box::new(JsonOutput::new(stdout(), Clock::measure(), labels)),
        Primary::Lines { tty } => lines(tty, labels),
        Primary::Live => match tui::start(Clock::measure(), labels.clone()) {
            Ok((out, reader, k)) => {
                keys = Some(k);
                _reader = Some(reader);
                Box::new(out)
            }
            Err(e) => {
                log::warn!("live view unavailable ({e}); plain lines instead");
                lines(true, labels)
            }
        },
        Primary::Headless => Box::new(Headless),
    };
    let summary = rt.block_on(async {
        match exporter {
            Some(x) => {
                let server = tokio::spawn(x.server.run());
                let mut metrics = x.output;
                let mut tee = Tee {
                    first: first.as_mut(),
                    second: &mut metrics,
                };
                let r =
                    watch::run_interactive(cfg, probes, lifecycle, stages, &mut tee, keys, signals)
                        .await;
                server.abort();
                r
            }
            None => {
                watch::run_interactive(
                    cfg,
                    probes,
                    lifecycle,
                    stages,
                    first.as_mut(),
                    keys,
                    signals,
                )
                .await
            }
        }
    })?;
    Ok(summary)
}

/// Runtime roots under `host_root` when it is not `/` and none were given:
/// the defaults (containerd, CRI-O, Docker) that exist there.
pub fn host_runtime_roots(host_root: &Path, explicit: &[PathBuf]) -> Vec<PathBuf> {
    if !explicit.is_empty() || host_root == Path::new("/") {
        return explicit.to_vec();
    }
    RuntimeRoots::defaults()
        .roots()
        .iter()
        .map(|r| host_root.join(r.strip_prefix("/").unwrap_or(r)))
        .filter(|r| r.is_dir())
        .collect()
}

/// The start-up lines (the last one says it is ready).
fn announce(probes: &Probes, history: Option<&Path>, restored: &Restored, verbose: bool) {
    if let Some(db) = history {
        eprintln!(
            "kmem-trace: history {}: {} memcgs restored ({} dying), {} gone since",
            db.display(),
            restored.memcgs,
            restored.dying,
            restored.lost + restored.other_boots
        );
    }
    if verbose {
        eprint!("{}", probes.report.render(true));
    }
    let blind: Vec<&str> = probes
        .report
        .blind_points()
        .iter()
        .map(|p| p.name())
        .collect();
    eprintln!(
        "kmem-trace: watching with {} hooks{}; Ctrl-C or SIGTERM stops",
        probes.report.family_in_use(),
        if blind.is_empty() {
            String::new()
        } else {
            format!(" (not visible: {})", blind.join(", "))
        }
    );
}

/// `kmem-trace serve`: the tracer without the event tail, exporting metrics.
pub fn command(args: &ServeArgs, verbose: bool) -> Result<ExitCode, ServeError> {
    let exporter = Exporter::bind(&args.listen, args.listen_any, args.top_namespaces)?;
    let residents = args.history.residents;
    let mut history = HistoryConfig::from_args(&args.history);
    history.runtime_roots = host_runtime_roots(&args.host_root, &args.history.runtime_root);
    let cfg = WatchConfig::new(
        &args.probe,
        &args.run,
        history,
        residents,
        Duration::from_secs(1),
    );
    trace(&cfg, Primary::Headless, Some(exporter), verbose)?;
    Ok(ExitCode::SUCCESS)
}
