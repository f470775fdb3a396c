//! What BPF can do on a host, as plain data for `doctor`: BTF, kprobes, fentry,
//! ring buffer, iterators, and the hook family `watch` would use. Predicted from
//! files under a root directory (procfs, sysfs: works on a host tree mounted in
//! a container and on test fixtures, on any kernel), or verified by loading the
//! probes ([`verify`], root on the real host only).

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    btf::KernelBtf,
    kernel::{self, Kallsyms, KernelVersion},
    table::{self, Attach, Family, HookMode, KernelFacts, Point},
    transport::{self, Features, TransportMode},
};

/// One capability.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cap {
    /// `None`: could not tell.
    pub available: Option<bool>,
    pub detail: String,
}

impl Cap {
    fn yes(detail: impl Into<String>) -> Cap {
        Cap {
            available: Some(true),
            detail: detail.into(),
        }
    }
    fn no(detail: impl Into<String>) -> Cap {
        Cap {
            available: Some(false),
            detail: detail.into(),
        }
    }
    fn unknown(detail: impl Into<String>) -> Cap {
        Cap {
            available: None,
            detail: detail.into(),
        }
    }
}

/// The BPF picture of a host.
#[derive(Clone, Debug, Serialize)]
pub struct BpfCapabilities {
    pub btf: Cap,
    pub kprobes: Cap,
    pub fentry: Cap,
    pub tracepoints: Cap,
    pub ring_buffer: Cap,
    /// The object `watch` would load (`ringbuf` or `perf`) and why.
    pub transport: String,
    /// The cgroup iterator the census needs (6.1+).
    pub iterators: Cap,
    /// The family per lifecycle point `watch --hooks auto` would use, joined
    /// (`tracepoint`, `fentry+tracepoint`), or `none`.
    pub hook_family: String,
    /// Lifecycle points no hook can see.
    pub blind_points: Vec<Point>,
    /// `predicted` from files, or `verified` by loading the probes.
    pub how: &'static str,
    pub notes: Vec<String>,
}

/// Kernel facts read from files under a root, for the probe table's checks.
struct RootFacts {
    version: Option<KernelVersion>,
    btf: Option<KernelBtf>,
    kallsyms: Kallsyms,
    kprobes: Result<(), String>,
}

impl KernelFacts for RootFacts {
    fn version(&self) -> Option<KernelVersion> {
        self.version
    }

    fn family_usable(&self, family: Family) -> Result<(), String> {
        match family {
            Family::Kprobe => self.kprobes.clone(),
            Family::Fentry if self.btf.is_none() => Err("fentry needs the kernel's BTF".into()),
            Family::Tracepoint if self.version.is_some_and(|v| v < KernelVersion(4, 17, 0)) => {
                Err("raw tracepoints need 4.17+".into())
            }
            _ => Ok(()),
        }
    }

    fn has_symbol(&self, attach: Attach, symbol: &str) -> bool {
        let btf = self.btf.as_ref();
        match attach {
            Attach::Kprobe | Attach::Kretprobe => self.kallsyms.has(symbol),
            Attach::Fentry | Attach::Fexit => btf.is_some_and(|b| b.has_func(symbol)),
            Attach::TpBtf => btf.is_some_and(|b| b.has_tracepoint(symbol)),
            Attach::RawTp | Attach::Tracepoint => {
                let symbol = table::tracepoint_name(symbol);
                btf.is_some_and(|b| b.has_tracepoint(symbol))
                    || self.kallsyms.has(&format!("__bpf_trace_{symbol}"))
            }
        }
    }

    fn has_kallsyms_addr(&self, symbol: &str) -> bool {
        self.kallsyms.addr(symbol).is_some()
    }

    fn fexit_params(&self, symbol: &str) -> Option<u32> {
        self.btf.as_ref()?.func_params(symbol)
    }
}

/// The kernel release under `root`: `proc/sys/kernel/osrelease`, else `uname`
/// when `root` is `/`.
pub fn release(root: &Path) -> Option<String> {
    match fs::read_to_string(root.join("proc/sys/kernel/osrelease")) {
        Ok(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ if root == Path::new("/") => Some(kernel::release()),
        _ => None,
    }
}

/// Predicts the capabilities from files under `root`, with the loader's own
/// feature probes ([`Features::probe`]) when `root` shows the running kernel
/// (the host, or a host root mounted in a container); a tree of another
/// kernel (a fixture) is judged by its version, said so.
pub fn predict(root: &Path, btf: Option<&Path>) -> BpfCapabilities {
    let running = release(root).is_some_and(|r| r == kernel::release());
    let features = if running {
        Features::probe()
    } else {
        Features {
            error: Some("not the running kernel: not probed".into()),
            ..Features::default()
        }
    };
    predict_with(root, features, btf)
}

/// [`predict`] with given feature-probe answers.
pub fn predict_with(root: &Path, features: Features, btf_file: Option<&Path>) -> BpfCapabilities {
    let version = release(root).and_then(|r| KernelVersion::parse(&r));
    let btf_path: PathBuf = root.join("sys/kernel/btf/vmlinux");
    let btf = btf_path
        .exists()
        .then(|| KernelBtf::load_mapped(Some(&btf_path)).ok())
        .flatten();
    let facts = RootFacts {
        version,
        kallsyms: Kallsyms::read(&root.join("proc/kallsyms")).unwrap_or_default(),
        kprobes: kernel::kprobes_supported(&root.join("sys")),
        btf,
    };
    let at_least = |maj, min| version.map(|v| v >= KernelVersion(maj, min, 0));
    // Unprobed: the version is all there is (a RHEL kernel may have more).
    let by_version = features.ringbuf.is_none() && features.probe_read_kernel.is_none();
    let judged = if by_version {
        Features {
            ringbuf: at_least(5, 8),
            probe_read_kernel: at_least(5, 5),
            error: features.error.clone(),
        }
    } else {
        features.clone()
    };
    let choice = transport::choose(TransportMode::Auto, judged, super::has_perf_object());
    let mut notes = Vec::new();
    let mut chosen = Vec::new();
    let mut blind = Vec::new();
    for point in Point::ALL {
        let fam = table::loadable(point, HookMode::Auto, choice.transport)
            .find(|row| table::check(row, &facts, None).is_ok())
            .map(|row| row.family);
        match fam {
            Some(f) => chosen.push(f),
            None => blind.push(point),
        }
    }
    chosen.sort();
    chosen.dedup();
    let hook_family = if chosen.is_empty() {
        "none".to_string()
    } else {
        chosen
            .iter()
            .map(|f| f.name())
            .collect::<Vec<_>>()
            .join("+")
    };
    if version.is_some_and(|v| v < KernelVersion(4, 18, 0)) {
        notes.push(
            "this kernel predates the old-kernel object's floor (4.18): `watch` cannot run here; `doctor` and `census --counts-only` work".into(),
        );
    }
    let btf = btf_cap(
        facts.btf.is_some().then_some(btf_path.as_path()),
        btf_file,
        release(root).as_deref(),
    );
    if btf.available == Some(false) {
        notes.push(format!("`watch` cannot start without BTF: {}", btf.detail));
    }
    let kprobes = match &facts.kprobes {
        Ok(()) => Cap::yes("kprobe PMU present"),
        Err(e) => Cap::no(e.clone()),
    };
    let fentry = match (facts.btf.is_some(), at_least(5, 5)) {
        (true, Some(true)) => {
            Cap::yes("5.5+ with BTF (a load can still be refused, e.g. by a BPF LSM or sandbox)")
        }
        (false, _) => Cap::no("needs the kernel's BTF"),
        (_, Some(false)) => Cap::no("needs 5.5+"),
        (_, None) => Cap::unknown("kernel version unknown"),
    };
    let tracepoints = match at_least(4, 17) {
        Some(true) => Cap::yes("raw tracepoints (4.17+); BTF tracepoints with BTF (5.5+)"),
        Some(false) => Cap::no("raw tracepoints need 4.17+"),
        None => Cap::unknown("kernel version unknown"),
    };
    let how = if by_version {
        "from the kernel version, not probed"
    } else {
        "probed"
    };
    let ring_buffer = match choice.features.ringbuf {
        Some(true) => Cap::yes(format!("BPF ring buffer ({how})")),
        Some(false) => Cap::no(format!(
            "no BPF ring buffer ({how}): `watch` uses perf buffers (the old-kernel object)"
        )),
        None => Cap::unknown("kernel version unknown"),
    };
    let transport = format!("{} ({})", choice.transport.name(), choice.reason);
    let iterators = match &facts.btf {
        Some(b) if b.has_func(super::census::ITER_FUNC) => {
            Cap::yes("cgroup iterator (6.1+): the census reads every memcg")
        }
        Some(_) => Cap::no("no cgroup iterator (6.1+): the census counts only"),
        None => Cap::no("no BTF: the census counts only"),
    };
    BpfCapabilities {
        btf,
        kprobes,
        fentry,
        tracepoints,
        ring_buffer,
        transport,
        iterators,
        hook_family,
        blind_points: blind,
        how: "predicted",
        notes,
    }
}

/// Where `watch` gets the struct layout: the kernel's own BTF, else `--btf`.
/// Without either, names the file missing (`<release>.btf`) and where such
/// files come from.
fn btf_cap(kernel: Option<&Path>, file: Option<&Path>, release: Option<&str>) -> Cap {
    if let Some(k) = kernel {
        return Cap::yes(k.display().to_string());
    }
    match file {
        Some(f) => match KernelBtf::load(Some(f)).and_then(|b| b.layout().map(|_| ())) {
            Ok(()) => Cap::yes(format!(
                "{} (--btf; the kernel has no /sys/kernel/btf/vmlinux)",
                f.display()
            )),
            Err(e) => Cap::no(format!("--btf {}: {e}", f.display())),
        },
        None => Cap::no(missing_btf(release)),
    }
}

/// The hint for a kernel without BTF and no `--btf`.
pub fn missing_btf(release: Option<&str>) -> String {
    let file = match release {
        Some(r) => format!("{r}.btf"),
        None => "<release>.btf".to_string(),
    };
    format!(
        "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF off, or a kernel before 5.4) and no --btf: \
         this kernel's BTF, {file}, is missing; BTFHub (https://github.com/aquasecurity/btfhub-archive, \
         <distro>/<version>/<arch>/{file}.tar.xz) has it for most distribution kernels, \
         or run `kmem-trace btf --minimize -o {file}` on a machine running the same kernel with BTF; \
         then pass it with --btf FILE"
    )
}

/// [`predict`], then loads the probes on this host to see what really attaches
/// (root on the real host only; the caller holds any lock it needs). A failure
/// to load is a finding, not an error.
pub fn verify(btf: Option<&Path>) -> BpfCapabilities {
    let mut caps = predict(Path::new("/"), btf);
    let cfg = super::ProbeConfig {
        try_all: true,
        btf: btf.map(Path::to_path_buf),
        ..super::ProbeConfig::default()
    };
    match super::Probes::start(&cfg) {
        Ok(mut p) => {
            p.detach();
            caps.hook_family = p.report.family_in_use();
            caps.blind_points = p.report.blind_points();
            let fentry_refused = p.report.points.iter().all(|pt| {
                pt.tried
                    .iter()
                    .filter(|a| a.family == Family::Fentry)
                    .all(|a| !matches!(a.outcome, super::Outcome::Chosen | super::Outcome::Works))
            });
            if fentry_refused && caps.fentry.available == Some(true) {
                caps.fentry = Cap::no("the kernel refused to load fentry programs");
            }
            caps.how = "verified";
        }
        Err(e) => {
            caps.notes.push(format!("loading the probes failed: {e}"));
            caps.hook_family = "none".into();
            caps.how = "verified";
        }
    }
    caps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_kernel_without_btf_predicts_no_watch() {
        let dir = std::env::temp_dir().join(format!("kmem-trace-caps-{}", std::process::id()));
        fs::create_dir_all(dir.join("proc/sys/kernel")).unwrap();
        fs::write(
            dir.join("proc/sys/kernel/osrelease"),
            "3.10.0-957.el7.x86_64\n",
        )
        .unwrap();
        let caps = predict(&dir, None);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(caps.hook_family, "none");
        assert_eq!(caps.btf.available, Some(false));
        assert_eq!(caps.ring_buffer.available, Some(false));
        assert_eq!(caps.iterators.available, Some(false));
        assert_eq!(caps.blind_points.len(), Point::ALL.len());
        assert!(caps.notes[0].contains("cannot run"), "{:?}", caps.notes);
    }

    /// Ubuntu 20.04's 5.4 (or RHEL 8's 4.18): the probes say no ring buffer,
    /// so the hook family is what the old-kernel object can attach (kprobes),
    /// not fentry or tp_btf, which only the ring-buffer object has.
    #[test]
    fn without_a_ring_buffer_doctor_names_the_old_kernel_objects_hooks() {
        let dir = std::env::temp_dir().join(format!("kmem-trace-caps54-{}", std::process::id()));
        fs::create_dir_all(dir.join("proc/sys/kernel")).unwrap();
        fs::create_dir_all(dir.join("sys/bus/event_source/devices/kprobe")).unwrap();
        fs::create_dir_all(dir.join("sys/kernel/btf")).unwrap();
        fs::write(dir.join("proc/sys/kernel/osrelease"), "5.4.0-150-generic\n").unwrap();
        let syms: String = [
            "mem_cgroup_css_alloc",
            "mem_cgroup_css_online",
            "mem_cgroup_css_offline",
            "mem_cgroup_css_released",
            "mem_cgroup_css_free",
            "mem_cgroup_id_put_many",
        ]
        .iter()
        .map(|s| format!("ffffffff81000000 t {s}\n"))
        .collect();
        fs::write(dir.join("proc/kallsyms"), syms).unwrap();
        let probed = Features {
            ringbuf: Some(false),
            probe_read_kernel: Some(false),
            error: None,
        };
        let caps = predict_with(&dir, probed.clone(), None);
        // No BTF in sysfs, no --btf: the file missing is named, and where it comes from.
        assert_eq!(caps.btf.available, Some(false));
        assert!(
            caps.btf
                .detail
                .contains("this kernel's BTF, 5.4.0-150-generic.btf, is missing; BTFHub"),
            "{}",
            caps.btf.detail
        );
        assert!(caps
            .btf
            .detail
            .contains("`kmem-trace btf --minimize -o 5.4.0-150-generic.btf`"));
        assert!(caps
            .notes
            .iter()
            .any(|n| n.starts_with("`watch` cannot start without BTF")));
        // With --btf, the layout comes from the file.
        let file = dir.join("5.4.0-150-generic.btf");
        let btf = crate::probes::btf::tests::kernel_like(Default::default());
        fs::write(&file, btf).unwrap();
        let with = predict_with(&dir, probed, Some(&file));
        assert_eq!(with.btf.available, Some(true), "{}", with.btf.detail);
        assert!(with
            .btf
            .detail
            .ends_with("(--btf; the kernel has no /sys/kernel/btf/vmlinux)"));
        assert!(!with.notes.iter().any(|n| n.contains("without BTF")));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(caps.ring_buffer.available, Some(false));
        if crate::probes::has_perf_object() {
            assert!(caps.transport.starts_with("perf"), "{}", caps.transport);
            assert_eq!(caps.hook_family, "kprobe");
        } else {
            assert!(
                caps.transport.contains("no old-kernel object"),
                "{}",
                caps.transport
            );
        }
    }
}
