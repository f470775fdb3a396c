//! Verdicts of the exhaustion scenario on made-up series: a forecast within a
//! quarter passes, a lagging one fails, and the errno words must match.

use super::*;

/// A leak from 100 s to 250 s at 2/s; serve's forecast from `predict(t)`.
fn run(predict: impl Fn(f64) -> f64, rate: f64) -> Value {
    let leak = Leak {
        leaked: 300,
        start_s: 100.0,
        end_s: 250.0,
        last_s: 249.5,
        errno: Some(("EBUSY".into(), "Device or resource busy".into())),
        ..Leak::default()
    };
    let series: Vec<Scrape> = (0..=130)
        .map(|i| {
            let t = i as f64 * 2.0;
            let mut values = BTreeMap::new();
            values.insert("kmem_trace_id_exhaustion_seconds".into(), predict(t));
            values.insert("kmem_trace_leak_rate_per_hour".into(), rate);
            Scrape { t_s: t, values }
        })
        .collect();
    let mut at_fail = BTreeMap::new();
    at_fail.insert("kmem_trace_memcg_ids_in_use".into(), 65535.0);
    let md = "memcg ID space exhausted: Device or resource busy\n## Top owners\n\n| a |\n|---|\n| unknown | pod 5f1c9a2e-7b3 | x |\n\n## Pin causes\n\n- **swap**: 300\n\n## Remediation\n";
    let doctor = json!({"findings": [{"id": "memcg-ids-exhausted", "severity": "critical",
        "title": "memcg ID space exhausted (65535 of 65535 IDs in use): mkdir fails with \"Device or resource busy\" (EBUSY)",
        "detail": ""}]});
    judge(&series, Some(&at_fail), &leak, &doctor, Some(md))
}

#[test]
fn a_forecast_within_a_quarter_passes_and_a_lagging_one_fails() {
    let good = run(
        |t| {
            if t < 130.0 {
                f64::INFINITY
            } else {
                250.0 - t + 5.0
            }
        },
        7200.0,
    );
    assert_eq!(good["status"], "pass", "{good:#}");
    let lagging = run(
        |t| {
            if t < 130.0 {
                f64::INFINITY
            } else {
                (250.0 - t) * 3.0
            }
        },
        2300.0,
    );
    assert_eq!(lagging["status"], "fail");
    let failed: Vec<&str> = lagging["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["pass"] == false)
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        [
            "forecast within 25% once the leak ran a minute",
            "leak rate counts only ID-holding memcgs"
        ]
    );
    let never = run(|_| f64::INFINITY, 0.0);
    assert!(never["checks"][2]["pass"] == false, "{never:#}");
    assert_eq!(never["checks"][6]["pass"], true, "{never:#}");
    let leak = Leak {
        errno: Some(("ENOSPC".into(), "No space left on device".into())),
        ..Leak::default()
    };
    let doctor = json!({"findings": [{"id": "memcg-ids-exhausted",
        "title": "memcg ID space exhausted: mkdir fails with \"Device or resource busy\" (EBUSY)",
        "detail": ""}]});
    let other = judge(&[], None, &leak, &doctor, Some("memcg ID space exhausted"));
    assert_eq!(other["checks"][6]["pass"], false, "{other:#}");
}
