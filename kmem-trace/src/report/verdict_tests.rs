//! The verdict is never a false all-clear (unreadable history, unknown ages),
//! and every section shows the one snapshot (charged bytes, owners, IDs,
//! severity, remediation).

use super::{model::*, tests::*};
use crate::doctor::{render::npd_line, Severity};

#[test]
fn an_unreadable_history_is_an_unknown_verdict_with_reason_and_fix_on_top() {
    let mut i = inputs("debian12-v2-healthy");
    i.samples.clear();
    i.zombies.clear();
    i.pins.clear();
    i.history = HistoryState::Unreadable(
        "opening /var/lib/kmem-trace/history.db: permission denied".into(),
    );
    let r = build(i);
    assert_eq!(r.verdict.severity, Severity::Unknown);
    assert!(
        r.verdict.text.starts_with("Unknown: the history"),
        "{}",
        r.verdict.text
    );
    assert!(
        !r.verdict.text.contains("No action needed"),
        "{}",
        r.verdict.text
    );
    assert!(r
        .verdict
        .reason
        .as_deref()
        .unwrap()
        .contains("permission denied"));
    assert!(r
        .verdict
        .fix
        .as_deref()
        .unwrap()
        .contains("sudo kmem-trace report"));
    assert_eq!(r.now.zombies, None, "no list: zombies are unknown, not 0");
    // Both formats put the reason and the fix right under the verdict.
    let md = super::md::render(&r);
    let (verdict_at, why_at) = (
        md.find("Unknown: the history").unwrap(),
        md.find("**Why unknown:**").unwrap(),
    );
    assert!(
        why_at > verdict_at && why_at < md.find("## Now").unwrap(),
        "{md}"
    );
    let html = super::html::render(&r);
    assert!(html.find("id=\"unknown\"").unwrap() < html.find("<h2>Now</h2>").unwrap());
}

#[test]
fn no_history_and_no_census_list_is_unknown_not_zero_zombies() {
    let mut i = inputs("debian12-v2-healthy");
    i.zombies.clear();
    i.history = HistoryState::Missing("no history database".into());
    let r = build(i);
    assert_eq!(r.verdict.severity, Severity::Unknown);
    assert_eq!(r.now.zombies, None);
    assert!(
        r.verdict
            .text
            .contains("how many of them are zombies is unknown"),
        "{}",
        r.verdict.text
    );
}

#[test]
fn unknown_ages_are_unknown_not_zombies_and_not_zero() {
    let mut i = inputs("centos7-kmem-leak");
    i.zombies[2].age_s = None;
    let r = build(i);
    assert_eq!(r.now.zombies, Some(2));
    assert_eq!(r.now.unknown_age, 1);
    let v = &r.verdict.text;
    assert!(v.contains("2 of them zombies"), "{v}");
    assert!(v.contains("1 of unknown age"), "{v}");
    // Not an unknown verdict (every real node has memcgs that died before
    // tracing), but never a bare "no action needed" while some are unknown.
    let mut i = inputs("centos7-kmem-leak");
    i.zombies[2].age_s = None;
    i.doctor.status = Severity::Info;
    let r = build(i);
    assert_eq!(r.verdict.severity, Severity::Info);
    let v = &r.verdict.text;
    assert!(
        v.ends_with("keep `kmem-trace serve` recording to age the rest."),
        "{v}"
    );
}

#[test]
fn one_snapshot_feeds_every_section() {
    let mut i = inputs("centos7-kmem-leak");
    // More owners than the top list holds: the verdict counts them all.
    for k in 0..(TOP_OWNERS as u32 + 5) {
        i.zombies
            .push(pod_zombie(10 + k, &format!("c{k}"), 1 << 20));
    }
    let doctor = i.doctor.clone();
    let r = build(i);
    // Charged bytes: the verdict's figure is the pin-cause table's sum.
    let causes: u64 = r.causes.iter().map(|c| c.pinned_bytes).sum();
    let text = crate::outputs::line::human_bytes(causes);
    assert!(
        r.verdict.text.contains(&format!("still charged {text}")),
        "{}",
        r.verdict.text
    );
    let listed: u64 = r
        .zombies
        .iter()
        .map(|z| z.zombie.pinned_bytes.unwrap_or(0))
        .sum();
    assert_eq!(causes, listed);
    assert_eq!(r.owners.len(), TOP_OWNERS);
    let owners = r
        .zombies
        .iter()
        .map(|z| z.zombie.owner_label.clone())
        .collect::<std::collections::HashSet<_>>();
    assert!(
        r.verdict
            .text
            .contains(&format!("of {} owners", owners.len())),
        "{}",
        r.verdict.text
    );
    // IDs in use: one figure in the verdict, the IDs section, the doctor and its NPD line.
    let ids = r.ids.in_use.unwrap();
    assert_eq!(Some(ids), doctor.facts.ids_in_use);
    assert!(
        r.verdict.text.contains(&format!("memcg IDs: {ids} of")),
        "{}",
        r.verdict.text
    );
    assert!(
        npd_line(&doctor).contains(&format!("IDs {ids}/")),
        "{}",
        npd_line(&doctor)
    );
    let f = r.findings.iter().find(|f| f.id == "memcg-ids").unwrap();
    assert!(f.title.contains(&format!("{ids} of")), "{}", f.title);
    // Severity: the report's is the doctor's (the NPD line follows it).
    assert_eq!(r.verdict.severity, doctor.status);
    // Each step once: no step repeated, none contained in another.
    for (a, s) in r.remediation.iter().enumerate() {
        for (b, t) in r.remediation.iter().enumerate() {
            assert!(a == b || !t.contains(s.as_str()), "{:#?}", r.remediation);
        }
    }
}

#[test]
fn a_warning_is_not_ok_on_the_npd_line() {
    let mut d = doctor_of("debian12-v2-healthy");
    d.status = Severity::Warning;
    assert!(npd_line(&d).starts_with("Warning: "), "{}", npd_line(&d));
    d.status = Severity::Info;
    assert!(npd_line(&d).starts_with("OK: "), "{}", npd_line(&d));
}

#[test]
fn hostile_names_are_escaped_in_markdown_and_html() {
    use crate::outputs::text::{assert_inert, HOSTILE};
    let mut i = inputs("debian12-v2-healthy");
    i.hostname = Some(format!("node{}", HOSTILE[0]));
    for (k, name) in HOSTILE.iter().enumerate() {
        let mut z = pod_zombie(40 + k as u32, name, 1 << 20);
        z.path = format!("/jobs/{name}");
        z.owner = Some(crate::attribution::Attribution::of_path(&z.path));
        z.owner_label = Some(format!("jobs/{name}"));
        if let Some(c) = z.creator.as_mut() {
            c.comm = name.to_string();
        }
        i.zombies.push(z);
    }
    i.notes.push(format!("note {}", HOSTILE[1]));
    let r = build(i);
    let md = super::md::render(&r);
    assert_inert(&md);
    assert!(md.contains("\\x1b"), "escaped, not dropped");
    let html = super::html::render(&r);
    assert_inert(&html.replace('\t', " "));
    assert!(
        html.contains("\\u{202e}"),
        "bidi override shown, not applied"
    );
}

#[test]
fn more_zombies_listed_than_the_kernel_counts_is_unknown() {
    // The healthy fixture counts 2 dying memcgs; the history lists 3 zombies.
    let r = build(inputs("debian12-v2-healthy"));
    assert_eq!(r.now.dying, Some(2));
    assert_eq!(r.verdict.severity, Severity::Unknown);
    assert!(
        r.verdict
            .reason
            .as_deref()
            .unwrap()
            .contains("lists 3 dying memcgs but the kernel counts 2"),
        "{:?}",
        r.verdict.reason
    );
}
