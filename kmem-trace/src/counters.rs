//! The eBPF programs' own counters (`STATS`: events dropped, kernel reads
//! that faulted, residents not reported), read at every tick of a live run
//! and reported as health records (`--json` records, notes, metrics).

use std::time::{Duration, Instant};

use crate::{
    outputs::Health,
    probes::Probes,
    watch::{Pipeline, WatchError},
};

/// The programs' `STATS` counters as last reported.
#[derive(Default)]
pub struct KernelCounters {
    pub drops: u64,
    read_faults: u64,
    residents_capped: u64,
    /// When faults and capped residents were last reported: at most once a
    /// minute (a busy node caps residents all the time), drops every tick.
    reported: Option<Instant>,
}

/// Least time between two reports of read faults or capped residents.
const COUNTER_REPORT_GAP: Duration = Duration::from_secs(60);

impl KernelCounters {
    /// Reads them and reports what grew (`last`: the final read, reports
    /// everything); true when events were dropped.
    pub fn read(
        &mut self,
        probes: &Probes,
        pipe: &mut Pipeline<'_>,
        last: bool,
    ) -> Result<bool, WatchError> {
        use kmem_trace_common::stat;
        let read = |i| probes.stat(i).unwrap_or(0);
        // Drops: the programs' counter plus the perf buffers' lost samples.
        let (drops, faults, capped) = (
            probes.drops(),
            read(stat::READ_FAULTS),
            read(stat::RESIDENTS_CAPPED),
        );
        let dropped = drops > self.drops;
        if dropped {
            pipe.health(&Health::Drops {
                new: drops - self.drops,
                total: drops,
            })?;
        }
        self.drops = drops;
        pipe.set_kernel_counters(faults, capped);
        let grew = faults > self.read_faults || capped > self.residents_capped;
        if !grew
            || !(last
                || self
                    .reported
                    .is_none_or(|t| t.elapsed() >= COUNTER_REPORT_GAP))
        {
            return Ok(dropped);
        }
        if faults > self.read_faults {
            pipe.health(&Health::ReadFaults {
                new: faults - self.read_faults,
                total: faults,
            })?;
        }
        if capped > self.residents_capped {
            pipe.health(&Health::ResidentsCapped {
                new: capped - self.residents_capped,
                total: capped,
            })?;
        }
        (self.read_faults, self.residents_capped) = (faults, capped);
        self.reported = Some(Instant::now());
        Ok(dropped)
    }
}
