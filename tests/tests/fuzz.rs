//! Generated-input robustness: at least ten million records and recordings,
//! random and mutated from real ones, through decode and the lifecycle. Nothing
//! may panic; bad input must come back as an error. No root needed.
//! `KMEM_TRACE_FUZZ_CASES` changes the count; debug builds default to one
//! million (`cargo xtask test` runs the ten million in release mode).

use kmem_trace::{
    decode::{decode_recording_lossy, TraceEvent},
    lifecycle::{Lifecycle, LifecycleConfig},
};
use kmem_trace_common::{EventKind, EVENT_SIZE};

const CHURN: &[u8] = include_bytes!("../../kmem-trace/tests/fixtures/churn-6.18-v1.kmt");

/// xorshift64*: fast, deterministic, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn cases() -> u64 {
    let default = if cfg!(debug_assertions) {
        1_000_000
    } else {
        10_000_000
    };
    std::env::var("KMEM_TRACE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn generated_records_never_panic() {
    let (_, real, _) = decode_recording_lossy(CHURN).unwrap();
    let real: Vec<[u8; EVENT_SIZE]> = real.unwrap().iter().map(|e| *e.raw.as_bytes()).collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut lc = Lifecycle::new(LifecycleConfig {
        max_residents: 4,
        ..LifecycleConfig::default()
    })
    .unwrap();
    let (mut ok, mut rejected) = (0u64, 0u64);
    let total = cases();
    for i in 0..total {
        let mut rec = real[rng.below(real.len())];
        match i % 4 {
            // A few random bytes flipped in a real record.
            0 | 1 => {
                for _ in 0..=rng.below(6) {
                    let at = rng.below(EVENT_SIZE);
                    rec[at] = rng.next() as u8;
                }
            }
            // A valid kind with random identities: stresses the state machine.
            2 => {
                rec[0..4].copy_from_slice(&(1 + rng.below(9) as u32).to_le_bytes());
                rec[16..24].copy_from_slice(
                    &(0xffff_8880_0000_0000 | (rng.below(64) as u64) << 8).to_le_bytes(),
                );
                rec[40..44].copy_from_slice(&(rng.below(100) as u32).to_le_bytes());
                rec[24..32].copy_from_slice(&(rng.below(64) as u64).to_le_bytes());
            }
            // Entirely random.
            _ => rec.iter_mut().for_each(|b| *b = rng.next() as u8),
        }
        let len = if i % 97 == 0 {
            rng.below(EVENT_SIZE + 8)
        } else {
            EVENT_SIZE
        };
        let bytes = if len <= EVENT_SIZE {
            rec[..len].to_vec()
        } else {
            [&rec[..], &[0u8; 8][..]].concat()
        };
        match TraceEvent::decode(&bytes) {
            Ok(ev) => {
                ok += 1;
                let _ = ev.name();
                let _ = ev.comm();
                let _ = ev.counters();
                let _ = lc.apply(&ev);
            }
            Err(_) => rejected += 1,
        }
        if i % 100_000 == 0 {
            let _ = lc.counts(rng.next());
        }
    }
    assert_eq!(ok + rejected, total);
    assert!(
        ok > total / 4 && rejected > total / 10,
        "ok {ok} rejected {rejected}"
    );
    let events: u64 = EventKind::ALL.iter().map(|k| lc.events[*k as usize]).sum();
    assert_eq!(events, ok);
}

#[test]
fn truncated_and_corrupt_recordings_are_errors() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let mut bytes = CHURN.to_vec();
        match rng.below(3) {
            0 => bytes.truncate(rng.below(CHURN.len())),
            1 => {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
            _ => bytes.extend((0..rng.below(300)).map(|_| rng.next() as u8)),
        }
        if let Ok((_, events, _rest)) = decode_recording_lossy(&bytes) {
            let _ = events.map(|e| e.len());
        }
    }
}
