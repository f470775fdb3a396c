//! What the probe selection decided and why: per lifecycle point, the hook used
//! and every other candidate with the reason it was not. Printed by
//! `kmem-trace probes`, `--verbose` and `doctor`, and kept in VM-matrix results.

use std::fmt::Write as _;

use serde::Serialize;

use super::{
    btf::Resolved,
    table::{Attach, Family, HookMode, Point, Row},
    HostFacts,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", content = "reason", rename_all = "snake_case")]
pub enum Outcome {
    /// Attached and used for the point.
    Chosen,
    /// Would work, but a preferred hook was chosen (`probes` tries them all).
    Works,
    Rejected(String),
    /// Not tried: a preferred hook already works.
    NotTried,
}

#[derive(Clone, Debug, Serialize)]
pub struct Attempt {
    pub family: Family,
    pub attach: Attach,
    pub program: &'static str,
    pub symbol: Option<String>,
    pub candidates: &'static [&'static str],
    pub kernels: String,
    pub inferred: bool,
    /// Sees memcgs made or killed by a v2 `+memory` toggle ([`Row::sees_toggles`]).
    pub sees_toggles: bool,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Attempt {
    pub fn new(row: &Row, symbol: Option<String>, outcome: Outcome) -> Attempt {
        Attempt {
            family: row.family,
            attach: row.attach,
            program: row.program,
            symbol,
            candidates: row.symbols,
            kernels: if row.until == super::kernel::KernelVersion::MAX {
                format!("{}+", row.since)
            } else {
                format!("{}..{}", row.since, row.until)
            },
            inferred: row.inferred,
            sees_toggles: row.sees_toggles(),
            outcome,
        }
    }

    /// `kprobe mem_cgroup_css_offline` style label.
    pub fn label(&self) -> String {
        let sym = self
            .symbol
            .clone()
            .unwrap_or_else(|| self.candidates.join("|"));
        format!("{} {}", self.attach.name(), sym)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PointReport {
    pub point: Point,
    /// Index into `tried` of the hook in use.
    pub chosen: Option<usize>,
    pub tried: Vec<Attempt>,
}

impl PointReport {
    pub fn new(point: Point) -> PointReport {
        PointReport {
            point,
            chosen: None,
            tried: Vec::new(),
        }
    }

    pub fn chosen(&self) -> Option<&Attempt> {
        self.chosen.map(|i| &self.tried[i])
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub kernel: String,
    pub mode: HookMode,
    pub btf: String,
    pub kprobes: String,
    pub points: Vec<PointReport>,
    pub layout: Vec<Resolved>,
    /// Hooks beside the lifecycle points (residents).
    pub extras: Vec<super::extras::ExtraReport>,
    /// The object in use (ring buffer or perf buffers) and why.
    pub transport: Option<super::transport::Choice>,
    /// `RLIMIT_MEMLOCK` before and after start-up raised it.
    pub memlock: Option<super::memlock::Memlock>,
}

impl ProbeReport {
    pub fn new(
        mode: HookMode,
        facts: &HostFacts,
        layout: Vec<Resolved>,
        points: Vec<PointReport>,
    ) -> ProbeReport {
        ProbeReport {
            kernel: facts.release.clone(),
            mode,
            btf: facts.btf.path.display().to_string(),
            kprobes: match &facts.kprobes {
                Ok(()) => "available".into(),
                Err(e) => e.clone(),
            },
            points,
            layout,
            extras: Vec::new(),
            transport: None,
            memlock: None,
        }
    }

    /// The families in use, e.g. `tracepoint` or `fentry+tracepoint`.
    pub fn family_in_use(&self) -> String {
        let mut fams: Vec<Family> = self
            .points
            .iter()
            .filter_map(|p| p.chosen().map(|a| a.family))
            .collect();
        fams.sort();
        fams.dedup();
        if fams.is_empty() {
            return "none".into();
        }
        fams.iter().map(|f| f.name()).collect::<Vec<_>>().join("+")
    }

    /// Points whose hook in use does not see memcgs that a cgroup v2
    /// `+memory` toggle in `cgroup.subtree_control` makes or kills.
    pub fn toggle_blind(&self) -> Vec<Point> {
        self.points
            .iter()
            .filter(|p| p.chosen().is_some_and(|a| !a.sees_toggles))
            .map(|p| p.point)
            .collect()
    }

    /// Points nothing could attach to.
    pub fn blind_points(&self) -> Vec<Point> {
        self.points
            .iter()
            .filter(|p| p.chosen.is_none())
            .map(|p| p.point)
            .collect()
    }

    /// One line per point: why no candidate worked.
    pub fn rejections(&self) -> String {
        let mut s = String::new();
        for p in &self.points {
            if p.tried.is_empty() {
                let _ = writeln!(s, "  {}: no hook in this family can see it", p.point.name());
            }
            for a in &p.tried {
                if let Outcome::Rejected(r) = &a.outcome {
                    let _ = writeln!(s, "  {}: {}: {}", p.point.name(), a.label(), r);
                }
            }
        }
        s.trim_end().to_string()
    }

    /// The human table printed by `kmem-trace probes` (and `-v`).
    pub fn render(&self, verbose: bool) -> String {
        let mut s = String::new();
        let how = match self.mode {
            HookMode::Auto => "chosen per point",
            _ => "forced with --hooks",
        };
        let _ = writeln!(
            s,
            "kernel {}  hooks {} ({how})",
            self.kernel,
            self.family_in_use()
        );
        let _ = writeln!(s, "btf {}  kprobes: {}", self.btf, self.kprobes);
        if let Some(t) = &self.transport {
            let _ = writeln!(s, "transport {} ({})", t.transport.name(), t.reason);
        }
        if let Some(m) = &self.memlock {
            let _ = writeln!(s, "{}", m.line());
        }
        for p in &self.points {
            match p.chosen() {
                Some(a) => {
                    let inferred = if a.inferred { " (inferred)" } else { "" };
                    let _ = writeln!(
                        s,
                        "{:<14} {:<10} {}{}",
                        p.point.name(),
                        a.family.name(),
                        a.label(),
                        inferred
                    );
                }
                None => {
                    let _ = writeln!(s, "{:<14} {:<10} not visible", p.point.name(), "-");
                }
            }
            if p.tried.is_empty() {
                let _ = writeln!(s, "{:<14}   no hook of this family can see this point", "");
            }
            for (i, a) in p.tried.iter().enumerate() {
                if Some(i) == p.chosen {
                    continue;
                }
                let why = match &a.outcome {
                    Outcome::Rejected(r) => format!("rejected: {r}"),
                    Outcome::Works => "works (not needed)".into(),
                    Outcome::NotTried => "not tried: a preferred hook works".into(),
                    Outcome::Chosen => continue,
                };
                let _ = writeln!(
                    s,
                    "{:<14}   {:<10} {}: {}",
                    "",
                    a.family.name(),
                    a.label(),
                    why
                );
            }
        }
        let blind = self.toggle_blind();
        if !blind.is_empty() {
            let names: Vec<&str> = blind.iter().map(|p| p.name()).collect();
            let _ = writeln!(
                s,
                "not seen for memcgs made or killed by toggling +memory in a cgroup v2 \
                 cgroup.subtree_control (no cgroup_mkdir/cgroup_rmdir): {}",
                names.join(", ")
            );
        }
        for x in &self.extras {
            let _ = match &x.outcome {
                Outcome::Chosen => writeln!(s, "{:<14} {:<10} {}", x.name, "tracepoint", x.label),
                Outcome::Rejected(r) => writeln!(
                    s,
                    "{:<14} -          not attached: {r} ({})",
                    x.name, x.label
                ),
                _ => continue,
            };
        }
        if verbose {
            let _ = writeln!(s, "kernel layout:");
            for r in &self.layout {
                match r.offset {
                    Some(o) => {
                        let _ = writeln!(s, "  {:<24} {:<44} {}", r.field, r.found, o);
                    }
                    None => {
                        let _ = writeln!(s, "  {:<24} absent", r.field);
                    }
                }
            }
        }
        s
    }
}
