//! Judging one family run of the VM scenario: what kmem-trace reported (its JSON
//! events and summaries) against what the scenario did to the kernel. Pure: no
//! I/O, so every verdict is unit-tested with hand-made event streams.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kmem_trace::leaks::Cause;
use serde_json::{json, Value};

pub use crate::visibility::{visibility, watch_blind, Vis};

/// Lifecycle points, in the order the matrix shows them.
pub const POINTS: [&str; 7] = [
    "alloc",
    "online",
    "offline",
    "released",
    "free",
    "id_release",
    "kmem_activate",
];

/// Points every memcg passes exactly once, in this order.
const ORDERED: [&str; 5] = ["alloc", "online", "offline", "released", "free"];

/// One kmem-trace JSON event, reduced to what the checks read.
#[derive(Clone, Debug, PartialEq)]
pub struct Ev {
    pub kind: String,
    pub ts_ns: u64,
    pub addr: Option<String>,
    pub id: Option<u64>,
    pub path: Option<String>,
    pub kmem_active: bool,
    pub state: Option<String>,
    pub mem_bytes: Option<u64>,
}

impl Ev {
    /// One line for a failure report: kind, address, ID, path.
    pub fn line(&self) -> String {
        format!(
            "{} {} id={} {}",
            self.kind,
            self.addr.as_deref().unwrap_or("-"),
            self.id.map_or("-".to_string(), |i| i.to_string()),
            self.path.as_deref().unwrap_or("-")
        )
    }

    /// `None` for the summary and anything that is not an event line.
    pub fn from_json(v: &Value) -> Option<Ev> {
        let kind = v["kind"].as_str()?;
        // The summary and SIGUSR1's snapshot are counts, not events.
        if kind == "summary" || kind == "snapshot" || !v.get("ts_ns").is_some_and(Value::is_u64) {
            return None;
        }
        Some(Ev {
            kind: kind.to_string(),
            ts_ns: v["ts_ns"].as_u64().unwrap_or(0),
            addr: v["memcg_addr"].as_str().map(str::to_string),
            id: v["memcg_id"].as_u64(),
            path: v["path"].as_str().map(str::to_string),
            kmem_active: v["kmem_active"].as_bool().unwrap_or(false),
            state: v["state"].as_str().map(str::to_string),
            mem_bytes: v["mem_bytes"].as_u64(),
        })
    }
}

/// The events of one memcg from alloc (or first sight) on, with its path
/// relative to the scenario's parent cgroup once an event carried it.
#[derive(Clone, Debug, Default)]
pub struct Life {
    pub rel: Option<String>,
    pub events: Vec<Ev>,
}

impl Life {
    pub fn count(&self, kind: &str) -> usize {
        self.events.iter().filter(|e| e.kind == kind).count()
    }

    pub fn first(&self, kind: &str) -> Option<&Ev> {
        self.events.iter().find(|e| e.kind == kind)
    }
}

/// Groups events by memcg address; an alloc starts a new life, since the kernel
/// may reuse a freed memcg's memory for a new one, and so does any event but a
/// late `id_release` after a free (a family blind to alloc, where slab reuse
/// gives the next memcg the freed one's address: without this its events were
/// counted as the old memcg's).
pub fn lives(events: &[Ev], parent: &str) -> Vec<Life> {
    let prefix = format!("/{parent}/");
    let mut out: Vec<Life> = Vec::new();
    let mut current: HashMap<&str, usize> = HashMap::new();
    for ev in events {
        let Some(addr) = ev.addr.as_deref() else {
            continue;
        };
        let idx = match current.get(addr) {
            Some(&i)
                if ev.kind != "alloc" && (ev.kind == "id_release" || out[i].count("free") == 0) =>
            {
                i
            }
            _ => {
                out.push(Life::default());
                current.insert(addr, out.len() - 1);
                out.len() - 1
            }
        };
        let life = &mut out[idx];
        if life.rel.is_none() {
            life.rel = ev
                .path
                .as_deref()
                .and_then(|p| p.strip_prefix(&prefix))
                .map(str::to_string);
        }
        life.events.push(ev.clone());
    }
    out
}

/// What the scenario did, and so what kmem-trace must report.
#[derive(Clone, Debug)]
pub struct Expect {
    pub churn: Vec<String>,
    pub tmpfs_pin: String,
    pub cache_pins: Vec<String>,
    /// Kernel-memory accounting is on (no `cgroup.memory=nokmem`).
    pub kmem: bool,
    pub pin_bytes: u64,
    /// Counts in summaries and in the kernel must match exactly (a VM); on a
    /// shared host other memcgs may die meanwhile, so only "at least" holds.
    pub exact: bool,
    /// `uname -r`: the leak table's row for each pin depends on it.
    pub release: String,
}

impl Expect {
    pub fn pins(&self) -> Vec<&str> {
        std::iter::once(self.tmpfs_pin.as_str())
            .chain(self.cache_pins.iter().map(String::as_str))
            .collect()
    }

    /// What the pin is made of.
    pub fn cause_of(&self, pin: &str) -> Cause {
        if pin == self.tmpfs_pin {
            Cause::Tmpfs
        } else {
            Cause::PageCache
        }
    }

    /// Each pin with what the leak table says of its cause on this kernel.
    pub fn pins_with_table(&self) -> Vec<(&str, Option<bool>)> {
        self.pins()
            .into_iter()
            .map(|p| (p, crate::rows::table_says(self.cause_of(p), &self.release)))
            .collect()
    }

    pub fn names(&self) -> Vec<&str> {
        self.churn
            .iter()
            .map(String::as_str)
            .chain(self.pins())
            .collect()
    }
}

/// Everything one family run observed.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    pub family: String,
    pub parent: String,
    pub events: Vec<Ev>,
    /// Points `watch` said it could not see.
    pub watch_blind: Vec<String>,
    /// Summary of the watch that ran through the whole scenario.
    pub summary: Option<Value>,
    /// The whole-run watch's summary so far (SIGUSR1's `"kind":"snapshot"`),
    /// taken while the pins held their memcgs.
    pub snapshot: Option<Value>,
    /// Dying memcgs the kernel counted at the snapshot.
    pub kernel_dying: Option<i64>,
    /// The watch's snapshot taken before the memory toggle ran in it.
    pub pre_toggle: Option<Value>,
    /// Pinned memcgs whose free was seen before their pin was released.
    pub freed_early: Vec<String>,
    /// Scenario steps that failed (timeouts, kmem-trace errors).
    pub errors: Vec<String>,
    /// What the whole-run watch printed on stderr (notes, warnings).
    pub watch_stderr: Vec<String>,
}

/// The verdict of one family run: JSON for the host's matrix.
pub fn judge(obs: &Observation, exp: &Expect, report: &Value) -> Value {
    let all = lives(&obs.events, &obs.parent);
    let names = exp.names();
    let ours: BTreeMap<&str, Vec<&Life>> = names
        .iter()
        .map(|n| {
            let l: Vec<&Life> = all.iter().filter(|l| l.rel.as_deref() == Some(n)).collect();
            (*n, l)
        })
        .collect();
    let mut errors = obs.errors.clone();
    let strangers: BTreeSet<&str> = all
        .iter()
        .filter_map(|l| l.rel.as_deref())
        .filter(|r| !names.contains(r))
        .collect();
    if !strangers.is_empty() {
        errors.push(format!("events for unexpected cgroups: {strangers:?}"));
    }

    let mut points = serde_json::Map::new();
    let mut seen = BTreeSet::new();
    for point in POINTS {
        let r = judge_point(point, obs, exp, report, &ours);
        if r["status"] != "blind" {
            seen.insert(point);
        }
        points.insert(point.to_string(), r);
    }
    let pins = crate::rows::judge(obs, exp, seen.contains("free"));
    let checks = vec![
        check_ids(exp, &ours),
        check_order(&ours),
        check_kmem(exp, &ours, seen.contains("offline")),
        check_pins(obs, exp, &ours, &pins),
        check_zombies(obs, exp, &pins.held),
        check_kernel(obs, exp, &pins.held),
        check_final(obs, exp, &ours, seen.contains("free")),
    ];
    let ok = errors.is_empty()
        && checks.iter().all(|c| c["ok"] == true)
        && points.values().all(|p| p["status"] != "fail");
    json!({
        "family": obs.family,
        "status": if ok { "pass" } else { "fail" },
        "points": points,
        "checks": checks,
        "errors": errors,
        "findings": pins.findings,
        "summary": obs.summary,
        "snapshot": obs.snapshot,
        "watch_stderr": obs.watch_stderr,
    })
}

fn point_result(status: &str, expected: usize, got: usize, detail: String) -> Value {
    json!({"status": status, "expected": expected, "got": got, "detail": detail})
}

fn judge_point(
    point: &str,
    obs: &Observation,
    exp: &Expect,
    report: &Value,
    ours: &BTreeMap<&str, Vec<&Life>>,
) -> Value {
    let per = if point == "kmem_activate" {
        usize::from(exp.kmem)
    } else {
        1
    };
    let expected = per * ours.len();
    let got: usize = ours
        .values()
        .flat_map(|ls| ls.iter())
        .map(|l| l.count(point))
        .sum();
    let watch_blind = obs.watch_blind.iter().any(|p| p == point);
    match visibility(report, &obs.family, point) {
        Vis::Blind(reason) if got == 0 => point_result("blind", 0, 0, reason),
        Vis::Broken(reason) => point_result(
            "fail",
            expected,
            got,
            format!("blind, but the probe table has a hook for this kernel: {reason}"),
        ),
        Vis::Blind(reason) => point_result(
            "fail",
            0,
            got,
            format!("{got} events although probes cannot attach it ({reason})"),
        ),
        Vis::Seen if watch_blind => point_result(
            "fail",
            expected,
            got,
            "probes attach a hook for it but watch did not".into(),
        ),
        Vis::Seen => {
            let bad: Vec<String> = ours
                .iter()
                .filter_map(|(name, ls)| {
                    let n: usize = ls.iter().map(|l| l.count(point)).sum();
                    (n != per).then(|| format!("{name}: {n}"))
                })
                .collect();
            if bad.is_empty() {
                point_result("pass", expected, got, String::new())
            } else {
                let more = if bad.len() > 4 {
                    format!(" (+{} more)", bad.len() - 4)
                } else {
                    String::new()
                };
                let shown = bad.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
                point_result(
                    "fail",
                    expected,
                    got,
                    format!("expected {per} per memcg; {shown}{more}"),
                )
            }
        }
    }
}

fn check(name: &str, ok: bool, detail: String) -> Value {
    json!({"name": name, "ok": ok, "detail": detail})
}

/// Every memcg keeps one non-zero ID through its life; memcgs alive at the same
/// time (the churn) hold distinct IDs.
fn check_ids(exp: &Expect, ours: &BTreeMap<&str, Vec<&Life>>) -> Value {
    let mut problems = Vec::new();
    let mut churn_ids = BTreeMap::new();
    for (name, ls) in ours {
        let ids: BTreeSet<Option<u64>> = ls
            .iter()
            .flat_map(|l| l.events.iter().map(|e| e.id))
            .collect();
        match ids.iter().collect::<Vec<_>>().as_slice() {
            [Some(id)] if *id > 0 && *id <= 65535 => {
                if exp.churn.iter().any(|c| c == name) {
                    if let Some(other) = churn_ids.insert(*id, *name) {
                        problems.push(format!("{name} and {other} share ID {id}"));
                    }
                }
            }
            [] => {}
            _ => problems.push(format!("{name}: IDs {ids:?}")),
        }
    }
    let ids: Vec<String> = ours
        .iter()
        .filter_map(|(n, ls)| {
            let id = ls.first()?.events.first()?.id?;
            Some(format!("{n}={id}"))
        })
        .collect();
    let detail = if problems.is_empty() {
        ids.join(" ")
    } else {
        problems.join("; ")
    };
    check("memcg IDs", problems.is_empty(), detail)
}

/// alloc ≤ online ≤ offline ≤ released ≤ free, and the ID goes after offline
/// started (`mem_cgroup_css_offline()` → `mem_cgroup_id_put()`) but before the
/// memcg is released: pinned memcgs give their ID back while still dying.
fn check_order(ours: &BTreeMap<&str, Vec<&Life>>) -> Value {
    let mut problems = Vec::new();
    for (name, ls) in ours {
        for l in ls {
            let ts: Vec<(&str, u64)> = ORDERED
                .iter()
                .filter_map(|k| l.first(k).map(|e| (*k, e.ts_ns)))
                .collect();
            if let Some(w) = ts.windows(2).find(|w| w[0].1 > w[1].1) {
                problems.push(format!("{name}: {} after {}", w[0].0, w[1].0));
            }
            if let (Some(off), Some(id)) = (l.first("offline"), l.first("id_release")) {
                if id.ts_ns < off.ts_ns {
                    problems.push(format!("{name}: id_release before offline"));
                }
            }
            // 4.6+: the ID goes at offline, not when the (pinned) memcg is released.
            if let (Some(id), Some(rel)) = (l.first("id_release"), l.first("released")) {
                if id.ts_ns > rel.ts_ns {
                    problems.push(format!("{name}: id_release after released"));
                }
            }
        }
    }
    check(
        "event order",
        problems.is_empty(),
        problems.into_iter().take(4).collect::<Vec<_>>().join("; "),
    )
}

/// `kmem_active` at offline says whether kmem accounting was on for the memcg:
/// on by default, off with `cgroup.memory=nokmem`.
fn check_kmem(exp: &Expect, ours: &BTreeMap<&str, Vec<&Life>>, offline_seen: bool) -> Value {
    let want = if exp.kmem { "on" } else { "off" };
    if !offline_seen {
        return check("kmem state", true, format!("{want} (offline not visible)"));
    }
    let wrong: Vec<&str> = ours
        .iter()
        .filter(|(_, ls)| {
            ls.iter()
                .filter_map(|l| l.first("offline"))
                .any(|e| e.kmem_active != exp.kmem)
        })
        .map(|(n, _)| *n)
        .collect();
    let detail = if wrong.is_empty() {
        want.to_string()
    } else {
        format!("expected kmem {want} at offline; wrong for {wrong:?}")
    };
    check("kmem state", wrong.is_empty(), detail)
}

/// Pinned memcgs the kernel keeps go dying at offline holding their pages, and
/// are not freed before their pin is released; the trace agrees with the
/// kernel's count (`rows::judge`). Pins the kernel let go are findings there.
fn check_pins(
    obs: &Observation,
    exp: &Expect,
    ours: &BTreeMap<&str, Vec<&Life>>,
    pins: &crate::rows::Pins,
) -> Value {
    let mut problems: Vec<String> = obs
        .freed_early
        .iter()
        .filter(|n| pins.held.contains(n))
        .map(|n| format!("{n} freed before its pin was released"))
        .chain(pins.problems.iter().cloned())
        .collect();
    let held: Vec<&str> = pins.held.iter().map(String::as_str).collect();
    for pin in held {
        for l in ours.get(pin).into_iter().flatten() {
            if let Some(off) = l.first("offline") {
                if off.state.as_deref() != Some("dying") {
                    problems.push(format!("{pin}: state {:?} at offline", off.state));
                }
                if let Some(b) = off.mem_bytes {
                    if b < exp.pin_bytes {
                        problems.push(format!(
                            "{pin}: {b} bytes charged at offline, expected >= {}",
                            exp.pin_bytes
                        ));
                    }
                }
            }
        }
    }
    let ok = problems.is_empty();
    let detail = if ok {
        format!("{} of {} held", pins.held.len(), exp.pins().len())
    } else {
        problems.into_iter().take(4).collect::<Vec<_>>().join("; ")
    };
    check("pins hold", ok, detail)
}

fn count(v: &Option<Value>, key: &str) -> Option<i64> {
    v.as_ref().and_then(|s| s[key].as_i64())
}

fn matches(exact: bool, got: Option<i64>, want: i64) -> bool {
    match got {
        Some(g) if exact => g == want,
        Some(g) => g >= want,
        None => false,
    }
}

/// kmem-trace's own verdict while the pins hold: every pinned memcg is dying and,
/// past `--zombie-after`, a zombie.
fn check_zombies(obs: &Observation, exp: &Expect, held: &[String]) -> Value {
    let want = held.len() as i64;
    let z = count(&obs.snapshot, "zombies");
    let d = count(&obs.snapshot, "dying");
    let ok = matches(exp.exact, z, want) && matches(exp.exact, d, want);
    check(
        "zombie verdict",
        ok,
        format!("zombies {z:?}, dying {d:?}; expected {want}"),
    )
}

/// The kernel's own count of dying memcgs at the snapshot (`cgroup.stat` or
/// `/proc/cgroups` against the directories).
fn check_kernel(obs: &Observation, exp: &Expect, held: &[String]) -> Value {
    let want = held.len() as i64;
    match obs.kernel_dying {
        Some(n) if exp.exact => check(
            "kernel dying count",
            n == want,
            format!("{n}; expected {want}"),
        ),
        Some(n) => check(
            "kernel dying count",
            true,
            format!("{n} (informational on a shared host; expected {want})"),
        ),
        None => check("kernel dying count", !exp.exact, "not read".into()),
    }
}

/// After the pins are released every memcg is freed, nothing was dropped and
/// every record decoded.
fn check_final(
    obs: &Observation,
    exp: &Expect,
    ours: &BTreeMap<&str, Vec<&Life>>,
    free_seen: bool,
) -> Value {
    let mut problems = Vec::new();
    // Where nothing else runs, every memcg is seen from alloc to free, and an ID
    // is only handed out again after kmem-trace saw (or inferred) its release.
    let keys: &[&str] = if exp.exact {
        &[
            "drops",
            "bad_records",
            "untracked",
            "missed_frees",
            "ids_reused",
        ]
    } else {
        &["drops", "bad_records"]
    };
    // A memory toggle run in the watch after the scenario (VM, v2) makes
    // memcgs some families cannot see whole: the scenario's counters are its
    // snapshot from before the toggle; nothing may be dropped or undecoded
    // in the whole run either.
    let mut zero = |s: Option<&Value>, keys: &[&str]| match s {
        Some(s) => {
            for key in keys {
                if s[key].as_u64() != Some(0) {
                    problems.push(format!("{key} {}", s[key]));
                }
            }
        }
        None => problems.push("no summary from watch".into()),
    };
    zero(obs.pre_toggle.as_ref().or(obs.summary.as_ref()), keys);
    if obs.pre_toggle.is_some() {
        zero(obs.summary.as_ref(), &["drops", "bad_records"]);
    }
    if free_seen {
        let alive: Vec<&str> = ours
            .iter()
            .filter(|(_, ls)| {
                ls.last()
                    .and_then(|l| l.events.last())
                    .is_none_or(|e| e.state.as_deref() != Some("freed"))
            })
            .map(|(n, _)| *n)
            .collect();
        if !alive.is_empty() {
            problems.push(format!("not freed at the end: {alive:?}"));
        }
    }
    check(
        "clean end",
        problems.is_empty(),
        problems.into_iter().take(4).collect::<Vec<_>>().join("; "),
    )
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
