//! Facts about the running kernel that decide which hooks can work: version,
//! kallsyms, kprobe support, privileges. Parsers are pure; the readers take a
//! root directory so tests and `--host-root` can point them elsewhere.

use std::{collections::HashMap, fmt, fs, path::Path};

/// Errors of reading kernel facts.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "needs root (or CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN); missing: {0}; run it with sudo"
    )]
    Privileges(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// A kernel version `major.minor.patch`, comparable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct KernelVersion(pub u32, pub u32, pub u32);

impl KernelVersion {
    /// Parses the start of a release string such as `6.12.117+deb12-amd64` or
    /// `3.10.0-1160.el7.x86_64`.
    pub fn parse(release: &str) -> Option<KernelVersion> {
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|s| s.parse::<u32>().ok());
        let major = nums.next()??;
        let minor = nums.next()??;
        let patch = nums.next().flatten().unwrap_or(0);
        Some(KernelVersion(major, minor, patch))
    }

    pub const MIN: KernelVersion = KernelVersion(0, 0, 0);
    pub const MAX: KernelVersion = KernelVersion(u32::MAX, 0, 0);
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == u32::MAX {
            return f.write_str("any");
        }
        write!(f, "{}.{}", self.0, self.1)?;
        if self.2 != 0 {
            write!(f, ".{}", self.2)?;
        }
        Ok(())
    }
}

/// `uname -r` of the running kernel.
pub fn release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return String::new();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// Text symbols of `/proc/kallsyms` (name → address), module symbols excluded.
#[derive(Default, Debug, Clone)]
pub struct Kallsyms {
    funcs: HashMap<String, u64>,
}

impl Kallsyms {
    pub fn parse(text: &str) -> Kallsyms {
        let mut funcs = HashMap::new();
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            let (Some(addr), Some(ty), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if it.next().is_some() || !matches!(ty, "t" | "T") {
                continue; // module symbol or not text
            }
            if let Ok(a) = u64::from_str_radix(addr, 16) {
                funcs.entry(name.to_string()).or_insert(a);
            }
        }
        Kallsyms { funcs }
    }

    pub fn read(path: &Path) -> Result<Kallsyms, KernelError> {
        let text = fs::read_to_string(path).map_err(|source| KernelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Kallsyms::parse(&text))
    }

    pub fn has(&self, name: &str) -> bool {
        self.funcs.contains_key(name)
    }

    /// Address of a function, `None` when absent or hidden (kptr_restrict shows 0).
    pub fn addr(&self, name: &str) -> Option<u64> {
        self.funcs.get(name).copied().filter(|a| *a != 0)
    }

    pub fn len(&self) -> usize {
        self.funcs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.funcs.is_empty()
    }
}

/// Whether the kernel can attach kprobes: the `kprobe` PMU exists
/// (CONFIG_KPROBES with CONFIG_KPROBE_EVENTS) .
pub fn kprobes_supported(sys: &Path) -> Result<(), String> {
    let pmu = sys.join("bus/event_source/devices/kprobe");
    if pmu.exists() {
        Ok(())
    } else {
        Err(format!(
            "the kernel has no kprobe support ({} is missing: CONFIG_KPROBES is off)",
            pmu.display()
        ))
    }
}

/// Capability bits kmem-trace needs (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Checks the effective capabilities in a `/proc/self/status` text.
/// CAP_SYS_ADMIN alone suffices (`bpf_token_capable()` accepts it for CAP_BPF
/// and CAP_PERFMON). Otherwise CAP_BPF (loading programs and maps,
/// `bpf_prog_load()`) and CAP_PERFMON (tracing program types and
/// `perf_event_open()` of tracepoints) are enough: the census iterator and
/// link creation need nothing more (measured, docs/DEPLOYMENT.md). Holding the
/// CAP_BPF bit at all is the feature probe: kernels before 5.8 do not know it
/// and need CAP_SYS_ADMIN. CAP_SYSLOG only unlocks `/proc/kallsyms` addresses
/// (one tracepoint-family point), which the probe report names when absent.
pub fn check_privileges(status: &str) -> Result<(), KernelError> {
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    Err(KernelError::Privileges(missing.join(", ")))
}

/// [`check_privileges`] for this process.
pub fn check_own_privileges() -> Result<(), KernelError> {
    let status = fs::read_to_string("/proc/self/status").map_err(|source| KernelError::Io {
        path: "/proc/self/status".into(),
        source,
    })?;
    check_privileges(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_release_strings() {
        assert_eq!(
            KernelVersion::parse("6.12.117+deb12-amd64"),
            Some(KernelVersion(6, 12, 117))
        );
        assert_eq!(
            KernelVersion::parse("3.10.0-1160.el7.x86_64"),
            Some(KernelVersion(3, 10, 0))
        );
        assert_eq!(
            KernelVersion::parse("6.18.44-fc-v669"),
            Some(KernelVersion(6, 18, 44))
        );
        assert_eq!(KernelVersion::parse("5.4"), Some(KernelVersion(5, 4, 0)));
        assert_eq!(KernelVersion::parse("garbage"), None);
        assert_eq!(KernelVersion::parse(""), None);
        assert!(KernelVersion(4, 6, 0) < KernelVersion(4, 19, 0));
    }

    #[test]
    fn kallsyms_keeps_text_symbols_only() {
        let text = "ffffffff8168e510 t mem_cgroup_css_online\n\
                    ffffffff81449ed0 t css_killed_work_fn\n\
                    ffffffff82000000 D some_data\n\
                    ffffffffc0000000 t modfunc\t[ext4]\n\
                    0000000000000000 t hidden_fn\n\
                    bogus line\n\
                    ffffffff8168f000 t memcg_offline_kmem.part.0\n";
        let k = Kallsyms::parse(text);
        assert!(k.has("mem_cgroup_css_online"));
        assert!(k.has("memcg_offline_kmem.part.0"));
        assert!(!k.has("some_data"));
        assert!(!k.has("modfunc"));
        assert_eq!(k.addr("css_killed_work_fn"), Some(0xffffffff81449ed0));
        assert_eq!(k.addr("hidden_fn"), None);
    }

    #[test]
    fn privileges_name_what_is_missing() {
        assert!(check_privileges("Name:\tx\nCapEff:\t000001ffffffffff\n").is_ok());
        let err = check_privileges("CapEff:\t0000000000000000\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "needs root (or CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN); missing: CAP_BPF, CAP_PERFMON; run it with sudo"
        );
        // CAP_BPF + CAP_PERFMON without CAP_SYS_ADMIN: enough on 5.8+.
        assert!(check_privileges("CapEff:\t000000c000000000\n").is_ok());
        // CAP_SYS_ADMIN alone (kernels before 5.8 know nothing else).
        assert!(check_privileges("CapEff:\t0000000000200000\n").is_ok());
        // CAP_BPF alone is not enough.
        let err = check_privileges("CapEff:\t0000008000000000\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing: CAP_PERFMON;"), "{err}");
    }
}
