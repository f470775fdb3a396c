//! `kmem-trace doctor`: is this node exposed to memcg leaks, how far along is
//! it, and what to do. Reads procfs and cgroupfs only ([`host`]), so it runs
//! without BPF, on 3.10, and from a container with the host mounted
//! (`--host-root`); judges the facts with pure rules ([`findings`]); prints
//! text, JSON, or one node-problem-detector line ([`render`]). BPF
//! capabilities come from `probes::caps` as data: verified by loading the
//! probes when it can, predicted from files otherwise.

pub mod exhausted;
pub mod findings;
pub mod host;
pub mod mkdir_probe;
pub mod render;

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use serde::Serialize;

pub use findings::{DropCaches, Finding, Severity};
pub use host::Facts;

use crate::{
    census::counts::KernelCounts,
    cli::DoctorArgs,
    forecast::{self, Forecast},
    probes::caps,
};

/// Errors of `doctor` (facts that cannot be read are findings, not errors).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("--try-drop-caches needs root (it writes /proc/sys/vm/drop_caches)")]
    NotRoot,
    #[error("--try-mkdir needs root (it makes and removes a cgroup under the memory controller)")]
    MkdirNotRoot,
    #[error("--try-drop-caches needs a memory cgroup controller to count dying memcgs")]
    NoMemory,
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("--id-limit must be between 1 and {max}, got {got}")]
    IdLimit { got: u32, max: u32 },
}

/// How to run the doctor.
#[derive(Clone, Debug)]
pub struct DoctorConfig {
    pub host_root: PathBuf,
    pub id_limit: u32,
    pub try_drop_caches: bool,
    /// `--try-mkdir`: make and remove one memcg to learn whether the kernel still gives IDs out (root).
    pub try_mkdir: bool,
    /// Load the probes to verify the BPF capabilities (root on the real host).
    pub verify_bpf: bool,
    /// History database for the forecast (used when it exists).
    pub history_db: Option<PathBuf>,
    /// A census the caller took: its counts replace the procfs ones.
    pub census: Option<host::CensusReading>,
    /// `--btf`: the kernel's BTF where it has none in sysfs.
    pub btf: Option<PathBuf>,
}

/// The doctor's report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub kind: &'static str,
    /// The worst severity.
    pub status: Severity,
    pub exit_code: u8,
    pub id_limit: u32,
    pub findings: Vec<Finding>,
    pub forecast: Option<Forecast>,
    pub drop_caches: Option<DropCaches>,
    pub facts: Facts,
}

/// Gathers the facts, runs the drop-caches experiment if asked, and judges.
pub fn run(cfg: &DoctorConfig) -> Result<Report, DoctorError> {
    if cfg.id_limit == 0 || cfg.id_limit > kmem_trace_common::MEMCG_ID_MAX {
        return Err(DoctorError::IdLimit {
            got: cfg.id_limit,
            max: kmem_trace_common::MEMCG_ID_MAX,
        });
    }
    let caps = if cfg.verify_bpf {
        caps::verify(cfg.btf.as_deref())
    } else {
        caps::predict(&cfg.host_root, cfg.btf.as_deref())
    };
    let drop = if cfg.try_drop_caches {
        Some(try_drop_caches(&cfg.host_root)?)
    } else {
        None
    };
    let mut facts = Facts::gather(&cfg.host_root, caps);
    if let Some(c) = cfg.census {
        facts.use_census(c);
    }
    if let Some(db) = cfg.history_db.as_deref() {
        facts.tracer_ids = tracer_ids(db, &facts);
    }
    if cfg.try_mkdir {
        facts.mkdir_probe = Some(try_mkdir(&cfg.host_root)?);
    }
    let forecast = forecast_for(&facts, cfg);
    let findings = findings::judge(&facts, forecast.as_ref(), drop.as_ref(), cfg.id_limit);
    let status = findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok);
    Ok(Report {
        kind: "doctor",
        status,
        exit_code: findings::exit_code(&findings),
        id_limit: cfg.id_limit,
        findings,
        forecast,
        drop_caches: drop,
        facts,
    })
}

/// The history's samples first (the net growth of ID-holding dying memcgs
/// over the last day), else the average since boot; one model for every view
/// ([`crate::forecast`]).
fn forecast_for(f: &Facts, cfg: &DoctorConfig) -> Option<Forecast> {
    if let Some(fc) = cfg
        .history_db
        .as_deref()
        .and_then(|db| from_history(db, cfg.id_limit))
    {
        return Some(fc.at(f.ids_in_use));
    }
    let (dying, _) = f.dying?;
    Some(forecast::since_boot(
        dying,
        f.dying_holding,
        f.ids_in_use,
        f.uptime_s?,
        cfg.id_limit,
    ))
}

/// The running tracer's last sample of ID-holding memcgs, when it is of
/// this boot and fresh ([`exhausted::TracerIds::from_sample`]).
fn tracer_ids(db: &Path, f: &Facts) -> Option<exhausted::TracerIds> {
    if !db.exists() {
        return None;
    }
    let store = crate::store::Store::open_existing(db).ok()?;
    let now = crate::store::writer::now_ns();
    let last = store
        .samples(now - exhausted::TRACER_FRESH_NS)
        .ok()?
        .into_iter()
        .max_by_key(|s| s.ts)?;
    let boot = fs::read_to_string(f.host_root.join("proc/sys/kernel/random/boot_id")).ok()?;
    let id_hook = !f
        .caps
        .blind_points
        .contains(&crate::probes::table::Point::IdRelease);
    exhausted::TracerIds::from_sample(&last, now, boot.trim(), id_hook)
}

fn from_history(db: &Path, id_limit: u32) -> Option<Forecast> {
    if !db.exists() {
        return None;
    }
    let store = match crate::store::Store::open_existing(db) {
        Ok(s) => s,
        Err(e) => {
            log::info!("doctor: history not used: {e}");
            return None;
        }
    };
    let since = crate::store::writer::now_ns() - 86_400 * 1_000_000_000;
    let samples = store.samples(since).ok()?;
    forecast::from_history(&samples, 86_400.0, id_limit)
}

/// `echo 1 > /proc/sys/vm/drop_caches`, and how many dying memcgs that freed.
/// The kernel frees them asynchronously (css release and free work), so the
/// count is polled until it stops changing.
fn try_drop_caches(root: &Path) -> Result<DropCaches, DoctorError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DoctorError::NotRoot);
    }
    let h = crate::cgroupfs::preferred_memory_hierarchy(root).map_err(|_| DoctorError::NoMemory)?;
    let full = KernelCounts::read(root, &h).map_err(|_| DoctorError::NoMemory)?;
    let visible = full.visible;
    let dying = |k: &KernelCounts| {
        KernelCounts {
            visible,
            ..k.clone()
        }
        .dying()
        .map(|d| d.0)
        .unwrap_or(0)
    };
    let before = dying(&full);
    let path = root.join("proc/sys/vm/drop_caches");
    fs::write(&path, "1").map_err(|source| DoctorError::Write { path, source })?;
    let start = Instant::now();
    let mut last = before;
    let mut stable_since = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        let now = KernelCounts::read_counters(root, &h)
            .map(|k| dying(&k))
            .unwrap_or(last);
        if now != last {
            last = now;
            stable_since = Instant::now();
        } else if stable_since.elapsed() >= Duration::from_secs(1) {
            break;
        }
    }
    // A final exact count (directories may have come and gone meanwhile).
    let after = KernelCounts::read(root, &h)
        .ok()
        .and_then(|k| k.dying())
        .map(|d| d.0)
        .unwrap_or(last);
    Ok(DropCaches {
        before,
        after,
        page_cache_pinned: before.saturating_sub(after),
        waited_ms: start.elapsed().as_millis() as u64,
    })
}

/// `--try-mkdir`: one memcg made and removed under the memory hierarchy's root.
fn try_mkdir(root: &Path) -> Result<mkdir_probe::MkdirProbe, DoctorError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(DoctorError::MkdirNotRoot);
    }
    let h = crate::cgroupfs::preferred_memory_hierarchy(root).map_err(|_| DoctorError::NoMemory)?;
    Ok(mkdir_probe::probe(&h.mount))
}

/// Whether `doctor` and `report` may load BPF for `host_root`: only for the
/// real host (`--host-root /`), as root, with the eBPF programs built in.
pub fn can_load_bpf(host_root: &Path) -> bool {
    // SAFETY: geteuid has no preconditions.
    host_root == Path::new("/") && unsafe { libc::geteuid() } == 0 && crate::probes::has_object()
}

/// `kmem-trace doctor`: the exit code follows the node-problem-detector
/// custom-plugin convention (0 OK, 1 problem, 2 unknown).
pub fn command(args: &DoctorArgs) -> Result<ExitCode, DoctorError> {
    let cfg = DoctorConfig {
        host_root: args.host_root.clone(),
        id_limit: args.id_limit,
        try_drop_caches: args.try_drop_caches,
        try_mkdir: args.try_mkdir,
        verify_bpf: !args.no_bpf && !args.npd && can_load_bpf(&args.host_root),
        history_db: Some(args.db.clone().unwrap_or_else(|| {
            args.host_root
                .join(crate::store::DEFAULT_DB.trim_start_matches('/'))
        })),
        census: None,
        btf: args.btf.clone(),
    };
    let report = run(&cfg)?;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    if args.npd {
        render::npd(&report, &mut w)?;
    } else if args.json {
        render::json(&report, &mut w)?;
    } else {
        render::text(&report, &mut w)?;
    }
    std::io::Write::flush(&mut w)?;
    Ok(ExitCode::from(report.exit_code))
}

#[cfg(test)]
mod tests;
