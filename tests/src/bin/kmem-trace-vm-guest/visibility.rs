//! Whether a hook family sees a lifecycle point on the running kernel, from the
//! unforced `kmem-trace probes --json` report: seen, blind (the probe table has
//! no hook of that family for this kernel) or broken (a hook meant for it did
//! not attach), and the points a `watch` said it could not see.

use serde_json::Value;

/// Whether a family can see a point on this kernel, from `kmem-trace probes --json`.
#[derive(Clone, Debug, PartialEq)]
pub enum Vis {
    Seen,
    /// The probe table has no hook of the family meant for this kernel.
    Blind(String),
    /// A hook the table means for this kernel did not attach (a missing
    /// symbol, a verifier rejection): never a pass.
    Broken(String),
}

/// The table's range check rejects rows not meant for this kernel with this
/// reason (`probes::table::check`).
const NOT_MEANT: &str = "meant for kernels ";

/// The old-kernel object rejects the rows it has no program for (fentry and
/// tp_btf need kernel BTF) with this reason (`probes::Probes::start_with`).
const NOT_IN_PERF: &str = "not in the old-kernel (perf) object";

/// A kernel without kprobes rejects every kprobe row with this reason
/// (`probes::kernel::kprobes_supported`): blind, as the perf row on the build
/// machine is to the points only kprobes see.
const NO_KPROBES: &str = "the kernel has no kprobe support";

/// The row of the old-kernel object (`watch --transport perf --hooks auto`):
/// its report is `probes --json --transport perf`, and any family's hook in it
/// counts.
pub const PERF: &str = "perf";

/// The old-kernel object's classic tracepoint programs
/// (`watch --transport perf --hooks tracepoint`): where kprobes work, `perf`
/// alone never runs them.
pub const PERF_TP: &str = "perf-tp";

/// For a perf row, the `--hooks` it runs with (`auto`: any family's hook
/// counts); `None` for a hook family.
pub fn perf_hooks(row: &str) -> Option<&'static str> {
    match row {
        PERF => Some("auto"),
        PERF_TP => Some("tracepoint"),
        _ => None,
    }
}

/// A point is visible to a family when the unforced `probes` report attached one
/// of that family's hooks for it (`chosen` or `works`). For [`PERF`], `report`
/// is the perf transport's report and a hook of any family counts.
pub fn visibility(report: &Value, family: &str, point: &str) -> Vis {
    let Some(p) = report["points"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["point"] == point))
    else {
        return Vis::Blind("not in the probes report".into());
    };
    let tried: Vec<&Value> = p["tried"]
        .as_array()
        .map(|t| {
            t.iter()
                .filter(|a| match perf_hooks(family) {
                    Some("auto") => true,
                    Some(hooks) => a["family"] == hooks,
                    None => a["family"] == family,
                })
                .collect()
        })
        .unwrap_or_default();
    if tried.is_empty() {
        return Vis::Blind(format!("no {family} hook can see {point}"));
    }
    if tried
        .iter()
        .any(|a| matches!(a["outcome"].as_str(), Some("chosen" | "works")))
    {
        return Vis::Seen;
    }
    let reasons: Vec<String> = tried
        .iter()
        .map(|a| {
            format!(
                "{} {}: {}",
                a["attach"].as_str().unwrap_or("?"),
                a["symbol"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| join(&a["candidates"])),
                a["reason"].as_str().unwrap_or("not attached")
            )
        })
        .collect();
    let not_meant = tried.iter().all(|a| {
        a["reason"].as_str().is_some_and(|r| {
            [NOT_MEANT, NOT_IN_PERF, NO_KPROBES]
                .iter()
                .any(|n| r.starts_with(n))
        })
    });
    if not_meant {
        Vis::Blind(reasons.join("; "))
    } else {
        Vis::Broken(reasons.join("; "))
    }
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("|")
        })
        .unwrap_or_default()
}

/// The points a `watch` reported as not visible, from its start-up line
/// `kmem-trace: watching with kprobe hooks (not visible: alloc, free); ...`.
pub fn watch_blind(stderr: &[String]) -> Vec<String> {
    stderr
        .iter()
        .find_map(|l| l.split_once("(not visible: "))
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(list, _)| list.split(", ").map(str::to_string).collect())
        .unwrap_or_default()
}
