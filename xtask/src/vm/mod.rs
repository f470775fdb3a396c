//! `cargo xtask vm-test`: the VM kernel matrix. Boots Debian kernels in qemu
//! (TCG) with and without `cgroup.memory=nokmem`, runs the guest scenario
//! (`tests/src/bin/kmem-trace-vm-guest`) once per hook family in each, runs the
//! same scenario on this machine's kernel (the host row), and prints the matrix
//! of lifecycle points × families × kernels; results go to `target/vm-test`.

mod exhaustion;
mod image;
mod kernels;
mod progress;
mod qemu;
mod readme;
mod report;
mod results;
mod suites;
mod symbols;

use std::{
    fs,
    path::PathBuf,
    process::Command,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use self::{
    progress::Progress,
    qemu::{Limits, VmSpec},
    report::FAMILIES,
    results::RunResult,
};
use crate::{
    build::{self, Arch},
    util::{self, KERNEL_LOCK},
};

/// Debian packages the matrix needs on the host (qemu-system-arm has
/// `qemu-system-aarch64`, for `--arch arm64`).
pub const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "busybox-static",
    "kmod",
    "e2fsprogs",
    "xz-utils",
    "zstd",
    "binutils",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Boot {
    /// The kernel's defaults: kmem accounting on.
    Default,
    /// `cgroup.memory=nokmem`: kmem accounting off.
    Nokmem,
    /// The memory controller on cgroup v2 (`kmt.cgroup=v2`) where the guest
    /// would mount v1 (5.10, 6.1): the exhaustion scenario on both layouts.
    Cgroup2,
}

impl Boot {
    fn name(self) -> &'static str {
        match self {
            Boot::Default => "default",
            Boot::Nokmem => "nokmem",
            Boot::Cgroup2 => "cgroup2",
        }
    }
}

#[derive(Args)]
pub struct VmArgs {
    /// Architecture of the kernels: arm64 boots Debian's arm64 kernels in
    /// `qemu-system-aarch64 -M virt` (TCG) with aarch64 builds of kmem-trace and
    /// the guest; no host row (this machine is x86_64).
    #[arg(long, value_enum, default_value_t = Arch::Amd64)]
    pub arch: Arch,
    /// Kernel to boot: a Debian release (6.1.0-57-amd64), a package name, or a
    /// series alias (6.12, 6.1-cloud); `host` is this machine's kernel. Repeatable.
    /// Any Debian suite (bullseye to experimental); `7.3-cloud` is the newest 7.3 cloud kernel.
    /// Default: the newest 5.10, 6.1, 6.12 and the newest series of trixie-backports,
    /// in amd64 and cloud-amd64, and the host.
    #[arg(long = "kernel", value_name = "NAME")]
    pub kernels: Vec<String>,
    /// VMs run at once (default: 4 per CPU; TCG guests spend much time waiting).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Keep the work directory (initramfs images) after the run.
    #[arg(long)]
    pub keep: bool,
    /// Boot options to test.
    #[arg(long, value_enum, value_delimiter = ',', default_values = ["default", "nokmem"])]
    pub boot: Vec<Boot>,
    /// Hook families to run (default: fentry, kprobe, tracepoint where each
    /// applies, and perf: the old-kernel object forced, `watch --transport perf`;
    /// perf-tp: its tracepoint programs alone, `--hooks tracepoint`).
    #[arg(long, value_delimiter = ',', value_parser = ["fentry", "kprobe", "tracepoint", "perf", "perf-tp"])]
    pub family: Vec<String>,
    /// Flavours of the default matrix (amd64, cloud-amd64; arm64, cloud-arm64);
    /// default: both of `--arch`.
    #[arg(long = "flavour", value_delimiter = ',', value_name = "FLAVOUR")]
    pub flavours: Vec<String>,
    /// Leave out the host row.
    #[arg(long)]
    pub no_host: bool,

    /// Seconds the host row waits for the kernel lock (another kernel-touching
    /// run, a soak or a bench, holds it) before it fails.
    #[arg(long, value_name = "S", default_value_t = 600)]
    pub lock_wait: u64,
    /// Rewrite README.md's "Tested kernels" table from this run.
    #[arg(long)]
    pub readme: bool,

    /// Rewrite README.md's "Tested kernels" table from saved runs'
    /// results.json files (repeatable: their runs together, the latest date)
    /// instead of running anything.
    #[arg(long, value_name = "RESULTS_JSON")]
    pub readme_from: Vec<PathBuf>,
    /// Directory for results.json, matrix.txt and console logs.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seconds before a VM is stopped.
    #[arg(long, default_value_t = 300, value_name = "S")]
    pub timeout: u64,
    /// `exhaustion`: instead of the matrix, fill the memcg ID space in each VM
    /// (4 GiB, swap disk, default boot or `--boot cgroup2` for v2 on kernels
    /// that have v1, no host row) with live filler and a
    /// swap-pinning leaky workload until mkdir fails, with `kmem-trace serve`
    /// running; keeps the HTML report and a promtool test of the alert rules.
    #[arg(long, value_enum, default_value_t = Scenario::Matrix)]
    pub scenario: Scenario,
    /// Testing the runner: FAMILY:POINT=SYMBOL forced in every run.
    #[arg(long, hide = true, value_name = "FAMILY:POINT=SYMBOL")]
    pub force_symbol: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Lifecycle points × hook families, census and pins.
    Matrix,
    /// The ID space filled until mkdir fails (issue 13).
    Exhaustion,
}

/// One matrix row to run.
enum Job {
    Vm(VmSpec),
    Host(Command),
}

fn host_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn host_boot() -> Boot {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline
        .split_whitespace()
        .any(|a| a == "cgroup.memory=nokmem")
    {
        Boot::Nokmem
    } else {
        Boot::Default
    }
}

/// True when a process above this one holds the kernel lock (`flock LOCK
/// cargo xtask test`): it holds it for us, and a second flock would wait for
/// it forever.
fn lock_held_by_ancestor() -> bool {
    fs::File::open(KERNEL_LOCK).is_ok_and(|f| util::held_by_an_ancestor(&f))
}

/// `--readme-from`: the README's table from saved results.json files.
fn readme_from(saved: &[PathBuf]) -> Result<()> {
    let mut runs: Vec<RunResult> = Vec::new();
    let mut date = String::new();
    for f in saved {
        let text = fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        let more: Vec<RunResult> = serde_json::from_value(v["runs"].clone())
            .with_context(|| format!("{}: no runs of a matrix", f.display()))?;
        runs.extend(more);
        let d = v["date"].as_str().context("results.json has no date")?;
        if d > date.as_str() {
            date = d.to_string();
        }
    }
    write_readme(&readme::readme_table(&runs, &date))
}

/// Splices `table` into README.md's tested-kernels markers.
fn write_readme(table: &str) -> Result<()> {
    let path = util::root().join("README.md");
    let text = fs::read_to_string(&path).context("reading README.md")?;
    let new = readme::splice_readme(&text, table)
        .context("README.md has no <!-- tested-kernels:start/end --> markers")?;
    fs::write(&path, new)?;
    eprintln!("vm-test: updated the Tested kernels table in README.md");
    Ok(())
}

/// `YYYY-MM-DD` (UTC) for the README.
fn today() -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    util::rfc3339(now)[..10].to_string()
}

pub fn run(args: &VmArgs) -> Result<()> {
    if !args.readme_from.is_empty() {
        return readme_from(&args.readme_from);
    }
    crate::setup::run_setup(false)?;
    crate::setup::apt_install(PACKAGES, false)?;
    let root = util::root();
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| build::target_dir(&root).join("vm-test"));
    let cache = root.join("vm-cache");
    let work = out.join("work");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let exhaust = args.scenario == Scenario::Exhaustion;
    // The host row runs this machine's kernel: only in a matrix of its arch.
    let want_host = !exhaust
        && args.arch.is_host()
        && !args.no_host
        && (args.kernels.is_empty() || args.kernels.iter().any(|k| k == "host"));
    let specs: Vec<&String> = args.kernels.iter().filter(|k| *k != "host").collect();
    fs::create_dir_all(&cache)?;
    // The default matrix needs four suites' lists; a named kernel may be in
    // any, so sid's and experimental's (large) lists are fetched only for one
    // the default suites do not have.
    let mut catalog = if specs.is_empty() && !args.kernels.is_empty() {
        kernels::Catalog::empty(args.arch)
    } else {
        kernels::Catalog::load(&cache, suites::DEFAULT, args.arch)?
    };
    if specs.iter().any(|s| catalog.resolve(s).is_err()) {
        let all: Vec<&str> = suites::ALL.iter().map(|s| s.name).collect();
        catalog = kernels::Catalog::load(&cache, &all, args.arch)?;
    }
    // (release, whether an older ABI of its series may stand in for it: not
    // for a release named exactly).
    let releases: Vec<(String, bool)> = if args.kernels.is_empty() {
        let d = catalog.default_releases(&args.flavours)?;
        d.into_iter().map(|r| (r, true)).collect()
    } else {
        specs
            .iter()
            .map(|s| Ok((catalog.resolve(s)?, !kernels::names_a_release(s))))
            .collect::<Result<Vec<_>>>()?
    };
    let families: Vec<String> = if args.family.is_empty() {
        FAMILIES.iter().map(|s| s.to_string()).collect()
    } else {
        args.family.clone()
    };

    let (kmem_trace, guest) = build::static_binaries(&root, args.arch)?;
    fs::create_dir_all(&cache)?;
    // Runs at the same time (the matrix and the runner test) share the cache.
    let lock = fs::File::create(cache.join(".lock"))?;
    lock.lock().context("locking vm-cache")?;
    let mut kernels = Vec::new();
    for r in &releases {
        kernels.push(kernels::prepare_newest(&cache, &catalog, &r.0, r.1)?);
    }
    let disk = image::data_disk(&cache)?;
    let swap = image::swap_disk(&cache)?;
    let scratch = image::scratch_disk(&cache)?;
    drop(lock);
    let base = image::base_archive(
        &image::Payload {
            arch: args.arch,
            busybox: image::busybox(&cache, args.arch)?,
            guest: guest.clone(),
            kmem_trace: kmem_trace.clone(),
        },
        &work,
    )?;

    let mut jobs: Vec<(RunResult, Job)> = Vec::new();
    // One family on the host: the families-agree check compares the memcg
    // IDs of each family's own churn, and other cgroup churn on the host
    // changes which IDs the kernel hands out between those runs (CI, 27e0ca5:
    // churn-0 got ID 5 under tracepoint, 4 under perf). The perf transport on
    // this kernel is compared within one run by the root test perf_transport.
    let host_row = |f: &String| f == "tracepoint";
    if want_host && families.iter().any(host_row) {
        // This kernel has no kprobes and refuses fentry: the tracepoint family.
        let fams: Vec<String> = families.iter().filter(|f| host_row(f)).cloned().collect();
        let mut c = if lock_held_by_ancestor() {
            util::privileged(&guest.to_string_lossy())
        } else {
            let mut c = util::privileged("flock");
            c.args(["-w", &args.lock_wait.to_string(), KERNEL_LOCK])
                .arg(&guest);
            c
        };
        c.arg("run")
            .arg("--kmem-trace")
            .arg(&kmem_trace)
            .arg("--data-dir")
            .arg(cache.join("host-data"))
            .args(["--family", &fams.join(",")]);
        for f in args
            .force_symbol
            .iter()
            .filter(|f| f.starts_with("tracepoint:"))
        {
            c.args(["--force", f]);
        }
        let release = host_release();
        jobs.push((
            RunResult {
                label: "host".into(),
                host: true,
                arch: args.arch.debian().into(),
                release,
                boot: host_boot().name().into(),
                families: fams,
                ..RunResult::default()
            },
            Job::Host(c),
        ));
    }
    for k in &kernels {
        let initrd = work.join(format!("initramfs-{}.cpio", k.release));
        image::write_initramfs(&initrd, &base, &k.modules)?;
        // The exhaustion scenario fills the ID space once per layout: kmem
        // accounting off changes nothing it checks.
        let boots: Vec<Boot> = if exhaust {
            let b: Vec<Boot> = args
                .boot
                .iter()
                .copied()
                .filter(|b| *b != Boot::Nokmem)
                .collect();
            if b.is_empty() {
                vec![Boot::Default]
            } else {
                b
            }
        } else {
            args.boot.clone()
        };
        for boot in &boots {
            let mut append = vec![format!("kmt.families={}", families.join(","))];
            if exhaust {
                append.push("kmt.scenario=exhaustion".into());
            }
            match boot {
                Boot::Nokmem => append.push("cgroup.memory=nokmem".into()),
                Boot::Cgroup2 => append.push("kmt.cgroup=v2".into()),
                Boot::Default => {}
            }
            if !args.force_symbol.is_empty() {
                append.push(format!("kmt.force={}", args.force_symbol.join(",")));
            }
            jobs.push((
                RunResult {
                    label: format!("{} {}", k.release, boot.name()),
                    arch: k.arch.debian().into(),
                    release: k.release.clone(),
                    boot: boot.name().into(),
                    // The exhaustion scenario has no family cells: its own checks decide.
                    families: if exhaust {
                        Vec::new()
                    } else {
                        families.clone()
                    },
                    ..RunResult::default()
                },
                Job::Vm(VmSpec {
                    kernel: k.clone(),
                    initrd: initrd.clone(),
                    disk: disk.clone(),
                    swap: swap.clone(),
                    scratch: scratch.clone(),
                    append,
                    // 65,535 memcgs take ~2.5 GiB of guest memory.
                    memory_mb: if exhaust { 4096 } else { 768 },
                }),
            ));
        }
    }
    if jobs.is_empty() {
        bail!("nothing to run: no kernels selected");
    }

    let labels: Vec<String> = jobs.iter().map(|(r, _)| r.label.clone()).collect();
    let progress = Progress::new(&labels);
    let ncpu = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = args.jobs.unwrap_or(4 * ncpu).max(1);
    eprintln!(
        "vm-test: {} runs ({} VMs at once), logs in {}",
        jobs.len(),
        workers,
        out.display()
    );
    // Filling the ID space takes minutes under TCG, and the report of 65,535
    // memcgs is built without output.
    let limits = Limits {
        timeout: Duration::from_secs(if exhaust {
            args.timeout.max(1500)
        } else {
            args.timeout
        }),
        silence: Duration::from_secs(if exhaust { 400 } else { 90 }),
    };
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<Vec<_>>());
    let done = Mutex::new(Vec::new());
    let log_name = |r: &RunResult| out.join(format!("{}.log", r.label.replace(' ', "-")));
    std::thread::scope(|s| {
        // The host row does not use a VM slot: it mostly waits for its kernel.
        let host = {
            let mut q = queue.lock().expect("queue");
            q.iter().position(|(_, (r, _))| r.host).map(|i| q.remove(i))
        };
        if let Some((i, (mut r, Job::Host(cmd)))) = host {
            let (done, progress) = (&done, &progress);
            let log = log_name(&r);
            // flock prints nothing while another helper holds the kernel lock.
            let host_limits = Limits {
                timeout: limits.timeout + Duration::from_secs(args.lock_wait),
                silence: limits.silence + Duration::from_secs(args.lock_wait),
            };
            s.spawn(move || {
                progress.update(&r.label, None, "waiting for the kernel lock");
                qemu::supervise(cmd, &log, host_limits, &mut r, progress);
                done.lock().expect("done").push((i, r));
            });
        }
        for _ in 0..workers {
            s.spawn(|| loop {
                let next = {
                    let mut q = queue.lock().expect("queue");
                    if q.is_empty() {
                        None
                    } else {
                        Some(q.remove(0))
                    }
                };
                let Some((i, (mut r, job))) = next else { break };
                let cmd = match job {
                    Job::Vm(spec) => spec.command(),
                    Job::Host(cmd) => cmd,
                };
                qemu::supervise(cmd, &log_name(&r), limits, &mut r, &progress);
                done.lock().expect("done").push((i, r));
            });
        }
    });
    progress.done();
    let mut runs = done.into_inner().expect("done");
    runs.sort_by_key(|(i, _)| *i);
    let mut runs: Vec<RunResult> = runs.into_iter().map(|(_, r)| r).collect();
    exhaustion::write_outputs(&root, &out, &mut runs)?;
    let wall = progress.elapsed_s();

    let matrix = report::matrix(&runs, wall);
    let table_rs =
        fs::read_to_string(root.join("kmem-trace/src/probes/table.rs")).unwrap_or_default();
    let findings = symbols::seen_findings(&runs, &symbols::parse_seen(&table_rs));
    let symbols = symbols::symbols_text(&runs, &findings);
    let exhausted = exhaustion::text(&runs);
    print!("\n{matrix}\n{symbols}{exhausted}");
    fs::write(
        out.join("matrix.txt"),
        format!("{matrix}\n{symbols}{exhausted}"),
    )?;
    let ok = runs.iter().all(|r| r.ok);
    let results = json!({
        "date": today(),
        "wall_s": wall,
        "ok": ok,
        "runs": runs,
        "symbols": symbols::symbols_seen(&runs),
        "seen_findings": findings,
        "kernel_findings": report::kernel_findings(&runs),
    });
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    for r in &runs {
        if let Some(p) = &r.probes {
            let name = format!("{}.probes.json", r.label.replace(' ', "-"));
            fs::write(out.join(name), serde_json::to_string_pretty(p)?)?;
        }
    }
    let table = readme::readme_table(&runs, &today());
    fs::write(out.join("tested-kernels.md"), &table)?;
    if args.readme {
        write_readme(&table)?;
    }
    if !args.keep {
        let _ = fs::remove_dir_all(&work);
    }
    eprintln!("vm-test: results in {}", out.join("results.json").display());
    let failed = runs.iter().filter(|r| !r.ok).count();
    if failed > 0 {
        bail!("{failed} of {} matrix runs failed", runs.len());
    }
    Ok(())
}

/// The `vm` step of `cargo xtask test`: the default matrix's series in their
/// cloud flavour (one kernel per series, both boots: the generic flavour adds
/// time, not coverage of kmem-trace), the host row, and alongside it the
/// runner's own test (a deliberately broken cell must fail the run); then the
/// newest 6.12 arm64 cloud kernel (both boots), into `target/vm-test-arm64`.
pub fn ci() -> Result<()> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        args: VmArgs,
    }
    let parse = |a: &[&str]| <Defaults as clap::Parser>::parse_from(a).args;
    let args = parse(&["vm-test", "--flavour", "cloud-amd64"]);
    let arm_out = build::target_dir(&util::root()).join("vm-test-arm64");
    let arm64 = parse(&[
        "vm-test",
        "--arch",
        "arm64",
        "--kernel",
        "6.12-cloud",
        "--out",
        &arm_out.to_string_lossy(),
    ]);
    let mut runner_test = Command::new(util::cargo());
    runner_test
        .current_dir(util::root())
        .env("KMEM_TRACE_VM_TESTS", "1")
        .args(["test", "-q", "-p", "xtask", "--test", "vm_runner"]);
    eprintln!("+ {}", util::show(&runner_test));
    let mut child = runner_test.spawn().context("starting the VM runner test")?;
    let matrix = run(&args);
    let status = child.wait()?;
    // arm64 after the amd64 matrix (both saturate the CPUs), also when it failed.
    let arm = run(&arm64);
    matrix?;
    if !status.success() {
        bail!("the VM runner test failed ({status}): a broken cell did not fail the matrix");
    }
    arm.context("the arm64 VM cell")
}
