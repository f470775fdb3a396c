//! The report built from a doctor fixture tree (CentOS 7 with the kmem leak),
//! a leaking history and pod-owned zombies; rendered as Markdown, JSON and
//! self-contained HTML. No root, no BPF.

use std::{collections::HashMap, path::PathBuf};

use super::{model::*, *};
use crate::{
    attribution::{Attribution, ContainerMeta},
    census::{Pin, PinCause},
    store::samples::CountSample,
    zombies::{TaskView, Zombie},
};

const T0: i64 = 1_763_000_000_000_000_000;
const MIN: i64 = 60_000_000_000;

pub(super) fn fixture(tree: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/doctor")
        .join(tree)
}

pub(super) fn doctor_of(tree: &str) -> crate::doctor::Report {
    crate::doctor::run(&crate::doctor::DoctorConfig {
        host_root: fixture(tree),
        id_limit: 65_535,
        try_drop_caches: false,
        try_mkdir: false,
        verify_bpf: false,
        history_db: None,
        census: None,
        btf: None,
    })
    .unwrap()
}

pub(super) fn pod_zombie(i: u32, container: &str, pinned: u64) -> Zombie {
    let uid = "5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d";
    let cid = format!("{:064x}", 0xabc0 + i as u64);
    let path = format!("/kubepods/burstable/pod{uid}/{cid}");
    let mut a = Attribution::of_path(&path);
    a.meta = Some(Box::new(ContainerMeta {
        pod_name: Some("web-7d4b9".into()),
        namespace: Some("shop".into()),
        container_name: Some(container.into()),
        image: Some("registry.example/shop/web:1.4".into()),
        pod_uid: Some(uid.into()),
        ..ContainerMeta::default()
    }));
    Zombie {
        memcg_id: 100 + i,
        memcg_addr: format!("{:#x}", 0xffff_0000_0000_0000u64 + i as u64),
        cgroup_id: 5000 + i as u64,
        path,
        age_s: Some(3600.0 + i as f64),
        age_at_least_s: None,
        offline_at: None,
        owner_label: Some(a.label()),
        owner: Some(a),
        creator: Some(TaskView {
            pid: 77,
            tgid: 77,
            comm: "runc".into(),
            ppid: 1,
            pcomm: "containerd-shim".into(),
            seen: String::new(),
        }),
        residents: Vec::new(),
        residents_dropped: 0,
        last_resident: None,
        pinned_bytes: Some(pinned),
        counters_at: crate::zombies::CountersAt::None,
        kmem_bytes: None,
        swap_bytes: None,
        kmem_active: true,
        pin_cause: None,
        pin_exact: false,
        source: "history",
    }
}

pub(super) fn inputs(tree: &str) -> Inputs {
    let zombies = vec![
        pod_zombie(1, "nginx", 16 << 20),
        pod_zombie(2, "nginx", 8 << 20),
        pod_zombie(3, "<script>alert(1)</script>", 1 << 20),
    ];
    let pins: HashMap<String, Pin> = zombies
        .iter()
        .take(2)
        .map(|z| {
            (
                z.memcg_addr.clone(),
                Pin {
                    cause: PinCause::Tmpfs,
                    user_pages: 4096,
                    kmem_pages: None,
                    swap_pages: 0,
                    change_pages: None,
                    exact: false,
                },
            )
        })
        .collect();
    // Two hours of one sample a minute: 1 zombie more every 2 minutes.
    let samples: Vec<CountSample> = (0..120)
        .map(|k| CountSample {
            ts: T0 + k * MIN,
            live: 300 + (k as u64 % 7),
            dying: 10 + k as u64 / 2,
            zombies: 8 + k as u64 / 2,
            ids_in_use: 60_000 + k as u64 / 2,
            id_limit: 65_535,
            hooks: "kprobe+tracepoint".into(),
            ..CountSample::default()
        })
        .collect();
    Inputs {
        now: T0 + 120 * MIN,
        since: T0 - 60 * MIN,
        hostname: Some("node-a".into()),
        zombie_after_s: 60,
        doctor: doctor_of(tree),
        census: None,
        samples,
        rows: Vec::new(),
        zombies,
        pins,
        tracer: None,
        db: "/var/lib/kmem-trace/history.db".into(),
        history: HistoryState::Read,
        notes: vec!["census counted only".into()],
    }
}

#[test]
fn the_verdict_names_counts_owner_cause_and_urgency() {
    let r = build(inputs("centos7-kmem-leak"));
    assert_eq!(r.verdict.severity, crate::doctor::Severity::Critical);
    let v = &r.verdict.text;
    assert!(v.starts_with("node-a holds"), "{v}");
    assert!(v.contains("3 of them zombies"), "{v}");
    assert!(v.contains("Most are pinned by tmpfs/shmem"), "{v}");
    assert!(
        v.contains("The top owner is shop/web-7d4b9/nginx with 2 zombies"),
        "{v}"
    );
    assert!(v.contains("Act now"), "{v}");
    assert_eq!(r.owners[0].namespace, "shop");
    assert_eq!(r.owners[0].pinned_bytes, 24 << 20);
    assert_eq!(r.causes[0].cause, "tmpfs/shmem");
    assert_eq!(r.causes[1].cause, "unknown");
    // One forecast: the doctor's (since boot here, no history database), in
    // the verdict and in the doctor's own finding alike.
    let fc = r.ids.forecast.unwrap();
    assert!(fc.ids_per_hour.unwrap() > 0.0, "{fc:?}");
    let doctor_fc = r.findings.iter().find(|f| f.id == "forecast").unwrap();
    assert!(doctor_fc.title.contains(&fc.leak_text()), "{doctor_fc:?}");
    assert!(
        r.verdict.text.contains(&r.ids.outlook),
        "{}",
        r.verdict.text
    );
    assert!(
        r.ids.outlook.contains("every memcg ID is in use in"),
        "{}",
        r.ids.outlook
    );
    assert_eq!(r.timeline.len(), 120);
    assert_eq!(r.timeline_source, "samples");
    assert_eq!(r.node.hook_family, "kprobe+tracepoint");
    assert!(r.node.kernel.as_deref().unwrap().starts_with("3.10.0"));
    assert!(r.node.kmem.starts_with("active"), "{}", r.node.kmem);
    assert!(r
        .remediation
        .iter()
        .any(|s| s.contains("cgroup.memory=nokmem")));
    // The doctor's tmpfs step and the tmpfs pin cause's remedy are one step.
    let tmpfs: Vec<&String> = r
        .remediation
        .iter()
        .filter(|s| s.contains("tmpfs/shmem files"))
        .collect();
    assert_eq!(tmpfs.len(), 1, "{:#?}", r.remediation);
    assert!(
        tmpfs[0].ends_with("frees tmpfs/shmem (2 zombies)"),
        "{:#?}",
        r.remediation
    );
    let reboot = r
        .remediation
        .iter()
        .filter(|s| s.contains("reboot"))
        .count();
    assert!(reboot <= 2, "{:#?}", r.remediation);
}

#[test]
fn html_is_one_self_contained_file_naming_the_owners() {
    let r = build(inputs("centos7-kmem-leak"));
    let html = html::render(&r);
    let dom = tl::parse(&html, tl::ParserOptions::default()).unwrap();
    let p = dom.parser();
    // No external resource of any kind; no script at all.
    for node in dom.nodes() {
        let Some(tag) = node.as_tag() else { continue };
        let name = tag.name().as_utf8_str().to_lowercase();
        assert!(
            name != "script" && name != "link" && name != "iframe",
            "<{name}> found"
        );
        for attr in ["src", "href", "srcset", "data"] {
            if let Some(Some(v)) = tag.attributes().get(attr) {
                let v = v.as_utf8_str().to_lowercase();
                assert!(
                    !v.contains("http://") && !v.contains("https://") && !v.starts_with("//"),
                    "{name} {attr}={v}"
                );
            }
        }
    }
    assert!(
        !html.contains("@import") && !html.contains("url("),
        "CSS loads nothing"
    );
    let svg = dom
        .query_selector("svg")
        .unwrap()
        .next()
        .expect("inline svg");
    let svg_html = svg.get(p).unwrap().outer_html(p);
    assert_eq!(svg_html.matches("<polyline").count(), 3);
    let owners = dom.get_element_by_id("owners").expect("owners table");
    let owners = owners.get(p).unwrap().inner_text(p);
    assert!(owners.contains("shop") && owners.contains("web-7d4b9") && owners.contains("nginx"));
    // Text is escaped, never markup.
    assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // The appendix: one group per pod (its three containers' zombies),
    // every zombie a row under the group's header row.
    assert_eq!(html.matches("<details class=\"grp\"").count(), 1);
    let rows = html[html.find("id=\"appendix\"").unwrap()..]
        .matches("<tr>")
        .count();
    assert_eq!(rows, 1 + 3, "a header row and three zombies");
    assert!(html.contains("registry.example/shop/web:1.4"));
}

#[test]
fn markdown_and_json_carry_the_same_report() {
    let r = build(inputs("debian12-v2-healthy"));
    let md = md::render(&r);
    assert!(md.starts_with("# memcg incident report: node-a"));
    for want in [
        "## Timeline",
        "| shop | web-7d4b9 | nginx | pod | 2 | 24.0MiB |",
        "## Remediation",
        "## Appendix: every zombie (3)",
        "<script>alert(1)</script>",
    ] {
        assert!(md.contains(want), "missing {want:?}:\n{md}");
    }
    let js: serde_json::Value =
        serde_json::from_str(&render(&r, ReportFormat::Json).unwrap()).unwrap();
    assert_eq!(js["kind"], "report");
    assert_eq!(js["zombies"].as_array().unwrap().len(), 3);
    assert_eq!(js["zombies"][0]["owner"]["namespace"], "shop");
    assert_eq!(js["zombies"][0]["cause"], "tmpfs/shmem");
    assert_eq!(js["owners"][0]["container"], "nginx");
    assert!(js["timeline"].as_array().unwrap().len() == 120);
    assert_eq!(md::sparkline(&[0, 1, 2, 3, 4, 5, 6, 7], 8), "▁▂▃▄▅▆▇█");
}

#[test]
fn without_history_or_zombies_the_report_still_says_something() {
    let mut i = inputs("debian12-v2-healthy");
    i.samples.clear();
    i.zombies.clear();
    i.pins.clear();
    let r = build(i);
    assert_eq!(r.timeline_source, "none");
    assert!(r.owners.is_empty() && r.zombies.is_empty());
    let html = html::render(&r);
    assert!(html.contains("no timeline data"));
    assert!(html.contains("No zombies, so no owners to name."));
    assert!(
        r.verdict.text.contains("0 of them zombies"),
        "{}",
        r.verdict.text
    );
}

#[test]
fn redaction_hides_workload_names_in_every_format() {
    let mut i = inputs("centos7-kmem-leak");
    i.hostname = Some("vm.example.com".into());
    // Names that collide with the report's own words.
    for (k, name) in ["main", "cache", "page", "zombie"].iter().enumerate() {
        i.zombies.push(pod_zombie(20 + k as u32, name, 1 << 20));
    }
    let plain = model::build(inputs("centos7-kmem-leak"));
    let plain_md = render(&plain, ReportFormat::Md).unwrap();
    assert!(plain_md.contains("web-7d4b9") && plain_md.contains("shop/"));
    let cmdline = i.doctor.facts.cmdline.clone().unwrap_or_default();
    let p = redact::inputs(&mut i);
    assert!(!p.is_empty());
    let r = model::build(i);
    for format in [ReportFormat::Md, ReportFormat::Html, ReportFormat::Json] {
        let text = render(&r, format).unwrap();
        for secret in [
            "web-7d4b9",
            "nginx",
            "alert(1)",
            "registry.example/shop/web:1.4",
            "shop/",
            "\"shop\"",
            "5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d",
            "5b2ae0e6-4d1",
            "5b2ae0e6_4d1c",
            &format!("{:064x}", 0xabc1u64),
            "vm.example.com",
        ] {
            assert!(!text.contains(secret), "{format:?} still shows {secret}");
        }
        assert!(
            text.contains("pod-1"),
            "{format:?}: pseudonyms replace names"
        );
        assert!(text.contains("ns-1"), "{format:?}: namespaces too");
        // The report's own words are untouched.
        assert!(!text.contains("page container-"), "{format:?}");
        if format == ReportFormat::Html {
            assert!(text.contains("<main>"), "the page's own <main> stays");
        }
        for word in ["zombies", "page cache", "dying"] {
            assert!(text.contains(word), "{format:?} lost its word {word:?}");
        }
        for opt in cmdline
            .split_whitespace()
            .filter(|o| !o.starts_with("cgroup") && o.len() >= 6)
        {
            assert!(
                !text.contains(opt),
                "{format:?} shows the command line's {opt}"
            );
        }
    }
    let v: serde_json::Value =
        serde_json::from_str(&render(&r, ReportFormat::Json).unwrap()).unwrap();
    assert_eq!(v["node"]["hostname"], "node-1");
    let z = &v["zombies"][0];
    assert!(
        z["path"].as_str().unwrap().contains("/poduid-1/cid-"),
        "{z:#}"
    );
}

#[test]
fn top_workloads_carry_zombies_and_a_leak_rate_from_known_ages_only() {
    let mut i = inputs("centos7");
    // Period: 3 h. Two zombies of Deployment/web removed in it, one of unknown age.
    for (k, z) in i.zombies.iter_mut().enumerate() {
        if let Some(m) = z.owner.as_mut().and_then(|a| a.meta.as_mut()) {
            m.workload = Some(crate::attribution::Workload {
                kind: crate::attribution::WorkloadKind::Deployment,
                name: "web".into(),
            });
        }
        if k == 2 {
            z.age_s = None;
        }
    }
    let r = build(i);
    assert_eq!(r.workloads.len(), 1, "{:?}", r.workloads);
    let w = &r.workloads[0];
    assert_eq!(
        (w.namespace.as_str(), w.workload.as_str()),
        ("shop", "Deployment/web")
    );
    assert_eq!(w.zombies, 3);
    let per_hour = w.per_hour.unwrap();
    assert!((per_hour - 2.0 / 3.0).abs() < 1e-9, "{per_hour}");
    let md = crate::report::md::render(&r);
    assert!(md.contains("## Top workloads"), "{md}");
    assert!(md.contains("| shop | Deployment/web | 3 |"), "{md}");
    assert!(crate::report::html::render(&r).contains("id=\"workloads\""));
}
