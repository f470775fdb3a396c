//! cgroup v2 memcgs made and killed without mkdir/rmdir: writing `+memory` to
//! a parent's `cgroup.subtree_control` gives its existing children memcgs
//! (css alloc and online), `-memory` kills them (offline, then release and
//! free). Once, under every family's watch (`scenario`): `toggled` is made
//! before `+memory` and gets its memcg from the toggle; `known` gets its memcg
//! at mkdir and loses it to `-memory`. Each family must see what its hooks can (`sees_toggles` in the
//! unforced `probes --json` report); where the report says a hook is blind to
//! toggles (the tracepoint family's mkdir/rmdir), not seeing it is the
//! documented limitation, and the memcg it knew must still end freed, not live.

use std::{fs, path::Path, thread, time::Duration};

use anyhow::{Context, Result};
use kmem_trace_tests::TestParent;
use serde_json::{json, Value};

use crate::{
    check::{lives, visibility, Ev, Vis},
    scenario::Plan,
};

const POINTS: [&str; 4] = ["alloc", "online", "offline", "free"];

/// Whether `family`'s hook for `point` is attached and sees toggled memcgs.
fn sees_toggles(report: &Value, family: &str, point: &str) -> bool {
    report["points"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["point"] == point))
        .and_then(|p| p["tried"].as_array())
        .is_some_and(|tried| {
            tried.iter().any(|a| {
                a["family"] == family
                    && matches!(a["outcome"].as_str(), Some("chosen" | "works"))
                    && a["sees_toggles"] == true
            })
        })
}

/// What one family must show for the two memcgs, from the report: events
/// per point for `toggled` and `known`, the points blind to toggles, and the
/// points of `toggled` that may show one event or none.
#[derive(Debug, PartialEq)]
pub struct Want {
    pub toggled: Vec<(&'static str, usize)>,
    pub known: Vec<(&'static str, usize)>,
    pub blind: Vec<&'static str>,
    /// Points of `toggled` whose hook sees toggles while the family missed its
    /// alloc: whether its event can be told apart depends on what the tracer
    /// resolves at that hook (the 6.12 and 7.3 VM runs showed the tracepoint
    /// family's `released,free` for it), so one event or none are both
    /// right. Never required.
    pub may_toggled: Vec<&'static str>,
}

pub fn want(report: &Value, family: &str) -> Want {
    let seen = |p: &str| visibility(report, family, p) == Vis::Seen;
    let toggles = |p: &str| sees_toggles(report, family, p);
    // A memcg whose alloc was not seen is unknown to the tracer: its later
    // events carry no path to count them by.
    let toggled_known = toggles("alloc");
    let toggled = POINTS
        .iter()
        .map(|&p| (p, usize::from(toggled_known && toggles(p))))
        .collect();
    let known = POINTS
        .iter()
        .map(|&p| {
            let n = match p {
                "alloc" | "online" => seen(p),
                _ => toggles(p),
            };
            (p, usize::from(n))
        })
        .collect();
    let blind = POINTS
        .iter()
        .copied()
        .filter(|&p| seen(p) && !toggles(p))
        .collect();
    let may_toggled = POINTS
        .iter()
        .copied()
        .filter(|&p| !toggled_known && toggles(p))
        .collect();
    Want {
        toggled,
        known,
        blind,
        may_toggled,
    }
}

/// Compares what a family's watch showed with [`Want`]; errors.
pub fn judge(evs: &[Ev], parent: &str, w: &Want) -> Vec<String> {
    let all = lives(evs, parent);
    let count = |rel: &str, kind: &str| {
        all.iter()
            .filter(|l| l.rel.as_deref() == Some(rel))
            .map(|l| l.count(kind))
            .sum::<usize>()
    };
    let mut errors = Vec::new();
    for (rel, want) in [("t1/toggled", &w.toggled), ("t2/known", &w.known)] {
        for &(kind, n) in want {
            let got = count(rel, kind);
            // Blind points may still show an event (never required).
            let may = rel == "t1/toggled" && w.may_toggled.contains(&kind);
            if got != n && !(n == 0 && (w.blind.contains(&kind) || (may && got <= 1))) {
                errors.push(format!("{rel}: {got} {kind} events, want {n}"));
            }
        }
    }
    // Not live forever: the memcg the family knew must end freed.
    if w.known.iter().any(|&(k, n)| k == "free" && n == 0) {
        errors.push("t2/known: no hook of this family sees the free of a toggled memcg".into());
    }
    errors
}

/// The `toggle` protocol record: each family judged on what its watch showed
/// of the toggle's parent (`run`: its name, or why the toggle could not run;
/// `None` when the scenario failed before it). `families`: the non-perf
/// families and their events.
pub fn record(
    families: &[(&str, &[Ev])],
    run: Option<&Result<String, String>>,
    report: &Value,
) -> Value {
    if !crate::sys::cgroup_v2() {
        return json!({"status": "unsupported", "why": "cgroup v1 has no cgroup.subtree_control"});
    }
    let mut out = Vec::new();
    for &(family, evs) in families {
        let w = want(report, family);
        let mut errors = Vec::new();
        let mut seen = json!(null);
        let mut shown = Vec::new();
        match run {
            Some(Ok(parent)) => {
                errors = judge(evs, parent, &w);
                // What the family did report, for a failure that does not
                // repeat (7.3.4 cloud nokmem, kprobe: the toggled memcg
                // unseen once in nine v2 boots, seen on the rerun).
                if !errors.is_empty() {
                    shown = evs
                        .iter()
                        .filter(|e| e.path.as_deref().is_none_or(|p| p.contains(parent)))
                        .take(60)
                        .map(Ev::line)
                        .collect();
                }
                let all = lives(evs, parent);
                let kinds = |rel: &str| {
                    let v: Vec<&str> = all
                        .iter()
                        .filter(|l| l.rel.as_deref() == Some(rel))
                        .flat_map(|l| l.events.iter().map(|e| e.kind.as_str()))
                        .collect();
                    v.join(",")
                };
                seen = json!({"toggled": kinds("t1/toggled"), "known": kinds("t2/known")});
            }
            Some(Err(e)) => errors.push(e.clone()),
            None => errors.push("the toggle did not run".into()),
        }
        out.push(json!({
            "family": family,
            "status": if errors.is_empty() { "pass" } else { "fail" },
            "blind": w.blind,
            "events": shown,
            "seen": seen,
            "errors": errors,
        }));
    }
    let failed = out.iter().any(|f| f["status"] == "fail");
    json!({"status": if failed { "fail" } else { "pass" }, "families": out})
}

fn write(p: &Path, what: &str) -> Result<()> {
    fs::write(p.join("cgroup.subtree_control"), what)
        .with_context(|| format!("writing {what} to {}/cgroup.subtree_control", p.display()))
}

/// The toggles, under the running watches: `t1/toggled` gets its memcg from
/// `+memory` on `t1`, `t2/known` at mkdir under `t2` (`+memory` already), and
/// both lose them to `-memory`. Returns the parent, to be removed after the
/// watches stop.
pub fn steps(plan: &Plan) -> Result<TestParent> {
    let parent = TestParent::new("vm-toggle").context("creating the parent")?;
    let before = crate::sys::kernel_dying().unwrap_or(0);
    let t1 = parent.child("t1")?;
    parent.child("t1/toggled")?;
    let t2 = parent.child("t2")?;
    write(&t2, "+memory")?;
    parent.child("t2/known")?;
    write(&t1, "+memory")?;
    thread::sleep(Duration::from_millis(300));
    write(&t1, "-memory")?;
    write(&t2, "-memory")?;
    // Empty memcgs are freed a moment after they go offline.
    crate::sys::wait_dying_back_to(before, plan.wait);
    thread::sleep(Duration::from_millis(500));
    Ok(parent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probes report where `family` has these points, each with `sees`.
    fn report(family: &str, points: &[(&str, bool)]) -> Value {
        let pts: Vec<Value> = POINTS
            .iter()
            .map(|&p| {
                let tried: Vec<Value> = points
                    .iter()
                    .filter(|(q, _)| *q == p)
                    .map(|&(_, sees)| {
                        json!({"family": family, "outcome": "chosen", "sees_toggles": sees,
                               "attach": "x", "symbol": "y"})
                    })
                    .collect();
                json!({"point": p, "tried": tried})
            })
            .collect();
        json!({ "points": pts })
    }

    fn ev(kind: &str, addr: &str, path: &str) -> Ev {
        Ev {
            kind: kind.into(),
            ts_ns: 1,
            addr: Some(addr.into()),
            id: None,
            path: Some(path.into()),
            kmem_active: false,
            state: None,
            mem_bytes: None,
        }
    }

    fn full(addr: &str, rel: &str) -> Vec<Ev> {
        POINTS
            .iter()
            .map(|k| ev(k, addr, &format!("/p/{rel}")))
            .collect()
    }

    #[test]
    fn function_hooks_must_see_both_memcgs_whole() {
        let r = report("fentry", &POINTS.map(|p| (p, true)));
        let w = want(&r, "fentry");
        assert!(w.blind.is_empty());
        let mut evs = full("0x1", "t1/toggled");
        evs.extend(full("0x2", "t2/known"));
        assert!(judge(&evs, "p", &w).is_empty());
        // A missed offline of the toggled memcg fails.
        evs.retain(|e| !(e.kind == "offline" && e.addr.as_deref() == Some("0x1")));
        assert_eq!(
            judge(&evs, "p", &w),
            vec!["t1/toggled: 0 offline events, want 1"]
        );
    }

    #[test]
    fn tracepoints_are_blind_to_toggles_but_must_free_what_they_knew() {
        let r = report(
            "tracepoint",
            &[
                ("alloc", false),
                ("online", false),
                ("offline", false),
                ("free", true),
            ],
        );
        let w = want(&r, "tracepoint");
        assert_eq!(w.blind, ["alloc", "online", "offline"]);
        assert_eq!(w.toggled.iter().map(|t| t.1).sum::<usize>(), 0);
        assert_eq!(w.may_toggled, ["free"]);
        let known = vec![
            ev("alloc", "0x2", "/p/t2/known"),
            ev("online", "0x2", "/p/t2/known"),
            ev("free", "0x2", "/p/t2/known"),
        ];
        assert!(judge(&known, "p", &w).is_empty());
        // Without the free the known memcg would stay live: a failure.
        assert_eq!(
            judge(&known[..2], "p", &w),
            vec!["t2/known: 0 free events, want 1"]
        );
        // 6.12/7.3 VM runs: the free hook named the toggled memcg it never saw
        // allocated ("released,free"): allowed, once.
        let mut both = known.clone();
        both.push(ev("free", "0x1", "/p/t1/toggled"));
        assert!(
            judge(&both, "p", &w).is_empty(),
            "{:?}",
            judge(&both, "p", &w)
        );
        both.push(ev("free", "0x3", "/p/t1/toggled"));
        assert_eq!(
            judge(&both, "p", &w),
            vec!["t1/toggled: 2 free events, want 0"]
        );
        // A report that does not say blind makes the missing offline a failure.
        let r = report("tracepoint", &POINTS.map(|p| (p, true)));
        assert!(!judge(&known, "p", &want(&r, "tracepoint")).is_empty());
    }
}
