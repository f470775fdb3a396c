//! Presenting the matrix: the text table printed at the end of `vm-test`, the
//! failure details, the probe-table symbols each kernel showed, and the
//! "Tested kernels" Markdown table for the README.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use serde_json::Value;

use super::results::RunResult;

/// Matrix columns: lifecycle points as the guest names them, and their headers.
const POINTS: [(&str, &str); 7] = [
    ("alloc", "alloc"),
    ("online", "online"),
    ("offline", "offline"),
    ("released", "released"),
    ("free", "free"),
    ("id_release", "id_rel"),
    ("kmem_activate", "kmem"),
];
pub const FAMILIES: [&str; 3] = ["fentry", "kprobe", "tracepoint"];

/// One point of one cell: the count seen, `-` for a point the family cannot see
/// (not a pass), `on`/`off` for kmem activation, `FAIL`.
fn point_text(point: &str, r: &Value) -> String {
    match r["status"].as_str() {
        Some("pass") if point == "kmem_activate" => {
            if r["expected"].as_u64().unwrap_or(0) > 0 {
                "on".into()
            } else {
                "off".into()
            }
        }
        Some("pass") => r["got"].to_string(),
        Some("blind") => "-".into(),
        Some("fail") => "FAIL".into(),
        _ => "?".into(),
    }
}

fn failed_checks(cell: &Value) -> Vec<String> {
    cell["checks"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["ok"] != true)
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The text matrix with a legend and, for every red row or cell, why.
pub fn matrix(runs: &[RunResult], wall_s: f64) -> String {
    let mut s = String::new();
    let failed = runs.iter().filter(|r| !r.ok).count();
    let _ = writeln!(
        s,
        "kmem-trace VM kernel matrix: {} runs, {} failed, {wall_s:.1}s wall",
        runs.len(),
        failed
    );
    let _ = write!(s, "{:<36} {:<3} {:<11}", "kernel / boot", "cg", "family");
    for (_, h) in POINTS {
        let _ = write!(s, " {h:>8}");
    }
    let _ = writeln!(s, "  {:<12} result", "checks");
    for r in runs {
        let label = if r.host {
            format!("host {}", r.release)
        } else {
            format!("{} {}", r.release, r.boot)
        };
        let mut first = true;
        let mut head = |s: &mut String| {
            let cg = if first { r.cgroup.as_str() } else { "" };
            let l = if first { label.as_str() } else { "" };
            let _ = write!(s, "{l:<36} {cg:<3} ");
            first = false;
        };
        for f in &r.families {
            head(&mut s);
            let _ = write!(s, "{f:<11}");
            match r.cell(f) {
                Some(c) if c["points"].is_object() => {
                    for (p, _) in POINTS {
                        let _ = write!(s, " {:>8}", point_text(p, &c["points"][p]));
                    }
                    let fc = failed_checks(c);
                    let checks = if fc.is_empty() {
                        "ok".to_string()
                    } else {
                        fc.join(",")
                    };
                    let verdict = if c["status"] == "pass" {
                        "pass"
                    } else {
                        "FAIL"
                    };
                    let _ = writeln!(s, "  {checks:<12} {verdict}");
                }
                Some(c) => {
                    let _ = writeln!(s, " {} FAIL", c["status"].as_str().unwrap_or("?"));
                }
                None => {
                    let _ = writeln!(s, " no result  FAIL");
                }
            }
        }
        if r.families.len() > 1 && !r.compare.is_empty() {
            head(&mut s);
            let _ = write!(s, "{:<11}", "(agree)");
            for (p, _) in POINTS {
                let c = r.compare.iter().find(|c| c["point"] == p);
                let t = match c.map(|c| &c["agree"]) {
                    Some(Value::Bool(true)) => "same",
                    Some(Value::Bool(false)) => "DIFF",
                    _ => "",
                };
                let _ = write!(s, " {t:>8}");
            }
            let _ = writeln!(s);
        }
        if let Some(f) = &r.failure {
            head(&mut s);
            let _ = writeln!(s, "FAILED: {f}");
        }
    }
    let _ = writeln!(
        s,
        "\nN = events seen, one per memcg of the scenario; - = no hook of that family can see \
         the point on that kernel (not a pass); kmem on/off = kmem activation reported \
         (on by default, off with cgroup.memory=nokmem); (agree) = families seeing a point \
         reported the same events and memcg IDs."
    );
    let details = failure_details(runs);
    if !details.is_empty() {
        let _ = writeln!(s, "\nFailures:\n{details}");
    }
    s
}

fn failure_details(runs: &[RunResult]) -> String {
    let mut s = String::new();
    for r in runs.iter().filter(|r| !r.ok) {
        let _ = writeln!(s, "{} {}:", r.label, r.kernel);
        if let Some(f) = &r.failure {
            let _ = writeln!(s, "  {f}");
        }
        for e in &r.errors {
            let _ = writeln!(s, "  guest error: {e}");
        }
        for c in r.cells.iter().filter(|c| c["status"] != "pass") {
            let fam = c["family"].as_str().unwrap_or("?");
            if let Some(points) = c["points"].as_object() {
                for (p, pr) in points.iter().filter(|(_, pr)| pr["status"] == "fail") {
                    let _ = writeln!(
                        s,
                        "  {fam} {p}: expected {} got {}: {}",
                        pr["expected"],
                        pr["got"],
                        pr["detail"].as_str().unwrap_or("")
                    );
                }
            }
            for ch in c["checks"].as_array().into_iter().flatten() {
                if ch["ok"] != true {
                    let _ = writeln!(
                        s,
                        "  {fam} check {}: {}",
                        ch["name"].as_str().unwrap_or("?"),
                        ch["detail"].as_str().unwrap_or("")
                    );
                }
            }
            for e in c["errors"].as_array().into_iter().flatten() {
                let _ = writeln!(s, "  {fam}: {}", e.as_str().unwrap_or(""));
            }
        }
        for c in r.compare.iter().filter(|c| c["agree"] == false) {
            let _ = writeln!(
                s,
                "  families disagree on {}: {}",
                c["point"].as_str().unwrap_or("?"),
                c["detail"].as_str().unwrap_or("")
            );
        }
        if let Some(log) = r.kernel_log.as_ref().filter(|l| l["splat"] == true) {
            let _ = writeln!(s, "  kernel warnings: {}", log["lines"]);
        }
        if r.failure.is_some() {
            let _ = writeln!(s, "  last output:");
            for l in &r.tail {
                let _ = writeln!(s, "    {l}");
            }
        }
        if let Some(c) = &r.console {
            let _ = writeln!(s, "  console log: {c}");
        }
    }
    s
}

/// A symbol without GCC's clone suffixes (`.part.0`, `.isra.0`, `.constprop.0`, `.cold`).
pub fn base_symbol(s: &str) -> &str {
    s.split('.').next().unwrap_or(s)
}

/// For every symbol the probe table names (the candidates in the probes
/// reports) and every GCC clone of one: the kernels it was seen on.
pub fn symbols_seen(runs: &[RunResult]) -> BTreeMap<String, BTreeSet<String>> {
    let mut candidates = BTreeSet::new();
    for r in runs {
        for p in r
            .probes
            .iter()
            .flat_map(|p| p["points"].as_array())
            .flatten()
        {
            for a in p["tried"].as_array().into_iter().flatten() {
                for c in a["candidates"].as_array().into_iter().flatten() {
                    if let Some(c) = c.as_str() {
                        candidates.insert(c.to_string());
                    }
                }
            }
        }
    }
    let bases: BTreeSet<&str> = candidates.iter().map(|c| base_symbol(c)).collect();
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in &candidates {
        seen.entry(c.clone()).or_default();
    }
    for r in runs.iter().filter(|r| !r.symbols.is_empty()) {
        for s in &r.symbols {
            if candidates.contains(s) || bases.contains(base_symbol(s)) {
                seen.entry(s.clone()).or_default().insert(r.kernel.clone());
            }
        }
    }
    seen
}

/// One `SEEN` entry of the probe table: symbol and kernel-series range.
#[derive(Debug, PartialEq)]
pub struct SeenEntry {
    pub symbol: String,
    pub range: Option<((u32, u32), (u32, u32))>,
    pub tracepoint: bool,
}

/// Reads the `SEEN` entries out of `kmem-trace/src/probes/table.rs`: lines
/// `seen("sym", v(6, 1), v(6, 18), "note"),` and `never("sym", "note"),`.
pub fn parse_seen(table_rs: &str) -> Vec<SeenEntry> {
    let num_pair = |s: &str| -> Option<(u32, u32)> {
        let (a, b) = s.trim().trim_start_matches("v(").split_once(',')?;
        Some((
            a.trim().parse().ok()?,
            b.trim().trim_end_matches(')').parse().ok()?,
        ))
    };
    table_rs
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let (is_seen, rest) = if let Some(r) = l.strip_prefix("seen(\"") {
                (true, r)
            } else {
                (false, l.strip_prefix("never(\"")?)
            };
            let (symbol, rest) = rest.split_once('"')?;
            let range = if is_seen {
                let mut vs = rest.split("v(").skip(1);
                let a = num_pair(vs.next()?.split(')').next()?)?;
                let b = num_pair(vs.next()?.split(')').next()?)?;
                Some((a, b))
            } else {
                None
            };
            Some(SeenEntry {
                symbol: symbol.to_string(),
                range,
                tracepoint: l.contains("\"tracepoint\""),
            })
        })
        .collect()
}

fn series(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Where this run's kernels disagree with the probe table's `SEEN` ranges: a
/// symbol outside its range, missing inside it, or a new GCC clone of a table
/// symbol. Each line says what to change in `table.rs`.
pub fn seen_findings(runs: &[RunResult], seen: &[SeenEntry]) -> Vec<String> {
    let mut out = Vec::new();
    let known: BTreeSet<&str> = seen.iter().map(|s| s.symbol.as_str()).collect();
    let bases: BTreeSet<&str> = seen.iter().map(|s| base_symbol(&s.symbol)).collect();
    for r in runs.iter().filter(|r| !r.symbols.is_empty()) {
        let Some(ser) = series(&r.kernel) else {
            continue;
        };
        let has = |s: &str| r.symbols.iter().any(|x| x == s);
        for e in seen.iter().filter(|e| !e.tracepoint) {
            let inside = e.range.is_some_and(|(a, b)| a <= ser && ser <= b);
            match (inside, has(&e.symbol)) {
                (true, false) => out.push(format!(
                    "{} is not in kallsyms of {} although SEEN covers {}.{}",
                    e.symbol, r.kernel, ser.0, ser.1
                )),
                (false, true) => out.push(format!(
                    "{} seen on {}: extend its SEEN range to {}.{}",
                    e.symbol, r.kernel, ser.0, ser.1
                )),
                _ => {}
            }
        }
        for s in &r.symbols {
            if bases.contains(base_symbol(s)) && !known.contains(s.as_str()) {
                out.push(format!(
                    "{s} on {}: a new alternative of {}; add it to the table and SEEN",
                    r.kernel,
                    base_symbol(s)
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The symbols section: where each table symbol exists, and what the probe
/// table's `SEEN` ranges should learn from this run.
pub fn symbols_text(runs: &[RunResult], findings: &[String]) -> String {
    let mut s = String::from("Probe-table symbols in kallsyms:\n");
    for (sym, kernels) in symbols_seen(runs) {
        let where_ = if kernels.is_empty() {
            "not a kallsyms function here (tracepoint, or absent)".to_string()
        } else {
            kernels.into_iter().collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(s, "  {sym:<34} {where_}");
    }
    if findings.is_empty() {
        let _ = writeln!(
            s,
            "The probe table's SEEN ranges (kmem-trace/src/probes/table.rs) match these kernels."
        );
    } else {
        let _ = writeln!(s, "Update SEEN in kmem-trace/src/probes/table.rs:");
        for f in findings {
            let _ = writeln!(s, "  {f}");
        }
    }
    s
}

/// Rows of the README's "Tested kernels" table, one per kernel.
pub fn readme_table(runs: &[RunResult], date: &str) -> String {
    let mut kernels: Vec<&str> = Vec::new();
    for r in runs {
        if !kernels.contains(&r.release.as_str()) {
            kernels.push(&r.release);
        }
    }
    let mut s = String::from(
        "| kernel | cgroup | boot options | fentry | kprobe | tracepoint |\n|---|---|---|---|---|---|\n",
    );
    for k in kernels {
        let rs: Vec<&RunResult> = runs.iter().filter(|r| r.release == k).collect();
        let host = rs.iter().any(|r| r.host);
        let name = if host {
            format!("build machine {k} (host row)")
        } else {
            format!("Debian {k}")
        };
        let boots: Vec<&str> = rs.iter().map(|r| r.boot.as_str()).collect();
        let cg = rs.first().map(|r| r.cgroup.as_str()).unwrap_or("");
        let _ = write!(s, "| {name} | {cg} | {} |", boots.join(", "));
        for f in FAMILIES {
            let cells: Vec<Option<&Value>> = rs
                .iter()
                .filter(|r| r.families.iter().any(|x| x == f))
                .map(|r| r.cell(f))
                .collect();
            let text = if cells.is_empty() {
                if rs.iter().any(|r| family_unavailable(r, f)) {
                    "unavailable".to_string()
                } else {
                    "not run".to_string()
                }
            } else if cells
                .iter()
                .all(|c| c.is_some_and(|c| c["status"] == "pass"))
            {
                let blind: BTreeSet<&str> = cells
                    .iter()
                    .flatten()
                    .flat_map(|c| c["points"].as_object())
                    .flat_map(|m| m.iter())
                    .filter(|(_, v)| v["status"] == "blind")
                    .map(|(p, _)| p.as_str())
                    .collect();
                if blind.is_empty() {
                    "pass".to_string()
                } else {
                    format!(
                        "pass ({} not visible)",
                        blind.into_iter().collect::<Vec<_>>().join(", ")
                    )
                }
            } else {
                "**FAIL**".to_string()
            };
            let _ = write!(s, " {text} |");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\nLast run {date} with `cargo xtask vm-test --readme`: each Debian kernel booted in qemu \
         (TCG) with and without `cgroup.memory=nokmem`; per hook family a churn of memcgs, a \
         tmpfs pin and page-cache pins on ext4, checking every lifecycle point's events, the \
         memcg IDs, the zombie verdicts, kmem activation, and that families agree. \
         \"unavailable\": the kernel attaches no hook of that family."
    );
    s
}

/// The kernel's probes report attaches no hook of `family` at all (the build
/// machine: no kprobes, fentry refused).
fn family_unavailable(r: &RunResult, family: &str) -> bool {
    let Some(points) = r.probes.as_ref().and_then(|p| p["points"].as_array()) else {
        return false;
    };
    !points.iter().any(|p| {
        p["tried"].as_array().into_iter().flatten().any(|a| {
            a["family"] == family && matches!(a["outcome"].as_str(), Some("chosen" | "works"))
        })
    })
}

/// Replaces the text between the README's tested-kernels markers.
pub fn splice_readme(readme: &str, table: &str) -> Option<String> {
    const START: &str = "<!-- tested-kernels:start -->";
    const END: &str = "<!-- tested-kernels:end -->";
    let a = readme.find(START)? + START.len();
    let b = readme[a..].find(END)? + a;
    Some(format!("{}\n{}{}", &readme[..a], table, &readme[b..]))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(release: &str, boot: &str, status: &str) -> RunResult {
        let pts = |kmem: u64| {
            json!({
                "alloc": {"status": "pass", "expected": 20, "got": 20},
                "online": {"status": "pass", "expected": 20, "got": 20},
                "offline": {"status": status, "expected": 20, "got": 0},
                "released": {"status": "pass", "expected": 20, "got": 20},
                "free": {"status": "pass", "expected": 20, "got": 20},
                "id_release": {"status": "blind", "expected": 0, "got": 0},
                "kmem_activate": {"status": "pass", "expected": kmem, "got": kmem},
            })
        };
        let mut r = RunResult {
            label: format!("{release} {boot}"),
            release: release.into(),
            kernel: release.into(),
            boot: boot.into(),
            cgroup: "v1".into(),
            families: vec!["tracepoint".into()],
            cells: vec![json!({"family": "tracepoint", "status": status,
                               "points": pts(if boot == "nokmem" { 0 } else { 20 }),
                               "checks": [{"name": "memcg IDs", "ok": true}]})],
            done: Some(status == "pass"),
            ..RunResult::default()
        };
        r.finish();
        r
    }

    #[test]
    fn matrix_shows_counts_blind_points_kmem_and_failures() {
        let runs = vec![
            run("6.1.0-57-amd64", "default", "pass"),
            run("6.1.0-57-amd64", "nokmem", "fail"),
        ];
        let m = matrix(&runs, 12.0);
        assert!(m.contains("2 runs, 1 failed"), "{m}");
        let lines: Vec<&str> = m.lines().collect();
        assert!(
            lines[2].contains("tracepoint") && lines[2].contains(" on "),
            "{m}"
        );
        assert!(
            lines[3].contains("FAIL") && lines[3].contains(" off "),
            "{m}"
        );
        assert!(m.contains("Failures:"));
    }

    #[test]
    fn readme_table_groups_boots_per_kernel() {
        let runs = vec![
            run("6.1.0-57-amd64", "default", "pass"),
            run("6.1.0-57-amd64", "nokmem", "pass"),
        ];
        let t = readme_table(&runs, "2026-11-29");
        assert!(
            t.contains("| Debian 6.1.0-57-amd64 | v1 | default, nokmem | not run | not run | pass (id_release not visible) |"),
            "{t}"
        );
        let readme =
            "intro\n<!-- tested-kernels:start -->\nold\n<!-- tested-kernels:end -->\nrest\n";
        let new = splice_readme(readme, "NEW\n").unwrap();
        assert_eq!(
            new,
            "intro\n<!-- tested-kernels:start -->\nNEW\n<!-- tested-kernels:end -->\nrest\n"
        );
        assert!(splice_readme("no markers", "x").is_none());
    }

    #[test]
    fn seen_entries_parse_and_findings_say_what_to_change() {
        let table = r#"
    seen("mem_cgroup_id_put_many", v(6, 1), v(6, 12), "x"),
    never("memcg_online_kmem", "inlined"),
    seen("cgroup_mkdir", v(6, 1), v(6, 18), "tracepoint"),
"#;
        let seen = parse_seen(table);
        assert_eq!(
            seen[0],
            SeenEntry {
                symbol: "mem_cgroup_id_put_many".into(),
                range: Some(((6, 1), (6, 12))),
                tracepoint: false
            }
        );
        assert_eq!(seen[1].range, None);
        assert!(seen[2].tracepoint);
        let run = |kernel: &str, syms: &[&str]| RunResult {
            kernel: kernel.into(),
            symbols: syms.iter().map(|s| s.to_string()).collect(),
            ..RunResult::default()
        };
        let runs = vec![
            run(
                "6.18.44-fc",
                &["mem_cgroup_id_put_many", "memcg_online_kmem.part.0"],
            ),
            run("6.12.117+deb12-amd64", &[]),
            run("6.1.0-57-amd64", &["mem_cgroup_css_free"]),
        ];
        assert_eq!(
            seen_findings(&runs, &seen),
            vec![
                "mem_cgroup_id_put_many is not in kallsyms of 6.1.0-57-amd64 although SEEN covers 6.1",
                "mem_cgroup_id_put_many seen on 6.18.44-fc: extend its SEEN range to 6.18",
                "memcg_online_kmem.part.0 on 6.18.44-fc: a new alternative of memcg_online_kmem; add it to the table and SEEN",
            ]
        );
    }

    #[test]
    fn clone_suffixes_are_stripped() {
        assert_eq!(
            base_symbol("memcg_offline_kmem.part.0"),
            "memcg_offline_kmem"
        );
        assert_eq!(base_symbol("mem_cgroup_css_free"), "mem_cgroup_css_free");
    }
}
