//! Replay throughput on one core: raw ring-buffer records through decode →
//! lifecycle → attribution (the stages every live event passes), and the same
//! through `watch::Pipeline` with JSON output into a sink (what `kmem-trace
//! replay --json` and `watch --json` do per event). The stream is the recorded
//! 6.18 churn fixture replicated into ~200k events (`common::churn_stream`).
//! `cargo xtask bench` reads criterion's estimates to report events/s.

mod common;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kmem_trace::{
    attribution::Attributor,
    decode::TraceEvent,
    lifecycle::{Lifecycle, LifecycleConfig},
    outputs::{json::JsonOutput, Clock, HookLabels},
    watch::Pipeline,
};
use kmem_trace_common::EVENT_SIZE;

/// Copies of the fixture's 8 child lifecycles: 44 events each.
const COPIES: usize = 4_500;

/// The stages after decode, as a list so a new stage is one more entry.
struct Stages {
    lifecycle: Lifecycle,
    attribution: Attributor,
}

impl Stages {
    fn new() -> Stages {
        Stages {
            lifecycle: Lifecycle::new(LifecycleConfig::default()).expect("default config"),
            attribution: Attributor::paths_only(),
        }
    }

    fn feed(&mut self, ev: &TraceEvent) {
        let applied = self.lifecycle.apply(ev);
        black_box(self.attribution.observe(&applied));
    }
}

fn replay(c: &mut Criterion) {
    let stream = common::churn_stream(COPIES);
    let n = common::records(&stream) as u64;
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(n));
    g.bench_function("core", |b| {
        b.iter_batched_ref(
            Stages::new,
            |st| {
                for rec in stream.chunks_exact(EVENT_SIZE) {
                    if let Ok(ev) = TraceEvent::decode(rec) {
                        let _ = ev.expand(|e| {
                            st.feed(e);
                            Ok::<(), ()>(())
                        });
                    }
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("json", |b| {
        b.iter_batched_ref(
            || {
                let lc = Lifecycle::new(LifecycleConfig::default()).expect("default config");
                let out =
                    JsonOutput::new(std::io::sink(), Clock::from_offset(0), HookLabels::new());
                (Some(lc), out)
            },
            |(lc, out)| {
                let Some(state) = lc.take() else { return };
                let mut pipe = Pipeline::new(state, out);
                for rec in stream.chunks_exact(EVENT_SIZE) {
                    let _ = pipe.feed(rec);
                }
                // Dropped after the timing, like the core stages.
                *lc = Some(pipe.lifecycle);
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, replay);
criterion_main!(benches);
