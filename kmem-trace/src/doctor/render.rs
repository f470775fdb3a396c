//! Doctor output: text for people, one JSON document for tools, and the one
//! line a node-problem-detector custom plugin prints (NPD keeps the first 80
//! characters by default, so the most important words come first).

use std::io::{self, Write};

use super::{Report, Severity};
use crate::outputs::text::Term;

/// Human report: the verdict, then every finding worst first with its fixes.
pub fn text(r: &Report, w: &mut dyn Write) -> io::Result<()> {
    let f = &r.facts;
    writeln!(
        w,
        "kmem-trace doctor: {} (exit {}) — kernel {}{}",
        r.status.label(),
        r.exit_code,
        Term(f.release.as_deref().unwrap_or("?")),
        if f.host_root.as_os_str() == "/" {
            String::new()
        } else {
            format!(", host root {}", f.host_root.display())
        }
    )?;
    // Titles and details quote cgroup paths and the command line.
    for x in &r.findings {
        writeln!(
            w,
            "[{:<8}] {}: {}",
            x.severity.label(),
            x.id,
            Term(&x.title)
        )?;
        if !x.detail.is_empty() {
            writeln!(w, "           {}", Term(&x.detail))?;
        }
        for fix in &x.remediation {
            writeln!(w, "           fix: {}", Term(fix))?;
        }
    }
    if !f.unreadable.is_empty() {
        writeln!(w, "not readable: {}", Term(&f.unreadable.join(", ")))?;
    }
    Ok(())
}

/// The whole report as one JSON document.
pub fn json(r: &Report, w: &mut dyn Write) -> io::Result<()> {
    serde_json::to_writer(&mut *w, r)?;
    writeln!(w)
}

/// One line: `KmemLeak: <worst finding>; <dying>, IDs <n>/<limit>, <ID leak>`.
/// The prefix follows the report's severity: a warning is not `OK`.
pub fn npd_line(r: &Report) -> String {
    let worst = r.findings.first();
    let reason = match r.exit_code {
        1 => match worst.map(|f| f.id) {
            Some("kmem-leak") => "KmemLeak",
            Some("memcg-ids") => "MemcgIDsExhausting",
            Some("forecast") => "MemcgIDsExhausting",
            _ => "MemcgLeak",
        },
        2 => "Unknown",
        _ if r.status == Severity::Warning => "Warning",
        _ => "OK",
    };
    let mut parts = Vec::new();
    if r.status >= Severity::Warning {
        if let Some(x) = worst {
            parts.push(x.title.clone());
        }
    }
    if let Some((d, _)) = r.facts.dying {
        parts.push(format!("{d} dying memcgs"));
    }
    parts.push(format!(
        "IDs {}/{}",
        crate::report::model::or_unknown(r.facts.ids_in_use),
        r.id_limit
    ));
    if let Some(f) = &r.forecast {
        parts.push(f.leak_text());
    }
    format!("{reason}: {}", Term(&parts.join("; ")))
}

pub fn npd(r: &Report, w: &mut dyn Write) -> io::Result<()> {
    writeln!(w, "{}", npd_line(r))
}
