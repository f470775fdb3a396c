//! Swap pins for the exhaustion scenario: a memcg's tmpfs pages pushed out
//! to swap with whichever reclaim knob this kernel and cgroup version have,
//! and how much of the memcg is in swap.

use std::{fs, path::Path};

use anyhow::{bail, Result};

use crate::scenario::in_cgroup;

/// `child CG write FILE BYTES`, then push the memcg's pages to swap until it
/// has some; the way used is kept in `how` (the first that worked).
pub fn pin_swap(cg: &Path, file: &Path, bytes: &str, how: &mut Option<&'static str>) -> Result<()> {
    in_cgroup(cg, &["write", &file.to_string_lossy(), bytes])?;
    let mut tried = Vec::new();
    for _ in 0..4 {
        for (knob, value) in push_to_swap(cg) {
            let r = fs::write(cg.join(knob), value);
            if swapped_bytes(cg) > 0 {
                how.get_or_insert(knob);
                return Ok(());
            }
            tried.push(format!(
                "{knob}={value}: {}",
                r.err().map_or("ok".into(), |e| e.to_string())
            ));
        }
    }
    tried.dedup();
    bail!(
        "nothing of {} went to swap ({})",
        cg.display(),
        tried.join(", ")
    )
}

/// Knobs (and values) that make the kernel reclaim an empty memcg's pages,
/// the best one first. `memory.reclaim` (v2, 5.19+) reclaims what it is
/// asked; without it (v2 on 5.10) writing `memory.high` below the usage
/// reclaims synchronously (`memory_high_write()`); on v1
/// `memory.force_empty` reclaims everything of a memcg without tasks
/// (`mem_cgroup_force_empty()`), and a `memory.limit_in_bytes` below the
/// usage reclaims down to it (`mem_cgroup_resize_max()`). shmem pages can
/// only go to swap.
fn push_to_swap(cg: &Path) -> Vec<(&'static str, &'static str)> {
    let all: [(&str, &str); 4] = [
        ("memory.reclaim", "1M"),
        ("memory.high", "0"),
        ("memory.force_empty", "0"),
        ("memory.limit_in_bytes", "4096"),
    ];
    all.into_iter()
        .filter(|(knob, _)| cg.join(knob).exists())
        .collect()
}

/// Bytes of the memcg in swap: `memory.swap.current` (v2); on v1 the
/// larger of the `swap` line of `memory.stat` and memsw minus memory
/// (`memory.memsw.usage_in_bytes` - `memory.usage_in_bytes`, both with swap
/// accounting). The page counters are exact; before 5.13 (rstat) the v1
/// `swap` stat of one page stays in the per-CPU delta that
/// `__mod_memcg_state()` folds only past `MEMCG_CHARGE_BATCH` (32 pages), so
/// on 5.10 it reads 0 for the one-page pin.
fn swapped_bytes(cg: &Path) -> u64 {
    let read = |f: &str| fs::read_to_string(cg.join(f)).ok();
    let num = |f: &str| read(f).and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(s) = num("memory.swap.current") {
        return s;
    }
    let stat = read("memory.stat")
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("swap ")?.trim().parse().ok())
        })
        .unwrap_or(0);
    let memsw = match (
        num("memory.memsw.usage_in_bytes"),
        num("memory.usage_in_bytes"),
    ) {
        (Some(sw), Some(mem)) => sw.saturating_sub(mem),
        _ => 0,
    };
    stat.max(memsw)
}
