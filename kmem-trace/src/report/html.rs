//! The report as one self-contained HTML file: inline CSS and the inline SVG
//! chart, no script, no external resource (it opens the same on a laptop
//! with no network, attached to a ticket). Every text is escaped.

use std::fmt::Write;

use super::{
    model::{age, or_unknown, Report},
    svg::{self, esc},
};
use crate::{doctor::Severity, outputs::line::human_bytes};

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;background:#f3f4f6;color:#1f2933}
main{max-width:1100px;margin:0 auto;padding:24px;overflow-wrap:anywhere}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:2px solid #d2d6dc;padding-bottom:4px}
.sub{color:#52606d;margin:0 0 16px}
.verdict{border-left:8px solid #2e7d32;background:#fff;padding:12px 16px;border-radius:4px;box-shadow:0 1px 2px #0002}
.verdict.warning{border-color:#ef6c00}.verdict.critical{border-color:#c62828}.verdict.unknown{border-color:#757575}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600;background:#2e7d32}
.badge.warning{background:#ef6c00}.badge.critical{background:#c62828}.badge.unknown{background:#757575}.badge.info{background:#1565c0}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border:1px solid #d2d6dc;padding:4px 8px;text-align:left;vertical-align:top}th{background:#e4e7eb}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
code,.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
.facts th{width:220px}
.bar{height:18px;background:#e4e7eb;border-radius:9px;overflow:hidden;margin:6px 0}
.bar>div{height:100%;background:#2e7d32}.bar>div.warn{background:#ef6c00}.bar>div.crit{background:#c62828}
figure{margin:0;background:#fff;padding:8px;border-radius:4px}figcaption{color:#52606d;font-size:12px}
svg{max-width:100%;height:auto}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{flex:1;min-width:150px;background:#fff;padding:10px 14px;border-radius:4px;box-shadow:0 1px 2px #0002}
.card b{display:block;font-size:26px}
td{overflow-wrap:anywhere}th{overflow-wrap:normal}
.grp{background:#fff;margin:6px 0;border-radius:4px;box-shadow:0 1px 2px #0002}
.grp>summary,.more>summary{padding:6px 10px;cursor:pointer}
.more{margin:4px 10px 8px}
table.z{table-layout:fixed}.z .c-id{width:4.5em}.z .c-age{width:4.5em}.z .c-b{width:6em}.z .c-cause{width:9em}.z .c-procs{width:30%}
.z small{color:#52606d}
@media (max-width:640px){main{padding:10px}h1{font-size:20px}.facts tr,.facts th,.facts td{display:block;width:auto;border:0}.facts tr{border-bottom:1px solid #d2d6dc}.facts th{padding-bottom:0}.hide-s{display:none}table{font-size:12px}.z .c-cause{width:6em}.card{min-width:120px}}
"#;

fn sev_class(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Unknown => "unknown",
        Severity::Info => "info",
        Severity::Ok => "ok",
    }
}

/// Renders the report.
pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let host = r.node.hostname.as_deref().unwrap_or("node");
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>kmem-trace report: {}</title><style>{CSS}</style></head><body><main>",
        esc(host)
    );
    let _ = write!(
        h,
        "<h1>memcg incident report: {}</h1><p class=\"sub\">generated {} by kmem-trace {} · period since {} · zombie = dying for more than {}s</p>",
        esc(host),
        esc(&r.generated_at),
        env!("CARGO_PKG_VERSION"),
        esc(&r.since),
        r.zombie_after_s
    );
    let cls = sev_class(r.verdict.severity);
    let _ = write!(
        h,
        "<section class=\"verdict {cls}\"><span class=\"badge {cls}\">{}</span><p id=\"verdict\">{}</p></section>",
        esc(r.verdict.severity.label()),
        esc(&r.verdict.text)
    );
    if let (Some(why), Some(fix)) = (&r.verdict.reason, &r.verdict.fix) {
        let _ = write!(
            h,
            "<section class=\"verdict unknown\" id=\"unknown\"><p><b>Why unknown:</b> {}</p><p><b>Fix:</b> {}</p></section>",
            esc(why),
            esc(fix)
        );
    }
    // Counts and IDs.
    let _ = write!(
        h,
        "<h2>Now</h2><div class=\"cards\"><div class=\"card\">live memcgs<b>{}</b></div><div class=\"card\">dying<b>{}</b></div><div class=\"card\">zombies<b>{}</b></div><div class=\"card\">memcg IDs in use<b>{} / {}</b></div></div><p class=\"sub\">counts from {}</p>",
        or_unknown(r.now.live),
        or_unknown(r.now.dying),
        or_unknown(r.now.zombies),
        or_unknown(r.ids.in_use),
        r.ids.limit,
        esc(&r.now.source)
    );
    let pct = r.ids.percent.unwrap_or(0.0);
    let bar = if pct >= 80.0 {
        "crit"
    } else if pct >= 50.0 {
        "warn"
    } else {
        ""
    };
    let _ = write!(
        h,
        "<h2>memcg ID usage and forecast</h2><div class=\"bar\" title=\"{pct:.1}%\"><div class=\"{bar}\" style=\"width:{:.2}%\"></div></div><p>{} of {} IDs in use ({pct:.2}%). {}.</p>",
        pct.clamp(0.5, 100.0),
        or_unknown(r.ids.in_use),
        r.ids.limit,
        esc(&r.ids.outlook)
    );
    let _ = write!(
        h,
        "<h2>Timeline</h2><figure>{}<figcaption>live, dying and zombie memcgs; source: {}</figcaption></figure>",
        svg::timeline(&r.timeline, 1000, 320),
        esc(&r.timeline_source)
    );
    node(&mut h, r);
    owners(&mut h, r);
    workloads(&mut h, r);
    causes(&mut h, r);
    let _ = write!(h, "<h2>Remediation</h2>");
    if r.remediation.is_empty() {
        h.push_str("<p>Nothing to do.</p>");
    } else {
        h.push_str("<ol id=\"remediation\">");
        for s in &r.remediation {
            let _ = write!(h, "<li>{}</li>", esc(s));
        }
        h.push_str("</ol>");
    }
    findings(&mut h, r);
    super::appendix::render(&mut h, r);
    let _ = write!(
        h,
        "<h2>Sources</h2><p>history <code>{}</code>",
        esc(&r.history_db)
    );
    if let Some(t) = &r.tracer {
        let _ = write!(
            h,
            "; tracer {} (last heartbeat {})",
            if t.running { "running" } else { "not running" },
            esc(t.last_heartbeat.as_deref().unwrap_or("never"))
        );
    }
    h.push_str("</p>");
    if !r.notes.is_empty() {
        h.push_str("<ul>");
        for n in &r.notes {
            let _ = write!(h, "<li>{}</li>", esc(n));
        }
        h.push_str("</ul>");
    }
    h.push_str("</main></body></html>\n");
    h
}

fn node(h: &mut String, r: &Report) {
    let n = &r.node;
    let versions: Vec<&str> = n.cgroup_versions.iter().map(|v| v.name()).collect();
    let rows = [
        ("hostname", or_unknown(n.hostname.as_deref())),
        ("kernel", or_unknown(n.kernel.as_deref())),
        ("kernel command line", or_unknown(n.cmdline.as_deref())),
        ("cgroup versions mounted", versions.join(", ")),
        (
            "memory controller",
            or_unknown(n.memory_hierarchy.as_deref()),
        ),
        (
            "kubelet cgroup driver",
            or_unknown(n.cgroup_driver.as_deref()),
        ),
        ("kubepods cgroup", or_unknown(n.kubepods.as_deref())),
        ("kernel-memory accounting", n.kmem.clone()),
        ("what keeps memcgs dying", n.leak_causes.clone()),
        (
            "hook family",
            format!("{} ({})", n.hook_family, n.hook_family_source),
        ),
        ("uptime", age(n.uptime_s)),
    ];
    h.push_str("<h2>Node</h2><table class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(
            h,
            "<tr><th>{}</th><td class=\"mono\">{}</td></tr>",
            esc(k),
            esc(&v)
        );
    }
    h.push_str("</table>");
}

fn owners(h: &mut String, r: &Report) {
    h.push_str("<h2>Top owners</h2>");
    if r.owners.is_empty() {
        h.push_str("<p>No zombies, so no owners to name.</p>");
        return;
    }
    h.push_str("<table id=\"owners\"><tr><th>namespace</th><th>pod</th><th>container / owner</th><th class=\"hide-s\">kind</th><th>zombies</th><th>pinned</th></tr>");
    for o in &r.owners {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td class=\"hide-s\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&o.namespace),
            esc(&o.pod),
            esc(&o.container),
            esc(&o.kind),
            o.zombies,
            human_bytes(o.pinned_bytes)
        );
    }
    h.push_str("</table>");
}

fn workloads(h: &mut String, r: &Report) {
    if !r.workloads_known() {
        return;
    }
    h.push_str("<h2>Top workloads</h2><table id=\"workloads\"><tr><th>namespace</th><th>workload</th><th>zombies</th><th class=\"hide-s\">pinned</th><th>zombies/h</th></tr>");
    for t in &r.workloads {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n hide-s\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&t.namespace),
            esc(&t.workload),
            t.zombies,
            human_bytes(t.pinned_bytes),
            t.per_hour.map(|p| format!("{p:.1}")).unwrap_or_else(|| "?".into())
        );
    }
    h.push_str("</table>");
}

fn causes(h: &mut String, r: &Report) {
    h.push_str("<h2>Pin causes</h2>");
    if r.causes.is_empty() {
        h.push_str("<p>No zombies.</p>");
    } else {
        h.push_str("<table id=\"causes\"><tr><th>cause</th><th>zombies</th><th>pinned</th><th>what frees them</th></tr>");
        for c in &r.causes {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
                esc(&c.cause),
                c.zombies,
                human_bytes(c.pinned_bytes),
                esc(&c.remedy)
            );
        }
        h.push_str("</table>");
    }
    if let Some(held) = r.dying_bytes_text() {
        let _ = write!(
            h,
            "<p>Node-wide, dying memcgs hold (from their live ancestors' memory.stat): {}.</p>",
            esc(&held)
        );
    }
}

fn findings(h: &mut String, r: &Report) {
    h.push_str(
        "<h2>Doctor findings</h2><table><tr><th>severity</th><th>finding</th><th>detail</th></tr>",
    );
    for f in &r.findings {
        let cls = sev_class(f.severity);
        let _ = write!(
            h,
            "<tr><td><span class=\"badge {cls}\">{}</span></td><td>{}</td><td>{}</td></tr>",
            esc(f.severity.label()),
            esc(&f.title),
            esc(&f.detail)
        );
    }
    h.push_str("</table>");
}
