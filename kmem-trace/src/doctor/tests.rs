//! Doctor rules on the fixture trees (`tests/fixtures/doctor/`) and on
//! hand-made variations of them.

use std::path::PathBuf;

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/doctor")
        .join(name)
}

fn report(name: &str) -> Report {
    run(&DoctorConfig {
        host_root: fixture(name),
        id_limit: 65535,
        try_drop_caches: false,
        try_mkdir: false,
        verify_bpf: false,
        history_db: None,
        census: None,
        btf: None,
    })
    .unwrap()
}

fn find<'a>(r: &'a Report, id: &str) -> &'a Finding {
    r.findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no finding {id}: {:#?}", r.findings))
}

#[test]
fn centos7_with_kmem_under_kubepods_is_critical() {
    let r = report("centos7-kmem-leak");
    assert_eq!(r.exit_code, 1);
    assert_eq!(r.status, Severity::Critical);
    let leak = find(&r, "kmem-leak");
    assert_eq!(leak.severity, Severity::Critical);
    assert_eq!(r.findings[0].id, "kmem-leak", "the leak comes first");
    for fix in [
        findings::FIX_NOKMEM,
        findings::FIX_RUNC,
        findings::FIX_REBOOT,
    ] {
        assert!(leak.remediation.iter().any(|r| r == fix), "{fix}");
    }
    let f = &r.facts;
    assert_eq!(f.el7_build, Some(957));
    assert_eq!(f.kubelet.driver, Some(host::Driver::Cgroupfs));
    assert_eq!(f.kubelet.pods, 4);
    let kmem = f.kmem.as_ref().unwrap();
    assert_eq!(kmem.active, Some(true));
    assert!(kmem.slabinfo_readable);
    assert_eq!(f.dying.unwrap().0, 61_234 - 20);
    assert_eq!(
        f.ids_in_use,
        Some(61_234),
        "before 4.6 every memcg holds an ID"
    );
    assert_eq!(find(&r, "memcg-ids").severity, Severity::Critical);
    assert_eq!(find(&r, "ids-not-recycled").severity, Severity::Warning);
    assert_eq!(find(&r, "slab-pins").severity, Severity::Warning);
    // 61,214 zombies in 20 days: ~127/h; 4,301 IDs left: ~34 h.
    let fc = r.forecast.unwrap();
    assert_eq!(fc.basis, crate::forecast::Basis::SinceBoot);
    let h = fc.hours_to_exhaustion.unwrap();
    assert!((30.0..40.0).contains(&h), "{h}");
    assert_eq!(r.facts.caps.hook_family, "none");
    assert!(!r.facts.shmem_known);
    let npd = render::npd_line(&r);
    assert!(
        npd.starts_with("KmemLeak: 3.10 kmem accounting leak"),
        "{npd}"
    );
}

#[test]
fn the_same_node_with_nokmem_or_a_fixed_kernel_is_not_a_kmem_leak() {
    let base = report("centos7-kmem-leak");
    let mut f = base.facts.clone();
    f.nokmem = true;
    if let Some(k) = f.kmem.as_mut() {
        k.active = Some(false);
    }
    let fs = findings::judge(&f, None, None, 65535);
    assert_eq!(
        fs.iter().find(|x| x.id == "kmem-leak").unwrap().severity,
        Severity::Ok
    );
    // Still critical: the ID space is 93 % used (leaked before the fix).
    assert_eq!(findings::exit_code(&fs), 1);

    let mut f = base.facts.clone();
    f.el7_build = Some(1160);
    let fs = findings::judge(&f, None, None, 65535);
    assert_eq!(
        fs.iter().find(|x| x.id == "kmem-leak").unwrap().severity,
        Severity::Warning
    );
}

#[test]
fn a_healthy_modern_node_exits_zero() {
    let r = report("debian12-v2-healthy");
    assert_eq!(r.exit_code, 0, "{:#?}", r.findings);
    assert!(r.status <= Severity::Warning);
    assert!(
        r.findings.iter().all(|f| f.severity < Severity::Warning),
        "{:#?}",
        r.findings
    );
    let f = &r.facts;
    assert_eq!(f.kubelet.driver, Some(host::Driver::Systemd));
    assert_eq!(f.kubelet.pods, 4);
    assert!(f.kmem.is_none(), "kmem files are v1 only");
    assert_eq!(
        f.dying.unwrap(),
        (2, crate::census::DyingBasis::DyingSubsysMemory)
    );
    assert_eq!(f.ids_in_use, Some(22));
    assert_eq!(find(&r, "kernel").severity, Severity::Ok);
    assert!(r.findings.iter().all(|f| f.id != "kmem-leak"));
    assert!(r.facts.shmem_known);
    assert!(render::npd_line(&r).starts_with("OK: 2 dying memcgs"));
}

#[test]
fn missing_files_are_unknown_not_errors() {
    let dir = std::env::temp_dir().join(format!("kmem-trace-doctor-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let r = run(&DoctorConfig {
        host_root: dir.clone(),
        id_limit: 65535,
        try_drop_caches: false,
        try_mkdir: false,
        verify_bpf: false,
        history_db: None,
        census: None,
        btf: None,
    })
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(r.exit_code, 2, "{:#?}", r.findings);
    assert!(render::npd_line(&r).starts_with("Unknown"));
    assert!(!r.facts.unreadable.is_empty());
}

#[test]
fn the_id_limit_is_checked_and_scales_the_verdict() {
    let bad = run(&DoctorConfig {
        host_root: fixture("debian12-v2-healthy"),
        id_limit: 0,
        try_drop_caches: false,
        try_mkdir: false,
        verify_bpf: false,
        history_db: None,
        census: None,
        btf: None,
    });
    assert!(matches!(bad, Err(DoctorError::IdLimit { got: 0, .. })));
    let r = run(&DoctorConfig {
        host_root: fixture("debian12-v2-healthy"),
        id_limit: 24,
        try_drop_caches: false,
        try_mkdir: false,
        verify_bpf: false,
        history_db: None,
        census: None,
        btf: None,
    })
    .unwrap();
    assert_eq!(find(&r, "memcg-ids").severity, Severity::Critical);
    assert_eq!(r.exit_code, 1);
}

#[test]
fn swap_in_use_leaves_modern_ids_unknown_until_a_census_counts_them() {
    let dir = std::env::temp_dir().join(format!("kmem-trace-doctor-swap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ok = std::process::Command::new("cp")
        .arg("-r")
        .arg(fixture("debian12-v2-healthy"))
        .arg(&dir)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(
        dir.join("proc/meminfo"),
        "SwapTotal:       2097148 kB\nSwapFree:        2096124 kB\n",
    )
    .unwrap();
    let mut cfg = DoctorConfig {
        host_root: dir.clone(),
        id_limit: 65_535,
        try_drop_caches: false,
        try_mkdir: false,
        verify_bpf: false,
        history_db: None,
        census: None,
        btf: None,
    };
    let r = run(&cfg).unwrap();
    // 2 dying memcgs, swap in use, no per-memcg figure: unknown, not 20 and not 22.
    assert_eq!(r.facts.dying_holding, None);
    assert_eq!(r.facts.ids_in_use, None);
    assert_eq!(find(&r, "memcg-ids").severity, Severity::Unknown);
    let fc = r.forecast.unwrap();
    assert_eq!((fc.ids_per_hour, fc.hours_to_exhaustion), (None, None));
    assert!(
        render::npd_line(&r).contains("IDs ?/65535"),
        "{}",
        render::npd_line(&r)
    );
    // A census that read every dying memcg's swap counter settles it.
    cfg.census = Some(host::CensusReading {
        live: 20,
        dying: 2,
        swap_held_dying: Some(1),
    });
    let r = run(&cfg).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(r.facts.ids_in_use, Some(21));
    assert_eq!(r.forecast.unwrap().ids_in_use, Some(21));
    assert!(find(&r, "memcg-ids").title.contains("21 of 65535"));
}

#[test]
fn hostile_paths_in_findings_are_escaped() {
    let mut r = report("debian12-v2-healthy");
    for (f, name) in r.findings.iter_mut().zip(crate::outputs::text::HOSTILE) {
        f.title = format!("kmem accounting under /kubepods/{name}");
        f.detail = name.to_string();
        f.remediation = vec![name.to_string()];
    }
    let mut out = Vec::new();
    render::text(&r, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    crate::outputs::text::assert_inert(&text);
    r.status = Severity::Warning;
    crate::outputs::text::assert_inert(&render::npd_line(&r));
}

#[test]
fn an_exhausted_id_space_is_named_in_the_kernels_words() {
    let healthy = report("debian12-v2-healthy");
    assert!(
        healthy
            .findings
            .iter()
            .all(|f| f.id != "memcg-ids-exhausted"),
        "21 IDs in use is not exhausted"
    );
    let mut f = healthy.facts.clone();
    f.version = Some(crate::probes::kernel::KernelVersion(6, 12, 118));
    f.ids_in_use = Some(65535);
    let x = exhausted::finding(&f, 65535).unwrap();
    assert_eq!(x.severity, Severity::Critical);
    assert!(x.detail.contains("Device or resource busy"), "{}", x.detail);
    assert!(x.detail.contains("EBUSY"));
    assert!(x.remediation.iter().any(|r| r.contains("swapoff")));
    // 3.10: ENOSPC, and every dying memcg holds its ID until freed.
    f.version = Some(crate::probes::kernel::KernelVersion(3, 10, 0));
    let x = exhausted::finding(&f, 65535).unwrap();
    assert!(x.detail.contains("No space left on device"), "{}", x.detail);
    assert!(x.remediation.iter().any(|r| r == findings::FIX_REBOOT));
    // IDs in use unknown: live and dying memcgs reaching the limit may be exhaustion.
    f.ids_in_use = None;
    let c = f.counts.as_mut().unwrap();
    c.num_cgroups = Some(65_600);
    let x = exhausted::finding(&f, 65535).unwrap();
    assert_eq!(x.severity, Severity::Warning);
    assert!(x.title.contains("may be exhausted"));
    // 5.10 without a census: the running tracer's lower bound at the limit
    // makes it certain, in that kernel's words; below it, still "may be".
    f.version = Some(crate::probes::kernel::KernelVersion(5, 10, 0));
    f.tracer_ids = Some(exhausted::TracerIds {
        ids_in_use: 65535,
        age_s: 4.0,
    });
    let x = exhausted::finding(&f, 65535).unwrap();
    assert_eq!(x.severity, Severity::Critical);
    assert!(
        x.title.starts_with(
            "memcg ID space exhausted (65535 of 65535 IDs in use, counted by the running tracer)"
        ) && x.title.contains("\"No space left on device\" (ENOSPC)"),
        "{}",
        x.title
    );
    assert!(x.detail.contains("lower bound"), "{}", x.detail);
    f.tracer_ids = Some(exhausted::TracerIds {
        ids_in_use: 65000,
        age_s: 4.0,
    });
    let x = exhausted::finding(&f, 65535).unwrap();
    assert!(x.title.contains("may be exhausted"));
    f.tracer_ids = None;
    f.counts.as_mut().unwrap().num_cgroups = Some(100);
    assert!(exhausted::finding(&f, 65535).is_none());
}

/// `--try-mkdir`: a refusal for want of IDs is certain exhaustion whatever
/// the counts say (7.3.4: "may be" from the counts, EBUSY from mkdir); a
/// memcg made means not exhausted; other errors change nothing.
#[test]
fn a_refused_mkdir_is_certain_and_a_made_one_clears_the_warning() {
    use super::mkdir_probe::MkdirProbe;
    let mut f = report("debian12-v2-healthy").facts.clone();
    f.version = Some(crate::probes::kernel::KernelVersion(7, 3, 4));
    f.ids_in_use = None;
    f.counts.as_mut().unwrap().num_cgroups = Some(65_600);
    assert_eq!(
        exhausted::finding(&f, 65535).unwrap().severity,
        Severity::Warning
    );
    let probe = |errno: Option<&str>, words: Option<&str>| MkdirProbe {
        path: "/sys/fs/cgroup/kmem-trace-doctor-1".into(),
        errno: errno.map(str::to_string),
        words: words.map(str::to_string),
    };
    f.mkdir_probe = Some(probe(Some("EBUSY"), Some("Device or resource busy")));
    let x = exhausted::finding(&f, 65535).unwrap();
    assert_eq!(x.severity, Severity::Critical);
    assert_eq!(
        x.title,
        "memcg ID space exhausted: mkdir of a memcg fails with \"Device or resource busy\" (EBUSY)"
    );
    assert!(x.remediation.iter().any(|r| r.contains("swapoff")));
    f.mkdir_probe = Some(probe(None, None));
    assert!(exhausted::finding(&f, 65535).is_none());
    f.mkdir_probe = Some(probe(Some("EACCES"), Some("Permission denied")));
    assert_eq!(
        exhausted::finding(&f, 65535).unwrap().severity,
        Severity::Warning
    );
}
