//! The report's verdict and remediation, decided from the one snapshot the
//! model holds: the severity is the doctor's (so the NPD line and the report
//! agree), raised to "unknown" when what the verdict needs could not be read
//! (the history, the zombies' ages); each fix is listed once.

use std::collections::HashMap;

use super::model::{CauseTotal, HistoryState, Ids, Now, OwnerTotal, Verdict};
use crate::{
    census::PinCause,
    doctor::{
        findings::{FIX_DROP, FIX_NOKMEM, FIX_REBOOT, FIX_TMPFS},
        Finding, Severity,
    },
    outputs::line::human_bytes,
};

/// The doctor fixes a pin cause's remedy repeats in other words.
fn same_as(c: PinCause) -> &'static [&'static str] {
    match c {
        PinCause::PageCache => &[FIX_DROP],
        PinCause::Tmpfs => &[FIX_TMPFS],
        PinCause::PageCacheOrTmpfs => &[FIX_DROP, FIX_TMPFS],
        PinCause::KernelMemory => &[FIX_REBOOT, FIX_NOKMEM],
        _ => &[],
    }
}

/// The fixes of warnings and worse first, then what frees each pin cause
/// (folded into a doctor fix that says the same), then the fixes of the other
/// findings; each step once.
pub fn remediation(findings: &[Finding], causes: &[CauseTotal]) -> Vec<String> {
    let fixes = |urgent: bool| {
        findings
            .iter()
            .filter(move |f| (f.severity >= Severity::Warning) == urgent)
            .flat_map(|f| f.remediation.iter().cloned())
    };
    let all: Vec<String> = fixes(true).chain(fixes(false)).collect();
    let mut frees: HashMap<&str, Vec<String>> = HashMap::new();
    let mut per_cause = Vec::new();
    for c in causes.iter().filter(|c| c.zombies > 0) {
        let who = format!("{} ({} zombies)", c.cause, c.zombies);
        match same_as(c.kind).iter().find(|f| all.iter().any(|a| a == *f)) {
            Some(fix) => frees.entry(fix).or_default().push(who),
            None => per_cause.push(format!("{who}: {}", c.remedy)),
        }
    }
    let annotate = |step: String| match frees.get(step.as_str()) {
        Some(who) => format!("{step} — frees {}", who.join(", ")),
        None => step,
    };
    let mut out: Vec<String> = Vec::new();
    for step in fixes(true)
        .map(annotate)
        .chain(per_cause)
        .chain(fixes(false).map(annotate))
    {
        if !out.contains(&step) {
            out.push(step);
        }
    }
    out
}

/// Why the verdict is unknown, and what fixes that; `None` when it is known.
/// Dying memcgs of unknown age (removed before the history started) do not
/// make it unknown: they are counted apart, never as zombies or as none.
pub fn unknown(history: &HistoryState, now: &Now, db: &str) -> Option<(String, String)> {
    match history {
        HistoryState::Unreadable(e) => {
            return Some((
                format!("the history {db} cannot be read ({e}), so zombies and their owners are unknown"),
                format!(
                    "run the report as root (`sudo kmem-trace report`), or give --db a readable copy of {db}"
                ),
            ))
        }
        HistoryState::Missing(_) if now.zombies.is_none() => {
            return Some((
                format!("there is no history at {db} and no census of the memcgs (it needs root and BPF), so zombies cannot be told from memcgs removed a moment ago"),
                "run the report as root, and keep `kmem-trace serve` (or `watch --db`) recording the history".into(),
            ))
        }
        _ => {}
    }
    // More zombies listed than the kernel has dying memcgs: the history's
    // rows were not confirmed since its tracer stopped (no census ran).
    let listed = now.zombies.unwrap_or(0) + now.unknown_age;
    if let Some(d) = now
        .dying
        .filter(|d| listed > *d && !now.source.starts_with("census"))
    {
        return Some((
            format!("the history lists {listed} dying memcgs but the kernel counts {d}: its rows were not confirmed since its tracer stopped, so which are still zombies is unknown"),
            "run the report as root with BPF (`sudo kmem-trace report`) so a census confirms them, or keep `kmem-trace serve` running".into(),
        ));
    }
    if now.zombies.is_none() {
        return Some((
            "the dying memcgs could not be listed, so zombies are unknown".into(),
            "run the report as root with BPF available (`sudo kmem-trace report`)".into(),
        ));
    }
    None
}

/// The one-paragraph answer.
pub struct VerdictInputs<'a> {
    pub host: Option<&'a str>,
    pub zombie_after_s: u64,
    pub doctor_status: Severity,
    pub findings: &'a [Finding],
    pub now: &'a Now,
    pub ids: &'a Ids,
    pub owners: &'a [OwnerTotal],
    pub owner_count: usize,
    pub causes: &'a [CauseTotal],
    pub unknown: Option<(String, String)>,
}

pub fn verdict(v: VerdictInputs) -> Verdict {
    let host = v.host.unwrap_or("This node");
    let mut severity = v.doctor_status;
    let mut s = String::new();
    if let Some((why, _)) = &v.unknown {
        severity = severity.max(Severity::Unknown);
        s.push_str(&format!("Unknown: {why}. "));
    }
    match v.now.dying {
        Some(d) => s.push_str(&format!("{host} holds {d} dying memcgs")),
        None => s.push_str(&format!(
            "{host}: the number of dying memcgs could not be read"
        )),
    }
    let after = humantime::format_duration(std::time::Duration::from_secs(v.zombie_after_s));
    match v.now.zombies {
        Some(z) => s.push_str(&format!(
            ", {z} of them zombies (removed more than {after} ago)"
        )),
        None => s.push_str(", how many of them are zombies is unknown"),
    }
    if v.now.unknown_age > 0 {
        s.push_str(&format!(
            ", {} of unknown age (removed before the history recorded them)",
            v.now.unknown_age
        ));
    }
    // The same sum as the pin-cause table: every listed zombie.
    let bytes: u64 = v.causes.iter().map(|c| c.pinned_bytes).sum();
    if bytes > 0 {
        s.push_str(&format!(", still charged {}", human_bytes(bytes)));
    }
    s.push('.');
    if let Some(c) = v.causes.iter().find(|c| c.kind != PinCause::Unknown) {
        match &c.at_offline {
            // What they held when they went offline, not what holds them now.
            Some(why) => s.push_str(&format!(
                " Most held {} when they went offline ({why}).",
                c.kind.name()
            )),
            None => s.push_str(&format!(" Most are pinned by {}.", c.cause)),
        }
    }
    if let Some(o) = v.owners.first() {
        // The appendix lists zombies and, apart, dying memcgs of unknown age.
        let what = match (v.now.unknown_age > 0, o.zombies == 1) {
            (false, true) => "zombie",
            (false, false) => "zombies",
            (true, true) => "dying memcg listed",
            (true, false) => "dying memcgs listed",
        };
        s.push_str(&format!(
            " The top owner is {} with {} {what}",
            o.label, o.zombies
        ));
        if v.owner_count > 1 {
            s.push_str(&format!(", of {} owners", v.owner_count));
        }
        s.push('.');
    }
    match (v.ids.in_use, v.ids.percent) {
        (Some(u), Some(p)) => s.push_str(&format!(
            " memcg IDs: {u} of {} in use ({p:.1}%). {}.",
            v.ids.limit, v.ids.outlook
        )),
        _ => s.push_str(&format!(" memcg IDs in use: unknown. {}.", v.ids.outlook)),
    }
    if let Some(f) = v
        .findings
        .first()
        .filter(|f| f.severity >= Severity::Warning)
    {
        s.push_str(&format!(" Doctor: {} — {}.", f.severity.label(), f.title));
    }
    s.push_str(match severity {
        Severity::Critical => " Act now: see the remediation steps.",
        Severity::Warning => " Plan remediation: see the steps below.",
        Severity::Unknown => " Not an all-clear: see the fix above.",
        _ if v.now.unknown_age > 0 => {
            " No action needed for the zombies of known age; keep `kmem-trace serve` recording to age the rest."
        }
        _ => " No action needed.",
    });
    let (reason, fix) = v.unknown.map_or((None, None), |(r, f)| (Some(r), Some(f)));
    Verdict {
        severity,
        text: s,
        reason,
        fix,
    }
}
