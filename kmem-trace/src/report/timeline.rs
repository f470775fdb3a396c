//! The report's timeline of live, dying and zombie counts: from the count
//! samples the tracer writes (`store::samples`), or, for a history without
//! samples, reconstructed from the memcg rows' online/offline/free times.
//! Pure; long series are thinned to [`MAX_POINTS`] for the chart.

use serde::Serialize;

use crate::{
    lifecycle::State,
    store::{samples::CountSample, HistoryRow},
};

/// Most points drawn.
pub const MAX_POINTS: usize = 400;
/// Points of a timeline reconstructed from rows.
const ROW_POINTS: usize = 120;

/// Counts at one time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Point {
    /// Wall-clock ns since the epoch.
    pub t: i64,
    pub live: u64,
    pub dying: u64,
    pub zombies: u64,
}

/// Keeps every `n`th point (and the last) so at most `max` remain; the
/// largest dying/zombie counts of each stretch are kept, so a spike survives.
pub fn thin(points: &[Point], max: usize) -> Vec<Point> {
    if points.len() <= max || max < 2 {
        return points.to_vec();
    }
    let chunk = points.len().div_ceil(max);
    points
        .chunks(chunk)
        .map(|c| {
            let last = c[c.len() - 1];
            Point {
                t: last.t,
                live: last.live,
                dying: c.iter().map(|p| p.dying).max().unwrap_or(0),
                zombies: c.iter().map(|p| p.zombies).max().unwrap_or(0),
            }
        })
        .collect()
}

/// The samples as points, oldest first.
pub fn from_samples(samples: &[CountSample]) -> Vec<Point> {
    let mut v: Vec<Point> = samples
        .iter()
        .map(|s| Point {
            t: s.ts,
            live: s.live,
            dying: s.dying,
            zombies: s.zombies,
        })
        .collect();
    v.sort_by_key(|p| p.t);
    thin(&v, MAX_POINTS)
}

/// Counts at evenly spaced times in `[since, now]`, from each row's times: a
/// memcg is live from online (or alloc, or first seen) until offline, dying
/// from offline until freed (a row lost without a free ends when last updated),
/// and a zombie once dying longer than `zombie_after_s`.
pub fn from_rows(rows: &[HistoryRow], since: i64, now: i64, zombie_after_s: u64) -> Vec<Point> {
    let start = rows
        .iter()
        .map(|r| r.wall.first_seen)
        .min()
        .unwrap_or(since)
        .max(since);
    if now <= start {
        return Vec::new();
    }
    let after = (zombie_after_s as i64).saturating_mul(1_000_000_000);
    let spans: Vec<(i64, Option<i64>, i64)> = rows
        .iter()
        .map(|r| {
            let w = &r.wall;
            let born = w.online.or(w.alloc).unwrap_or(w.first_seen);
            let end = match (r.state.as_str(), r.memcg.state) {
                (_, State::Freed) | ("lost", _) => w.free.or(w.released).unwrap_or(w.updated),
                _ => i64::MAX,
            };
            (born, w.offline, end)
        })
        .collect();
    let step = (now - start) / (ROW_POINTS as i64 - 1);
    (0..ROW_POINTS as i64)
        .map(|k| {
            let t = if k == ROW_POINTS as i64 - 1 {
                now
            } else {
                start + k * step.max(1)
            };
            let mut p = Point {
                t,
                live: 0,
                dying: 0,
                zombies: 0,
            };
            for &(born, offline, end) in &spans {
                if t < born || t >= end {
                    continue;
                }
                match offline {
                    Some(off) if off <= t => {
                        p.dying += 1;
                        p.zombies += (t - off >= after) as u64;
                    }
                    _ => p.live += 1,
                }
            }
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        lifecycle::{Memcg, Origin},
        store::WallTimes,
    };

    const S: i64 = 1_000_000_000;

    fn row(first: i64, online: i64, offline: Option<i64>, free: Option<i64>) -> HistoryRow {
        let mut m = Memcg::new(1, 1, Origin::Traced);
        m.path = Arc::from("/x");
        m.state = match (offline, free) {
            (_, Some(_)) => State::Freed,
            (Some(_), None) => State::Dying,
            _ => State::Live,
        };
        HistoryRow {
            row_id: 1,
            state: match m.state {
                State::Freed => "freed",
                State::Dying => "dying",
                State::Live => "live",
            }
            .into(),
            memcg: m,
            wall: WallTimes {
                online: Some(online),
                offline,
                free,
                first_seen: first,
                updated: free.or(offline).unwrap_or(online),
                ..WallTimes::default()
            },
            attribution: None,
        }
    }

    #[test]
    fn rows_become_live_dying_and_zombie_counts() {
        let t0 = 1_700_000_000 * S;
        let rows = vec![
            row(t0, t0, None, None),                                // live throughout
            row(t0, t0, Some(t0 + 10 * S), None),                   // dying from 10 s
            row(t0, t0, Some(t0 + 10 * S), Some(t0 + 20 * S)),      // freed at 20 s
            row(t0 + 50 * S, t0 + 50 * S, Some(t0 + 60 * S), None), // born late
        ];
        let pts = from_rows(&rows, t0, t0 + 119 * S, 30);
        assert_eq!(pts.len(), ROW_POINTS);
        let at = |s: i64| pts.iter().find(|p| p.t >= t0 + s * S).copied().unwrap();
        assert_eq!((at(0).live, at(0).dying), (3, 0));
        let p15 = at(15);
        assert_eq!((p15.live, p15.dying, p15.zombies), (1, 2, 0));
        let p45 = at(45);
        assert_eq!((p45.live, p45.dying, p45.zombies), (1, 1, 1));
        let last = *pts.last().unwrap();
        assert_eq!(last.t, t0 + 119 * S);
        assert_eq!((last.live, last.dying, last.zombies), (1, 2, 2));
        assert!(from_rows(&rows, t0 + 200 * S, t0 + 100 * S, 30).is_empty());
    }

    #[test]
    fn thinning_keeps_spikes_and_the_end() {
        let pts: Vec<Point> = (0..1000)
            .map(|i| Point {
                t: i,
                live: 5,
                dying: if i == 333 { 99 } else { 1 },
                zombies: 0,
            })
            .collect();
        let t = thin(&pts, 100);
        assert!(t.len() <= 100);
        assert_eq!(t.last().unwrap().t, 999);
        assert!(t.iter().any(|p| p.dying == 99));
        let samples = vec![
            CountSample {
                ts: 20,
                dying: 2,
                ..CountSample::default()
            },
            CountSample {
                ts: 10,
                dying: 1,
                ..CountSample::default()
            },
        ];
        let p = from_samples(&samples);
        assert_eq!((p[0].t, p[1].dying), (10, 2));
    }
}
