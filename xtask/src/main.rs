//! Project tasks: toolchain setup, builds, the test suite, the VM kernel matrix
//! and benchmarks. Run as `cargo xtask <task>`.

mod bench;
mod build;
mod census_bench;
mod cross_check;
mod deploy_check;
mod docs;
mod image;
mod setup;
mod soak;
mod test;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kmem-trace project tasks")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (Debian packages, bpf-linker) where missing.
    Setup(setup::SetupArgs),
    /// The static release binaries (kmem-trace, the VM guest) for one architecture.
    Build(build::BuildArgs),
    /// Set up, build a release binary and run `kmem-trace watch` (extra args are passed on).
    Watch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole test suite: fmt, clippy, unit tests, root integration tests.
    Test(test::TestArgs),
    /// The VM kernel matrix: Debian kernels in qemu, every hook family, kmem on and off.
    VmTest(vm::VmArgs),
    /// Performance figures: churn overhead vs bpftrace, drops, replay, census,
    /// memory, start-up; writes target/bench/results.json and docs/PERFORMANCE.md.
    Bench(bench::BenchArgs),
    /// Time the census on many memcgs (root; creates and removes them).
    BenchCensus(census_bench::BenchCensusArgs),
    /// Shell completions (bash, zsh, fish, elvish, powershell) for kmem-trace, into DIR or target/completions.
    Completions(docs::DocsArgs),
    /// The container image: a static binary in an OCI archive, target/image/kmem-trace.oci.tar.
    Image(image::ImageArgs),
    /// The Kubernetes manifests: kustomize render, offline schema check, checkov, least-privilege rules.
    DeployCheck,
    /// The image under the DaemonSet's caps and limits for N minutes of host churn (root).
    Soak(soak::SoakArgs),
    /// Man pages (kmem-trace.1 and one per subcommand), into DIR or target/man.
    Man(docs::DocsArgs),
}

fn main() -> Result<()> {
    match Xtask::parse().task {
        Task::Setup(args) => setup::run(&args),
        Task::Build(args) => build::run(&args),
        Task::Watch { args } => setup::watch(&args),
        Task::Test(args) => test::run(&args),
        Task::VmTest(args) => vm::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::BenchCensus(args) => census_bench::run(&args),
        Task::Completions(args) => docs::completions(&args),
        Task::Man(args) => docs::man(&args),
        Task::Image(args) => image::run(&args).map(drop),
        Task::DeployCheck => deploy_check::run(),
        Task::Soak(args) => soak::run(&args),
    }
}
