//! The report as Markdown (for tickets and chat): the same sections as the
//! HTML, with the timeline as sparklines and a short table of its points.

use std::fmt::Write;

use super::{
    model::{or_unknown, rfc3339, zombie_age, Report},
    timeline::Point,
};
use crate::{
    outputs::{
        line::human_bytes,
        text::{term, term_lines},
    },
    zombies::TaskView,
};

/// Pipes would break a table cell; control characters are escaped as in
/// every text output.
fn cell(s: &str) -> String {
    term(s).replace('|', "\\|")
}

/// `▁▂▃▅▇` over at most `width` values.
pub fn sparkline(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() {
        return String::new();
    }
    let step = values.len().div_ceil(width.max(1));
    let vals: Vec<u64> = values
        .chunks(step)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect();
    let max = vals.iter().copied().max().unwrap_or(0).max(1);
    vals.iter()
        .map(|v| BARS[((*v as f64 / max as f64) * 7.0).round() as usize])
        .collect()
}

fn timeline(w: &mut String, pts: &[Point], source: &str) {
    let _ = writeln!(w, "## Timeline\n\nSource: {source}.\n");
    if pts.is_empty() {
        let _ = writeln!(w, "No timeline data in the history for this period.\n");
        return;
    }
    for (name, f) in [
        ("live   ", (|p: &Point| p.live) as fn(&Point) -> u64),
        ("dying  ", |p| p.dying),
        ("zombies", |p| p.zombies),
    ] {
        let v: Vec<u64> = pts.iter().map(f).collect();
        let _ = writeln!(
            w,
            "    {name} {} (max {})",
            sparkline(&v, 60),
            v.iter().max().unwrap_or(&0)
        );
    }
    let _ = writeln!(
        w,
        "\n| time (UTC) | live | dying | zombies |\n|---|---:|---:|---:|"
    );
    let n = pts.len();
    let picks: Vec<usize> = if n <= 8 {
        (0..n).collect()
    } else {
        (0..8).map(|k| k * (n - 1) / 7).collect()
    };
    for i in picks {
        let p = pts[i];
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} |",
            rfc3339(p.t),
            p.live,
            p.dying,
            p.zombies
        );
    }
    w.push('\n');
}

/// Renders the report.
pub fn render(r: &Report) -> String {
    let mut w = String::new();
    let host = r.node.hostname.as_deref().unwrap_or("node");
    let _ = writeln!(
        w,
        "# memcg incident report: {host}\n\nGenerated {} by kmem-trace {}; period since {}; a zombie is a memcg dying for more than {}s.\n",
        r.generated_at,
        env!("CARGO_PKG_VERSION"),
        r.since,
        r.zombie_after_s
    );
    let _ = writeln!(
        w,
        "**{}** — {}\n",
        r.verdict.severity.label(),
        r.verdict.text
    );
    if let (Some(why), Some(fix)) = (&r.verdict.reason, &r.verdict.fix) {
        let _ = writeln!(w, "> **Why unknown:** {why}\n>\n> **Fix:** {fix}\n");
    }
    let _ = writeln!(
        w,
        "## Now\n\n| live | dying | zombies | memcg IDs in use |\n|---:|---:|---:|---:|\n| {} | {} | {} | {} / {} ({}) |\n\nCounts from {}. {}.\n",
        or_unknown(r.now.live),
        or_unknown(r.now.dying),
        or_unknown(r.now.zombies),
        or_unknown(r.ids.in_use),
        r.ids.limit,
        r.ids
            .percent
            .map(|p| format!("{p:.2}%"))
            .unwrap_or_else(|| "?".into()),
        r.now.source,
        r.ids.outlook
    );
    timeline(&mut w, &r.timeline, &r.timeline_source);
    let n = &r.node;
    let _ = writeln!(w, "## Node\n\n| | |\n|---|---|");
    for (k, v) in [
        ("hostname", or_unknown(n.hostname.as_deref())),
        ("kernel", or_unknown(n.kernel.as_deref())),
        ("command line", or_unknown(n.cmdline.as_deref())),
        (
            "cgroup versions",
            serde_json::to_string(&n.cgroup_versions).unwrap_or_default(),
        ),
        (
            "memory controller",
            or_unknown(n.memory_hierarchy.as_deref()),
        ),
        (
            "kubelet cgroup driver",
            or_unknown(n.cgroup_driver.as_deref()),
        ),
        ("kernel-memory accounting", n.kmem.clone()),
        ("what keeps memcgs dying", n.leak_causes.clone()),
        (
            "hook family",
            format!("{} ({})", n.hook_family, n.hook_family_source),
        ),
    ] {
        let _ = writeln!(w, "| {k} | `{}` |", cell(&v));
    }
    let _ = writeln!(w, "\n## Top owners\n");
    if r.owners.is_empty() {
        let _ = writeln!(w, "No zombies.\n");
    } else {
        let _ = writeln!(w, "| namespace | pod | container / owner | kind | zombies | pinned |\n|---|---|---|---|---:|---:|");
        for o in &r.owners {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&o.namespace),
                cell(&o.pod),
                cell(&o.container),
                o.kind,
                o.zombies,
                human_bytes(o.pinned_bytes)
            );
        }
        w.push('\n');
    }
    if r.workloads_known() {
        let _ = writeln!(w, "## Top workloads\n\n| namespace | workload | zombies | pinned | zombies/h in the period |\n|---|---|---:|---:|---:|");
        for t in &r.workloads {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} |",
                cell(&t.namespace),
                cell(&t.workload),
                t.zombies,
                human_bytes(t.pinned_bytes),
                t.per_hour
                    .map(|p| format!("{p:.1}"))
                    .unwrap_or_else(|| "?".into())
            );
        }
        w.push('\n');
    }
    let _ = writeln!(w, "## Pin causes\n");
    for c in &r.causes {
        let _ = writeln!(
            w,
            "- **{}**: {} zombies, {} — {}",
            c.cause,
            c.zombies,
            human_bytes(c.pinned_bytes),
            c.remedy
        );
    }
    if let Some(held) = r.dying_bytes_text() {
        let _ = writeln!(w, "- node-wide, dying memcgs hold: {held}");
    }
    let _ = writeln!(w, "\n## Remediation\n");
    for (i, s) in r.remediation.iter().enumerate() {
        let _ = writeln!(w, "{}. {s}", i + 1);
    }
    let _ = writeln!(w, "\n## Doctor findings\n");
    for f in &r.findings {
        let _ = writeln!(w, "- [{}] {}: {}", f.severity.label(), f.title, f.detail);
    }
    let _ = writeln!(w, "\n## Appendix: every zombie ({})\n", r.zombies.len());
    if r.zombies.iter().any(|a| a.cause_at_offline) {
        let _ = writeln!(w, "{}\n", super::causes::AT_OFFLINE_LEGEND);
    }
    if !r.zombies.is_empty() {
        let _ = writeln!(w, "| ID | age | path | owner | pinned | cause | created by |\n|---:|---|---|---|---:|---|---|");
        for a in &r.zombies {
            let z = &a.zombie;
            let _ = writeln!(
                w,
                "| {} | {} | `{}` | {} | {} | {} | {} |",
                z.id_text(),
                zombie_age(z),
                cell(&z.path),
                cell(z.owner_label.as_deref().unwrap_or("-")),
                or_unknown(z.pinned_bytes.map(human_bytes)),
                a.cause.as_deref().unwrap_or("?"),
                z.creator.as_ref().map(TaskView::label).unwrap_or_default()
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(w, "\n> {n}");
    }
    // Names also reach the verdict, the owners and the notes: nothing a
    // workload chose reaches the terminal of whoever `cat`s the file raw.
    term_lines(&w).into_owned()
}
