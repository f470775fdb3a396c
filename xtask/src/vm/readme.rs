//! The README's "Tested kernels" table: one row per kernel, one column per hook
//! family, generated from a run and spliced between the README's markers.

use std::{collections::BTreeSet, fmt::Write as _};

use serde_json::Value;

use super::{report::FAMILIES, results::RunResult};

/// Rows of the README's "Tested kernels" table, one per kernel.
pub fn readme_table(runs: &[RunResult], date: &str) -> String {
    let mut kernels: Vec<&str> = Vec::new();
    for r in runs {
        if !kernels.contains(&r.release.as_str()) {
            kernels.push(&r.release);
        }
    }
    let mut s = String::from(
        "| kernel | arch | cgroup | boot options | fentry | kprobe | tracepoint | perf | perf-tp | census | pins (v2) |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for k in kernels {
        let rs: Vec<&RunResult> = runs.iter().filter(|r| r.release == k).collect();
        let host = rs.iter().any(|r| r.host);
        let name = if host {
            format!("build machine {k} (host row)")
        } else {
            format!("Debian {k}")
        };
        // Runs of one kernel from several saved results (--readme-from).
        let mut boots: Vec<&str> = Vec::new();
        for r in &rs {
            if !boots.contains(&r.boot.as_str()) {
                boots.push(&r.boot);
            }
        }
        let cg = rs.first().map(|r| r.cgroup.as_str()).unwrap_or("");
        let arch = rs.first().map_or("amd64", |r| r.arch_name());
        let _ = write!(s, "| {name} | {arch} | {cg} | {} |", boots.join(", "));
        for f in FAMILIES {
            let cells: Vec<Option<&Value>> = rs
                .iter()
                .filter(|r| r.families.iter().any(|x| x == f))
                .map(|r| r.cell(f))
                .collect();
            let text = if !cells.is_empty()
                && cells
                    .iter()
                    .all(|c| c.is_some_and(|c| c["status"] == "unavailable"))
            {
                "unavailable".to_string()
            } else if cells.is_empty() {
                if rs.iter().any(|r| family_unavailable(r, f)) {
                    "unavailable".to_string()
                } else {
                    "not run".to_string()
                }
            } else if cells
                .iter()
                .all(|c| c.is_some_and(|c| c["status"] == "pass"))
                && !rs.iter().any(|r| toggle_failed(r, f))
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
        let _ = write!(s, " {} | {} |", census_cell(&rs), pins_cell(&rs));
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\nLast run {date} with `cargo xtask vm-test --readme`: each Debian kernel booted in qemu \
         (TCG) with and without `cgroup.memory=nokmem`; a churn of memcgs, a tmpfs pin and \
         page-cache pins on ext4, under one `watch` per hook family at once, checking per \
         family every lifecycle point's events, the memcg IDs, the zombie verdicts (the \
         summary so far, SIGUSR1, while the pins hold), kmem activation, and that families \
         agree, and on cgroup v2 the `+memory` toggle under the same watches (memcgs made and \
         killed without mkdir/rmdir; a family fails if it misses what its hooks can see); \
         once per boot a census of a tmpfs-pinned and a page-cache-pinned dying memcg \
         (listed dying with that pin cause where the leak table says they pin, gone after \
         release, counts equal to the kernel's); on cgroup v2 the pins that hold on every \
         kernel (swap, UDP/TCP/UNIX sockets passed out, a dirty ext4 inode): the memcg dying \
         as the leak table says, the census's cause and bytes, the ID release. \
         perf: the old-kernel object (perf buffers, kprobes and classic tracepoints) forced \
         with `watch --transport perf`, judged by what `probes --transport perf` attaches and \
         agreeing with the families on every point it sees; perf-tp: its classic tracepoint \
         programs alone (`--hooks tracepoint`), which perf never runs where kprobes work. \
         \"unavailable\": the kernel attaches no hook of that family; \"not run\": not in \
         that run; \"-\": cgroup v1 boot. \
         Run it yourself with \
         `cargo xtask vm-test [--kernel 6.12-cloud]... [--boot default,nokmem] \
         [--family kprobe] [--jobs N] [--keep]`; results and console logs go to \
         `target/vm-test/`."
    );
    s
}

/// The census column: pass when every boot's census check passed.
fn census_cell(rs: &[&RunResult]) -> &'static str {
    let st: Vec<Option<&str>> = rs
        .iter()
        .map(|r| r.census.as_ref().and_then(|c| c["status"].as_str()))
        .collect();
    if st.iter().all(|s| *s == Some("pass")) {
        "pass"
    } else if st.iter().all(|s| *s == Some("unsupported")) {
        "counts only"
    } else if st.contains(&Some("fail")) {
        "**FAIL**"
    } else {
        "not run"
    }
}

/// The run's cgroup v2 `+memory` toggle check failed for `family`.
fn toggle_failed(r: &RunResult, family: &str) -> bool {
    r.toggle
        .as_ref()
        .and_then(|t| t["families"].as_array())
        .into_iter()
        .flatten()
        .any(|f| f["family"] == family && f["status"] == "fail")
}

/// The pins column (cgroup v2 only): pass when every boot's pins passed.
fn pins_cell(rs: &[&RunResult]) -> &'static str {
    let st: Vec<Option<&str>> = rs
        .iter()
        .map(|r| r.pins.as_ref().and_then(|c| c["status"].as_str()))
        .collect();
    if st.contains(&Some("fail")) {
        "**FAIL**"
    } else if st.iter().all(|s| *s == Some("pass")) {
        "pass"
    } else if st.iter().all(|s| matches!(s, Some("unsupported") | None)) {
        "-"
    } else {
        "not run"
    }
}

/// The kernel's probes report attaches no hook of `family` at all (the build
/// machine: no kprobes, fentry refused). For `perf`, the perf transport's
/// report: it could not start, or attached no hook of any family.
fn family_unavailable(r: &RunResult, family: &str) -> bool {
    let perf = family.starts_with("perf");
    let report = if perf { &r.perf_probes } else { &r.probes };
    let Some(report) = report else {
        return false;
    };
    if perf && !report["error"].is_null() {
        return true;
    }
    let Some(points) = report["points"].as_array() else {
        return false;
    };
    !points.iter().any(|p| {
        p["tried"].as_array().into_iter().flatten().any(|a| {
            (family == "perf"
                || a["family"] == family
                || (family == "perf-tp" && a["family"] == "tracepoint"))
                && matches!(a["outcome"].as_str(), Some("chosen" | "works"))
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
    use super::*;
    use crate::vm::results::sample_run as run;

    #[test]
    fn readme_table_groups_boots_per_kernel() {
        let runs = vec![
            run("6.1.0-57-amd64", "default", "pass"),
            run("6.1.0-57-amd64", "nokmem", "pass"),
        ];
        let t = readme_table(&runs, "2026-11-29");
        assert!(
            t.contains("| Debian 6.1.0-57-amd64 | amd64 | v1 | default, nokmem | not run | not run | pass (id_release not visible) | not run | not run | pass | - |"),
            "{t}"
        );
        // arm64: the run's own record, or its release's suffix in results
        // saved without one.
        let mut a = run("6.12.117+deb13-cloud-arm64", "default", "pass");
        let t = readme_table(&[a.clone()], "2026-12-07");
        assert!(
            t.contains("| Debian 6.12.117+deb13-cloud-arm64 | arm64 | v1 |"),
            "{t}"
        );
        a.release = "6.12.117+deb13-cloud".into();
        a.arch = "arm64".into();
        let t = readme_table(&[a], "2026-12-07");
        assert!(t.contains("| arm64 |"), "{t}");
        // A family whose v2 toggle check failed is not "pass" (7.3.4 cloud
        // nokmem, kprobe, 2026-12-06), and the pins show in their column.
        let mut a = run("7.3.4+deb13-cloud-amd64", "nokmem", "pass");
        a.cgroup = "v2".into();
        a.toggle = Some(serde_json::json!({"status": "fail", "families": [
            {"family": "tracepoint", "status": "fail"}]}));
        a.pins = Some(serde_json::json!({"status": "pass"}));
        let t = readme_table(&[a], "2026-12-06");
        assert!(
            t.contains(
                "| v2 | nokmem | not run | not run | **FAIL** | not run | not run | pass | pass |"
            ),
            "{t}"
        );
        // The perf row: its own report decides "unavailable".
        let mut p = run("5.10.0-39-cloud-amd64", "default", "pass");
        p.perf_probes = Some(serde_json::json!({"error": "loading the eBPF object failed"}));
        let t = readme_table(&[p.clone()], "2026-12-06");
        assert!(
            t.contains("| pass (id_release not visible) | unavailable | unavailable |"),
            "{t}"
        );
        p.families.push("perf".into());
        p.cells.push(
            serde_json::json!({"family": "perf", "status": "pass", "points": {
            "free": {"status": "pass"}, "id_release": {"status": "blind"}}}),
        );
        p.perf_probes = Some(serde_json::json!({"points": []}));
        let t = readme_table(&[p], "2026-12-06");
        assert!(
            t.contains("| pass (id_release not visible) | pass (id_release not visible) |"),
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
}
