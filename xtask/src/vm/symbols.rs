//! The kernel symbols the probe table names, as the VMs found them in kallsyms,
//! checked against the table's `SEEN` ranges (`kmem-trace/src/probes/table.rs`):
//! each run says what the table should learn.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use super::results::RunResult;

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

#[cfg(test)]
mod tests {
    use super::*;

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
