//! The ID model and the leak forecast on flat, falling, live-only and real growth.

use super::*;

/// A sample of a tracked run: `live` live memcgs, `dying` dying, `holding` of them with IDs.
fn s(t: f64, live: u64, dying: u64, holding: u64) -> Sample {
    Sample::tracked(t, live, dying, live + holding)
}

fn hourly(f: impl Fn(u64) -> Sample) -> Vec<Sample> {
    (0..=6).map(f).collect()
}

#[test]
fn the_kernel_table_decides_which_dying_memcgs_hold_ids() {
    for (v, hold) in [
        (KernelVersion(3, 10, 0), DyingHold::Every),
        (KernelVersion(4, 5, 7), DyingHold::Every),
        (KernelVersion(4, 6, 0), DyingHold::Every),
        (KernelVersion(4, 7, 0), DyingHold::SwapHeld),
        (KernelVersion(6, 18, 0), DyingHold::SwapHeld),
    ] {
        assert_eq!(dying_hold(Some(v)), Some(hold), "{v}");
    }
    assert_eq!(dying_hold(None), None);
    let every = Some(DyingHold::Every);
    let swap = Some(DyingHold::SwapHeld);
    assert_eq!(dying_holding(every, 240, SwapEvidence::Unknown), Some(240));
    assert_eq!(dying_holding(swap, 240, SwapEvidence::PerMemcg(3)), Some(3));
    assert_eq!(
        dying_holding(swap, 240, SwapEvidence::NodeSwapUsed(0)),
        Some(0)
    );
    // Swap in use, no per-memcg figure: unknown, not 0 and not 240.
    assert_eq!(
        dying_holding(swap, 240, SwapEvidence::NodeSwapUsed(4096)),
        None
    );
    assert_eq!(dying_holding(swap, 240, SwapEvidence::Unknown), None);
    assert_eq!(dying_holding(swap, 0, SwapEvidence::Unknown), Some(0));
    assert_eq!(dying_holding(None, 240, SwapEvidence::PerMemcg(0)), None);
}

#[test]
fn a_real_leak_gives_rate_and_time_left() {
    // +10 ID-holding dying memcgs per hour, 1000 IDs left at the end.
    let v = hourly(|i| s(i as f64 * 600.0, 64_000, 525 + i * 10 / 6, 525 + i * 10 / 6));
    let f = from_samples(&v, 65_535, Basis::Running).unwrap();
    assert!((f.ids_per_hour.unwrap() - 10.0).abs() < 1.0, "{f:?}");
    assert!((f.zombies_per_hour - 10.0).abs() < 1.0, "{f:?}");
    let h = f.hours_to_exhaustion.unwrap();
    assert!((h - 1000.0 / 10.0).abs() < 12.0, "{h}");
    assert_eq!(f.window_s, 3600.0);
    assert!(f.short().starts_with("ID leak +"), "{}", f.short());
    assert!(f.leak_text().contains("full in"), "{}", f.leak_text());
    assert_eq!(f.exhaustion_s(), h * 3600.0);
    // The same leak against IDs in use nobody knows (doctor on 5.10 with
    // swap in use): growing, never "not filling".
    let blind = f.at(None);
    assert_eq!(blind.hours_to_exhaustion, None);
    assert!(
        blind.leak_text().ends_with("IDs in use unknown"),
        "{}",
        blind.leak_text()
    );
    assert!(
        !blind.outlook().contains("not filling"),
        "{}",
        blind.outlook()
    );
    assert!(blind
        .outlook()
        .contains("how many IDs are in use is unknown"));
}

#[test]
fn flat_never_exhausts() {
    let v = hourly(|i| s(i as f64 * 600.0, 100, 240, 240));
    let f = from_samples(&v, 65_535, Basis::History).unwrap();
    assert_eq!(f.ids_per_hour, Some(0.0));
    assert_eq!(f.hours_to_exhaustion, None);
    assert_eq!(f.exhaustion_s(), f64::INFINITY);
    assert!(f.leak_text().ends_with("not filling"), "{}", f.leak_text());
}

#[test]
fn falling_never_exhausts_and_is_never_a_negative_leak_with_a_time() {
    let v = hourly(|i| s(i as f64 * 600.0, 100, 300 - i * 5, 300 - i * 5));
    let f = from_samples(&v, 65_535, Basis::Running).unwrap();
    assert!(f.ids_per_hour.unwrap() < 0.0, "{f:?}");
    assert_eq!(f.hours_to_exhaustion, None, "{f:?}");
    // A noisy fit that ends lower than it started is no leak either.
    let noisy = [
        s(0.0, 10, 50, 50),
        s(60.0, 10, 40, 40),
        s(120.0, 10, 60, 60),
        s(180.0, 10, 60, 60),
        s(240.0, 10, 49, 49),
    ];
    let f = from_samples(&noisy, 65_535, Basis::Running).unwrap();
    assert!(f.ids_per_hour.unwrap() > 0.0, "{f:?}");
    assert_eq!(f.hours_to_exhaustion, None, "{f:?}");
}

#[test]
fn live_only_growth_is_no_leak() {
    // Other workloads create live cgroups (IDs in use rise); no dying memcg holds more.
    let v = hourly(|i| s(i as f64 * 600.0, 1_000 + i * 400, 240, 0));
    let f = from_samples(&v, 65_535, Basis::History).unwrap();
    assert_eq!(f.ids_per_hour, Some(0.0));
    assert_eq!(f.hours_to_exhaustion, None);
    assert_eq!(f.ids_in_use, Some(3_400));
    // Modern kernel: zombies grow but give IDs back at offline.
    let v = hourly(|i| s(i as f64 * 600.0, 100, 240 + i * 40, 0));
    let f = from_samples(&v, 65_535, Basis::Running).unwrap();
    assert!(f.zombies_per_hour > 200.0, "{f:?}");
    assert_eq!(f.ids_per_hour, Some(0.0));
    assert_eq!(f.hours_to_exhaustion, None);
    assert!(f.outlook().contains("not filling"), "{}", f.outlook());
}

#[test]
fn unknown_holders_give_an_unknown_leak() {
    let mut v = hourly(|i| s(i as f64 * 600.0, 100, 240 + i * 40, 240 + i * 40));
    v[3].dying_holding = None;
    v[3].ids_in_use = None;
    let f = from_samples(&v, 65_535, Basis::Running).unwrap();
    assert_eq!(f.ids_per_hour, None);
    assert_eq!(f.hours_to_exhaustion, None);
    assert!(f.leak_text().contains("unknown"), "{}", f.leak_text());
    assert!(from_samples(&v[..1], 65_535, Basis::Running).is_none());
    assert!(from_samples(&[], 9, Basis::Running).is_none());
}

#[test]
fn since_boot_counts_only_holders() {
    // 3.10: 60,000 zombies in 10 days, all holding IDs; 2,000 live.
    let f = since_boot(60_000, Some(60_000), Some(62_000), 10.0 * 86400.0, 65_535);
    assert_eq!(f.ids_per_hour, Some(250.0));
    let h = f.hours_to_exhaustion.unwrap();
    assert!((h - 3535.0 / 250.0).abs() < 1e-6);
    let modern = since_boot(60_000, Some(0), Some(200), 10.0 * 86400.0, 65_535);
    assert_eq!(modern.hours_to_exhaustion, None);
    assert_eq!(modern.ids_per_hour, Some(0.0));
    let unknown = since_boot(60_000, None, None, 10.0 * 86400.0, 65_535);
    assert_eq!(unknown.hours_to_exhaustion, None);
    // A fresh boot does not divide by zero.
    assert!(since_boot(5, Some(5), Some(5), 0.0, 65_535)
        .zombies_per_hour
        .is_finite());
}

#[test]
fn history_uses_the_newest_boot_and_the_window() {
    use crate::store::samples::CountSample;
    let cs = |t: i64, boot: &str, live: u64, dying: u64, ids: u64| CountSample {
        ts: t * 1_000_000_000,
        boot_id: boot.into(),
        live,
        dying,
        zombies: dying,
        ids_in_use: ids,
        id_limit: 65_535,
        drops: 0,
        hooks: String::new(),
    };
    // An old boot with a huge count, then a flat new boot whose live cgroups grow.
    let mut v = vec![
        cs(0, "a", 10, 60_000, 60_010),
        cs(100, "a", 10, 60_000, 60_010),
    ];
    v.extend((0..10).map(|i| {
        cs(
            1_000 + i * 60,
            "b",
            100 + i as u64 * 50,
            5,
            105 + i as u64 * 50,
        )
    }));
    let f = from_history(&v, 86_400.0, 65_535).unwrap();
    assert_eq!(f.basis, Basis::History);
    assert_eq!(f.ids_per_hour, Some(0.0), "{f:?}");
    assert_eq!(f.hours_to_exhaustion, None);
    assert!(
        from_history(&v[..3], 86_400.0, 65_535).is_none(),
        "one sample of boot b"
    );
}

#[test]
fn tracker_keeps_the_window() {
    let mut t = Tracker::new(60.0).unwrap();
    t.push(s(0.0, 0, 0, 0));
    t.push(s(30.0, 0, 1, 1));
    assert!(t.forecast(100).is_none(), "half a minute is too short");
    for i in 2..10 {
        t.push(s(i as f64 * 30.0, 0, i, i));
    }
    let f = t.forecast(100).unwrap();
    assert_eq!(f.window_s, 60.0);
    assert!((f.zombies_per_hour - 120.0).abs() < 1e-6);
    assert!(Tracker::new(0.0).is_err());
    assert_eq!(human_hours(0.5), "30m");
    assert_eq!(human_hours(26.0), "1d2h");
    assert_eq!(human_hours(2.5), "2h30m");
    assert_eq!(human_hours(1e9), ">10y");
}

#[test]
fn the_id_rules_agree_with_the_leak_table() {
    // Every row of the leak table that says where the ID goes must match the
    // forecast's rule for the same kernel: at free => every dying memcg holds one.
    for row in crate::leaks::TABLE {
        for v in [row.since, KernelVersion(row.since.0, row.since.1, 99)] {
            if v >= row.until {
                continue;
            }
            let every = dying_hold(Some(v)) == Some(DyingHold::Every);
            let at_free = row.id_release == crate::leaks::IdRelease::Free;
            assert_eq!(every, at_free, "{v} {row:?}");
        }
    }
}

#[test]
fn a_leak_that_began_inside_the_window_is_forecast_at_its_current_rate() {
    // 100 s flat, then +2 ID holders a second for 80 s: 300 IDs left at 2/s
    // is 150 s. The whole-window fit would average the flat stretch in.
    let mut v: Vec<Sample> = (0..=50).map(|i| s(i as f64 * 2.0, 65_000, 0, 0)).collect();
    v.extend((1..=40).map(|i| s(100.0 + i as f64 * 2.0, 64_955, 4 * i, 4 * i)));
    let whole = fit(&v, 65_535, Basis::Running).unwrap();
    let f = from_samples(&v, 65_535, Basis::Running).unwrap();
    assert!((f.ids_per_hour.unwrap() - 7200.0).abs() < 1.0, "{f:?}");
    assert!(whole.ids_per_hour.unwrap() < 0.8 * 7200.0, "{whole:?}");
    assert!((f.window_s - 80.0).abs() < 1e-9, "{f:?}");
    let left = 65_535.0 - (64_955.0 + 160.0);
    assert!(
        (f.exhaustion_s() - left / 2.0).abs() < 1.0,
        "{}",
        f.exhaustion_s()
    );
    // A rise shorter than a minute keeps the whole window.
    let short: Vec<Sample> = v.iter().copied().take(51 + 20).collect();
    let f = from_samples(&short, 65_535, Basis::Running).unwrap();
    assert_eq!(f.window_s, 140.0);
}
