//! Probe-table selection against simulated kernels: this machine (no kprobes),
//! Debian 6.1 (no memcg_online_kmem) and an old kernel.

use std::collections::HashSet;

use super::*;

struct Fake {
    version: KernelVersion,
    /// Rust's architecture name; `x86_64` unless a test says otherwise.
    arch: &'static str,
    kprobes: bool,
    symbols: HashSet<&'static str>,
    /// BTF parameter count of every function (None: unknown).
    params: Option<u32>,
}

impl KernelFacts for Fake {
    fn version(&self) -> Option<KernelVersion> {
        Some(self.version)
    }
    fn family_usable(&self, family: Family) -> Result<(), String> {
        if family == Family::Kprobe && !self.kprobes {
            return Err("no kprobes".into());
        }
        Ok(())
    }
    fn has_symbol(&self, _attach: Attach, symbol: &str) -> bool {
        self.symbols.contains(symbol)
    }
    fn has_kallsyms_addr(&self, symbol: &str) -> bool {
        self.symbols.contains(symbol)
    }
    fn fexit_params(&self, _symbol: &str) -> Option<u32> {
        self.params
    }
    fn arch(&self) -> &str {
        self.arch
    }
}

fn debian_61() -> Fake {
    Fake {
        version: KernelVersion(6, 1, 0),
        arch: "x86_64",
        kprobes: true,
        params: None,
        symbols: [
            "mem_cgroup_css_alloc",
            "mem_cgroup_css_online",
            "mem_cgroup_css_offline",
            "mem_cgroup_css_released",
            "mem_cgroup_css_free",
            "mem_cgroup_id_put_many",
            "memcg_offline_kmem.part.0",
            "cgroup_mkdir",
            "cgroup_rmdir",
            "cgroup_release",
            "workqueue_execute_start",
            "css_release_work_fn",
            "css_free_rwork_fn",
        ]
        .into_iter()
        .collect(),
    }
}

/// The first row that passes the static checks, as `program@symbol`.
fn first(point: Point, mode: HookMode, facts: &Fake) -> Option<String> {
    candidates(point, mode).into_iter().find_map(|r| {
        check(r, facts, None)
            .ok()
            .map(|s| format!("{}@{s}", r.program))
    })
}

#[test]
fn every_point_has_rows_and_auto_prefers_fentry() {
    for p in Point::ALL {
        let rows = candidates(p, HookMode::Auto);
        assert!(!rows.is_empty(), "{p:?}");
        assert!(rows.windows(2).all(|w| w[0].family <= w[1].family));
    }
    assert_eq!(
        candidates(Point::Offline, HookMode::Auto)[0].family,
        Family::Fentry
    );
}

#[test]
fn tracepoint_family_cannot_see_id_release() {
    assert!(candidates(Point::IdRelease, HookMode::Tracepoint).is_empty());
    // Workqueue (tp_btf, raw, classic), then cgroup_release (tp_btf, raw).
    assert_eq!(candidates(Point::Free, HookMode::Tracepoint).len(), 5);
}

#[test]
fn kmem_activation_is_inferred_where_the_function_is_inlined() {
    let k = debian_61();
    assert_eq!(
        first(Point::KmemActivate, HookMode::Fentry, &k).as_deref(),
        Some("kt_fexit_css_online@mem_cgroup_css_online")
    );
    let row = candidates(Point::KmemActivate, HookMode::Kprobe)
        .into_iter()
        .find(|r| check(r, &k, None).is_ok())
        .unwrap();
    assert!(row.inferred);
}

#[test]
fn no_kprobes_falls_back_to_tracepoints() {
    let mut k = debian_61();
    k.kprobes = false;
    k.version = KernelVersion(6, 18, 0);
    assert_eq!(first(Point::Offline, HookMode::Kprobe, &k), None);
    assert_eq!(
        first(Point::Offline, HookMode::Tracepoint, &k).as_deref(),
        Some("kt_tp_cgroup_rmdir@cgroup_rmdir")
    );
    assert_eq!(
        first(Point::Free, HookMode::Tracepoint, &k).as_deref(),
        Some("kt_tp_workqueue_start@workqueue_execute_start")
    );
    k.symbols.remove("css_free_rwork_fn");
    assert_eq!(
        first(Point::Free, HookMode::Tracepoint, &k).as_deref(),
        Some("kt_tp_cgroup_release@cgroup_release")
    );
}

#[test]
fn fentry_on_arm64_needs_6_4() {
    // 5.10 arm64 has BTF but no BPF trampoline, 6.1 arm64 trampolines but no
    // ftrace direct calls (ENOTSUPP in the VM matrix): kprobes serve, and the
    // fentry rows are "meant for" later kernels (so a blind fentry cell is a pass).
    let mut k = debian_61();
    k.arch = "aarch64";
    k.version = KernelVersion(5, 10, 0);
    let fexit = candidates(Point::Alloc, HookMode::Fentry)[0];
    assert_eq!(
        check(fexit, &k, None).unwrap_err(),
        "meant for kernels 6.4+ on aarch64, this is 5.10"
    );
    assert_eq!(first(Point::Offline, HookMode::Fentry, &k), None);
    k.version = KernelVersion(6, 1, 0);
    assert_eq!(
        check(fexit, &k, None).unwrap_err(),
        "meant for kernels 6.4+ on aarch64, this is 6.1"
    );
    assert_eq!(first(Point::Offline, HookMode::Fentry, &k), None);
    assert_eq!(
        first(Point::Offline, HookMode::Kprobe, &k).as_deref(),
        Some("kt_kprobe_css_offline@mem_cgroup_css_offline")
    );
    k.version = KernelVersion(6, 12, 0);
    assert_eq!(
        first(Point::Offline, HookMode::Fentry, &k).as_deref(),
        Some("kt_fentry_css_offline@mem_cgroup_css_offline")
    );
    // x86_64 keeps 5.5; tp_btf is 5.5 on both.
    assert_eq!(fexit.since_on("x86_64"), KernelVersion(5, 5, 0));
    let tp = candidates(Point::Offline, HookMode::Tracepoint)[0];
    assert_eq!(tp.since_on("aarch64"), tp.since);
}

#[test]
fn reasons_say_what_is_wrong() {
    let mut k = debian_61();
    let alloc = candidates(Point::Alloc, HookMode::Kprobe)[0];
    k.symbols.remove("mem_cgroup_css_alloc");
    assert_eq!(
        check(alloc, &k, None).unwrap_err(),
        "none of mem_cgroup_css_alloc exists in /proc/kallsyms"
    );
    k.version = KernelVersion(3, 10, 0);
    let fexit = candidates(Point::Alloc, HookMode::Fentry)[0];
    assert_eq!(
        check(fexit, &k, None).unwrap_err(),
        "meant for kernels 5.5+, this is 3.10"
    );
    let k = debian_61();
    let offline = candidates(Point::Offline, HookMode::Kprobe)[0];
    assert_eq!(
        check(offline, &k, Some("no_such_function")).unwrap_err(),
        "forced symbol no_such_function not found for kprobe"
    );
    assert_eq!(
        check(offline, &k, Some("memcg_offline_kmem.part.0")).unwrap(),
        "memcg_offline_kmem.part.0"
    );
}

#[test]
fn no_row_claims_a_kernel_below_the_floor() {
    // No object loads below 4.18 (the old-kernel object's audited floor):
    // 3.10 and 4.x kernels before it get doctor, not a hook family.
    for r in TABLE {
        assert!(r.since >= FLOOR, "{} claims {}", r.program, r.since);
    }
    let mut k = debian_61();
    k.symbols.insert("memcg_activate_kmem");
    for version in [
        KernelVersion(3, 10, 0),
        KernelVersion(4, 4, 0),
        KernelVersion(4, 17, 0),
    ] {
        k.version = version;
        for point in Point::ALL {
            assert_eq!(
                first(point, HookMode::Auto, &k),
                None,
                "{point:?} on {version}"
            );
        }
    }
    // 4.19 without memcg_online_kmem in kallsyms (inlined): inferred at online.
    k.version = KernelVersion(4, 19, 0);
    assert_eq!(
        first(Point::KmemActivate, HookMode::Kprobe, &k).as_deref(),
        Some("kt_kretprobe_css_online@mem_cgroup_css_online")
    );
}

#[test]
fn entry_probes_name_real_programs() {
    for r in TABLE {
        assert!(!r.program.is_empty());
        if let Some(e) = r.entry {
            assert!(e.starts_with("kt_kprobe_"), "{}: entry {e:?}", r.program);
            assert_eq!(r.attach, Attach::Kretprobe, "{}", r.program);
        }
    }
}

#[test]
fn every_symbol_has_a_seen_entry_and_only_those() {
    let named: HashSet<&str> = TABLE
        .iter()
        .flat_map(|r| r.symbols.iter().chain(r.needs_kallsyms))
        // A classic tracepoint's `category/name` is the same tracepoint.
        .map(|s| tracepoint_name(s))
        .collect();
    let seen: HashSet<&str> = SEEN.iter().map(|s| s.symbol).collect();
    assert_eq!(seen.len(), SEEN.len(), "a symbol listed twice in SEEN");
    let mut missing: Vec<&&str> = named.difference(&seen).collect();
    missing.sort();
    assert!(
        missing.is_empty(),
        "table symbols without a SEEN entry: {missing:?}"
    );
    let mut stale: Vec<&&str> = seen.difference(&named).collect();
    stale.sort();
    assert!(
        stale.is_empty(),
        "SEEN entries the table does not name: {stale:?}"
    );
    for s in SEEN {
        if let Some((a, b)) = s.range {
            assert!(a <= b, "{}", s.symbol);
        }
    }
}

#[test]
fn offline_falls_back_to_the_kmem_offline_clone() {
    let mut k = debian_61();
    k.symbols.remove("mem_cgroup_css_offline");
    assert_eq!(
        first(Point::Offline, HookMode::Kprobe, &k).as_deref(),
        Some("kt_kprobe_css_offline@memcg_offline_kmem.part.0")
    );
}

#[test]
fn an_fexit_function_with_another_prototype_is_refused_not_misread() {
    let mut k = debian_61();
    k.params = Some(2);
    let alloc = candidates(Point::Alloc, HookMode::Fentry);
    let err = check(alloc[0], &k, None).unwrap_err();
    assert!(err.contains("takes 2 parameters"), "{err}");
    // fentry rows read arguments only: unaffected.
    let offline = candidates(Point::Offline, HookMode::Fentry);
    assert!(check(offline[0], &k, None).is_ok());
    k.params = Some(1);
    assert!(check(alloc[0], &k, None).is_ok());
}

#[test]
fn only_the_tracepoint_family_is_blind_to_memory_toggles() {
    // A +memory toggle in cgroup.subtree_control runs no cgroup_mkdir/rmdir:
    // the tracepoint family misses alloc, online and offline of such memcgs
    // and still sees their release and free (the css work items).
    for r in TABLE {
        let blind = !r.sees_toggles();
        let want = r.family == Family::Tracepoint
            && matches!(
                r.point,
                Point::Alloc | Point::Online | Point::Offline | Point::KmemActivate
            );
        assert_eq!(blind, want, "{r:?}");
    }
    let free_tp = candidates(Point::Free, HookMode::Tracepoint)[0];
    assert!(free_tp.sees_toggles(), "{free_tp:?}");
}
