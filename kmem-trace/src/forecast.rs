//! Forecast: how fast zombies accumulate (net dying memcgs per hour over a
//! window) and how long until the memcg ID space is used up. Pure: fed with
//! samples from the running state (`watch`), the history, or one reading and
//! the uptime (`doctor`).
//!
//! What runs out: memcg IDs are 16 bit (`MEM_CGROUP_ID_MAX` 65535) and
//! `mem_cgroup_css_alloc()` fails with ENOSPC when none is free, so mkdir of a
//! cgroup fails. Before 4.6 a dying memcg keeps its ID until it is freed; from
//! 4.6 (commit 73f576c04b94) the ID goes back at offline unless swap entries
//! hold it, so zombies there cost memory, not IDs.

use std::collections::VecDeque;

use serde::Serialize;

/// Errors of the forecast configuration.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("the forecast window must be longer than zero")]
    EmptyWindow,
}

/// One observation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds on any clock that only moves forward.
    pub t_s: f64,
    /// Dying memcgs.
    pub dying: u64,
    /// memcg IDs in use.
    pub ids_in_use: u64,
}

/// Where the rate comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// Samples of this run (`watch`).
    Running,
    /// Samples from the history database.
    History,
    /// One reading: every dying memcg accumulated since boot (a lifetime average).
    SinceBoot,
}

/// The forecast.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Forecast {
    pub basis: Basis,
    /// Span of the samples used, in seconds.
    pub window_s: f64,
    /// Net growth of dying memcgs per hour (the leak rate; negative: shrinking).
    pub zombies_per_hour: f64,
    /// Net growth of IDs in use per hour.
    pub ids_per_hour: f64,
    pub ids_in_use: u64,
    pub id_limit: u32,
    /// Hours until every ID is in use at `ids_per_hour`; `None` when not growing.
    pub hours_to_exhaustion: Option<f64>,
}

/// Least-squares slope of `y` over `t` (per second); `None` without spread in `t`.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let var: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if var <= f64::EPSILON {
        return None;
    }
    let cov: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    Some(cov / var)
}

fn exhaustion(ids_in_use: u64, id_limit: u32, per_hour: f64) -> Option<f64> {
    if per_hour <= 1e-9 {
        return None;
    }
    let left = (id_limit as u64).saturating_sub(ids_in_use) as f64;
    Some(left / per_hour)
}

/// A forecast from samples (any order); `None` with fewer than two distinct times.
pub fn from_samples(samples: &[Sample], id_limit: u32, basis: Basis) -> Option<Forecast> {
    let last = samples.iter().max_by(|a, b| a.t_s.total_cmp(&b.t_s))?;
    let first = samples.iter().min_by(|a, b| a.t_s.total_cmp(&b.t_s))?;
    let dying: Vec<(f64, f64)> = samples.iter().map(|s| (s.t_s, s.dying as f64)).collect();
    let ids: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.t_s, s.ids_in_use as f64))
        .collect();
    let zombies_per_hour = slope(&dying)? * 3600.0;
    let ids_per_hour = slope(&ids)? * 3600.0;
    Some(Forecast {
        basis,
        window_s: last.t_s - first.t_s,
        zombies_per_hour,
        ids_per_hour,
        ids_in_use: last.ids_in_use,
        id_limit,
        hours_to_exhaustion: exhaustion(last.ids_in_use, id_limit, ids_per_hour),
    })
}

/// A lifetime average from one reading: `dying` memcgs accumulated over
/// `uptime_s`. `zombies_hold_ids`: whether dying memcgs keep their IDs on this
/// kernel (before 4.6), so the leak eats the ID space.
pub fn since_boot(
    dying: u64,
    ids_in_use: u64,
    uptime_s: f64,
    id_limit: u32,
    zombies_hold_ids: bool,
) -> Forecast {
    let hours = (uptime_s / 3600.0).max(1.0 / 60.0);
    from_zombie_rate(
        Basis::SinceBoot,
        uptime_s,
        dying as f64 / hours,
        ids_in_use,
        id_limit,
        zombies_hold_ids,
    )
}

/// A forecast from a zombie rate alone: IDs fill at that rate only where
/// zombies hold them.
fn from_zombie_rate(
    basis: Basis,
    window_s: f64,
    zombies_per_hour: f64,
    ids_in_use: u64,
    id_limit: u32,
    zombies_hold_ids: bool,
) -> Forecast {
    let ids_per_hour = if zombies_hold_ids {
        zombies_per_hour
    } else {
        0.0
    };
    Forecast {
        basis,
        window_s,
        zombies_per_hour,
        ids_per_hour,
        ids_in_use,
        id_limit,
        hours_to_exhaustion: exhaustion(ids_in_use, id_limit, ids_per_hour),
    }
}

/// From the history: memcgs still dying whose offline (wall-clock seconds)
/// falls in the last `window_s` before `now_s` are the zombies created in that
/// window. `since_s` is when the history starts (the window is cut there).
/// `None` when the history covers less than a minute.
pub fn from_offline_times(
    offline_s: &[f64],
    now_s: f64,
    window_s: f64,
    since_s: f64,
    ids_in_use: u64,
    id_limit: u32,
    zombies_hold_ids: bool,
) -> Option<Forecast> {
    let span = window_s.min(now_s - since_s);
    if span < MIN_WINDOW_S || span.is_nan() {
        return None;
    }
    let created = offline_s
        .iter()
        .filter(|t| **t <= now_s && now_s - **t <= span)
        .count();
    Some(from_zombie_rate(
        Basis::History,
        span,
        created as f64 * 3600.0 / span,
        ids_in_use,
        id_limit,
        zombies_hold_ids,
    ))
}

/// Shortest span of samples [`Tracker::forecast`] reports on.
pub const MIN_WINDOW_S: f64 = 60.0;

/// Keeps the samples of the last `window_s` seconds of a run.
#[derive(Clone, Debug)]
pub struct Tracker {
    window_s: f64,
    samples: VecDeque<Sample>,
}

impl Tracker {
    pub fn new(window_s: f64) -> Result<Tracker, ForecastError> {
        if window_s <= 0.0 || window_s.is_nan() {
            return Err(ForecastError::EmptyWindow);
        }
        Ok(Tracker {
            window_s,
            samples: VecDeque::new(),
        })
    }

    /// Adds a sample and forgets those older than the window.
    pub fn push(&mut self, s: Sample) {
        self.samples.push_back(s);
        while self
            .samples
            .front()
            .is_some_and(|f| s.t_s - f.t_s > self.window_s)
        {
            self.samples.pop_front();
        }
    }

    /// The forecast once the samples span at least a minute (a shorter span
    /// turns one burst of rmdirs into an absurd hourly rate).
    pub fn forecast(&self, id_limit: u32) -> Option<Forecast> {
        let (first, last) = (self.samples.front()?, self.samples.back()?);
        if last.t_s - first.t_s < MIN_WINDOW_S {
            return None;
        }
        let v: Vec<Sample> = self.samples.iter().copied().collect();
        from_samples(&v, id_limit, Basis::Running)
    }
}

/// `2d4h`, `35m`, `>10y`: coarse on purpose, forecasts are estimates.
pub fn human_hours(h: f64) -> String {
    if !h.is_finite() || h > 87_600.0 {
        return ">10y".into();
    }
    let m = (h * 60.0).round() as u64;
    match m {
        0 => "<1m".into(),
        1..=59 => format!("{m}m"),
        60..=1439 => format!("{}h{:02}m", m / 60, m % 60),
        _ => format!("{}d{}h", m / 1440, (m % 1440) / 60),
    }
}

impl Forecast {
    /// One line for headers: `leak +12.0/h (5m) · IDs full in 3d4h`.
    pub fn short(&self) -> String {
        let window = human_hours(self.window_s / 3600.0);
        let mut s = format!("leak {:+.1}/h ({window})", self.zombies_per_hour);
        match self.hours_to_exhaustion {
            Some(h) => s.push_str(&format!(" · IDs full in {}", human_hours(h))),
            None => s.push_str(" · IDs not filling"),
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: f64, dying: u64, ids: u64) -> Sample {
        Sample {
            t_s: t,
            dying,
            ids_in_use: ids,
        }
    }

    #[test]
    fn linear_growth_gives_rate_and_time_left() {
        // +10 zombies and IDs per hour, 1000 IDs left.
        let samples: Vec<Sample> = (0..=6)
            .map(|i| s(i as f64 * 600.0, 100 + i * 10 / 6, 64_535 + i * 10 / 6))
            .collect();
        let f = from_samples(&samples, 65_535, Basis::Running).unwrap();
        assert!((f.zombies_per_hour - 10.0).abs() < 1.0, "{f:?}");
        let h = f.hours_to_exhaustion.unwrap();
        assert!((h - 99.0).abs() < 10.0, "{h}");
        assert_eq!(f.window_s, 3600.0);
        assert!(f.short().starts_with("leak +"), "{}", f.short());
    }

    #[test]
    fn flat_or_shrinking_never_exhausts() {
        let flat = [s(0.0, 5, 50), s(60.0, 5, 50)];
        let f = from_samples(&flat, 65_535, Basis::History).unwrap();
        assert_eq!(f.hours_to_exhaustion, None);
        let down = [s(0.0, 9, 90), s(60.0, 5, 50)];
        assert!(
            from_samples(&down, 65_535, Basis::Running)
                .unwrap()
                .zombies_per_hour
                < 0.0
        );
        assert!(from_samples(&[s(1.0, 1, 1)], 65_535, Basis::Running).is_none());
        assert!(from_samples(&[s(1.0, 1, 1), s(1.0, 2, 2)], 9, Basis::Running).is_none());
        assert!(from_samples(&[], 9, Basis::Running).is_none());
    }

    #[test]
    fn since_boot_only_counts_ids_where_zombies_hold_them() {
        // 3.10: 60,000 zombies in 10 days, 62,000 IDs in use.
        let f = since_boot(60_000, 62_000, 10.0 * 86400.0, 65_535, true);
        assert_eq!(f.zombies_per_hour, 250.0);
        let h = f.hours_to_exhaustion.unwrap();
        assert!((h - 3535.0 / 250.0).abs() < 1e-6);
        let modern = since_boot(60_000, 200, 10.0 * 86400.0, 65_535, false);
        assert_eq!(modern.hours_to_exhaustion, None);
        // A fresh boot does not divide by zero.
        assert!(since_boot(5, 5, 0.0, 65_535, true)
            .zombies_per_hour
            .is_finite());
    }

    #[test]
    fn history_counts_zombies_created_in_the_window() {
        let now = 100_000.0;
        // 6 zombies in the last hour, 2 older ones, one from the future (clock skew).
        let mut off = vec![
            now - 10.0,
            now - 600.0,
            now - 1200.0,
            now - 1800.0,
            now - 2400.0,
            now - 3000.0,
        ];
        off.extend([now - 7200.0, now - 9000.0, now + 5.0]);
        let f = from_offline_times(&off, now, 3600.0, 0.0, 60_000, 65_535, true).unwrap();
        assert_eq!(f.basis, Basis::History);
        assert!((f.zombies_per_hour - 6.0).abs() < 1e-9);
        assert!((f.hours_to_exhaustion.unwrap() - 5535.0 / 6.0).abs() < 1e-6);
        // A history younger than the window is cut at its start.
        let young = from_offline_times(&off, now, 3600.0, now - 1800.0, 10, 65_535, false).unwrap();
        assert_eq!(young.window_s, 1800.0);
        assert_eq!(young.hours_to_exhaustion, None);
        assert!(from_offline_times(&off, now, 3600.0, now - 5.0, 10, 65_535, false).is_none());
    }

    #[test]
    fn tracker_keeps_the_window() {
        let mut t = Tracker::new(60.0).unwrap();
        t.push(s(0.0, 0, 0));
        t.push(s(30.0, 1, 1));
        assert!(t.forecast(100).is_none(), "half a minute is too short");
        for i in 2..10 {
            t.push(s(i as f64 * 30.0, i, i));
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
}
