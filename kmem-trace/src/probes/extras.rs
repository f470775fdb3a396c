//! Hooks beside the lifecycle points: processes entering memcgs (residents).
//! They attach after the lifecycle hooks; when one cannot attach, the tracer
//! runs without it and the probe report says why.

use aya::maps::{Array, MapData};
use kmem_trace_common::{hook, EventKind};
use serde::Serialize;

use super::{table::Attach, table::KernelFacts, Attacher, Outcome, ProbeError};

/// One extra hook: a BTF tracepoint program emitting one event kind.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Extra {
    pub name: &'static str,
    pub program: &'static str,
    pub tracepoint: &'static str,
    pub hook_id: u16,
    #[serde(skip)]
    pub kind: EventKind,
    pub note: &'static str,
}

/// The resident hooks (`kmem-trace-ebpf/src/residents.rs`).
pub static EXTRAS: &[Extra] = &[
    Extra {
        name: "resident_attach",
        program: "kt_tp_cgroup_attach_task",
        tracepoint: "cgroup_attach_task",
        hook_id: hook::TP_CGROUP_ATTACH,
        kind: EventKind::Resident,
        note: "a process written to cgroup.procs",
    },
    Extra {
        name: "resident_fork",
        program: "kt_tp_process_fork",
        tracepoint: "sched_process_fork",
        hook_id: hook::TP_PROCESS_FORK,
        kind: EventKind::Resident,
        note: "a process forked inside a memcg",
    },
    Extra {
        name: "resident_exec",
        program: "kt_tp_process_exec",
        tracepoint: "sched_process_exec",
        hook_id: hook::TP_PROCESS_EXEC,
        kind: EventKind::Resident,
        note: "a resident runs a new program (its name changes)",
    },
];

/// What became of one extra hook.
#[derive(Clone, Debug, Serialize)]
pub struct ExtraReport {
    pub name: &'static str,
    /// `Event::hook` of the program.
    pub hook_id: u16,
    /// `tp_btf cgroup_attach_task`.
    pub label: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Attacher<'_> {
    /// Attaches every extra hook it can; failures are reported, not returned.
    pub(super) fn attach_extras(
        &mut self,
        emit: &mut Array<MapData, u32>,
        facts: &dyn KernelFacts,
    ) -> Result<Vec<ExtraReport>, ProbeError> {
        let mut out = Vec::new();
        for x in EXTRAS {
            let label = format!("{} {}", Attach::TpBtf.name(), x.tracepoint);
            let outcome = if !facts.has_symbol(Attach::TpBtf, x.tracepoint) {
                Outcome::Rejected(format!(
                    "{} is not a BTF tracepoint on this kernel (needs /sys/kernel/btf/vmlinux)",
                    x.tracepoint
                ))
            } else {
                let bit = 1u32 << (x.kind as u32);
                self.enable(emit, x.hook_id, bit)?;
                match self.attach_one(x.program, Attach::TpBtf, x.tracepoint) {
                    Ok(()) => Outcome::Chosen,
                    Err(reason) => {
                        self.disable(emit, x.hook_id, bit)?;
                        Outcome::Rejected(reason)
                    }
                }
            };
            if let Outcome::Rejected(r) = &outcome {
                log::info!("{}: {label}: {r}", x.name);
            }
            out.push(ExtraReport {
                name: x.name,
                hook_id: x.hook_id,
                label,
                outcome,
            });
        }
        Ok(out)
    }
}
