//! Generated-input robustness: at least ten million records and recordings,
//! random and mutated from real ones, through decode and the lifecycle. Nothing
//! may panic; bad input must come back as an error. No root needed.
//! `KMEM_TRACE_FUZZ_CASES` changes the count; debug builds default to one
//! million (`cargo xtask test` runs the ten million in release mode).

use kmem_trace::{
    decode::{decode_recording_lossy, DecodeError, TraceEvent, HEADER_LEN},
    lifecycle::{Lifecycle, LifecycleConfig},
};
use kmem_trace_common::{EventKind, EVENT_ABI_OLDEST, EVENT_ABI_VERSION, EVENT_SIZE};

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

/// Every mutation of a real recording gets the answer it must: a cut inside
/// the header is a bad magic, a cut in the body leaves a prefix of the events
/// and the trailing bytes counted, a flipped header bit is a magic or ABI
/// error (or harmless where the header has no check), a flipped record bit is
/// a record error or a decodable record, appended garbage is counted or is a
/// record error after the original events.
#[test]
fn truncated_and_corrupt_recordings_are_errors() {
    let (_, full, rest) = decode_recording_lossy(CHURN).unwrap();
    let full = full.unwrap();
    assert_eq!(rest, 0);
    assert!(!full.is_empty());
    let mut rng = Rng(42);
    let (mut cuts, mut flips, mut appends) = (0, 0, 0);
    for _ in 0..20_000 {
        let mut bytes = CHURN.to_vec();
        match rng.below(3) {
            0 => {
                let n = rng.below(CHURN.len());
                bytes.truncate(n);
                cuts += 1;
                let r = decode_recording_lossy(&bytes);
                if n < HEADER_LEN {
                    assert!(matches!(r, Err(DecodeError::Magic)), "cut at {n}");
                    continue;
                }
                let (_, events, rest) = r.unwrap();
                let events = events.unwrap();
                assert_eq!(rest, (n - HEADER_LEN) % EVENT_SIZE, "cut at {n}");
                assert!(full.starts_with(&events), "cut at {n}: not a prefix");
                assert!(events.len() < full.len(), "cut at {n}: nothing lost");
            }
            1 => {
                let at = rng.below(bytes.len());
                let bit = rng.below(8);
                bytes[at] ^= 1 << bit;
                flips += 1;
                let r = decode_recording_lossy(&bytes);
                match at {
                    0..8 => assert!(matches!(r, Err(DecodeError::Magic)), "flip at {at}"),
                    8..12 => {
                        let abi = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
                        if (EVENT_ABI_OLDEST..=EVENT_ABI_VERSION).contains(&abi) {
                            assert!(r.is_ok(), "flip at {at}");
                        } else {
                            assert_eq!(r.err(), Some(DecodeError::Abi { found: abi }));
                        }
                    }
                    12..16 => assert!(matches!(r, Err(DecodeError::Abi { .. })), "flip at {at}"),
                    16..HEADER_LEN => {
                        let (_, events, rest) = r.unwrap();
                        assert!(events.unwrap() == full && rest == 0, "flip at {at}");
                    }
                    _ => {
                        let (_, events, rest) = r.unwrap();
                        assert_eq!(rest, 0);
                        let rec = (at - HEADER_LEN) / EVENT_SIZE;
                        let chunk = &bytes[HEADER_LEN + rec * EVENT_SIZE..][..EVENT_SIZE];
                        // The recording fails exactly when that record does.
                        match (events, TraceEvent::decode(chunk)) {
                            (Err(e), Err(want)) => assert_eq!(e, want, "flip at {at}"),
                            (Ok(_), Ok(_)) => {}
                            (e, r) => panic!(
                                "flip at {at}: recording ok {} but record ok {}",
                                e.is_ok(),
                                r.is_ok()
                            ),
                        }
                    }
                }
            }
            _ => {
                let k = rng.below(300);
                bytes.extend((0..k).map(|_| rng.next() as u8));
                appends += 1;
                let (_, events, rest) = decode_recording_lossy(&bytes).unwrap();
                assert_eq!(rest, k % EVENT_SIZE);
                match events {
                    Ok(ev) => assert!(ev.starts_with(&full), "{k} bytes appended"),
                    Err(e) => assert!(
                        k >= EVENT_SIZE
                            && matches!(e, DecodeError::Kind(_) | DecodeError::NameLen(_)),
                        "{k} bytes appended: {e}"
                    ),
                }
            }
        }
    }
    assert!(cuts > 0 && flips > 0 && appends > 0);
}

/// Path fragments real cgroup trees use, recombined with random noise so the
/// parser meets near-misses of every layout it knows.
const FRAGMENTS: &[&str] = &[
    "kubepods",
    "kubepods.slice",
    "burstable",
    "besteffort",
    "kubepods-burstable.slice",
    "kubepods-besteffort.slice",
    "kubepods-burstable-pod0d2a5c4e_1b2c_4d5e_8f90_123456789abc.slice",
    "kubepods-pod0d2a5c4e_1b2c_4d5e_8f90_123456789abc.slice",
    "pod0d2a5c4e-1b2c-4d5e-8f90-123456789abc",
    "pod",
    "cri-containerd-4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c.scope",
    "docker-4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c.scope",
    "crio-4f1c2d3e.scope",
    "crio-conmon-4f1c.scope",
    "libpod-abc.scope",
    "docker",
    "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c",
    "system.slice",
    "containerd.service",
    "kubepods-burstable-pod0d2a5c4e_1b2c.slice:cri-containerd:4f1c2d3e",
    ":cri-containerd:",
    "user.slice",
    "user-1000.slice",
    "session-3.scope",
    "",
    ".",
    "..",
    "-",
    "_",
    ".scope",
    ".slice",
    "pod_",
    "ü",
    "\u{0}",
];

#[test]
fn ten_million_generated_cgroup_paths_never_panic() {
    use kmem_trace::attribution::path::{parse, Owner};
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let total = cases();
    let mut kinds = [0u64; 4];
    let mut path = String::with_capacity(256);
    for _ in 0..total {
        path.clear();
        for _ in 0..=rng.below(7) {
            path.push('/');
            match rng.below(8) {
                0 => {
                    // random printable noise, sometimes glued to a fragment
                    for _ in 0..rng.below(12) {
                        path.push((b' ' + rng.below(95) as u8) as char);
                    }
                }
                1 => {
                    let f = FRAGMENTS[rng.below(FRAGMENTS.len())];
                    let cut = rng.below(f.len() + 1);
                    path.push_str(f.get(..cut).unwrap_or(f));
                }
                _ => path.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]),
            }
        }
        let owner = parse(&path);
        // The accessors must hold for whatever came out.
        let _ = (owner.container_id(), owner.runtime(), owner.pod_uid());
        kinds[match owner {
            Owner::Pod(_) => 0,
            Owner::Container { .. } | Owner::RuntimeGroup { .. } => 1,
            Owner::Systemd { .. } => 2,
            Owner::Path { .. } => 3,
        }] += 1;
    }
    assert_eq!(kinds.iter().sum::<u64>(), total);
    // The generator reaches every kind of owner.
    assert!(kinds.iter().all(|k| *k > 0), "{kinds:?}");
}
