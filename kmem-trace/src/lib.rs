//! kmem-trace: an eBPF tracer for the Linux memory-cgroup lifecycle.
//!
//! The pipeline runs one way: [`probes`] (the only code that talks to aya and the
//! kernel) → [`decode`] (bytes → typed events) → [`lifecycle`] (the memcg state
//! machine) → [`outputs`]. [`cgroupfs`] feeds the lifecycle's cgroup tree from
//! the side; [`watch`] drives the whole line.

pub mod attribution;
pub mod census;
pub mod cgroupfs;
pub mod cli;
pub mod clock;
pub mod counters;
pub mod decode;
pub mod doctor;
pub mod files;
pub mod forecast;
pub mod leaks;
pub mod lifecycle;
pub mod metrics;
pub mod outputs;
pub mod probes;
pub mod report;
pub mod serve;
pub mod store;
pub mod watch;
pub mod zombies;
