//! `kmem-trace report`: an incident report that stands on its own, from the
//! history (samples, memcg rows, owners), a fresh census and the doctor:
//! verdict, node facts, timeline chart, top owners, pin causes, ID usage and
//! forecast, remediation, and every zombie with its attribution. [`gather`]
//! reads (the only impure part), [`model::build`] decides, and [`md`],
//! JSON and [`html`] (one self-contained file) render.

pub mod appendix;
pub mod causes;
pub mod html;
pub mod md;
pub mod model;
pub mod redact;
pub mod svg;
pub mod timeline;
pub mod verdict;

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

pub use model::{HistoryState, Report};

use crate::{
    census::{self, CensusConfig, Source},
    cli::{ReportArgs, ReportFormat},
    clock::Clock,
    doctor::{self, DoctorConfig, DoctorError, Severity},
    lifecycle::State,
    store::{writer::now_ns, Store, StoreError},
    zombies::{self, ZombiesConfig, ZombiesError},
};

/// Errors of `report`.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Doctor(#[from] DoctorError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Zombies(#[from] ZombiesError),
    #[error("writing the report to {path}: {source}; pass another -o FILE")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing the report: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// What the report covers and where it reads.
#[derive(Clone, Debug)]
pub struct ReportConfig {
    pub db: PathBuf,
    /// The period: the last `since` before now.
    pub since: Duration,
    pub host_root: PathBuf,
    /// Load BPF (census iterator, verified capabilities) when it can.
    pub bpf: bool,
    pub zombie_after: Duration,
}

fn hostname(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join("proc/sys/kernel/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The census's counts for the doctor: only an exact census (the BPF
/// iterator's walk) replaces the procfs counts.
fn census_reading(c: &census::Census) -> Option<doctor::host::CensusReading> {
    if c.source != Source::BpfIterator {
        return None;
    }
    let dying = || c.memcgs.iter().filter(|m| m.state == State::Dying);
    // Every dying memcg's swap counter read, or no per-memcg figure at all.
    let swap: Option<Vec<u64>> = dying()
        .map(|m| m.census_counters().and_then(|k| k.swap_pages))
        .collect();
    Some(doctor::host::CensusReading {
        live: c.totals.online?,
        dying: c.totals.dying?,
        swap_held_dying: swap.map(|v| v.iter().filter(|p| **p > 0).count() as u64),
    })
}

/// Reads everything and builds the report.
pub fn gather(cfg: &ReportConfig) -> Result<Report, ReportError> {
    Ok(model::build(gather_inputs(cfg)?))
}

/// Reads everything the report is built from (the only impure part).
pub fn gather_inputs(cfg: &ReportConfig) -> Result<model::Inputs, ReportError> {
    let mut notes = Vec::new();
    let use_bpf = cfg.bpf && doctor::can_load_bpf(&cfg.host_root);
    let census = match census::take(&CensusConfig {
        host_root: cfg.host_root.clone(),
        btf: None,
        counts_only: !use_bpf,
    }) {
        Ok(c) => {
            if c.source == Source::CountsOnly && use_bpf {
                notes.push(format!(
                    "census counted only ({}): zombies come from the history alone",
                    c.fallback.as_deref().unwrap_or("no BPF iterator")
                ));
            }
            Some(c)
        }
        Err(e) => {
            notes.push(format!("no census: {e}"));
            None
        }
    };
    let doctor = doctor::run(&DoctorConfig {
        host_root: cfg.host_root.clone(),
        id_limit: kmem_trace_common::MEMCG_ID_MAX,
        try_drop_caches: false,
        try_mkdir: false,
        verify_bpf: use_bpf,
        history_db: Some(cfg.db.clone()),
        census: census.as_ref().and_then(census_reading),
        btf: None,
    })?;
    let census_memcgs = census
        .as_ref()
        .filter(|c| c.source == Source::BpfIterator)
        .map(|c| c.memcgs.as_slice());
    let now = now_ns();
    let since = now.saturating_sub(cfg.since.as_nanos().min(i64::MAX as u128) as i64);
    let clock = Clock::measure();
    let read = |store: Store| -> Result<_, ReportError> {
        let samples = store.samples(since)?;
        let rows = store.rows_since(since, clock.offset_ns)?;
        let z = zombies::report(
            &store,
            &ZombiesConfig {
                db: cfg.db.clone(),
                older_than: Some(cfg.zombie_after),
                json: false,
            },
            census_memcgs,
        )?;
        Ok((samples, rows, z.zombies, Some(z.tracer)))
    };
    let opened = Store::open_existing(&cfg.db).map_err(ReportError::from);
    let (samples, rows, zombies, tracer, history) = match opened.and_then(read) {
        Ok((samples, rows, z, tracer)) => (samples, rows, z, tracer, HistoryState::Read),
        Err(e) => {
            // Not found is a missing history; anything else (a 0700 directory,
            // a file that is not a database, a read that fails) is one that
            // cannot be read.
            let history = match std::fs::metadata(&cfg.db) {
                Err(m) if m.kind() == std::io::ErrorKind::NotFound => {
                    HistoryState::Missing(e.to_string())
                }
                _ => HistoryState::Unreadable(e.to_string()),
            };
            notes.push(format!(
                "{e}; the timeline and owners need the history of `kmem-trace watch` or `serve`"
            ));
            let z = census_memcgs
                .map(|m| zombies::join(&[], Some(m), &clock, now, Some(cfg.zombie_after)))
                .unwrap_or_default();
            (Vec::new(), Vec::new(), z, None, history)
        }
    };
    let pins = census
        .as_ref()
        .map(|c| {
            c.pins
                .iter()
                .map(|(a, p)| (format!("{a:#x}"), *p))
                .collect::<HashMap<_, _>>()
        })
        .unwrap_or_default();
    let census_view = census.as_ref().map(|c| model::CensusView {
        source: match c.source {
            Source::BpfIterator => "bpf_iterator".into(),
            Source::CountsOnly => "counts_only".into(),
        },
        memcgs: c.totals.memcgs,
        live: c.totals.online,
        dying: c.totals.dying,
        kmem_pins: c.kmem_pins,
        fallback: c.fallback.clone(),
    });
    Ok(model::Inputs {
        now,
        since,
        hostname: hostname(&cfg.host_root),
        zombie_after_s: cfg.zombie_after.as_secs(),
        doctor,
        census: census_view,
        samples,
        rows,
        zombies,
        pins,
        tracer,
        db: cfg.db.display().to_string(),
        history,
        notes,
    })
}

/// The report in a format.
pub fn render(r: &Report, format: ReportFormat) -> Result<String, ReportError> {
    Ok(match format {
        ReportFormat::Md => md::render(r),
        ReportFormat::Html => html::render(r),
        ReportFormat::Json => {
            let mut s = serde_json::to_string_pretty(r)?;
            s.push('\n');
            s
        }
    })
}

/// `kmem-trace report`.
pub fn command(args: &ReportArgs) -> Result<ExitCode, ReportError> {
    let cfg = ReportConfig {
        db: args.db.clone(),
        since: args.since,
        host_root: args.host_root.clone(),
        bpf: !args.no_bpf,
        zombie_after: args.zombie_after,
    };
    let mut inputs = gather_inputs(&cfg)?;
    if args.redact {
        // The data, before any text is made from it.
        let n = redact::inputs(&mut inputs).len();
        inputs.notes.push(format!(
            "Redacted: {n} names (pods, namespaces, containers, images, IDs, units, cgroups, the node) are pseudonyms; the kernel command line shows only its cgroup options."
        ));
    }
    let report = model::build(inputs);
    let text = render(&report, args.format)?;
    match &args.output {
        Some(path) => {
            crate::files::write_private(path, text).map_err(|source| ReportError::Write {
                path: path.clone(),
                source,
            })?;
            let incomplete = match &report.verdict.reason {
                Some(_) if report.verdict.severity != Severity::Unknown => {
                    ", incomplete: see the verdict"
                }
                _ => "",
            };
            eprintln!(
                "kmem-trace: report written to {} ({}{incomplete})",
                path.display(),
                report.verdict.severity.label()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    // An unknown verdict is no all-clear: scripts and CI see it. So is a
    // warning whose input was partly unreadable (a doctor warning must not
    // hide that the history could not be read).
    Ok(
        if report.verdict.severity == Severity::Unknown || report.verdict.reason.is_some() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        },
    )
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod verdict_tests;
