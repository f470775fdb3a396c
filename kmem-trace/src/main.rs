//! The `kmem-trace` binary: parses the command line and calls the library.

use std::{
    io::{IsTerminal, Write},
    process::ExitCode,
    time::Duration,
};

use clap::Parser;
use kmem_trace::{
    cli::{Cli, Command, ProbesArgs, ReplayArgs, WatchArgs},
    lifecycle::{Lifecycle, LifecycleConfig},
    outputs::{json::JsonOutput, line::LineOutput, Output},
    probes::{ProbeConfig, Probes},
    serve, watch,
};

fn main() -> ExitCode {
    // One malloc arena for all threads, set before any thread starts: the
    // start-up threads (kallsyms, BTF parses, census) each got an arena of
    // their own, and glibc's malloc_trim never returns the free top of a
    // thread's arena, ~10 MiB of the idle tracer's RSS (docs/PERFORMANCE.md).
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt has no preconditions; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
    match run(cli) {
        Ok(code) => code,
        // The reader went away (`kmem-trace zombies | head`): what it wanted
        // it has; like `cat`, no message, and not a failure.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // Causes that the message already quotes (thiserror's `{0}` of a
            // `#[from]` source) are not repeated.
            let mut msg = format!("{e}");
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !msg.contains(&cause) {
                    msg.push_str(&format!(": {cause}"));
                }
            }
            let _ = writeln!(std::io::stderr(), "kmem-trace: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a closed pipe (`EPIPE`; Rust ignores
/// SIGPIPE, so writes fail instead of killing the process).
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
            // Errors that are `#[error(transparent)]` over an io::Error hide
            // it from the chain; their message is the io::Error's own.
            || c.to_string()
                .ends_with(&std::io::Error::from_raw_os_error(libc::EPIPE).to_string())
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbose = cli.verbose > 0;
    match cli.command {
        Command::Watch(args) => cmd_watch(args, verbose),
        Command::Probes(args) => cmd_probes(args, verbose),
        Command::Replay(args) => cmd_replay(args),
        Command::Zombies(args) => {
            kmem_trace::zombies::command(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Census(args) => Ok(kmem_trace::census::render::command(&args)?),
        Command::Doctor(args) => Ok(kmem_trace::doctor::command(&args)?),
        Command::Serve(args) => Ok(serve::command(&args, verbose)?),
        Command::Report(args) => Ok(kmem_trace::report::command(&args)?),
        Command::Btf(args) => {
            kmem_trace::probes::btf_cmd::command(&args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn cmd_watch(args: WatchArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    // Bound before the probes load, so a bad or taken address fails at once.
    let exporter = args
        .metrics
        .as_deref()
        .map(|a| {
            serve::Exporter::bind(
                a,
                args.listen_any,
                kmem_trace::metrics::DEFAULT_TOP_NAMESPACES,
            )
        })
        .transpose()?;
    let tty = std::io::stdout().is_terminal();
    let tick = Duration::from_millis(if tty { 250 } else { 1000 });
    let history = kmem_trace::store::feed::HistoryConfig::from_args(&args.history);
    let mut cfg = watch::WatchConfig::new(
        &args.probe,
        &args.run,
        history,
        args.history.residents,
        tick,
    );
    cfg.record = args.record.clone();
    let primary = match (args.json, tty && !args.plain) {
        (true, _) => serve::Primary::Json,
        (false, true) => serve::Primary::Live,
        (false, false) => serve::Primary::Lines { tty },
    };
    serve::trace(&cfg, primary, exporter, verbose)?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_probes(args: ProbesArgs, verbose: bool) -> anyhow::Result<ExitCode> {
    let cfg = ProbeConfig {
        try_all: true,
        ..args.probe.config()
    };
    let mut probes = Probes::start(&cfg)?;
    probes.detach();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&probes.report)?)?;
    } else {
        write!(out, "{}", probes.report.render(verbose))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn cmd_replay(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let lc = Lifecycle::new(LifecycleConfig {
        zombie_after_ns: args.zombie_after.as_nanos() as u64,
        ..LifecycleConfig::default()
    })?;
    let rec = watch::Recording::read(&args.file)?;
    let clock = rec.clock;
    let stdout = std::io::stdout().lock();
    let mut out: Box<dyn Output> = if args.json {
        Box::new(JsonOutput::new(
            std::io::BufWriter::new(stdout),
            clock,
            Default::default(),
        ))
    } else {
        Box::new(LineOutput::new(
            std::io::BufWriter::new(stdout),
            clock,
            Default::default(),
            false,
        ))
    };
    watch::replay(&rec, lc, out.as_mut())?;
    Ok(ExitCode::SUCCESS)
}
