//! The leak-behaviour table (`kmem_trace::leaks`) checked on the running kernel:
//! which pinned memcgs the table says stay dying, which ones the kernel kept,
//! and where they differ a *kernel finding* ("tmpfs no longer pins on 7.2.13"),
//! which is not a tracer failure: the tracer is then judged against what the
//! kernel did.

use kmem_trace::{
    leaks::{self, Cause},
    probes::kernel::KernelVersion,
};

use crate::check::{Expect, Observation};

/// What the table says for one cause on `release`: `Some(true)` stays dying,
/// `Some(false)` freed at rmdir, `None` unknown.
pub fn table_says(cause: Cause, release: &str) -> Option<bool> {
    let v = KernelVersion::parse(release)?;
    leaks::lookup(cause, v).map(|r| r.stays_dying)
}

/// The pins the kernel kept dying, and the findings against the table.
#[derive(Debug, Default, PartialEq)]
pub struct Pins {
    /// Pinned memcgs the kernel kept dying until their pin was released.
    pub held: Vec<String>,
    /// Where the kernel differs from its table row.
    pub findings: Vec<String>,
    /// The trace and the kernel's own count disagree (a tracer failure).
    pub problems: Vec<String>,
}

/// Judges the pins: in a VM (exact counts) whose tracer sees frees, the kernel's
/// behaviour is what the trace shows, cross-checked with the kernel's count of
/// dying memcgs; elsewhere the table's word is taken (unknown rows: held).
pub fn judge(obs: &Observation, exp: &Expect, free_seen: bool) -> Pins {
    let mut out = Pins::default();
    let expected: Vec<(&str, Option<bool>)> = exp.pins_with_table();
    let measured = exp.exact && free_seen;
    for (pin, says) in &expected {
        let held = if measured {
            !obs.freed_early.iter().any(|f| f == pin)
        } else {
            says.unwrap_or(true)
        };
        if held {
            out.held.push(pin.to_string());
        }
        if let (true, Some(says)) = (measured, says) {
            if held != *says {
                let cause = exp.cause_of(pin).name();
                let f = if held {
                    format!(
                        "{cause} still pins on {} (table: freed at rmdir)",
                        exp.release
                    )
                } else {
                    format!("{cause} no longer pins on {}", exp.release)
                };
                if !out.findings.contains(&f) {
                    out.findings.push(f);
                }
            }
        }
    }
    if let (true, Some(n)) = (measured, obs.kernel_dying) {
        if n != out.held.len() as i64 {
            out.problems.push(format!(
                "the kernel counts {n} dying memcgs, the trace shows {} pins held",
                out.held.len()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp(release: &str) -> Expect {
        Expect {
            churn: vec![],
            tmpfs_pin: "tmpfs-pin".into(),
            cache_pins: vec!["cache-pin-0".into(), "cache-pin-1".into()],
            kmem: true,
            pin_bytes: 1 << 20,
            exact: true,
            release: release.into(),
        }
    }

    fn obs(freed: &[&str], dying: i64) -> Observation {
        Observation {
            freed_early: freed.iter().map(|s| s.to_string()).collect(),
            kernel_dying: Some(dying),
            ..Observation::default()
        }
    }

    #[test]
    fn rows_as_the_table_says_give_no_finding() {
        let p = judge(&obs(&[], 3), &exp("6.12.117+deb12-amd64"), true);
        assert_eq!(p.held.len(), 3);
        assert!(p.findings.is_empty() && p.problems.is_empty(), "{p:?}");
        let all = ["tmpfs-pin", "cache-pin-0", "cache-pin-1"];
        let p = judge(&obs(&all, 0), &exp("7.3.4+deb13-cloud-amd64"), true);
        assert!(p.held.is_empty());
        assert!(p.findings.is_empty() && p.problems.is_empty(), "{p:?}");
    }

    #[test]
    fn a_kernel_that_differs_is_a_finding_not_a_failure() {
        let p = judge(&obs(&["tmpfs-pin"], 2), &exp("6.12.117+deb12-amd64"), true);
        assert_eq!(
            p.findings,
            vec!["tmpfs no longer pins on 6.12.117+deb12-amd64"]
        );
        assert!(p.problems.is_empty());
        let p = judge(&obs(&[], 3), &exp("7.3.4+deb13-cloud-amd64"), true);
        assert_eq!(
            p.findings,
            vec![
                "tmpfs still pins on 7.3.4+deb13-cloud-amd64 (table: freed at rmdir)",
                "page cache still pins on 7.3.4+deb13-cloud-amd64 (table: freed at rmdir)"
            ]
        );
    }

    #[test]
    fn a_trace_that_disagrees_with_the_kernel_count_fails() {
        // The tracer missed the frees: the kernel counts nothing dying.
        let p = judge(&obs(&[], 0), &exp("6.12.117+deb12-amd64"), true);
        assert_eq!(p.problems.len(), 1, "{p:?}");
        // Blind to free: the table's word, no finding.
        let p = judge(&obs(&[], 0), &exp("7.3.4+deb13-cloud-amd64"), false);
        assert!(p.held.is_empty() && p.findings.is_empty() && p.problems.is_empty());
        // Unknown rows count as held where nothing is measured.
        let p = judge(&obs(&[], 3), &exp("7.0.10+deb13-amd64"), false);
        assert_eq!(p.held.len(), 3);
    }
}
