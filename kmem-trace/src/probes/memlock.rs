//! `RLIMIT_MEMLOCK`, raised before any BPF object is loaded. Before 5.11 the
//! kernel charges every BPF map and program to the loading user's
//! `RLIMIT_MEMLOCK` (`bpf_map_charge_memlock`, `bpf_prog_charge_memlock`); 5.11
//! moved that to the memory cgroup (Roman Gushchin's series "bpf: switch to
//! memcg-based memory accounting"). A 5.10 node with systemd's default of
//! 64 KiB (8 MiB since systemd 253) then fails map creation with `EPERM`.
//!
//! Raised always, not only where a feature probe says the kernel lacks memcg
//! accounting (libbpf takes the 5.11 helper `bpf_ktime_get_coarse_ns` as the
//! proxy): distribution kernels backport BPF helpers and the accounting
//! separately (RHEL), so the proxy can be wrong in the direction that fails;
//! and the limit still counts on 5.11+ for the perf transport: `perf_mmap`
//! charges a ring beyond `perf_event_mlock_kb` (516 KiB per CPU by default)
//! to `RLIMIT_MEMLOCK` unless the caller has `CAP_IPC_LOCK`. Raising only this
//! process's soft limit costs one syscall and changes nothing else.
//!
//! aya 0.14 has a last resort of its own (`sys/bpf.rs`,
//! `with_raised_rlimit_retry`): after an `EPERM` from map creation or program
//! loading on a kernel whose `uname` says before 5.11 it tries unlimited once,
//! only logs a refusal and never tries the hard limit. Raising here first makes
//! the limit a start-up choice `probes` and `watch -v` show, falls back to the
//! hard limit without `CAP_SYS_RESOURCE`, and covers the perf buffers too.

use std::fmt;

use serde::Serialize;

/// `RLIM_INFINITY` as the kernel reports it.
pub const INFINITY: u64 = libc::RLIM_INFINITY;

/// Below this, a load that fails with `EPERM` is blamed on the limit: the
/// default 1 MiB ring buffer and the maps beside it already take more than
/// systemd's 8 MiB default leaves on a busy pre-5.11 node (each map's pages
/// are charged, rounded up).
pub const LOW: u64 = 64 << 20;

/// A soft and a hard limit, bytes (`INFINITY`: unlimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

impl Limit {
    pub fn unlimited(&self) -> bool {
        self.soft == INFINITY
    }
}

fn bytes(v: u64) -> String {
    if v == INFINITY {
        "unlimited".into()
    } else if v >= 1 << 20 && v.is_multiple_of(1 << 20) {
        format!("{} MiB", v >> 20)
    } else if v >= 1 << 10 && v.is_multiple_of(1 << 10) {
        format!("{} KiB", v >> 10)
    } else {
        format!("{v} B")
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (hard {})", bytes(self.soft), bytes(self.hard))
    }
}

/// The limits to try, in order: unlimited (needs `CAP_SYS_RESOURCE` when the
/// hard limit is lower), else the soft limit up to the hard one (always
/// permitted). Empty: already unlimited.
pub fn attempts(before: Limit) -> Vec<Limit> {
    if before.unlimited() {
        return Vec::new();
    }
    let mut out = vec![Limit {
        soft: INFINITY,
        hard: INFINITY,
    }];
    if before.hard != INFINITY && before.hard > before.soft {
        out.push(Limit {
            soft: before.hard,
            hard: before.hard,
        });
    }
    out
}

/// What start-up did to the limit, shown by `probes` and `watch -v`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Memlock {
    /// `None`: the limit could not be read.
    pub before: Option<Limit>,
    pub after: Option<Limit>,
    /// Why it was not raised to unlimited, when it was not.
    pub note: Option<String>,
}

impl Memlock {
    /// The limit in force is finite and below [`LOW`].
    pub fn low(&self) -> bool {
        self.after.is_some_and(|l| l.soft < LOW)
    }

    /// The `memlock ...` line of `probes` and `watch -v`.
    pub fn line(&self) -> String {
        let show = |l: Option<Limit>| l.map_or("unknown".to_string(), |l| l.to_string());
        let mut s = if self.before == self.after {
            format!("memlock {} (kept)", show(self.after))
        } else {
            format!("memlock {} -> {}", show(self.before), show(self.after))
        };
        if let Some(n) = &self.note {
            s.push_str(&format!("; {n}"));
        }
        s
    }

    /// Adds what to do to a load or attach error that reads like the limit's
    /// `EPERM`, when the limit in force is low.
    pub fn explain(&self, err: &str) -> Option<String> {
        if !self.low() || !is_eperm(err) {
            return None;
        }
        Some(format!(
            "RLIMIT_MEMLOCK is {}, and kernels before 5.11 charge BPF maps and programs \
             to it: raise it (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`, \
             docker `--ulimit memlock=-1`) or grant CAP_SYS_RESOURCE so kmem-trace raises it itself",
            self.after.map_or("unknown".to_string(), |l| l.to_string())
        ))
    }
}

/// A load or attach error with [`Memlock::explain`]'s advice added.
pub(super) fn annotate(m: &Memlock, err: super::ProbeError) -> super::ProbeError {
    use super::ProbeError;
    let add = |text: String, sep: &str| match m.explain(&text) {
        Some(why) => format!("{text}{sep}{why}"),
        None => text,
    };
    match err {
        ProbeError::Load(e) => ProbeError::Load(add(e, "; ")),
        ProbeError::NothingAttached { mode, reasons } => ProbeError::NothingAttached {
            mode,
            reasons: add(reasons, "\n  "),
        },
        // Opening a perf buffer: `perf_mmap()` charges it beyond
        // `perf_event_mlock_kb` to the limit (EPERM without CAP_IPC_LOCK).
        ProbeError::MapRead { name, reason } => ProbeError::MapRead {
            name,
            reason: add(reason, "; "),
        },
        other => other,
    }
}

/// An error text carrying `EPERM`.
fn is_eperm(err: &str) -> bool {
    err.contains("os error 1)") || err.contains("EPERM") || err.contains("Operation not permitted")
}

fn get() -> Option<Limit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0).then_some(Limit {
        soft: r.rlim_cur,
        hard: r.rlim_max,
    })
}

fn set(l: Limit) -> Result<(), std::io::Error> {
    let r = libc::rlimit {
        rlim_cur: l.soft,
        rlim_max: l.hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Raises this process's limit as far as it may (see [`attempts`]).
pub fn raise() -> Memlock {
    let Some(before) = get() else {
        return Memlock {
            before: None,
            after: None,
            note: Some("getrlimit failed".into()),
        };
    };
    let mut note = None;
    for want in attempts(before) {
        match set(want) {
            Ok(()) => break,
            Err(e) if want.hard == INFINITY => {
                note = Some(format!("unlimited refused ({e}; needs CAP_SYS_RESOURCE)"));
            }
            Err(e) => note = Some(format!("raising to the hard limit failed: {e}")),
        }
    }
    let m = Memlock {
        before: Some(before),
        after: get(),
        note,
    };
    // `-v`: also for `probes --json`, whose report goes to stdout.
    log::info!("{}", m.line());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn tries_unlimited_then_the_hard_limit() {
        // systemd's 64 KiB soft limit under an 8 MiB hard one.
        let l = Limit {
            soft: 64 << 10,
            hard: 8 * MIB,
        };
        let a = attempts(l);
        assert_eq!(
            a[0],
            Limit {
                soft: INFINITY,
                hard: INFINITY
            }
        );
        assert_eq!(
            a[1],
            Limit {
                soft: 8 * MIB,
                hard: 8 * MIB
            }
        );
        // Soft equals hard: only unlimited is worth a try.
        assert_eq!(
            attempts(Limit {
                soft: 8 * MIB,
                hard: 8 * MIB
            })
            .len(),
            1
        );
        // Unlimited hard limit: unlimited is permitted, no second try.
        assert_eq!(
            attempts(Limit {
                soft: 8 * MIB,
                hard: INFINITY
            })
            .len(),
            1
        );
        assert!(attempts(Limit {
            soft: INFINITY,
            hard: INFINITY
        })
        .is_empty());
    }

    #[test]
    fn lines_show_before_and_after() {
        let m = Memlock {
            before: Some(Limit {
                soft: 64 << 10,
                hard: 8 * MIB,
            }),
            after: Some(Limit {
                soft: 8 * MIB,
                hard: 8 * MIB,
            }),
            note: Some("unlimited refused (x; needs CAP_SYS_RESOURCE)".into()),
        };
        assert_eq!(
            m.line(),
            "memlock 64 KiB (hard 8 MiB) -> 8 MiB (hard 8 MiB); unlimited refused (x; needs CAP_SYS_RESOURCE)"
        );
        let inf = Limit {
            soft: INFINITY,
            hard: INFINITY,
        };
        let kept = Memlock {
            before: Some(inf),
            after: Some(inf),
            note: None,
        };
        assert_eq!(kept.line(), "memlock unlimited (hard unlimited) (kept)");
    }

    #[test]
    fn eperm_under_a_low_limit_says_what_to_do() {
        let low = Memlock {
            before: None,
            after: Some(Limit {
                soft: 8 * MIB,
                hard: 8 * MIB,
            }),
            note: None,
        };
        let e = "failed to create map `EVENTS` with code -1: Operation not permitted (os error 1)";
        let why = low.explain(e).expect("blamed on the limit");
        assert!(
            why.contains("RLIMIT_MEMLOCK is 8 MiB") && why.contains("LimitMEMLOCK=infinity"),
            "{why}"
        );
        // Another error, or a high limit: not the limit's fault.
        assert_eq!(low.explain("Invalid argument (os error 22)"), None);
        let open = super::annotate(
            &low,
            super::super::ProbeError::MapRead {
                name: "EVENTS",
                reason: "perf_event mmap: Operation not permitted (os error 1)".into(),
            },
        );
        assert!(
            open.to_string().contains("RLIMIT_MEMLOCK is 8 MiB"),
            "{open}"
        );
        let high = Memlock {
            after: Some(Limit {
                soft: INFINITY,
                hard: INFINITY,
            }),
            ..low
        };
        assert_eq!(high.explain(e), None);
    }
}
