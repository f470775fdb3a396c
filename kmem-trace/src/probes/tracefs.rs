//! Classic tracepoints read their record at fixed offsets: before attaching
//! one, its `format` file in tracefs is checked against the offsets the
//! program was built with (`kmem-trace-ebpf/src/tracepoints.rs`).

use std::{fs, path::Path};

/// Where tracefs is mounted, in the order aya looks.
const TRACEFS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The fields each classic tracepoint program reads: (name, offset, size).
fn expected(category: &str, name: &str) -> Option<&'static [(&'static str, usize, usize)]> {
    match (category, name) {
        // WQ_TP_WORK_OFF and WQ_TP_FUNCTION_OFF in the eBPF program.
        ("workqueue", "workqueue_execute_start") => Some(&[("work", 8, 8), ("function", 16, 8)]),
        _ => None,
    }
}

/// Checks the tracepoint's record layout; the reason when it cannot be used.
pub fn check_format(category: &str, name: &str) -> Result<(), String> {
    let want = expected(category, name)
        .ok_or_else(|| format!("no record layout known for tracepoint {category}:{name}"))?;
    let text = TRACEFS
        .iter()
        .find_map(|root| {
            fs::read_to_string(
                Path::new(root)
                    .join("events")
                    .join(category)
                    .join(name)
                    .join("format"),
            )
            .ok()
        })
        .ok_or_else(|| {
            "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)".to_string()
        })?;
    check_fields(&text, want)
}

/// Checks `format` text: every wanted field at its offset and size.
fn check_fields(text: &str, want: &[(&str, usize, usize)]) -> Result<(), String> {
    for &(field, off, size) in want {
        let found = text
            .lines()
            .find_map(|l| parse_field(l).filter(|f| f.0 == field));
        match found {
            Some((_, o, s)) if o == off && s == size => {}
            Some((_, o, s)) => {
                return Err(format!(
                    "tracepoint field {field} is at offset {o} size {s}, the program reads offset {off} size {size}"
                ))
            }
            None => return Err(format!("tracepoint has no field {field}")),
        }
    }
    Ok(())
}

/// `field:void * work;\toffset:8;\tsize:8;\tsigned:0;` → ("work", 8, 8).
fn parse_field(line: &str) -> Option<(&str, usize, usize)> {
    let mut parts = line.trim().split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    let name = decl.rsplit([' ', '*']).next()?;
    let mut off = None;
    let mut size = None;
    for p in parts {
        if let Some(v) = p.strip_prefix("offset:") {
            off = v.parse().ok();
        } else if let Some(v) = p.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    Some((name, off?, size?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WQ: &str = "name: workqueue_execute_start\nID: 380\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\tfield:void * work;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:void * function;\toffset:16;\tsize:8;\tsigned:0;\n";

    #[test]
    fn the_workqueue_record_matches_and_a_moved_field_does_not() {
        let want = expected("workqueue", "workqueue_execute_start").unwrap();
        assert_eq!(check_fields(WQ, want), Ok(()));
        let moved = WQ.replace("function;\toffset:16", "function;\toffset:24");
        let err = check_fields(&moved, want).unwrap_err();
        assert!(err.contains("offset 24"), "{err}");
        let err = check_fields("format:\n", want).unwrap_err();
        assert!(err.contains("no field work"), "{err}");
    }
}
