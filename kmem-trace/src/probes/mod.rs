//! The only module that talks to aya and the kernel's BPF interface: resolves the
//! kernel layout, picks a hook per lifecycle point from the probe table, loads
//! and attaches the programs of the object the kernel's features allow (ring
//! buffer or perf buffers, `transport`), and hands out the event channel and
//! drop counters.

pub mod audit;
pub mod btf;
pub mod btf_archive;
pub mod btf_cmd;
pub mod caps;
pub mod census;
pub mod extras;
pub mod kernel;
pub mod memlock;
mod objects;
pub mod report;
pub mod ring;
pub mod table;
pub mod tracefs;
pub mod transport;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{Program, ProgramError},
    Ebpf,
};
use kmem_trace_common::{stat, Layout, MAX_HOOKS};

pub use objects::{has_object, has_perf_object, object, perf_object};
pub use report::{Attempt, Outcome, PointReport, ProbeReport};
pub use table::{Attach, Family, HookMode, Point, Row};
pub use transport::{Transport, TransportMode};

use self::{
    btf::KernelBtf, kernel::Kallsyms, ring::EventSource, table::KernelFacts, transport::Choice,
};

/// Default event ring buffer: 1 MiB, 3,971 records. The reader empties it
/// every 5 ms under load (`watch::BATCH_PAUSE`); a 64 KiB ring dropped nothing
/// at this machine's full churn rate, so 1 MiB leaves 16x headroom, ~0.3 s of
/// full-rate churn with a stalled reader (docs/PERFORMANCE.md). It is mapped
/// twice into the reader (the kernel's wrap-around trick): 4 MiB cost 8 MiB
/// of resident memory.
pub const DEFAULT_RING_BYTES: u32 = 1 << 20;

/// Errors of loading and attaching probes.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("this kmem-trace binary was built without its eBPF programs; run `cargo xtask setup`, then rebuild")]
    NoObject,
    #[error("loading the eBPF object failed: {0}")]
    Load(String),
    #[error("no lifecycle point could be attached with --hooks {mode}:\n{reasons}")]
    NothingAttached { mode: String, reasons: String },
    #[error("eBPF map {0} is missing or has the wrong type; the embedded object does not match this binary")]
    Map(&'static str),
    #[error("reading eBPF map {name}: {reason}")]
    MapRead { name: &'static str, reason: String },
}

impl ProbeError {
    /// The object itself failed to load or attach (another object may not):
    /// not privileges, kernel facts or BTF layout, which every object needs.
    fn object_failed(&self) -> bool {
        matches!(
            self,
            ProbeError::Load(_)
                | ProbeError::NothingAttached { .. }
                | ProbeError::Map(_)
                | ProbeError::MapRead { .. }
        )
    }
}

/// How to start the probes.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub mode: HookMode,
    /// Which object carries the events (`--transport`).
    pub transport: TransportMode,
    pub btf: Option<PathBuf>,
    /// Ring-buffer size in bytes (a power of two, at least one page); with
    /// perf buffers, the size of each CPU's buffer.
    pub ring_bytes: u32,
    /// Test hook for the VM matrix: force a symbol for a point.
    pub forced_symbols: Vec<(Point, String)>,
    /// Try every candidate (for `kmem-trace probes`) instead of stopping at the first that works.
    pub try_all: bool,
    /// Residents reported per memcg by the in-kernel limiter.
    pub max_residents: u32,
    /// Root of `/proc` and `/sys` (tests point these elsewhere).
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            mode: HookMode::Auto,
            transport: TransportMode::Auto,
            btf: None,
            ring_bytes: DEFAULT_RING_BYTES,
            forced_symbols: Vec::new(),
            try_all: false,
            max_residents: 16,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

impl ProbeConfig {
    /// The kernel's own BTF is in sysfs (fentry and tp_btf need it).
    fn kernel_btf(&self) -> bool {
        self.sys_root.join("kernel/btf/vmlinux").exists()
    }
}

/// What the running kernel offers, for the probe table's static checks.
pub struct HostFacts {
    pub release: String,
    pub version: Option<kernel::KernelVersion>,
    pub btf: KernelBtf,
    /// The kernel's own BTF is in sysfs (fentry and tp_btf need it).
    pub kernel_btf: bool,
    pub kallsyms: Kallsyms,
    pub kprobes: Result<(), String>,
}

impl HostFacts {
    pub fn gather(cfg: &ProbeConfig) -> Result<HostFacts, ProbeError> {
        let btf = KernelBtf::load_mapped(cfg.btf.as_deref())?;
        let release = kernel::release();
        let kallsyms = Kallsyms::read(&cfg.proc_root.join("kallsyms")).unwrap_or_default();
        Ok(HostFacts {
            version: kernel::KernelVersion::parse(&release),
            release,
            btf,
            kernel_btf: cfg.kernel_btf(),
            kallsyms,
            kprobes: kernel::kprobes_supported(&cfg.sys_root),
        })
    }
}

impl KernelFacts for HostFacts {
    fn version(&self) -> Option<kernel::KernelVersion> {
        self.version
    }

    fn family_usable(&self, family: Family) -> Result<(), String> {
        match family {
            Family::Kprobe => self.kprobes.clone(),
            Family::Fentry if !self.kernel_btf => {
                Err("fentry needs the kernel's own BTF (/sys/kernel/btf/vmlinux is missing)".into())
            }
            _ => Ok(()),
        }
    }

    fn fexit_params(&self, symbol: &str) -> Option<u32> {
        self.btf.func_params(symbol)
    }

    fn has_symbol(&self, attach: Attach, symbol: &str) -> bool {
        match attach {
            Attach::Kprobe | Attach::Kretprobe => self.kallsyms.has(symbol),
            Attach::Fentry | Attach::Fexit => self.kernel_btf && self.btf.has_func(symbol),
            Attach::TpBtf => self.kernel_btf && self.btf.has_tracepoint(symbol),
            // Every raw tracepoint has a `__bpf_trace_<name>` stub (4.17+).
            Attach::RawTp | Attach::Tracepoint => {
                let symbol = table::tracepoint_name(symbol);
                self.btf.has_tracepoint(symbol)
                    || self.kallsyms.has(&format!("__bpf_trace_{symbol}"))
            }
        }
    }

    fn has_kallsyms_addr(&self, symbol: &str) -> bool {
        self.kallsyms.addr(symbol).is_some()
    }
}

/// Loaded and attached probes.
pub struct Probes {
    bpf: Option<Ebpf>,
    events: Option<EventSource>,
    stats: PerCpuArray<MapData, u64>,
    /// Samples the kernel reported lost from the perf buffers.
    lost: Arc<AtomicU64>,
    pub report: ProbeReport,
    pub layout: Layout,
}

impl Probes {
    /// Gathers kernel facts, loads the object and attaches one hook per point.
    pub fn start(cfg: &ProbeConfig) -> Result<Probes, ProbeError> {
        kernel::check_own_privileges()?;
        if !has_object() {
            return Err(ProbeError::NoObject);
        }
        // Before the feature probes, which create maps too (pre-5.11 kernels
        // charge them to RLIMIT_MEMLOCK; `memlock`).
        let memlock = memlock::raise();
        let choice = transport::choose(
            cfg.transport,
            transport::Features::probe(),
            has_perf_object(),
        );
        // Reading /proc/kallsyms (in gather) and aya's parse of the kernel BTF
        // take about as long each: side by side on two threads (start-up,
        // docs/PERFORMANCE.md).
        let (facts, aya_btf) = std::thread::scope(|s| {
            let aya_btf = s.spawn(|| aya_kernel_btf(cfg));
            let facts = HostFacts::gather(cfg);
            (facts, aya_btf.join().ok().flatten())
        });
        let facts = facts?;
        let start = |choice: Choice| {
            Self::start_with(cfg, &facts, aya_btf.as_ref(), choice, &memlock)
                .map_err(|e| memlock::annotate(&memlock, e))
        };
        let err = match start(choice.clone()) {
            Ok(probes) => return Ok(probes),
            Err(e) => e,
        };
        if !err.object_failed() {
            return Err(err);
        }
        // The perf object can only help where it has rows for these hooks
        // (`--hooks fentry` has none).
        let perf_usable = has_perf_object()
            && Point::ALL.into_iter().any(|p| {
                table::loadable(p, cfg.mode, Transport::Perf)
                    .next()
                    .is_some()
            });
        let Some(perf) = transport::fallback(cfg.transport, &choice, perf_usable, &err.to_string())
        else {
            return Err(err);
        };
        log::warn!("transport perf: {}", perf.reason);
        // When perf fails too, the ring buffer's error is the one auto stood
        // by; the perf one is logged beside it.
        start(perf).map_err(|perf_err| {
            log::warn!("the perf fallback failed too: {perf_err}");
            err
        })
    }

    fn start_with(
        cfg: &ProbeConfig,
        facts: &HostFacts,
        aya_btf: Option<&aya::Btf>,
        choice: Choice,
        memlock: &memlock::Memlock,
    ) -> Result<Probes, ProbeError> {
        // Which hierarchy holds the memory controller picks the swap counter
        // on kernels that keep v1's and v2's apart (before 5.10).
        let memory = crate::cgroupfs::memory_version(&cfg.proc_root);
        let (mut layout, resolved) = facts.btf.layout_for(memory)?;
        layout.fn_css_release_work = facts.kallsyms.addr("css_release_work_fn").unwrap_or(0);
        layout.fn_css_free_work = facts.kallsyms.addr("css_free_rwork_fn").unwrap_or(0);
        layout.max_residents = cfg.max_residents;

        let lost = Arc::new(AtomicU64::new(0));
        let (mut bpf, events) = match choice.transport {
            Transport::Ringbuf => objects::load_ringbuf(cfg, &layout, aya_btf)?,
            Transport::Perf => objects::load_perf(cfg, &layout, aya_btf, &lost)?,
        };
        let stats = PerCpuArray::try_from(bpf.take_map("STATS").ok_or(ProbeError::Map("STATS"))?)
            .map_err(|_| ProbeError::Map("STATS"))?;
        let mut emit: Array<MapData, u32> =
            Array::try_from(bpf.take_map("EMIT").ok_or(ProbeError::Map("EMIT"))?)
                .map_err(|_| ProbeError::Map("EMIT"))?;

        let mut attacher = Attacher {
            bpf: &mut bpf,
            btf: aya_btf,
            done: HashMap::new(),
            emit_masks: [0; MAX_HOOKS],
        };
        let mut points = Vec::new();
        for point in Point::ALL {
            let forced = cfg
                .forced_symbols
                .iter()
                .find(|(p, _)| *p == point)
                .map(|(_, s)| s.as_str());
            let mut pr = PointReport::new(point);
            for row in table::candidates(point, cfg.mode) {
                if pr.chosen.is_some() && !cfg.try_all {
                    pr.tried.push(Attempt::new(row, None, Outcome::NotTried));
                    continue;
                }
                if !table::in_object(row, choice.transport) {
                    let why = "not in the old-kernel (perf) object: needs kernel BTF";
                    pr.tried
                        .push(Attempt::new(row, None, Outcome::Rejected(why.into())));
                    continue;
                }
                let symbol = match table::check(row, facts, forced) {
                    Ok(s) => s,
                    Err(reason) => {
                        pr.tried
                            .push(Attempt::new(row, None, Outcome::Rejected(reason)));
                        continue;
                    }
                };
                // Enable the kind before attaching so nothing is lost in between.
                let bit = 1u32 << (point.kind() as u32);
                let outcome = if pr.chosen.is_none() {
                    attacher.enable(&mut emit, row.hook_id, bit)?;
                    match attacher.attach(row, &symbol) {
                        Ok(()) => {
                            pr.chosen = Some(pr.tried.len());
                            Outcome::Chosen
                        }
                        Err(reason) => {
                            attacher.disable(&mut emit, row.hook_id, bit)?;
                            Outcome::Rejected(reason)
                        }
                    }
                } else {
                    match attacher.attach(row, &symbol) {
                        Ok(()) => Outcome::Works,
                        Err(reason) => Outcome::Rejected(reason),
                    }
                };
                pr.tried.push(Attempt::new(row, Some(symbol), outcome));
            }
            points.push(pr);
        }
        let mut report = ProbeReport::new(cfg.mode, facts, resolved, points);
        report.transport = Some(choice);
        report.memlock = Some(memlock.clone());
        if report.points.iter().all(|p| p.chosen.is_none()) {
            return Err(ProbeError::NothingAttached {
                mode: format!("{:?}", cfg.mode).to_lowercase(),
                reasons: report.rejections(),
            });
        }
        // Residents: extra hooks, never fatal.
        report.extras = attacher.attach_extras(&mut emit, facts)?;
        Ok(Probes {
            bpf: Some(bpf),
            events: Some(events),
            stats,
            lost,
            report,
            layout,
        })
    }

    /// The event channel; `None` after [`Probes::take_events`].
    pub fn take_events(&mut self) -> Option<EventSource> {
        self.events.take()
    }

    /// Sum over CPUs of one `STATS` counter.
    pub fn stat(&self, idx: u32) -> Result<u64, ProbeError> {
        let values = self.stats.get(&idx, 0).map_err(|e| ProbeError::MapRead {
            name: "STATS",
            reason: e.to_string(),
        })?;
        Ok(values.iter().sum())
    }

    /// Events lost to a full ring buffer, or to full perf buffers (counted
    /// by the kernel, `PERF_RECORD_LOST`, as the reader drains them).
    pub fn drops(&self) -> u64 {
        self.stat(stat::DROPS).unwrap_or(0) + self.lost.load(Ordering::Relaxed)
    }

    /// Detaches and unloads every program; the ring buffer and counters stay
    /// readable so what is already queued can be drained.
    pub fn detach(&mut self) {
        self.bpf.take();
    }

    pub fn attached(&self) -> bool {
        self.bpf.is_some()
    }
}

/// aya's own parse of the kernel BTF (it relocates and loads BTF programs with it).
fn aya_kernel_btf(cfg: &ProbeConfig) -> Option<aya::Btf> {
    // Programs attach by BTF id, which only the running kernel's own BTF
    // numbers right: a --btf file (BTFHub's, converted from DWARF, or a
    // minimized one) serves the layout, never ids, where the kernel has BTF.
    if cfg.kernel_btf() {
        aya::Btf::from_sys_fs().ok()
    } else {
        // Through the archive reader: `--btf` may be a BTFHub .btf.tar.xz.
        let bytes = btf_archive::read(cfg.btf.as_deref()?, &kernel::release()).ok()?;
        aya::Btf::parse(&bytes, aya::Endianness::default()).ok()
    }
}

/// Loads and attaches programs once each, remembering failures.
struct Attacher<'a> {
    bpf: &'a mut Ebpf,
    btf: Option<&'a aya::Btf>,
    /// (program, symbol) → result of the first attempt.
    done: HashMap<(&'static str, String), Result<(), String>>,
    emit_masks: [u32; MAX_HOOKS],
}

impl Attacher<'_> {
    fn enable(
        &mut self,
        emit: &mut Array<MapData, u32>,
        hook: u16,
        bit: u32,
    ) -> Result<(), ProbeError> {
        self.emit_masks[hook as usize] |= bit;
        self.write(emit, hook)
    }

    fn disable(
        &mut self,
        emit: &mut Array<MapData, u32>,
        hook: u16,
        bit: u32,
    ) -> Result<(), ProbeError> {
        self.emit_masks[hook as usize] &= !bit;
        self.write(emit, hook)
    }

    fn write(&self, emit: &mut Array<MapData, u32>, hook: u16) -> Result<(), ProbeError> {
        emit.set(hook as u32, self.emit_masks[hook as usize], 0)
            .map_err(|e| ProbeError::MapRead {
                name: "EMIT",
                reason: e.to_string(),
            })
    }

    fn attach(&mut self, row: &Row, symbol: &str) -> Result<(), String> {
        if let Some(r) = self.done.get(&(row.program, symbol.to_string())) {
            return r.clone();
        }
        let mut r = Ok(());
        if let Some(entry) = row.entry {
            r = self.attach_one(entry, Attach::Kprobe, symbol);
        }
        if r.is_ok() {
            r = self.attach_one(row.program, row.attach, symbol);
        }
        self.done
            .insert((row.program, symbol.to_string()), r.clone());
        r
    }

    fn attach_one(&mut self, program: &str, attach: Attach, symbol: &str) -> Result<(), String> {
        let btf = self.btf;
        // fentry/fexit programs are loaded for one target: one that loaded for
        // an earlier symbol but did not attach is unloaded before the next
        // symbol (aya answered AlreadyLoaded), unless it is in use elsewhere.
        let in_use = self
            .done
            .iter()
            .any(|((p, _), r)| *p == program && r.is_ok());
        let reload = |loaded: bool| -> Result<bool, ProgramError> {
            if loaded && in_use {
                return Err(other(format!(
                    "{program} is already attached to another symbol"
                )));
            }
            Ok(loaded)
        };
        let prog = self
            .bpf
            .program_mut(program)
            .ok_or_else(|| format!("program {program} is not in the eBPF object"))?;
        let need_btf = || btf.ok_or_else(|| "needs the kernel's BTF".to_string());
        let res: Result<(), ProgramError> = (|| match (attach, prog) {
            (Attach::Kprobe | Attach::Kretprobe, Program::KProbe(p)) => {
                load_once(p.fd().is_ok(), || p.load())?;
                p.attach(symbol, 0).map(drop)
            }
            (Attach::Fentry, Program::FEntry(p)) => {
                let btf = need_btf().map_err(other)?;
                if reload(p.fd().is_ok())? {
                    p.unload()?;
                }
                p.load(symbol, btf)?;
                p.attach().map(drop)
            }
            (Attach::Fexit, Program::FExit(p)) => {
                let btf = need_btf().map_err(other)?;
                if reload(p.fd().is_ok())? {
                    p.unload()?;
                }
                p.load(symbol, btf)?;
                p.attach().map(drop)
            }
            (Attach::TpBtf, Program::BtfTracePoint(p)) => {
                let btf = need_btf().map_err(other)?;
                load_once(p.fd().is_ok(), || p.load(symbol, btf))?;
                p.attach().map(drop)
            }
            (Attach::RawTp, Program::RawTracePoint(p)) => {
                load_once(p.fd().is_ok(), || p.load())?;
                p.attach(symbol).map(drop)
            }
            (Attach::Tracepoint, Program::TracePoint(p)) => {
                let (category, name) = table::tracepoint_parts(symbol);
                tracefs::check_format(category, name).map_err(other)?;
                load_once(p.fd().is_ok(), || p.load())?;
                p.attach(category, name).map(drop)
            }
            _ => Err(other(format!(
                "program {program} is not a {} program",
                attach.name()
            ))),
        })();
        res.map_err(|e| describe(&e))
    }
}

fn load_once(
    loaded: bool,
    load: impl FnOnce() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    if loaded {
        Ok(())
    } else {
        load()
    }
}

fn other(msg: impl Into<String>) -> ProgramError {
    ProgramError::IOError(std::io::Error::other(msg.into()))
}

/// A one-line reason from an aya program error: the syscall error and the last
/// verifier line, not the whole log.
fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let last = verifier_log.to_string();
            let last = last
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string();
            let refused = if io_error.raw_os_error() == Some(libc::EPERM) {
                " (refused by the kernel)"
            } else {
                ""
            };
            if last.is_empty() {
                format!("load failed: {io_error}{refused}")
            } else {
                format!("load failed: {io_error}{refused}; verifier: {last}")
            }
        }
        other => error_chain(other),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// Facts for `probes`/`doctor` without loading anything.
pub fn host_facts(btf: Option<&Path>) -> Result<HostFacts, ProbeError> {
    HostFacts::gather(&ProbeConfig {
        btf: btf.map(Path::to_path_buf),
        ..ProbeConfig::default()
    })
}
