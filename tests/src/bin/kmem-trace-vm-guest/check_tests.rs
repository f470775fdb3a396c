//! Verdicts on hand-made event streams: a clean run passes, a missing hook, a
//! wrong ID, an early free or a wrong kmem state fail, a blind point is blind.

use serde_json::{json, Value};

use super::*;
use crate::compare::compare;

const P: &str = "kmem-trace-test-vm-kprobe-1-2";

fn expect(kmem: bool) -> Expect {
    Expect {
        churn: vec!["churn-0".into(), "churn-1".into()],
        tmpfs_pin: "tmpfs-pin".into(),
        cache_pins: vec!["cache-pin-0".into()],
        kmem,
        pin_bytes: 1 << 20,
        exact: true,
        release: "6.1.0-57-amd64".into(),
    }
}

/// A probes report where `family` attaches every point but those in `blind`.
fn report(families: &[&str], blind: &[(&str, &str)]) -> Value {
    let points: Vec<Value> = POINTS
        .iter()
        .map(|p| {
            let tried: Vec<Value> = families
                .iter()
                .filter(|f| !(**f == "tracepoint" && *p == "id_release"))
                .map(|f| {
                    if blind.contains(&(f, p)) {
                        json!({"family": f, "attach": "kprobe", "symbol": "x", "candidates": ["x"],
                               "outcome": "rejected", "reason": "none of x exists"})
                    } else {
                        json!({"family": f, "attach": "kprobe", "symbol": "x", "candidates": ["x"],
                               "outcome": "works"})
                    }
                })
                .collect();
            json!({"point": p, "tried": tried})
        })
        .collect();
    json!({"points": points})
}

fn ev(kind: &str, ts: u64, addr: u64, id: u64, name: &str, kmem: bool) -> Ev {
    Ev {
        kind: kind.into(),
        ts_ns: ts,
        addr: Some(format!("{addr:#x}")),
        id: Some(id),
        path: (kind != "alloc").then(|| format!("/{P}/{name}")),
        kmem_active: kmem,
        state: Some(
            match kind {
                "alloc" | "online" | "kmem_activate" => "live",
                "free" => "freed",
                _ => "dying",
            }
            .into(),
        ),
        mem_bytes: (kind == "offline").then_some(if name.contains("pin") { 2 << 20 } else { 0 }),
    }
}

/// The full life of one memcg as the kprobe family reports it.
fn life(name: &str, addr: u64, id: u64, t0: u64, kmem: bool, id_release: bool) -> Vec<Ev> {
    let mut v = vec![
        ev("alloc", t0, addr, id, name, false),
        ev("online", t0 + 1, addr, id, name, kmem),
    ];
    if kmem {
        v.push(ev("kmem_activate", t0 + 2, addr, id, name, kmem));
    }
    v.push(ev("offline", t0 + 3, addr, id, name, kmem));
    if id_release {
        v.push(ev("id_release", t0 + 4, addr, id, name, kmem));
    }
    v.push(ev("released", t0 + 5, addr, id, name, kmem));
    v.push(ev("free", t0 + 6, addr, id, name, kmem));
    v
}

fn observation(family: &str, kmem: bool, id_release: bool) -> Observation {
    let mut events = Vec::new();
    for (i, n) in ["churn-0", "churn-1", "tmpfs-pin", "cache-pin-0"]
        .iter()
        .enumerate()
    {
        // The same address twice: the kernel reused churn-0's memory.
        let addr = if i == 2 {
            0x1000
        } else {
            0x1000 + i as u64 * 0x100
        };
        events.extend(life(
            n,
            addr,
            3 + i as u64 % 2,
            i as u64 * 10,
            kmem,
            id_release,
        ));
    }
    // churn-1 and cache-pin-0 share ID 4 at different times: fine.
    Observation {
        family: family.into(),
        parent: P.into(),
        events,
        watch_blind: vec![],
        summary: Some(json!({"kind": "summary", "drops": 0, "bad_records": 0,
                             "untracked": 0, "missed_frees": 0, "ids_reused": 0})),
        snapshot: Some(json!({"kind": "snapshot", "zombies": 2, "dying": 2})),
        pre_toggle: None,
        kernel_dying: Some(2),
        freed_early: vec![],
        errors: vec![],
        watch_stderr: vec![],
    }
}

fn failed_checks(v: &Value) -> Vec<String> {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] != true)
        .map(|c| format!("{}: {}", c["name"], c["detail"]))
        .collect()
}

#[test]
fn a_clean_run_passes_and_counts_every_memcg() {
    let r = report(&["kprobe"], &[]);
    let v = judge(&observation("kprobe", true, true), &expect(true), &r);
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(v["points"]["alloc"]["got"], 4);
    assert_eq!(v["points"]["kmem_activate"]["expected"], 4);
    assert!(failed_checks(&v).is_empty());
}

#[test]
fn nokmem_expects_no_activation_and_kmem_off() {
    let r = report(&["kprobe"], &[]);
    let v = judge(&observation("kprobe", false, true), &expect(false), &r);
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(v["points"]["kmem_activate"]["expected"], 0);
    // kmem on where nokmem was asked for: the kmem point and state both fail.
    let v = judge(&observation("kprobe", true, true), &expect(false), &r);
    assert_eq!(v["status"], "fail");
    assert_eq!(v["points"]["kmem_activate"]["status"], "fail");
    assert_eq!(failed_checks(&v).len(), 1, "{:?}", failed_checks(&v));
}

#[test]
fn a_point_the_family_cannot_see_is_blind_not_passed() {
    let r = report(&["tracepoint"], &[]);
    let v = judge(&observation("tracepoint", true, false), &expect(true), &r);
    assert_eq!(v["status"], "pass", "{v:#}");
    assert_eq!(v["points"]["id_release"]["status"], "blind");
    assert_eq!(
        v["points"]["id_release"]["detail"],
        "no tracepoint hook can see id_release"
    );
}

#[test]
fn a_probe_that_watch_did_not_attach_fails_the_cell() {
    let r = report(&["kprobe"], &[]);
    let mut o = observation("kprobe", true, true);
    o.watch_blind = vec!["offline".into()];
    o.events.retain(|e| e.kind != "offline");
    o.snapshot = Some(json!({"zombies": 0, "dying": 0}));
    let v = judge(&o, &expect(true), &r);
    assert_eq!(v["status"], "fail");
    assert_eq!(v["points"]["offline"]["status"], "fail");
    assert!(failed_checks(&v).iter().any(|c| c.contains("zombie")));
}

#[test]
fn missing_events_wrong_ids_and_early_frees_fail() {
    let r = report(&["kprobe"], &[]);
    let mut o = observation("kprobe", true, true);
    let i = o
        .events
        .iter()
        .position(|e| e.kind == "released" && e.path.as_deref().unwrap().ends_with("churn-1"))
        .unwrap();
    o.events.remove(i);
    let v = judge(&o, &expect(true), &r);
    assert_eq!(v["points"]["released"]["status"], "fail");
    assert_eq!(
        v["points"]["released"]["detail"],
        "expected 1 per memcg; churn-1: 0"
    );

    let mut o = observation("kprobe", true, true);
    o.events[3].id = Some(99);
    o.freed_early = vec!["tmpfs-pin".into()];
    let v = judge(&o, &expect(true), &r);
    let failed = failed_checks(&v);
    assert!(failed.iter().any(|c| c.contains("memcg IDs")), "{failed:?}");
    assert!(failed.iter().any(|c| c.contains("pins hold")), "{failed:?}");
}

#[test]
fn host_counts_are_at_least_and_kernel_count_informational() {
    let r = report(&["tracepoint"], &[]);
    let mut o = observation("tracepoint", true, false);
    o.snapshot = Some(json!({"zombies": 5, "dying": 6}));
    o.kernel_dying = Some(-3);
    let mut e = expect(true);
    assert_eq!(judge(&o, &e, &r)["status"], "fail");
    e.exact = false;
    let v = judge(&o, &e, &r);
    assert_eq!(v["status"], "pass", "{v:#}");
}

#[test]
fn lives_split_on_alloc_and_take_the_path_from_later_events() {
    let o = observation("kprobe", true, true);
    let ls = lives(&o.events, P);
    assert_eq!(ls.len(), 4);
    assert_eq!(ls[0].rel.as_deref(), Some("churn-0"));
    assert_eq!(ls[2].rel.as_deref(), Some("tmpfs-pin"));
    assert_eq!(ls[2].count("free"), 1);
}

#[test]
fn without_alloc_a_free_ends_a_life_at_a_reused_address() {
    // A family blind to alloc: the second memcg reuses the first one's address.
    let evs = vec![
        ev("offline", 1, 0xa0, 5, "churn-0", false),
        ev("free", 2, 0xa0, 5, "churn-0", false),
        ev("id_release", 3, 0xa0, 5, "churn-0", false),
        ev("offline", 4, 0xa0, 6, "tmpfs-pin", false),
        ev("free", 5, 0xa0, 6, "tmpfs-pin", false),
    ];
    let ls = lives(&evs, P);
    assert_eq!(
        ls.len(),
        2,
        "{:?}",
        ls.iter().map(|l| &l.rel).collect::<Vec<_>>()
    );
    assert_eq!(ls[0].rel.as_deref(), Some("churn-0"));
    assert_eq!(ls[0].count("id_release"), 1);
    assert_eq!(ls[1].rel.as_deref(), Some("tmpfs-pin"));
    assert_eq!(ls[1].count("offline"), 1);
}

#[test]
fn watch_blind_points_parse_from_the_start_line() {
    let err = vec![
        "kmem-trace: watching with kprobe hooks (not visible: alloc, offline); Ctrl-C stops"
            .to_string(),
    ];
    assert_eq!(watch_blind(&err), vec!["alloc", "offline"]);
    assert!(
        watch_blind(&["kmem-trace: watching with fentry hooks; Ctrl-C stops".into()]).is_empty()
    );
}

#[test]
fn families_must_agree_on_shared_points() {
    let r = report(&["fentry", "kprobe", "tracepoint"], &[]);
    let e = expect(true);
    let a = observation("fentry", true, true);
    let b = observation("kprobe", true, true);
    let c = observation("tracepoint", true, false);
    let cmp = compare(&[(&a, &r), (&b, &r), (&c, &r)], &e);
    assert!(cmp.iter().all(|p| p["agree"] != false), "{cmp:#?}");
    let idr = cmp.iter().find(|p| p["point"] == "id_release").unwrap();
    assert_eq!(idr["families"], json!(["fentry", "kprobe"]));

    let mut b2 = b.clone();
    for e in b2.events.iter_mut().filter(|e| e.kind == "offline") {
        e.id = Some(7);
    }
    let cmp = compare(&[(&a, &r), (&b2, &r), (&c, &r)], &e);
    let off = cmp.iter().find(|p| p["point"] == "offline").unwrap();
    assert_eq!(off["agree"], false);
    assert!(off["detail"]
        .as_str()
        .unwrap()
        .starts_with("churn-0: fentry"));
}

#[test]
fn the_perf_row_is_judged_by_the_perf_report_and_must_agree() {
    // The perf transport's report: fentry rows rejected as not in the object,
    // kprobe hooks chosen; id_release only a kprobe sees.
    let mut pr = report(&["fentry", "kprobe"], &[]);
    for p in pr["points"].as_array_mut().unwrap() {
        p["tried"][0] = json!({"family": "fentry", "attach": "fexit", "symbol": null,
            "candidates": ["x"], "outcome": "rejected",
            "reason": "not in the old-kernel (perf) object: needs kernel BTF"});
    }
    assert_eq!(visibility(&pr, "perf", "free"), Vis::Seen);
    // Only rows the object lacks, or a kernel without kprobes: blind.
    pr["points"][5]["tried"][1] = json!({"family": "kprobe", "attach": "kprobe",
        "symbol": null, "candidates": ["x"], "outcome": "rejected",
        "reason": "the kernel has no kprobe support (/sys/bus/event_source/devices/kprobe is missing: CONFIG_KPROBES is off)"});
    assert!(matches!(
        visibility(&pr, "perf", "id_release"),
        Vis::Blind(_)
    ));
    // perf-tp keeps to the object's tracepoint programs: none in this report.
    assert!(matches!(visibility(&pr, "perf-tp", "free"), Vis::Blind(_)));
    let tp = report(&["kprobe", "tracepoint"], &[]);
    assert_eq!(visibility(&tp, "perf-tp", "free"), Vis::Seen);
    assert!(matches!(
        visibility(&tp, "perf-tp", "id_release"),
        Vis::Blind(_)
    ));
    let r = report(&["fentry", "kprobe", "tracepoint"], &[]);
    let e = expect(true);
    let a = observation("fentry", true, true);
    let mut p = observation("perf", true, true);
    let cmp = compare(&[(&a, &r), (&p, &pr)], &e);
    let off = cmp.iter().find(|c| c["point"] == "offline").unwrap();
    assert_eq!(off["families"], json!(["fentry", "perf"]));
    assert_eq!(off["agree"], true);
    let idr = cmp.iter().find(|c| c["point"] == "id_release").unwrap();
    assert_eq!(
        idr["families"],
        json!(["fentry"]),
        "blind in the perf report"
    );
    for e in p.events.iter_mut().filter(|e| e.kind == "free") {
        e.id = Some(9);
    }
    let cmp = compare(&[(&a, &r), (&p, &pr)], &e);
    let free = cmp.iter().find(|c| c["point"] == "free").unwrap();
    assert_eq!(free["agree"], false, "{free:#}");
}

#[test]
fn visibility_reads_outcomes_and_reasons() {
    let r = report(&["fentry", "kprobe"], &[("kprobe", "free")]);
    assert_eq!(visibility(&r, "fentry", "free"), Vis::Seen);
    // A hook meant for this kernel that did not attach is broken, not blind.
    assert_eq!(
        visibility(&r, "kprobe", "free"),
        Vis::Broken("kprobe x: none of x exists".into())
    );
    assert_eq!(
        visibility(&r, "tracepoint", "free"),
        Vis::Blind("no tracepoint hook can see free".into())
    );
    // Only rows meant for other kernels: blind (7.x has no ID put to hook).
    let mut r = report(&["kprobe"], &[]);
    r["points"][5]["tried"][0] = json!({"family": "kprobe", "attach": "kprobe",
        "symbol": null, "candidates": ["mem_cgroup_id_put_many"], "outcome": "rejected",
        "reason": "meant for kernels 4.7 to before 7.2, this is 7.3.4"});
    assert!(matches!(
        visibility(&r, "kprobe", "id_release"),
        Vis::Blind(_)
    ));
}

#[test]
fn a_blind_point_with_a_hook_meant_for_the_kernel_fails() {
    // A verifier regression: every hook for offline fails to load.
    let r = report(&["kprobe"], &[("kprobe", "offline")]);
    let mut o = observation("kprobe", true, true);
    o.events.retain(|e| e.kind != "offline");
    let v = judge(&o, &expect(true), &r);
    assert_eq!(v["status"], "fail");
    assert_eq!(v["points"]["offline"]["status"], "fail", "{v:#}");
}

#[test]
fn untracked_memcgs_fail_a_vm_but_not_the_host() {
    let r = report(&["kprobe"], &[]);
    let mut o = observation("kprobe", true, true);
    o.summary = Some(json!({"drops": 0, "bad_records": 0, "untracked": 20,
                            "missed_frees": 0, "ids_reused": 0}));
    let v = judge(&o, &expect(true), &r);
    assert!(failed_checks(&v)[0].contains("untracked 20"), "{v:#}");
    let mut e = expect(true);
    e.exact = false;
    o.snapshot = Some(json!({"zombies": 2, "dying": 2}));
    assert_eq!(judge(&o, &e, &r)["status"], "pass");
}

#[test]
fn the_id_must_go_at_offline_not_at_release() {
    let r = report(&["kprobe"], &[]);
    let mut o = observation("kprobe", true, true);
    for e in o.events.iter_mut().filter(|e| e.kind == "id_release") {
        e.ts_ns += 100;
    }
    let v = judge(&o, &expect(true), &r);
    assert!(
        failed_checks(&v)
            .iter()
            .any(|c| c.contains("id_release after released")),
        "{v:#}"
    );
}

#[test]
fn summary_and_snapshot_records_are_not_events() {
    let counts = json!({"zombies": 4, "dying": 4, "drops": 0, "elapsed_s": 1.5});
    for kind in ["summary", "snapshot"] {
        let mut v = counts.clone();
        v["kind"] = json!(kind);
        assert!(Ev::from_json(&v).is_none(), "{kind}");
        // Even a record that carried a timestamp is not an event.
        v["ts_ns"] = json!(7);
        assert!(Ev::from_json(&v).is_none(), "{kind} with ts_ns");
    }
    let e = json!({"kind": "free", "ts_ns": 7, "memcg_addr": "0x1", "path": "/p/x"});
    assert!(Ev::from_json(&e).is_some());
}

#[test]
fn a_toggle_in_the_watch_is_judged_apart_from_the_clean_end() {
    let r = report(&["tracepoint"], &[]);
    let clean = json!({"kind": "snapshot", "drops": 0, "bad_records": 0,
                       "untracked": 0, "missed_frees": 0, "ids_reused": 0});
    let mut o = observation("tracepoint", true, true);
    // The toggled memcg's free without its alloc: untracked in the whole
    // run, not in the scenario's counters from before the toggle.
    o.summary.as_mut().unwrap()["untracked"] = json!(1);
    assert!(!failed_checks(&judge(&o, &expect(true), &r)).is_empty());
    o.pre_toggle = Some(clean.clone());
    assert!(failed_checks(&judge(&o, &expect(true), &r)).is_empty());
    // A drop anywhere in the run still fails.
    o.summary.as_mut().unwrap()["drops"] = json!(3);
    let failed = failed_checks(&judge(&o, &expect(true), &r));
    assert!(failed.iter().any(|f| f.contains("drops 3")), "{failed:?}");
    // So does one before the toggle.
    o.summary.as_mut().unwrap()["drops"] = json!(0);
    o.pre_toggle.as_mut().unwrap()["missed_frees"] = json!(1);
    assert!(!failed_checks(&judge(&o, &expect(true), &r)).is_empty());
}
