//! Tests of `census::pin`.
use super::*;

fn c(mem: u64, kmem: Option<u64>, swap: Option<u64>) -> Counters {
    Counters {
        mem_pages: Some(mem),
        kmem_pages: kmem,
        swap_pages: swap,
    }
}

#[test]
fn counters_tell_kmem_swap_and_user_pages() {
    assert_eq!(
        classify(None, None, None, None, true).cause,
        PinCause::Unknown
    );
    assert_eq!(
        classify(None, Some(&c(0, Some(0), Some(0))), None, None, true).cause,
        PinCause::NoCharge
    );
    let k = classify(None, Some(&c(40, Some(38), Some(0))), None, None, true);
    assert_eq!((k.cause, k.user_pages), (PinCause::KernelMemory, 2));
    // 5.9+: the same counters are stale reparented kmem plus 2 pages of cache.
    let k = classify(None, Some(&c(40, Some(38), Some(0))), None, None, false);
    assert_eq!(k.cause, PinCause::PageCacheOrTmpfs);
    let stale = classify(None, Some(&c(38, Some(38), None)), None, None, false);
    assert_eq!(stale.cause, PinCause::NoCharge);
    assert!(kmem_pins(Some(KernelVersion(3, 10, 0))));
    assert!(!kmem_pins(Some(KernelVersion(6, 18, 44))));
    assert_eq!(
        classify(None, Some(&c(10, Some(1), Some(50))), None, None, true).cause,
        PinCause::Swap
    );
    let u = classify(None, Some(&c(4096, Some(3), Some(0))), None, None, true);
    assert_eq!(u.cause, PinCause::PageCacheOrTmpfs);
    let tmpfs = Residual {
        shmem: 16 << 20,
        file: 0,
        anon: 0,
        sock: 0,
    };
    assert_eq!(
        classify(
            None,
            Some(&c(4096, Some(3), None)),
            None,
            Some(&tmpfs),
            true
        )
        .cause,
        PinCause::Tmpfs
    );
    // Offline counters are used when no census read them now, and the
    // change shows reclaim at work.
    let off = c(5000, None, None);
    let now = c(1000, None, None);
    assert_eq!(
        classify(Some(&off), None, None, None, true).user_pages,
        5000
    );
    assert_eq!(
        classify(Some(&off), Some(&now), None, None, true).change_pages,
        Some(-4000)
    );
}

#[test]
fn own_counters_name_the_cause_exactly() {
    // The case: a zombie that ran `true` holds 487 pages of the
    // busybox binary's page cache while its siblings dominate the
    // ancestor's split with tmpfs: its own counters say page cache.
    let own = OwnStats {
        file: Some(487),
        shmem: Some(0),
        anon: Some(0),
        kmem: Some(30),
        swap: Some(0),
        sock: Some(0),
    };
    let tmpfs = Residual {
        shmem: 32 << 20,
        file: 2 << 20,
        anon: 0,
        sock: 0,
    };
    let p = classify(
        None,
        Some(&c(517, None, None)),
        Some(&own),
        Some(&tmpfs),
        false,
    );
    assert_eq!((p.cause, p.exact), (PinCause::PageCache, true));
    let p = classify(None, Some(&c(517, None, None)), None, Some(&tmpfs), false);
    assert_eq!((p.cause, p.exact), (PinCause::Tmpfs, false));
    let shm = OwnStats {
        file: Some(4096),
        shmem: Some(4000),
        ..own
    };
    assert_eq!(shm.cause(false, true), Some(PinCause::Tmpfs));
    let swap = OwnStats {
        swap: Some(9000),
        ..shm
    };
    assert_eq!(swap.cause(false, true), Some(PinCause::Swap));
    let sock = OwnStats {
        file: Some(0),
        shmem: Some(0),
        sock: Some(3),
        ..own
    };
    assert_eq!(sock.cause(false, true), Some(PinCause::Sockets));
    // Kernel memory counts only where it still pins (before 5.9).
    assert_eq!(sock.cause(true, true), Some(PinCause::KernelMemory));
    let none = OwnStats {
        file: Some(0),
        kmem: Some(0),
        sock: Some(0),
        ..sock
    };
    assert_eq!(none.cause(true, false), Some(PinCause::NoCharge));
    // All zero while the page counters show a charge: not yet flushed.
    assert_eq!(none.cause(true, true), None);
    // Without the user-page counters the own stats cannot tell.
    let partial = OwnStats { file: None, ..own };
    assert_eq!(partial.cause(true, false), None);
    // A census record carries them in comm/pcomm.
    let mut ev = kmem_trace_common::Event::ZERO;
    ev.flags = kmem_trace_common::flags::CENSUS_STATS;
    ev.set_census_stat(kmem_trace_common::census_stat::FILE, 487);
    ev.set_census_stat(kmem_trace_common::census_stat::SOCK, 2);
    ev.set_census_stat(kmem_trace_common::census_stat::VALID, 0b1_1111);
    let got = OwnStats::from_event(&ev).unwrap();
    assert_eq!((got.file, got.shmem, got.sock), (Some(487), Some(0), None));
    ev.flags = 0;
    assert_eq!(OwnStats::from_event(&ev), None);
}

#[test]
fn residuals_split_by_type() {
    let v1 =
        "cache 0\nrss 0\nshmem 0\ntotal_cache 20971520\ntotal_rss 4096\ntotal_shmem 16777216\n";
    let parent = MemStat::parse(v1, CgroupVersion::V1);
    let child = MemStat::parse(
        "cache 0\nrss 0\nshmem 0\ntotal_cache 4194304\ntotal_rss 4096\ntotal_shmem 0\n",
        CgroupVersion::V1,
    );
    let r = parent.residual(&[child]);
    assert_eq!(
        r,
        Residual {
            shmem: 16 << 20,
            file: 0,
            anon: 0,
            sock: 0,
        }
    );
    assert_eq!(r.cause(), PinCause::Tmpfs);
    let v2 = MemStat::parse("anon 0\nfile 8388608\nshmem 0\n", CgroupVersion::V2);
    assert_eq!(v2.residual(&[]).cause(), PinCause::PageCache);
    // Nothing left over: not page cache (see `recorded_vm_pins_are_named_right`).
    assert_eq!(Residual::default().cause(), PinCause::Unknown);
    let sock = MemStat::parse("anon 0\nfile 0\nshmem 0\nsock 69632\n", CgroupVersion::V2);
    assert_eq!(sock.residual(&[]).cause(), PinCause::Sockets);
    let v1 = MemStat::parse("total_cache 0\nsock 4096\n", CgroupVersion::V1);
    assert_eq!(v1.sock, 0);
    let mixed = Residual {
        shmem: 5,
        file: 5,
        anon: 0,
        sock: 0,
    };
    assert_eq!(mixed.cause(), PinCause::PageCacheOrTmpfs);
}

#[test]
fn own_counters_still_zero_against_a_charge_are_not_exact() {
    let own = OwnStats {
        file: Some(0),
        shmem: Some(0),
        anon: Some(0),
        kmem: Some(0),
        swap: Some(0),
        sock: Some(0),
    };
    let now = Counters {
        mem_pages: Some(259),
        kmem_pages: Some(3),
        swap_pages: Some(0),
    };
    let p = classify(None, Some(&now), Some(&own), None, true);
    assert!(!p.exact, "{p:?}");
    assert_ne!(p.cause, PinCause::NoCharge, "{p:?}");
}

/// The census entries of the 6.12.118 and 7.3.4 cloud VM runs (pins
/// scenarios, `target/vm-run1`): own counters, page counters, and the
/// live parent's residual (its `memory.stat` showed no user pages).
#[test]
fn recorded_vm_pins_are_named_right() {
    let zero = OwnStats {
        file: Some(0),
        shmem: Some(0),
        anon: Some(0),
        kmem: Some(0),
        swap: Some(0),
        sock: Some(0),
    };
    // 6.12 swap: 1 MiB swapped out, MEMCG_SWAP not yet flushed (0),
    // `memory` 1 page; the swap page counter has the 256 pages.
    let swap_counters = c(1, None, Some(256));
    let own = zero.with_swap_counter(swap_counters.swap_pages);
    assert_eq!(own.swap, Some(256));
    let p = classify(
        None,
        Some(&swap_counters),
        Some(&own),
        Some(&Residual::default()),
        false,
    );
    assert_eq!((p.cause, p.swap_pages), (PinCause::Swap, 256));
    // 7.3 swap: MEMCG_SWAP flushed, kmem 1 page (stale, does not pin).
    let own = OwnStats {
        kmem: Some(1),
        swap: Some(256),
        ..zero
    }
    .with_swap_counter(Some(256));
    let p = classify(None, Some(&swap_counters), Some(&own), None, false);
    assert_eq!(p.cause, PinCause::Swap);
    // No swap counter read: MEMCG_SWAP stays.
    assert_eq!(own.with_swap_counter(None).swap, Some(256));
    // Sockets passed out of the memcg (udp 1 page, tcp/unix 17 pages of
    // `memory`, no socket buffers, own kmem 0-2): not page cache; with
    // nothing that shows sockets, unknown.
    for (mem, kmem) in [(1, 0), (1, 1), (17, 2), (17, 1)] {
        let own = OwnStats {
            kmem: Some(kmem),
            ..zero
        }
        .with_swap_counter(Some(0));
        let now = c(mem, None, Some(0));
        for kmem_pins in [false, true] {
            let p = classify(
                None,
                Some(&now),
                Some(&own),
                Some(&Residual::default()),
                kmem_pins,
            );
            assert!(
                matches!(p.cause, PinCause::Unknown | PinCause::KernelMemory),
                "{mem} {kmem} {kmem_pins}: {p:?}"
            );
            assert_eq!(p.cause == PinCause::KernelMemory, kmem_pins && kmem > 0);
        }
    }
    // Socket buffers charged: the own counter names them exactly.
    let own = OwnStats {
        sock: Some(17),
        ..zero
    };
    let p = classify(None, Some(&c(17, None, Some(0))), Some(&own), None, false);
    assert_eq!((p.cause, p.exact), (PinCause::Sockets, true));
}

/// 6.12 VM, second run: own counters behind the page counter after the
/// pages were dropped or the tasks exited (rstat not yet flushed).
#[test]
fn stale_own_counters_are_not_an_answer() {
    let zero = OwnStats {
        file: Some(0),
        shmem: Some(0),
        anon: Some(0),
        kmem: Some(0),
        swap: Some(0),
        sock: Some(0),
    };
    // writeback-ext4: file 266 pages, kmem 31; `memory` 31 pages.
    let wb = OwnStats {
        file: Some(266),
        kmem: Some(31),
        ..zero
    };
    assert!(wb.stale(31));
    let p = classify(None, Some(&c(31, None, Some(0))), Some(&wb), None, false);
    assert_eq!((p.cause, p.exact), (PinCause::Unknown, false));
    // Not page cache even with an ancestor split that says so.
    let cache = Residual {
        file: 1 << 20,
        ..Residual::default()
    };
    let p = classify(
        None,
        Some(&c(31, None, Some(0))),
        Some(&wb),
        Some(&cache),
        false,
    );
    assert_eq!(p.cause, PinCause::Unknown);
    // socket-udp: anon 16, kmem 4; `memory` 1 page.
    let udp = OwnStats {
        anon: Some(16),
        kmem: Some(4),
        ..zero
    };
    let p = classify(None, Some(&c(1, None, Some(0))), Some(&udp), None, false);
    assert_eq!(p.cause, PinCause::Unknown);
    // Counters within the page counter stay exact (the census's page-cache pin).
    let cache_pin = OwnStats {
        file: Some(256),
        ..zero
    };
    assert!(!cache_pin.stale(257));
    let p = classify(
        None,
        Some(&c(257, None, Some(0))),
        Some(&cache_pin),
        None,
        false,
    );
    assert_eq!((p.cause, p.exact), (PinCause::PageCache, true));
}
