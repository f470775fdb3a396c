//! The in-kernel cost of each kmem-trace BPF program: the kernel's run-time
//! statistics (`kernel.bpf_stats_enabled`, `run_time_ns` / `run_cnt` per
//! program, what bpftop shows), read with `bpftool -j prog show` before and
//! after each traced churn run. The sysctl is switched on for the churn bench
//! only and put back as it was.

use std::{collections::BTreeMap, process::Command};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` set to 1 until dropped, then restored.
pub struct StatsEnabled {
    old: String,
}

impl StatsEnabled {
    pub fn on() -> Result<StatsEnabled> {
        let old = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("reading {SYSCTL}"))?
            .trim()
            .to_string();
        std::fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
        Ok(StatsEnabled { old })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.old) {
            eprintln!("bench: could not restore {SYSCTL} to {}: {e}", self.old);
        }
    }
}

/// One program's counters at one moment.
#[derive(Debug, Clone)]
pub struct Counters {
    pub id: u64,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// kmem-trace's programs (named `kt_*`) loaded now, with their counters.
pub fn snapshot() -> Vec<Counters> {
    let progs: Vec<Value> = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice(&o.stdout).ok())
        .unwrap_or_default();
    progs
        .iter()
        .filter_map(|p| {
            let name = p["name"].as_str().filter(|n| n.starts_with("kt_"))?;
            Some(Counters {
                id: p["id"].as_u64()?,
                name: name.to_string(),
                run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
            })
        })
        .collect()
}

/// A program's runs and time over an interval.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgCost {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

/// What each program did between two snapshots of the same process's programs.
pub fn delta(before: &[Counters], after: &[Counters]) -> Vec<ProgCost> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.id == a.id);
            ProgCost {
                name: a.name.clone(),
                runs: a.run_cnt - b.map_or(0, |b| b.run_cnt.min(a.run_cnt)),
                run_time_ns: a.run_time_ns - b.map_or(0, |b| b.run_time_ns.min(a.run_time_ns)),
            }
        })
        .collect()
}

/// Sums runs of several intervals by program name (sorted by name).
pub fn total<'a>(runs: impl IntoIterator<Item = &'a ProgCost>) -> Vec<ProgCost> {
    let mut by: BTreeMap<&str, ProgCost> = BTreeMap::new();
    for p in runs {
        let e = by.entry(&p.name).or_insert_with(|| ProgCost {
            name: p.name.clone(),
            ..Default::default()
        });
        e.runs += p.runs;
        e.run_time_ns += p.run_time_ns;
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u64, name: &str, ns: u64, n: u64) -> Counters {
        Counters {
            id,
            name: name.into(),
            run_time_ns: ns,
            run_cnt: n,
        }
    }

    #[test]
    fn costs_are_differences_summed_by_name() {
        let before = [c(1, "kt_mkdir", 1000, 10), c(2, "kt_rmdir", 0, 0)];
        let after = [c(1, "kt_mkdir", 3000, 20), c(2, "kt_rmdir", 500, 5)];
        let d = delta(&before, &after);
        assert_eq!((d[0].runs, d[0].run_time_ns), (10, 2000));
        let again = delta(&[], &[c(7, "kt_mkdir", 600, 2)]);
        let t = total(d.iter().chain(&again));
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].name.as_str(), t[0].runs, t[0].run_time_ns),
            ("kt_mkdir", 12, 2600)
        );
        assert_eq!((t[1].runs, t[1].run_time_ns), (5, 500));
    }
}
