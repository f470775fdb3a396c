//! Families that can see a lifecycle point must report the same events for it.
//! Pure, like `check`: it compares the observations of the family runs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::check::{lives, visibility, Ev, Expect, Life, Observation, Vis, POINTS};

/// What a family saw of one point: per cgroup, the number of events and the IDs
/// they carried.
type Signature = BTreeMap<String, (usize, BTreeSet<u64>)>;

fn signature(lives: &[Life], names: &[&str], point: &str) -> Signature {
    names
        .iter()
        .map(|n| {
            let evs: Vec<&Ev> = lives
                .iter()
                .filter(|l| l.rel.as_deref() == Some(n))
                .flat_map(|l| l.events.iter().filter(|e| e.kind == point))
                .collect();
            let ids = evs.iter().filter_map(|e| e.id).collect();
            (n.to_string(), (evs.len(), ids))
        })
        .collect()
}

/// Families that can see a point must report the same events for it: the same
/// cgroups, as often, with the same memcg IDs (the kernel hands out the lowest
/// free ID, and every family runs the same scenario from the same state).
/// Each run comes with the probes report that says what it can see (the
/// `perf` row's is the perf transport's).
pub fn compare(runs: &[(&Observation, &Value)], exp: &Expect) -> Vec<Value> {
    let names = exp.names();
    let lifes: Vec<Vec<Life>> = runs
        .iter()
        .map(|(o, _)| lives(&o.events, &o.parent))
        .collect();
    let mut out = Vec::new();
    for point in POINTS {
        let sigs: Vec<(&str, Signature)> = runs
            .iter()
            .zip(&lifes)
            .filter(|((o, report), _)| visibility(report, &o.family, point) == Vis::Seen)
            .map(|((o, _), l)| (o.family.as_str(), signature(l, &names, point)))
            .collect();
        let families: Vec<&str> = sigs.iter().map(|(f, _)| *f).collect();
        if sigs.len() < 2 {
            out.push(
                json!({"point": point, "families": families, "agree": Value::Null,
                            "detail": "fewer than two families see it"}),
            );
            continue;
        }
        let (f0, s0) = &sigs[0];
        let mut detail = String::new();
        for (f, s) in &sigs[1..] {
            if let Some(n) = names.iter().find(|n| s0.get(**n) != s.get(**n)) {
                detail = format!(
                    "{n}: {f0} {:?}, {f} {:?}",
                    s0.get(*n).map(|x| (x.0, &x.1)),
                    s.get(*n).map(|x| (x.0, &x.1))
                );
                break;
            }
        }
        out.push(json!({"point": point, "families": families,
                        "agree": detail.is_empty(), "detail": detail}));
    }
    out
}
