//! Prometheus metrics of the running tracer (`serve`, `watch --metrics`):
//! an [`Output`] that keeps `prometheus-client` metrics up to date from the
//! pipeline, and a small HTTP/1.1 endpoint ([`http`]) that serves them. Loopback
//! by default: a non-loopback address needs an explicit `--listen-any`.
//!
//! Metric names (prefix `kmem_trace_`): `live_memcgs`, `dying_memcgs`,
//! `zombies`, `memcg_ids_in_use`, `memcg_id_limit`, `id_exhaustion_seconds`
//! (+Inf while the ID space is not filling), `leak_rate_per_hour`,
//! `events_total{kind}`, `ring_drops_total`, `bad_records_total`,
//! `offline_to_free_seconds` (histogram), `zombies_by_namespace{namespace}`
//! (top N namespaces, the rest in `other`), `info{hook_family,version}`,
//! `pinned_bytes` (memory charged to dying memcgs), `read_faults_total`,
//! `residents_capped_total`, `unconfirmed_memcgs`.

pub mod format;
pub mod health;
pub mod http;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicU64, Arc},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{
    attribution::Attribution,
    decode::TraceEvent,
    lifecycle::Applied,
    outputs::{
        aggregate::{namespace_buckets, pinned_bytes, zombies_by_namespace, zombies_by_workload},
        Output, OutputError, Snapshot, Status, Summary,
    },
};

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("invalid listen address {0:?}: expected IP:PORT or [IP]:PORT, e.g. 127.0.0.1:9464 or [::1]:9464")]
    Address(String),
    #[error("refusing to serve metrics on {0}: not a loopback address; pass --listen-any to expose them beyond this host")]
    NotLoopback(SocketAddr),
    #[error("listening on {addr}: {source}; pick another --listen address")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Parses `--listen`/`--metrics` and refuses a non-loopback address unless `any`.
pub fn listen_addr(s: &str, any: bool) -> Result<SocketAddr, MetricsError> {
    let addr = health::parse_listen(s).ok_or_else(|| MetricsError::Address(s.to_string()))?;
    if !addr.ip().is_loopback() && !any {
        return Err(MetricsError::NotLoopback(addr));
    }
    Ok(addr)
}

/// Default number of namespaces with their own `zombies_by_namespace` series.
pub const DEFAULT_TOP_NAMESPACES: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    namespace: String,
    workload: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    hook_family: String,
    version: String,
}

/// The registry and the metric handles the output updates.
pub struct Metrics {
    registry: Arc<Registry>,
    live: Gauge,
    dying: Gauge,
    zombies: Gauge,
    ids_in_use: Gauge,
    id_limit: Gauge,
    exhaustion: Gauge<f64, AtomicU64>,
    leak_rate: Gauge<f64, AtomicU64>,
    events: Family<KindLabel, Counter>,
    drops: Counter,
    bad_records: Counter,
    offline_to_free: Histogram,
    by_namespace: Family<NamespaceLabel, Gauge>,
    by_workload: Family<WorkloadLabels, Gauge>,
    info: Family<InfoLabels, Gauge>,
    pinned: Gauge,
    read_faults: Counter,
    residents_capped: Counter,
    unconfirmed: Gauge,
    top_namespaces: usize,
}

impl Metrics {
    /// Registers every metric; `top_namespaces` bounds `zombies_by_namespace`.
    pub fn new(top_namespaces: usize) -> Metrics {
        let mut r = Registry::with_prefix("kmem_trace");
        let live = Gauge::default();
        let dying = Gauge::default();
        let zombies = Gauge::default();
        let ids_in_use = Gauge::default();
        let id_limit = Gauge::default();
        let exhaustion = Gauge::<f64, AtomicU64>::default();
        let leak_rate = Gauge::<f64, AtomicU64>::default();
        let events = Family::<KindLabel, Counter>::default();
        let drops = Counter::default();
        let bad_records = Counter::default();
        // 1 ms .. ~4.6 h: fast frees of empty memcgs up to long-lived pins.
        let offline_to_free = Histogram::new(exponential_buckets(0.001, 4.0, 13));
        let by_namespace = Family::<NamespaceLabel, Gauge>::default();
        let by_workload = Family::<WorkloadLabels, Gauge>::default();
        let info = Family::<InfoLabels, Gauge>::default();
        let pinned = Gauge::default();
        let read_faults = Counter::default();
        let residents_capped = Counter::default();
        let unconfirmed = Gauge::default();
        r.register("live_memcgs", "Memcgs online now", live.clone());
        r.register(
            "dying_memcgs",
            "Memcgs removed (offline) but not yet freed",
            dying.clone(),
        );
        r.register(
            "zombies",
            "Dying memcgs older than --zombie-after",
            zombies.clone(),
        );
        r.register(
            "memcg_ids_in_use",
            "memcg IDs in use (of memcg_id_limit)",
            ids_in_use.clone(),
        );
        r.register(
            "memcg_id_limit",
            "Size of the memcg ID space (MEM_CGROUP_ID_MAX)",
            id_limit.clone(),
        );
        exhaustion.set(f64::INFINITY);
        r.register(
            "id_exhaustion_seconds",
            "Forecast seconds until every memcg ID is in use; +Inf while not filling or unknown",
            exhaustion.clone(),
        );
        r.register(
            "leak_rate_per_hour",
            "Net growth per hour of the dying memcgs that hold a memcg ID (the ID leak; NaN while unknown)",
            leak_rate.clone(),
        );
        r.register(
            "events",
            "memcg lifecycle events seen, by kind",
            events.clone(),
        );
        r.register(
            "ring_drops",
            "Events lost because the event buffer was full (the BPF ring buffer, or a CPU's perf buffer)",
            drops.clone(),
        );
        r.register(
            "bad_records",
            "Ring-buffer records that could not be decoded",
            bad_records.clone(),
        );
        r.register(
            "offline_to_free_seconds",
            "Time from a memcg's offline (rmdir) to its free",
            offline_to_free.clone(),
        );
        r.register(
            "zombies_by_namespace",
            "Zombie memcgs by Kubernetes namespace (top namespaces; the rest in namespace=\"other\"; \"none\": not a pod)",
            by_namespace.clone(),
        );
        r.register(
            "zombies_by_workload",
            "Zombie memcgs by owning workload (workload=\"Deployment/web\", from the pod's labels; top workloads as for namespaces, the rest in namespace=\"other\"; \"unknown\": a pod whose labels were not seen)",
            by_workload.clone(),
        );
        r.register(
            "info",
            "Tracer version and the hook family in use",
            info.clone(),
        );
        r.register(
            "pinned_bytes",
            "Memory charged to dying memcgs, as read at their offline (or by the start-up census); \
             dying memcgs without a reading count 0",
            pinned.clone(),
        );
        r.register(
            "read_faults",
            "Kernel reads in the eBPF programs that faulted (those events carry unknown fields)",
            read_faults.clone(),
        );
        r.register(
            "residents_capped",
            "Residents (processes entering a memcg) not reported: the memcg had --residents already",
            residents_capped.clone(),
        );
        r.register(
            "unconfirmed_memcgs",
            "Memcgs the history or a recheck holds that the kernel has not confirmed since (maybe freed); not in dying_memcgs",
            unconfirmed.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            live,
            dying,
            zombies,
            ids_in_use,
            id_limit,
            exhaustion,
            leak_rate,
            events,
            drops,
            bad_records,
            offline_to_free,
            by_namespace,
            by_workload,
            info,
            pinned,
            read_faults,
            residents_capped,
            unconfirmed,
            top_namespaces,
        }
    }

    /// The registry, for the HTTP endpoint.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// The exposition in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }
}

/// Encodes a registry (OpenMetrics text, ends with `# EOF`).
pub fn encode(r: &Registry) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut s, r);
    s
}

fn gauge(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// The metrics as a pipeline output.
pub struct MetricsOutput {
    m: Metrics,
    last_drops: u64,
    last_bad: u64,
    family: String,
}

impl MetricsOutput {
    pub fn new(m: Metrics) -> MetricsOutput {
        MetricsOutput {
            m,
            last_drops: 0,
            last_bad: 0,
            family: String::new(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.m
    }

    fn set_status(&mut self, s: &Status) {
        let c = &s.counts;
        self.m.live.set(gauge(c.live));
        self.m.dying.set(gauge(c.dying));
        self.m.zombies.set(gauge(c.zombies));
        self.m.ids_in_use.set(gauge(c.ids_in_use));
        self.m.unconfirmed.set(gauge(c.unconfirmed));
        self.m.id_limit.set(c.id_limit as i64);
        if let Some(f) = &s.forecast {
            self.m.exhaustion.set(f.exhaustion_s());
            self.m.leak_rate.set(f.leak_per_hour().unwrap_or(f64::NAN));
        }
        if s.drops > self.last_drops {
            self.m.drops.inc_by(s.drops - self.last_drops);
            self.last_drops = s.drops;
        }
        if s.hook_family != self.family {
            self.m.info.clear();
            self.m
                .info
                .get_or_create(&InfoLabels {
                    hook_family: s.hook_family.clone(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                })
                .set(1);
            self.family = s.hook_family.clone();
        }
    }

    /// Zombies by namespace, top N plus `other` (pure input, for tests too).
    pub fn set_namespaces(&mut self, counts: &HashMap<String, u64>) {
        // One thread updates and serves (the runtime is single-threaded), so a
        // scrape never sees the family between clear and refill.
        self.m.by_namespace.clear();
        for (ns, n) in namespace_buckets(counts, self.m.top_namespaces) {
            self.m
                .by_namespace
                .get_or_create(&NamespaceLabel { namespace: ns })
                .set(gauge(n));
        }
    }
}

impl MetricsOutput {
    /// Zombies by `namespace/Kind/name` workload key (see
    /// `aggregate::zombies_by_workload`), top N plus `other`.
    pub fn set_workloads(&mut self, counts: &HashMap<String, u64>) {
        self.m.by_workload.clear();
        for (key, n) in namespace_buckets(counts, self.m.top_namespaces) {
            let (namespace, workload) = key.split_once('/').unwrap_or((&key, &key));
            self.m
                .by_workload
                .get_or_create(&WorkloadLabels {
                    namespace: namespace.to_string(),
                    workload: workload.to_string(),
                })
                .set(gauge(n));
        }
    }
}

impl Output for MetricsOutput {
    fn event(
        &mut self,
        ev: &TraceEvent,
        applied: &Applied,
        _owner: Option<&Attribution>,
    ) -> Result<(), OutputError> {
        self.m
            .events
            .get_or_create(&KindLabel {
                kind: ev.kind.name().to_string(),
            })
            .inc();
        if let Some(m) = &applied.freed {
            if let (Some(off), Some(free)) = (m.offline_ns.get(), m.free_ns.get()) {
                self.m
                    .offline_to_free
                    .observe(free.saturating_sub(off) as f64 / 1e9);
            }
        }
        Ok(())
    }

    fn snapshot(&mut self, s: &Snapshot<'_>) -> Result<(), OutputError> {
        self.set_namespaces(&zombies_by_namespace(s));
        let pinned: u64 = s
            .lifecycle
            .memcgs()
            .filter(|m| m.state == crate::lifecycle::State::Dying)
            .filter_map(pinned_bytes)
            .sum();
        self.m.pinned.set(gauge(pinned));
        self.set_workloads(&zombies_by_workload(s));
        Ok(())
    }

    fn status(&mut self, status: &Status) -> Result<(), OutputError> {
        self.set_status(status);
        Ok(())
    }

    fn summary(&mut self, s: &Summary) -> Result<(), OutputError> {
        self.set_status(&s.status);
        if s.bad_records > self.last_bad {
            self.m.bad_records.inc_by(s.bad_records - self.last_bad);
            self.last_bad = s.bad_records;
        }
        Ok(())
    }

    fn note(&mut self, msg: &str) -> Result<(), OutputError> {
        log::info!("{msg}");
        Ok(())
    }

    fn health(&mut self, h: &crate::outputs::Health) -> Result<(), OutputError> {
        use crate::outputs::Health;
        match h {
            Health::ReadFaults { new, .. } => {
                self.m.read_faults.inc_by(*new);
            }
            Health::ResidentsCapped { new, .. } => {
                self.m.residents_capped.inc_by(*new);
            }
            // Drops come with every status; a recheck shows in the gauges.
            Health::Drops { .. } | Health::Recheck(_) => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
