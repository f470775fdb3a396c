//! The doctor's judgement: pure rules from [`Facts`] to findings, each with a
//! severity and what to do about it. Kernel facts cited per rule.

use serde::Serialize;

use super::host::{Driver, Facts};
use crate::{
    census::counts::DyingBasis,
    cgroupfs::CgroupVersion,
    forecast::Forecast,
    leaks::{stops_pinning_since, Cause},
    outputs::line::human_bytes,
};

/// How bad a finding is. Ordered: `Ok < Info < Warning < Critical`; `Unknown`
/// sorts between `Info` and `Warning` (something essential could not be read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Ok,
    Info,
    Unknown,
    Warning,
    Critical,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Unknown => "UNKNOWN",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub title: String,
    pub detail: String,
    pub remediation: Vec<String>,
}

fn finding(id: &'static str, severity: Severity, title: impl Into<String>) -> Finding {
    Finding {
        id,
        severity,
        title: title.into(),
        detail: String::new(),
        remediation: Vec::new(),
    }
}

impl Finding {
    fn detail(mut self, d: impl Into<String>) -> Finding {
        self.detail = d.into();
        self
    }
    fn fix(mut self, r: &[&str]) -> Finding {
        self.remediation.extend(r.iter().map(|s| s.to_string()));
        self
    }
}

/// Remediations, shared by several findings.
pub const FIX_NOKMEM: &str = "boot with cgroup.memory=nokmem (kernel command line) so no memcg gets kernel-memory accounting";
pub const FIX_RUNC: &str = "run kubelet and runc built with the `nokmem` build tag (runc since 2021, runc#2840, ignores kmem limits)";
pub const FIX_EL7: &str =
    "upgrade to kernel 3.10.0-1075.el7 or newer, which reportedly fixes the kmem leak";
pub const FIX_REBOOT: &str = "drain the node and reboot: kubepods keeps its kmem setting, and only a reboot frees the leaked IDs";
pub const FIX_DROP: &str = "echo 1 > /proc/sys/vm/drop_caches frees memcgs pinned by page cache (try `kmem-trace doctor --try-drop-caches`)";
pub const FIX_TMPFS: &str = "delete the tmpfs/shmem files left by removed pods (/dev/shm, emptyDir with medium: Memory); `kmem-trace census` lists the memcgs";

/// What `--try-drop-caches` measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct DropCaches {
    pub before: u64,
    pub after: u64,
    /// Dying memcgs freed by dropping the page cache.
    pub page_cache_pinned: u64,
    pub waited_ms: u64,
}

/// All findings, worst first.
pub fn judge(
    f: &Facts,
    forecast: Option<&Forecast>,
    drop: Option<&DropCaches>,
    id_limit: u32,
) -> Vec<Finding> {
    // First: the sort keeps it ahead of the other critical findings (the verdict names the first).
    let mut out: Vec<Finding> = super::exhausted::finding(f, id_limit).into_iter().collect();
    kernel(f, &mut out);
    cgroups(f, &mut out);
    kubelet(f, &mut out);
    ids_and_dying(f, id_limit, &mut out);
    if let Some(fc) = forecast {
        out.push(forecast_finding(fc));
    }
    pins(f, drop, &mut out);
    bpf(f, &mut out);
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

fn kernel(f: &Facts, out: &mut Vec<Finding>) {
    let Some(v) = f.version else {
        out.push(
            finding("kernel", Severity::Unknown, "kernel version unknown")
                .detail("/proc/sys/kernel/osrelease could not be read under the host root"),
        );
        return;
    };
    let release = f.release.clone().unwrap_or_default();
    let kmem_active = f.kmem.as_ref().and_then(|k| k.active);
    if v.0 == 3 && v.1 == 10 {
        let fixed = f.el7_build.is_some_and(|b| b >= 1075);
        let kmem_why = f
            .kmem
            .as_ref()
            .map(|k| format!("{} ({})", k.path, k.why))
            .unwrap_or_default();
        match (kmem_active, f.nokmem, fixed) {
            (Some(true), false, false) => out.push(
                finding(
                    "kmem-leak",
                    Severity::Critical,
                    "3.10 kmem accounting leak: kmem is active under kubepods",
                )
                .detail(format!(
                    "kernel {release}: once kmem accounting is active (memcg_activate_kmem), slab caches \
                     pin every removed memcg and its 16-bit ID, until memcg creation fails with ENOSPC \
                     (\"cannot allocate memory\" on mkdir). Evidence: {kmem_why}"
                ))
                .fix(&[FIX_NOKMEM, FIX_RUNC, FIX_EL7, FIX_REBOOT]),
            ),
            (Some(true), false, true) => out.push(
                finding("kmem-leak", Severity::Warning, "kmem accounting is active on a fixed 3.10 build")
                    .detail(format!("kernel {release} has the kmem leak fix; dying memcgs still keep their IDs (before 4.7). Evidence: {kmem_why}"))
                    .fix(&[FIX_NOKMEM, FIX_RUNC]),
            ),
            (None, false, _) => out.push(
                finding("kmem-leak", Severity::Warning, "3.10 kernel: cannot tell whether kmem accounting is active")
                    .detail(format!("kernel {release} leaks memcgs once kmem accounting is active; no kubepods memcg was found to check"))
                    .fix(&[FIX_NOKMEM, FIX_RUNC]),
            ),
            _ => out.push(
                finding("kmem-leak", Severity::Ok, "3.10 kmem leak: kmem accounting is not active")
                    .detail(if f.nokmem { "cgroup.memory=nokmem is set".to_string() } else { kmem_why }),
            ),
        }
    }
    // One rule for IDs, shared with the forecast (and checked against `leaks::TABLE`).
    if crate::forecast::dying_hold(Some(v)) == Some(crate::forecast::DyingHold::Every) {
        let dying = f.dying.map(|d| d.0).unwrap_or(0);
        out.push(
            finding(
                "ids-not-recycled",
                if dying > 0 { Severity::Warning } else { Severity::Info },
                "memcg IDs are not recycled at offline (kernel before 4.7)",
            )
            .detail(format!(
                "every dying memcg keeps one of the 65535 IDs until it is freed ({dying} dying now); \
                 4.7 gave memcgs a private ID released at offline (commit 73f576c04b94, backported to some stable kernels)"
            ))
            .fix(&[FIX_REBOOT]),
        );
    }
    // Slab objects pin memcgs until 5.9 (obj_cgroup): from the leak table.
    if v < stops_pinning_since(Cause::Slab) {
        let pins = kmem_active == Some(true) && !f.nokmem;
        out.push(
            finding(
                "slab-pins",
                if pins { Severity::Warning } else { Severity::Info },
                "slab objects pin memcgs (kernel before 5.9)",
            )
            .detail(if pins {
                "kmem accounting is active: a removed memcg stays until its last slab object is freed; \
                 5.9 reparents slab objects at offline (obj_cgroup)"
            } else {
                "kmem accounting is off, so slab objects do not pin memcgs here"
            })
            .fix(if pins { &[FIX_NOKMEM, FIX_RUNC] } else { &[] }),
        );
    } else {
        out.push(finding(
            "kernel",
            Severity::Ok,
            format!("kernel {release}: IDs recycled at offline unless swap holds them, slab reparented (5.9+)"),
        ));
    }
    // What keeps removed memcgs dying here, from the leak-behaviour table.
    out.push(
        finding("leak-causes", Severity::Info, crate::leaks::describe(v))
            .detail("from the per-kernel leak table (README \"What keeps memcgs dying\"); each row cites its kernel commit or series"),
    );
    out.push(finding(
        "nokmem",
        Severity::Info,
        if f.nokmem {
            "cgroup.memory=nokmem is on the kernel command line"
        } else {
            "cgroup.memory=nokmem is not on the kernel command line"
        },
    ));
}

fn cgroups(f: &Facts, out: &mut Vec<Finding>) {
    let v1 = f
        .mounts
        .iter()
        .filter(|m| m.version == CgroupVersion::V1)
        .count();
    let v2 = f
        .mounts
        .iter()
        .filter(|m| m.version == CgroupVersion::V2)
        .count();
    let mode = match (v1 > 0, v2 > 0) {
        (true, true) => "hybrid (v1 and v2 mounted)",
        (true, false) => "v1 (legacy)",
        (false, true) => "v2 (unified)",
        (false, false) => "none mounted",
    };
    match (&f.memory, f.memory_mount()) {
        (Some(h), Some(mount)) => out.push(
            finding(
                "cgroups",
                Severity::Info,
                format!(
                    "cgroups {mode}; memory controller on {} at {mount}",
                    h.version.name()
                ),
            )
            .detail(
                f.mounts
                    .iter()
                    .map(|m| format!("{} ({:?} {})", m.path, m.version, m.options))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
        ),
        _ => out.push(
            finding(
                "cgroups",
                Severity::Unknown,
                format!("cgroups {mode}; no memory controller found"),
            )
            .detail("no cgroup v1 `memory` mount and no cgroup2 mount with the memory controller"),
        ),
    }
}

fn kubelet(f: &Facts, out: &mut Vec<Finding>) {
    let k = &f.kubelet;
    let title = match k.driver {
        Some(Driver::Cgroupfs) => format!(
            "kubelet cgroup driver: cgroupfs (kubepods/...), {} pods",
            k.pods
        ),
        Some(Driver::Systemd) => format!(
            "kubelet cgroup driver: systemd (kubepods.slice), {} pods",
            k.pods
        ),
        None => "no kubepods cgroup: not a Kubernetes node, or kubelet has not started".into(),
    };
    out.push(finding("kubelet", Severity::Info, title));
    if let Some(km) = &f.kmem {
        let sev = match (km.active, f.version) {
            (Some(true), Some(v)) if v < stops_pinning_since(Cause::Slab) && !f.nokmem => {
                Severity::Warning
            }
            (None, _) => Severity::Unknown,
            _ => Severity::Info,
        };
        out.push(
            finding(
                "kmem-kubepods",
                sev,
                format!(
                    "kmem accounting under {}: {}",
                    km.path,
                    match km.active {
                        Some(true) => "active",
                        Some(false) => "not active",
                        None => "unknown",
                    }
                ),
            )
            .detail(format!(
                "{}; memory.kmem.usage_in_bytes {}, memory.kmem.limit_in_bytes {}",
                km.why,
                km.usage_bytes
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "?".into()),
                km.limit_bytes
                    .map(|b| b.to_string())
                    .unwrap_or_else(|| "?".into())
            )),
        );
    }
}

fn ids_and_dying(f: &Facts, id_limit: u32, out: &mut Vec<Finding>) {
    let total = f.counts.as_ref().and_then(|c| c.total());
    if let Some(ids) = f.ids_in_use {
        let pct = ids as f64 * 100.0 / id_limit.max(1) as f64;
        let sev = if pct >= 90.0 {
            Severity::Critical
        } else if pct >= 75.0 {
            Severity::Warning
        } else {
            Severity::Ok
        };
        let old = crate::forecast::dying_hold(f.version) == Some(crate::forecast::DyingHold::Every);
        out.push(
            finding(
                "memcg-ids",
                sev,
                format!("memcg IDs in use: {ids} of {id_limit} ({pct:.1}%)"),
            )
            .detail(if old {
                "before 4.7 every memcg, dying ones included, holds an ID".to_string()
            } else {
                format!(
                    "4.7+: live memcgs hold IDs; dying ones only while swap entries reference them ({} here)",
                    f.dying_holding.unwrap_or(0)
                )
            })
            .fix(if sev >= Severity::Warning {
                &[FIX_REBOOT]
            } else {
                &[]
            }),
        );
    }
    if f.ids_in_use.is_none() && f.dying.is_some() {
        let mut detail = "4.7+: dying memcgs hold IDs only through swap entries; swap is in use \
                          (or /proc/meminfo is unreadable) and no census told which dying memcgs it holds"
            .to_string();
        if let Some(t) = f.tracer_ids {
            detail.push_str(&format!(
                "; the running tracer counts at least {} ({:.0} s ago)",
                t.ids_in_use, t.age_s
            ));
        }
        out.push(
            finding("memcg-ids", Severity::Unknown, "memcg IDs in use: unknown")
                .detail(detail)
                .fix(&[
                    "run `kmem-trace report` or `kmem-trace census` as root for per-memcg swap",
                ]),
        );
    }
    match (f.dying, total) {
        (Some((dying, basis)), total) => {
            let sev = match dying {
                0 => Severity::Ok,
                1..=999 => Severity::Info,
                _ => Severity::Warning,
            };
            let exact = if basis == DyingBasis::DyingSubsysMemory {
                ""
            } else {
                "about "
            };
            out.push(
                finding(
                    "dying",
                    sev,
                    format!(
                        "{exact}{dying} dying memcgs{}",
                        total.map(|t| format!(" of {t}")).unwrap_or_default()
                    ),
                )
                .detail(format!(
                    "counted as {}; each costs kernel memory until freed",
                    basis.label()
                ))
                .fix(if dying > 0 {
                    &[FIX_DROP, FIX_TMPFS]
                } else {
                    &[]
                }),
            );
        }
        (None, _) => out.push(
            finding("dying", Severity::Unknown, "dying memcgs: unknown")
                .detail("neither /proc/cgroups nor cgroup.stat could be read"),
        ),
    }
}

fn forecast_finding(fc: &Forecast) -> Finding {
    let sev = match fc.hours_to_exhaustion {
        Some(h) if h < 24.0 => Severity::Critical,
        Some(h) if h < 24.0 * 7.0 => Severity::Warning,
        _ => Severity::Info,
    };
    finding("forecast", sev, fc.short())
        .detail(fc.outlook())
        .fix(if sev >= Severity::Warning {
            &[FIX_REBOOT]
        } else {
            &[]
        })
}

fn pins(f: &Facts, drop: Option<&DropCaches>, out: &mut Vec<Finding>) {
    if let Some(r) = &f.dying_bytes {
        let total = r.shmem + r.file + r.anon;
        let sev = if total >= 1 << 30 {
            Severity::Warning
        } else {
            Severity::Info
        };
        let mut fixes = Vec::new();
        if r.file > 0 {
            fixes.push(FIX_DROP);
        }
        if r.shmem > 0 || (!f.shmem_known && r.file > 0) {
            fixes.push(FIX_TMPFS);
        }
        if r.anon > 0 {
            fixes.push("restart processes that were moved out of removed cgroups (v1 does not move their charges)");
        }
        out.push(
            finding(
                "pins",
                sev,
                if f.shmem_known {
                    format!(
                        "dying memcgs hold about {}: page cache {}, tmpfs/shmem {}, anon {}",
                        human_bytes(total),
                        human_bytes(r.file),
                        human_bytes(r.shmem),
                        human_bytes(r.anon)
                    )
                } else {
                    format!(
                        "dying memcgs hold about {}: page cache including tmpfs {}, anon {} (this kernel's memory.stat has no shmem)",
                        human_bytes(total),
                        human_bytes(r.file),
                        human_bytes(r.anon)
                    )
                },
            )
            .detail("live cgroups' memory.stat minus their live children and own pages (an estimate; kernel memory not included)")
            .fix(&fixes),
        );
    }
    if let Some(d) = drop {
        out.push(
            finding(
                "drop-caches",
                Severity::Info,
                format!(
                    "drop_caches freed {} of {} dying memcgs (page-cache pinned); {} remain",
                    d.page_cache_pinned, d.before, d.after
                ),
            )
            .detail(format!(
                "waited {} ms for the kernel to free them",
                d.waited_ms
            ))
            .fix(if d.after > 0 { &[FIX_TMPFS] } else { &[] }),
        );
    }
}

fn bpf(f: &Facts, out: &mut Vec<Finding>) {
    let c = &f.caps;
    let yn = |a: Option<bool>| match a {
        Some(true) => "yes",
        Some(false) => "no",
        None => "?",
    };
    let sev = if c.hook_family == "none" {
        Severity::Warning
    } else {
        Severity::Info
    };
    let mut detail = format!(
        "BTF {}, kprobes {}, fentry {}, tracepoints {}, ring buffer {}, cgroup iterator {} ({})",
        yn(c.btf.available),
        yn(c.kprobes.available),
        yn(c.fentry.available),
        yn(c.tracepoints.available),
        yn(c.ring_buffer.available),
        yn(c.iterators.available),
        c.how
    );
    if !c.blind_points.is_empty() && c.hook_family != "none" {
        detail.push_str(&format!(
            "; not visible: {}",
            c.blind_points
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for n in &c.notes {
        detail.push_str("; ");
        detail.push_str(n);
    }
    out.push(
        finding(
            "bpf",
            sev,
            if c.hook_family == "none" {
                "`watch` cannot trace here: no usable BPF hook family".to_string()
            } else {
                format!("`watch` would use {} hooks", c.hook_family)
            },
        )
        .detail(detail),
    );
}

/// NPD custom-plugin exit code: 1 for a problem (a critical finding), 2 when
/// an essential fact is unknown, else 0.
pub fn exit_code(findings: &[Finding]) -> u8 {
    if findings.iter().any(|f| f.severity == Severity::Critical) {
        1
    } else if findings
        .iter()
        .any(|f| f.severity == Severity::Unknown && matches!(f.id, "kernel" | "cgroups" | "dying"))
    {
        2
    } else {
        0
    }
}
