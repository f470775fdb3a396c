//! Presenting the matrix: the text table printed at the end of `vm-test`, with
//! a legend, and for every red row or cell the details of why.

use std::fmt::Write as _;

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
/// Hook families, and the perf rows: the old-kernel object forced (`watch
/// --transport perf`), hooks per point (`perf`) and its tracepoint programs
/// alone (`perf-tp`).
pub const FAMILIES: [&str; 5] = ["fentry", "kprobe", "tracepoint", "perf", "perf-tp"];

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
                Some(c) if c["status"] == "unavailable" => {
                    let _ = writeln!(s, " unavailable by the probe table  pass");
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
        if let Some(c) = &r.census {
            head(&mut s);
            let _ = writeln!(s, "{:<11} {}", "(census)", census_text(c));
        }
        if let Some(p) = &r.pins {
            head(&mut s);
            let _ = writeln!(s, "{:<11} {}", "(pins)", pins_text(p));
        }
        if let Some(t) = &r.toggle {
            head(&mut s);
            let _ = writeln!(s, "{:<11} {}", "(toggle)", toggle_text(t));
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
         reported the same events and memcg IDs; (census) = how `kmem-trace census` \
         classified a tmpfs-pinned and a page-cache-pinned dying memcg; (pins) = cgroup v2 \
         swap and socket pins: whether the kernel kept the memcg dying, when the trace saw its \
         ID released (offline, at the pin's release, or not seen: no hook), and the census's \
         cause and bytes."
    );
    let findings = kernel_findings(runs);
    if !findings.is_empty() {
        let _ = writeln!(
            s,
            "\nKernel findings (the kernel differs from its row in kmem-trace/src/leaks.rs; \
             not tracer failures):"
        );
        for f in &findings {
            let _ = writeln!(s, "  {f}");
        }
    }
    let details = failure_details(runs);
    if !details.is_empty() {
        let _ = writeln!(s, "\nFailures:\n{details}");
    }
    s
}

/// Where a kernel behaved otherwise than the leak table says, once per run and
/// finding (every family of a run sees the same kernel).
pub fn kernel_findings(runs: &[RunResult]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in runs {
        let pins = r.pins.iter().flat_map(|p| {
            p["scenarios"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        });
        for c in r.cells.iter().cloned().chain(pins) {
            for f in c["findings"].as_array().into_iter().flatten() {
                let line = format!("{}: {}", r.label, f.as_str().unwrap_or("?"));
                if !out.contains(&line) {
                    out.push(line);
                }
            }
        }
    }
    out
}

/// One line on the census check: each pin as the census classified it, whether
/// the pins' memcgs left it after their release, the verdict.
pub fn census_text(c: &Value) -> String {
    let pins: Vec<String> = c["seen"]["pins"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {}",
                p["name"].as_str().unwrap_or("?"),
                p["pin"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let freed = match c["seen"]["freed"].as_bool() {
        Some(true) => ", gone after release",
        Some(false) => ", STILL LISTED after release",
        None => "",
    };
    match c["status"].as_str() {
        Some("pass") if pins.is_empty() => {
            "no pin held: both freed at rmdir, as the leak table says  pass".to_string()
        }
        Some("pass") => format!("dying: {}{freed}  pass", pins.join(", ")),
        Some("unsupported") => format!(
            "no cgroup BPF iterator: counts only, {} dying",
            c["seen"]["dying"]
        ),
        _ => format!("dying: {}{freed}  FAIL", pins.join(", ")),
    }
}

/// One line on the pin scenarios: per scenario whether the kernel kept the
/// memcg dying, when the trace saw its ID go, and the census's cause and bytes.
pub fn pins_text(p: &Value) -> String {
    if p["status"] == "unsupported" {
        return format!("not run: {}", p["why"].as_str().unwrap_or("?"));
    }
    let parts: Vec<String> = p["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let dying = match s["kernel_dying"].as_bool() {
                Some(true) => "dying",
                Some(false) => "freed",
                None => "?",
            };
            let census = &s["census"];
            let named = match census["pin"].as_str() {
                Some(pin) => format!("census {pin} {}B", census["mem_bytes"]),
                None => "census: not listed".into(),
            };
            format!(
                "{} {dying}, id at {}, {named}",
                s["name"].as_str().unwrap_or("?"),
                s["id_release"].as_str().unwrap_or("?")
            )
        })
        .collect();
    let verdict = if p["status"] == "pass" {
        "pass"
    } else {
        "FAIL"
    };
    format!("{}  {verdict}", parts.join("; "))
}

/// One line on the v2 `+memory` toggle: per family pass or FAIL, and the
/// points its hooks are blind to (the documented limitation).
pub fn toggle_text(t: &Value) -> String {
    if t["status"] == "unsupported" {
        return format!("not run: {}", t["why"].as_str().unwrap_or("?"));
    }
    let parts: Vec<String> = t["families"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let blind: Vec<&str> = f["blind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let verdict = if f["status"] == "pass" {
                "pass"
            } else {
                "FAIL"
            };
            let blind = if blind.is_empty() {
                String::new()
            } else {
                format!(" (blind to toggles: {})", blind.join(", "))
            };
            format!("{} {verdict}{blind}", f["family"].as_str().unwrap_or("?"))
        })
        .collect();
    parts.join("; ")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::results::sample_run as run;

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
            lines[3].contains("(census)")
                && lines[3].contains("tmpfs-pin tmpfs, cache-pin page_cache, gone after release")
                && lines[3].ends_with("pass"),
            "{m}"
        );
        assert!(
            lines[4].contains("FAIL") && lines[4].contains(" off "),
            "{m}"
        );
        assert!(m.contains("Failures:"));
        assert!(!m.contains("Kernel findings"), "{m}");
    }

    #[test]
    fn kernel_findings_are_listed_once_per_run() {
        let mut r = run("7.3.4+deb13-cloud-amd64", "default", "pass");
        let finding = serde_json::json!(["tmpfs still pins on 7.3.4+deb13-cloud-amd64"]);
        r.cells[0]["findings"] = finding.clone();
        r.cells.push(r.cells[0].clone());
        let f = kernel_findings(&[r]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].ends_with("tmpfs still pins on 7.3.4+deb13-cloud-amd64"));
    }
}
