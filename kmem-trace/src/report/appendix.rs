//! The HTML report's appendix: every zombie, grouped by owner (a pod, a
//! unit, or the parent directory of unrecognised cgroups), each group folded
//! in a `<details>` whose summary says what matters (count, bytes, causes,
//! ages); rows show elided cgroup names with the full path on hover, so the
//! page fits a 1280 px window and a 390 px phone without script. On a phone
//! the rows drop the cause and process columns: the group's summary keeps
//! its causes with their counts.

use std::{collections::BTreeMap, fmt::Write};

use super::{
    model::{age, or_unknown, zombie_age, AppendixRow, Report},
    svg::esc,
};
use crate::{outputs::line::human_bytes, zombies::TaskView};

/// Groups shown open (the biggest), when they are short enough.
const OPEN_GROUPS: usize = 3;
const OPEN_MAX_ROWS: usize = 20;
/// Rows shown in a group before the rest is folded once more.
const ROWS_SHOWN: usize = 25;

/// The group an appendix row belongs to, and the row's name inside it.
fn group_of(a: &AppendixRow) -> (String, String) {
    let z = &a.zombie;
    let leaf = z.path.rsplit('/').next().unwrap_or("").to_string();
    match z.owner.as_ref().map(|o| o.view()) {
        Some(v) if v.kind == "pod" => {
            let pod = format!(
                "{}/{}",
                v.namespace.unwrap_or("?"),
                v.pod.or(v.pod_uid).unwrap_or("?")
            );
            let name = match v.container {
                Some(c) => format!("{c} · {}", elide(&leaf)),
                None => elide(&leaf),
            };
            (pod, name)
        }
        Some(v) if v.kind == "systemd" => (v.unit.unwrap_or("?").to_string(), elide(&leaf)),
        _ => {
            // A job directory with many children is one owner.
            let parent = match z.path.rsplit_once('/') {
                Some(("", _)) | None => "/".to_string(),
                Some((p, _)) => p.to_string(),
            };
            (parent, elide(&leaf))
        }
    }
}

/// A long cgroup name cut to what tells it apart: 64-hex IDs inside it to
/// their first 12 characters (`cri-containerd-4f1c2d3e5b6a….scope`), then
/// anything still long to its head and tail.
pub fn elide(name: &str) -> String {
    let mut out = String::new();
    let mut rest = name;
    while let Some(i) = rest.find(|c: char| c.is_ascii_hexdigit()) {
        let run = rest[i..]
            .chars()
            .take_while(char::is_ascii_hexdigit)
            .count();
        out.push_str(&rest[..i]);
        if run >= 32 {
            out.push_str(&rest[i..i + 12]);
            out.push('…');
        } else {
            out.push_str(&rest[i..i + run]);
        }
        rest = &rest[i + run..];
    }
    out.push_str(rest);
    let n = out.chars().count();
    if n <= 40 {
        return out;
    }
    let head: String = out.chars().take(20).collect();
    let tail: String = out.chars().skip(n - 12).collect();
    format!("{head}…{tail}")
}

struct Group<'a> {
    rows: Vec<&'a AppendixRow>,
    bytes: u64,
    causes: BTreeMap<String, u64>,
}

fn image(a: &AppendixRow) -> Option<String> {
    a.zombie
        .owner
        .as_ref()
        .and_then(|o| o.view().image.map(str::to_string))
}

impl Group<'_> {
    /// The image every row shares, shown once in the summary.
    fn image(&self) -> Option<String> {
        let first = image(self.rows.first()?)?;
        self.rows
            .iter()
            .all(|a| image(a).as_deref() == Some(first.as_str()))
            .then_some(first)
    }
}

fn summary(key: &str, g: &Group) -> String {
    let ages: Vec<f64> = g.rows.iter().filter_map(|a| a.zombie.age_s).collect();
    let lo = ages.iter().copied().reduce(f64::min);
    let hi = ages.iter().copied().reduce(f64::max);
    let ages = match (lo, hi) {
        (Some(lo), Some(hi)) if age(Some(lo)) != age(Some(hi)) => {
            format!("{}–{}", age(Some(lo)), age(Some(hi)))
        }
        (Some(lo), _) => age(Some(lo)),
        _ => "?".into(),
    };
    let causes: Vec<String> = g.causes.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let image = g
        .image()
        .map(|i| format!(" · image <span class=\"mono\">{}</span>", esc(&i)))
        .unwrap_or_default();
    format!(
        "<b class=\"mono\">{}</b> · {} zombie{} · {} pinned · {} · age {}{image}",
        esc(key),
        g.rows.len(),
        if g.rows.len() == 1 { "" } else { "s" },
        human_bytes(g.bytes),
        esc(&causes.join(", ")),
        esc(&ages)
    )
}

fn row(h: &mut String, a: &AppendixRow, name: &str, shared_image: bool) {
    let z = &a.zombie;
    let image = image(a).filter(|_| !shared_image);
    let creator = z.creator.as_ref().map(TaskView::label).unwrap_or_default();
    let residents: Vec<String> = z.residents.iter().map(TaskView::label).collect();
    let procs = match (creator.is_empty(), residents.is_empty()) {
        (false, false) => format!("{creator}; in it: {}", residents.join(", ")),
        (false, true) => creator,
        (true, _) => residents.join(", "),
    };
    let _ = write!(
        h,
        "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"mono\" title=\"{}\">{}{}</td><td class=\"n\">{}</td><td class=\"hide-s\">{}</td><td class=\"hide-s\">{}</td></tr>",
        z.id_text(),
        zombie_age(z),
        esc(&z.path),
        esc(name),
        image
            .map(|i| format!("<br><small class=\"hide-s\">{}</small>", esc(&i)))
            .unwrap_or_default(),
        or_unknown(z.pinned_bytes.map(human_bytes)),
        esc(a.cause.as_deref().unwrap_or("?")),
        esc(&procs)
    );
}

const HEAD: &str = "<table class=\"z\"><colgroup><col class=\"c-id\"><col class=\"c-age\"><col class=\"c-name\"><col class=\"c-b\"><col class=\"c-cause hide-s\"><col class=\"c-procs hide-s\"></colgroup><tr><th>ID</th><th>age</th><th>cgroup (hover: path)</th><th>pinned</th><th class=\"hide-s\">cause</th><th class=\"hide-s\">processes</th></tr>";

/// The appendix section.
pub fn render(h: &mut String, r: &Report) {
    let _ = write!(
        h,
        "<h2 id=\"appendix\">Appendix: every zombie ({}), by owner</h2>",
        r.zombies.len()
    );
    if r.zombies.is_empty() {
        h.push_str("<p>None.</p>");
        return;
    }
    if r.zombies.iter().any(|a| a.cause_at_offline) {
        let _ = write!(h, "<p>{}</p>", super::causes::AT_OFFLINE_LEGEND);
    }
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut names: Vec<String> = Vec::with_capacity(r.zombies.len());
    for a in &r.zombies {
        let (key, name) = group_of(a);
        names.push(name);
        let g = groups.entry(key).or_insert_with(|| Group {
            rows: Vec::new(),
            bytes: 0,
            causes: BTreeMap::new(),
        });
        g.rows.push(a);
        g.bytes += a.zombie.pinned_bytes.unwrap_or(0);
        *g.causes
            .entry(a.cause.clone().unwrap_or_else(|| "cause unknown".into()))
            .or_default() += 1;
    }
    let name_of: std::collections::HashMap<*const AppendixRow, &str> = r
        .zombies
        .iter()
        .zip(&names)
        .map(|(a, n)| (a as *const _, n.as_str()))
        .collect();
    let mut order: Vec<(&String, &Group)> = groups.iter().collect();
    order.sort_by(|a, b| {
        b.1.rows
            .len()
            .cmp(&a.1.rows.len())
            .then(b.1.bytes.cmp(&a.1.bytes))
    });
    let _ = write!(
        h,
        "<p class=\"sub\">{} owners; the biggest first. Each row's full cgroup path shows on hover.</p>",
        order.len()
    );
    for (k, (key, g)) in order.iter().enumerate() {
        // The biggest owner open (its first rows); a few more when short.
        let open = k == 0 || (k < OPEN_GROUPS && g.rows.len() <= OPEN_MAX_ROWS);
        let _ = write!(
            h,
            "<details class=\"grp\"{}><summary>{}</summary>{HEAD}",
            if open { " open" } else { "" },
            summary(key, g)
        );
        let shared = g.image().is_some();
        for a in g.rows.iter().take(ROWS_SHOWN) {
            row(h, a, name_of[&(*a as *const _)], shared);
        }
        h.push_str("</table>");
        if g.rows.len() > ROWS_SHOWN {
            let _ = write!(
                h,
                "<details class=\"more\"><summary>{} more</summary>{HEAD}",
                g.rows.len() - ROWS_SHOWN
            );
            for a in g.rows.iter().skip(ROWS_SHOWN) {
                row(h, a, name_of[&(*a as *const _)], shared);
            }
            h.push_str("</table></details>");
        }
        h.push_str("</details>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_elided_to_what_tells_them_apart() {
        let id = format!("{:064x}", 0xabcu64);
        assert_eq!(elide(&id), format!("{}…", &id[..12]));
        assert_eq!(elide("short"), "short");
        assert_eq!(
            elide(&format!("cri-containerd-{id}.scope")),
            format!("cri-containerd-{}….scope", &id[..12])
        );
        assert_eq!(
            elide("run-0001-of-a-very-long-batch-job-name-attempt-1"),
            "run-0001-of-a-very-l…me-attempt-1"
        );
    }
}
