//! Command-line interface (clap). Shared by `main.rs` and by xtask, which
//! generates shell completions and the man page from it.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::probes::{HookMode, Point, TransportMode};

#[derive(Debug, Parser)]
#[command(
    name = "kmem-trace",
    version,
    about = "Trace the Linux memory-cgroup lifecycle and find zombie memcgs, with who made them",
    long_about = "kmem-trace attaches eBPF programs to the memcg lifecycle (alloc, online, offline, \
                  released, free, ID release, kmem activation), keeps the live and dying memcgs with \
                  their IDs, and tells which memcgs are zombies: removed from cgroupfs but still \
                  allocated in the kernel."
)]
pub struct Cli {
    /// Show start-up choices (hooks, kernel layout) and debug logs.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream memcg lifecycle events live, with counts of live, dying and zombie memcgs.
    ///
    /// Stops on Ctrl-C or SIGTERM; SIGUSR1 prints the summary so far and goes on.
    Watch(WatchArgs),
    /// Show which hook each lifecycle point uses on this kernel, and why others were rejected.
    Probes(ProbesArgs),
    /// Replay a recording (`watch --record FILE`) through the same pipeline.
    Replay(ReplayArgs),
    /// Every dying memcg with its owner (namespace/pod/container), creator, residents and pinned bytes, from the history.
    Zombies(ZombiesArgs),
    /// Every memcg the kernel holds now, dying ones included, with pin causes (BPF iterator; counts only without it).
    Census(CensusArgs),
    /// Check this node's exposure to memcg leaks from procfs and cgroupfs (works without BPF, on 3.10 too).
    Doctor(DoctorArgs),
    /// The tracer without the event tail, exporting Prometheus metrics (for DaemonSets).
    Serve(ServeArgs),
    /// An incident report from the history, a fresh census and doctor (Markdown, JSON or one HTML file).
    Report(ReportArgs),
    /// The kernel layout kmem-trace reads from a BTF; --minimize writes the few KB of it to ship for kernels without /sys/kernel/btf/vmlinux.
    Btf(BtfArgs),
}

/// Options shared by everything that loads the probes.
#[derive(Debug, Args, Clone)]
pub struct ProbeArgs {
    /// Hook family: auto picks per lifecycle point what the kernel supports.
    #[arg(long, value_enum, default_value_t = HookMode::Auto)]
    pub hooks: HookMode,
    /// Event transport: auto probes the kernel's features (BPF ring buffer,
    /// bpf_probe_read_kernel); perf loads the old-kernel object (4.18+: perf
    /// buffers, kprobes and tracepoints; --ring-buffer-size is then per CPU).
    #[arg(long, value_enum, default_value_t = TransportMode::Auto)]
    pub transport: TransportMode,
    /// Kernel BTF file, for kernels without /sys/kernel/btf/vmlinux: a raw
    /// .btf, a BTFHub archive (`<release>.btf.tar.xz`) or `kmem-trace btf --minimize` output.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Force the symbol a lifecycle point hooks (testing: POINT=SYMBOL).
    #[arg(long, value_name = "POINT=SYMBOL", value_parser = parse_forced, hide = true)]
    pub force_symbol: Vec<(Point, String)>,
}

impl ProbeArgs {
    /// The probe settings these flags ask for.
    pub fn config(&self) -> crate::probes::ProbeConfig {
        crate::probes::ProbeConfig {
            mode: self.hooks,
            transport: self.transport,
            btf: self.btf.clone(),
            forced_symbols: self.force_symbol.clone(),
            ..crate::probes::ProbeConfig::default()
        }
    }
}

/// How long a tracer runs and how it judges what it sees (`watch`, `serve`).
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub duration: Option<Duration>,
    /// A memcg dying for longer than this is a zombie.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "D")]
    pub zombie_after: Duration,
    /// Size of the memcg ID space.
    #[arg(long, default_value_t = kmem_trace_common::MEMCG_ID_MAX, value_name = "N")]
    pub id_limit: u32,
    /// Ring-buffer size in bytes (power of two, at least 4096).
    #[arg(long, default_value_t = crate::probes::DEFAULT_RING_BYTES, value_parser = parse_ring_size, value_name = "BYTES")]
    pub ring_buffer_size: u32,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// One JSON object per line per event, then a summary object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub run: RunArgs,
    /// Also write every raw event to FILE (replay it with `kmem-trace replay`;
    /// mode 0600, a symlink there is refused).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Plain lines even on a terminal (no live view).
    #[arg(long)]
    pub plain: bool,
    /// Also export Prometheus metrics on ADDR (IP:PORT; loopback unless --listen-any).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Allow a non-loopback metrics address.
    #[arg(long, requires = "metrics")]
    pub listen_any: bool,
    #[command(flatten)]
    pub history: HistoryArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Address of the metrics endpoint, IP:PORT (`GET /metrics`).
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR")]
    pub listen: String,
    /// Allow a non-loopback --listen address (a pod IP, 0.0.0.0).
    #[arg(long)]
    pub listen_any: bool,
    /// Namespaces with their own zombies_by_namespace series; the rest are summed as `other`.
    #[arg(long, default_value_t = crate::metrics::DEFAULT_TOP_NAMESPACES, value_name = "N")]
    pub top_namespaces: usize,
    #[command(flatten)]
    pub run: RunArgs,
    /// Where the host's / is mounted (a DaemonSet): container runtime state is read under it.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
    #[command(flatten)]
    pub history: HistoryArgs,
}

/// Output format of `report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Md,
    Json,
    Html,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The period the report covers (timeline, events), e.g. 1h, 24h, 7d.
    #[arg(long, value_parser = parse_duration, default_value = "24h", value_name = "D")]
    pub since: Duration,
    /// md: Markdown for a ticket or chat; json: one document for tools;
    /// html: one self-contained page (no network) to attach or open.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
    /// Write to FILE instead of stdout (mode 0600: reports name pods,
    /// processes and the node; a symlink there is refused).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// History database written by `kmem-trace watch`/`serve`.
    #[arg(long, value_name = "PATH", default_value = crate::store::DEFAULT_DB)]
    pub db: PathBuf,
    /// Where the host's / is mounted (running in a container).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
    /// Do not load BPF (census counts only, capabilities predicted).
    #[arg(long)]
    pub no_bpf: bool,
    /// A memcg dying for longer than this is a zombie.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "D")]
    pub zombie_after: Duration,
    /// Replace pod and container names, images, pod UIDs, container IDs and
    /// the hostname with pseudonyms (`pod-1`, `cid-2`, ...), to share the report.
    #[arg(long)]
    pub redact: bool,
}

/// Attribution and history options of `watch`.
#[derive(Debug, Args, Clone)]
pub struct HistoryArgs {
    /// History database (SQLite, created with mode 0600).
    #[arg(long, value_name = "PATH", default_value = crate::store::DEFAULT_DB)]
    pub db: PathBuf,
    /// Run without a history database.
    #[arg(long, conflicts_with = "db")]
    pub no_history: bool,
    /// When another kmem-trace is writing the history (one writer per
    /// database), run without history and say so, instead of refusing.
    #[arg(long, conflicts_with = "no_history")]
    pub no_history_if_busy: bool,
    /// Delete finished memcgs from the history after this long.
    #[arg(long, value_parser = parse_duration, default_value = "14d", value_name = "D")]
    pub retain: Duration,
    /// Directory holding one subdirectory per container ID (containerd task
    /// bundles, CRI-O or podman overlay-containers, Docker containers); repeatable.
    /// Default: the usual places of containerd, CRI-O, podman and Docker.
    #[arg(long, value_name = "DIR")]
    pub runtime_root: Vec<PathBuf>,
    /// CRI socket to ask for container and pod metadata (names, image, pod
    /// labels for the workload), off the event path; repeatable. Default:
    /// containerd's and CRI-O's usual sockets, where present.
    #[arg(long, value_name = "SOCKET")]
    pub cri_socket: Vec<PathBuf>,
    /// Residents (processes that entered) kept per memcg.
    #[arg(long, default_value_t = 8, value_name = "K")]
    pub residents: u32,
}

#[derive(Debug, Args)]
pub struct ZombiesArgs {
    /// One JSON document.
    #[arg(long)]
    pub json: bool,
    /// Only memcgs dying for at least this long (e.g. 10m, 2h, 1d).
    #[arg(long, value_parser = parse_duration, value_name = "D")]
    pub older_than: Option<Duration>,
    /// History database written by `kmem-trace watch`.
    #[arg(long, value_name = "PATH", default_value = crate::store::DEFAULT_DB)]
    pub db: PathBuf,
}

#[derive(Debug, Args)]
pub struct ProbesArgs {
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording made with `watch --record`.
    pub file: PathBuf,
    /// One JSON object per line per event, then a summary object (as `watch --json`).
    #[arg(long)]
    pub json: bool,
    /// A memcg dying for longer than this (in the recording's time) is a zombie.
    #[arg(long, value_parser = parse_duration, default_value = "60s", value_name = "D")]
    pub zombie_after: Duration,
}

#[derive(Debug, Args)]
pub struct CensusArgs {
    /// One JSON document with every memcg.
    #[arg(long)]
    pub json: bool,
    /// List live memcgs too, not only the dying ones.
    #[arg(long)]
    pub all: bool,
    /// Do not load BPF: counts from procfs and cgroupfs only.
    #[arg(long)]
    pub counts_only: bool,
    /// Kernel BTF file, for kernels without /sys/kernel/btf/vmlinux.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Where the host's / is mounted (running in a container).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
}

#[derive(Debug, Args)]
pub struct BtfArgs {
    /// Write a BTF with only the types kmem-trace reads (to -o FILE), for --btf on nodes of the same kernel.
    #[arg(long, requires = "output")]
    pub minimize: bool,
    /// BTF to read: a raw .btf or a BTFHub .btf.tar.xz archive (default: /sys/kernel/btf/vmlinux).
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// Where --minimize writes.
    #[arg(short, long, value_name = "FILE", requires = "minimize")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as one JSON document.
    #[arg(long)]
    pub json: bool,
    /// node-problem-detector custom plugin mode: print one line; exit 0 OK, 1 problem, 2 unknown.
    #[arg(long)]
    pub npd: bool,
    /// Where the host's / is mounted (a container with the host mounted, or a test tree).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub host_root: PathBuf,
    /// Size of the memcg ID space.
    #[arg(long, default_value_t = kmem_trace_common::MEMCG_ID_MAX, value_name = "N")]
    pub id_limit: u32,
    /// Measure the dying count before and after `echo 1 > /proc/sys/vm/drop_caches` (root; frees page cache node-wide).
    #[arg(long)]
    pub try_drop_caches: bool,
    /// Make and remove one cgroup under the memory controller's root (root): the
    /// only certain answer to whether the memcg ID space is exhausted (mkdir
    /// fails with ENOSPC before 6.12, EBUSY from 6.12).
    #[arg(long)]
    pub try_mkdir: bool,
    /// Do not load BPF to test which hooks attach (by default it does as root
    /// on the real host, except with --npd); capabilities are then predicted from files.
    #[arg(long)]
    pub no_bpf: bool,
    /// Kernel BTF file for kernels without /sys/kernel/btf/vmlinux, as `watch --btf` takes it.
    #[arg(long, value_name = "FILE")]
    pub btf: Option<PathBuf>,
    /// History database of `kmem-trace watch`/`serve` (its forecast, and the
    /// running tracer's count of ID-holding memcgs); default: the standard
    /// path under --host-root.
    #[arg(long, value_name = "PATH")]
    pub db: Option<PathBuf>,
}

/// Durations like `60s`, `5m`, `14d`, `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 30s, 5m, 14d"))
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number of bytes"))?;
    if v < 4096 || !v.is_power_of_two() {
        return Err(format!(
            "ring buffer size must be a power of two of at least 4096 bytes, got {v}"
        ));
    }
    Ok(v)
}

fn parse_forced(s: &str) -> Result<(Point, String), String> {
    let (p, sym) = s
        .split_once('=')
        .ok_or_else(|| format!("expected POINT=SYMBOL, got {s:?}"))?;
    let point = <Point as clap::ValueEnum>::from_str(p, true)
        .map_err(|_| format!("unknown lifecycle point {p:?}"))?;
    if sym.is_empty() {
        return Err("empty symbol".into());
    }
    Ok((point, sym.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(
            parse_duration("14d").unwrap(),
            Duration::from_secs(14 * 86400)
        );
        assert!(parse_duration("soon").unwrap_err().contains("use e.g. 30s"));
        assert_eq!(parse_ring_size("4096").unwrap(), 4096);
        assert!(parse_ring_size("5000").is_err());
        assert_eq!(
            parse_forced("offline=foo").unwrap(),
            (Point::Offline, "foo".into())
        );
        assert!(parse_forced("nope=foo").is_err());
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let e = Cli::try_parse_from(["kmem-trace", "watch", "--hooks", "magic"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        let e = Cli::try_parse_from(["kmem-trace", "watch", "--frobnicate"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
