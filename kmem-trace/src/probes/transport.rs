//! Which eBPF object carries the events: the ring-buffer object (5.8+: BPF
//! ring buffer, `bpf_probe_read_kernel`, global data, BTF program types) or the
//! old-kernel object (the 4.18 floor: perf event array, `bpf_probe_read`,
//! settings in an array map, kprobes and tracepoints only). Chosen by probing
//! the kernel's features, never by its version: RHEL backports BPF features.

use serde::Serialize;

/// `--transport`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TransportMode {
    /// The ring buffer where the kernel's features allow it, else perf.
    #[default]
    Auto,
    /// The ring-buffer object.
    Ringbuf,
    /// The old-kernel object (perf buffers).
    Perf,
}

/// The object in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Ringbuf,
    Perf,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ringbuf => "ringbuf",
            Transport::Perf => "perf",
        }
    }
}

/// The answers of the kernel feature probes the choice needs (`None`: the
/// probe itself failed, e.g. without privileges).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Features {
    /// `BPF_MAP_TYPE_RINGBUF` can be created (5.8+ upstream).
    pub ringbuf: Option<bool>,
    /// A kprobe program may call `bpf_probe_read_kernel` (5.5+ upstream).
    pub probe_read_kernel: Option<bool>,
    /// Why a probe failed, when one did.
    pub error: Option<String>,
}

impl Features {
    /// Asks the running kernel (root; loads trivial programs and maps).
    pub fn probe() -> Features {
        use aya::{
            maps::MapType,
            programs::ProgramType,
            sys::{is_helper_supported, is_map_supported, BpfHelper},
        };
        let mut error = None;
        let ringbuf = match is_map_supported(MapType::RingBuf) {
            Ok(b) => Some(b),
            Err(e) => {
                error = Some(format!("probing the ring buffer map: {e}"));
                None
            }
        };
        let probe_read_kernel =
            match is_helper_supported(ProgramType::KProbe, BpfHelper::BPF_FUNC_probe_read_kernel) {
                Ok(b) => Some(b),
                Err(e) => {
                    error.get_or_insert(format!("probing bpf_probe_read_kernel: {e}"));
                    None
                }
            };
        Features {
            ringbuf,
            probe_read_kernel,
            error,
        }
    }
}

/// The transport and why, as `probes` and `watch -v` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Choice {
    pub transport: Transport,
    pub reason: String,
    pub features: Features,
}

/// Picks the object. `perf_object`: this binary carries the old-kernel object.
pub fn choose(mode: TransportMode, features: Features, perf_object: bool) -> Choice {
    let (transport, reason) = match mode {
        TransportMode::Ringbuf => (Transport::Ringbuf, "forced with --transport".to_string()),
        TransportMode::Perf => (Transport::Perf, "forced with --transport".to_string()),
        TransportMode::Auto => auto(&features, perf_object),
    };
    Choice {
        transport,
        reason,
        features,
    }
}

fn auto(f: &Features, perf_object: bool) -> (Transport, String) {
    let missing = match (f.ringbuf, f.probe_read_kernel) {
        (Some(true), Some(true)) => {
            return (
                Transport::Ringbuf,
                "the kernel has the BPF ring buffer and bpf_probe_read_kernel".into(),
            )
        }
        (Some(false), _) => "the kernel has no BPF ring buffer map",
        (_, Some(false)) => "the kernel has no bpf_probe_read_kernel helper",
        _ => {
            let why = f.error.as_deref().unwrap_or("unknown");
            return (
                Transport::Ringbuf,
                format!("feature probes failed ({why}); trying the ring buffer"),
            );
        }
    };
    if !perf_object {
        return (
            Transport::Ringbuf,
            format!("{missing}, but this binary has no old-kernel object; trying the ring buffer"),
        );
    }
    (Transport::Perf, format!("{missing}: perf buffers"))
}

/// The choice after the ring-buffer object failed to load or attach (`why`:
/// its error): the old-kernel object, when `auto` chose the ring buffer and
/// this binary has it with rows for the hook mode (`perf_object`). A feature probe can say yes while the object still
/// fails (a backport without everything the object uses, a verifier that
/// rejects it), and the perf object may work there. `None`: the error stands
/// (forced with `--transport ringbuf`, already perf, or no perf object).
pub fn fallback(
    mode: TransportMode,
    failed: &Choice,
    perf_object: bool,
    why: &str,
) -> Option<Choice> {
    if mode != TransportMode::Auto || failed.transport != Transport::Ringbuf || !perf_object {
        return None;
    }
    // The first line only: `NothingAttached` lists every rejection below it.
    let why = why.lines().next().unwrap_or(why).trim_end_matches(':');
    Some(Choice {
        transport: Transport::Perf,
        reason: format!(
            "the ring-buffer object failed ({why}), so perf buffers; \
             `--transport ringbuf` shows that failure in full"
        ),
        features: failed.features.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feats(ringbuf: Option<bool>, prk: Option<bool>) -> Features {
        Features {
            ringbuf,
            probe_read_kernel: prk,
            error: None,
        }
    }

    #[test]
    fn features_not_versions_choose() {
        let c = choose(TransportMode::Auto, feats(Some(true), Some(true)), true);
        assert_eq!(c.transport, Transport::Ringbuf);
        // 5.4 (or RHEL 8 without the backport): no ring buffer.
        let c = choose(TransportMode::Auto, feats(Some(false), Some(true)), true);
        assert_eq!(c.transport, Transport::Perf);
        assert!(c.reason.contains("no BPF ring buffer"), "{}", c.reason);
        // 4.18: neither.
        let c = choose(TransportMode::Auto, feats(Some(false), Some(false)), true);
        assert_eq!(c.transport, Transport::Perf);
        // A ring buffer backported without bpf_probe_read_kernel.
        let c = choose(TransportMode::Auto, feats(Some(true), Some(false)), true);
        assert_eq!(c.transport, Transport::Perf);
        assert!(c.reason.contains("bpf_probe_read_kernel"), "{}", c.reason);
    }

    #[test]
    fn forced_and_unknown() {
        let c = choose(TransportMode::Perf, feats(Some(true), Some(true)), true);
        assert_eq!(
            (c.transport, c.reason.as_str()),
            (Transport::Perf, "forced with --transport")
        );
        let c = choose(TransportMode::Ringbuf, feats(Some(false), None), true);
        assert_eq!(c.transport, Transport::Ringbuf);
        let mut f = feats(None, None);
        f.error = Some("EPERM".into());
        let c = choose(TransportMode::Auto, f, true);
        assert_eq!(c.transport, Transport::Ringbuf);
        assert!(c.reason.contains("EPERM"), "{}", c.reason);
        let c = choose(TransportMode::Auto, feats(Some(false), Some(false)), false);
        assert_eq!(c.transport, Transport::Ringbuf);
        assert!(c.reason.contains("no old-kernel object"), "{}", c.reason);
    }

    #[test]
    fn a_failed_ring_buffer_falls_back_only_under_auto() {
        let auto = choose(TransportMode::Auto, feats(Some(true), Some(true)), true);
        let why = "no lifecycle point could be attached with --hooks auto:\n  alloc: EINVAL";
        let c = fallback(TransportMode::Auto, &auto, true, why).expect("falls back");
        assert_eq!(c.transport, Transport::Perf);
        assert!(c.reason.contains("ring-buffer object failed (no lifecycle point could be attached with --hooks auto)"), "{}", c.reason);
        assert!(!c.reason.contains("EINVAL"), "{}", c.reason);
        assert_eq!(c.features, auto.features);
        // Forced: the ring buffer's own error stands.
        let forced = choose(TransportMode::Ringbuf, feats(Some(true), Some(true)), true);
        assert_eq!(fallback(TransportMode::Ringbuf, &forced, true, "x"), None);
        // No old-kernel object in this binary, or perf already failed.
        assert_eq!(fallback(TransportMode::Auto, &auto, false, "x"), None);
        let perf = choose(TransportMode::Auto, feats(Some(false), Some(true)), true);
        assert_eq!(fallback(TransportMode::Auto, &perf, true, "x"), None);
    }
}
