//! Forecast: the one model of memcg ID use and its leak, for every view
//! (`watch`, `doctor`, `report`, metrics, the NPD line). Which memcgs hold an
//! ID depends on the kernel ([`dying_hold`], from `leaks::TABLE`); the leak rate is the net growth of
//! the dying memcgs that hold one, and a time to exhaustion comes only from a
//! positive leak. Pure: fed with samples from the running state (`watch`),
//! the history, or one reading and the uptime (`doctor`).
//!
//! What runs out: memcg IDs are 16 bit (`MEM_CGROUP_ID_MAX` 65535) and
//! `mem_cgroup_css_alloc()` fails with ENOSPC when none is free, so mkdir of a
//! cgroup fails. Live memcgs always hold one.

use std::collections::VecDeque;

use serde::Serialize;

use crate::probes::kernel::KernelVersion;

/// Errors of the forecast configuration.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    #[error("the forecast window must be longer than zero")]
    EmptyWindow,
}

/// Which dying memcgs still hold their ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DyingHold {
    /// Every one, until it is freed (`mem_cgroup_css_free()` → `mem_cgroup_id_remove()`).
    Every,
    /// Only those whose swapped-out pages still reference the ID
    /// (`mem_cgroup_id_get_many()` at swap-out); the rest gave it back at offline.
    SwapHeld,
}

/// Which dying memcgs hold an ID on kernel `version`, read from the leak
/// table ([`crate::leaks::TABLE`], the one kernel table): before the first
/// kernel whose rows release the ID before free (73f576c04b94, 4.7) every
/// dying memcg holds one; from it on, only those swap entries reference.
/// `None` when the version is unknown. A backport moves that table's rows.
pub fn dying_hold(version: Option<KernelVersion>) -> Option<DyingHold> {
    let v = version?;
    Some(if v < crate::leaks::ids_released_before_free_since() {
        DyingHold::Every
    } else {
        DyingHold::SwapHeld
    })
}

/// What is known about swap held by dying memcgs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwapEvidence {
    /// Per memcg (census counters): this many dying memcgs have swap entries.
    PerMemcg(u64),
    /// Only the node's swap in use, in bytes: zero proves no dying memcg holds
    /// an ID through swap; anything else leaves it unknown.
    NodeSwapUsed(u64),
    Unknown,
}

/// Dying memcgs holding an ID now; `None` when it cannot be known (never a guess).
pub fn dying_holding(hold: Option<DyingHold>, dying: u64, swap: SwapEvidence) -> Option<u64> {
    match (hold?, swap) {
        (DyingHold::Every, _) => Some(dying),
        (DyingHold::SwapHeld, SwapEvidence::PerMemcg(n)) => Some(n.min(dying)),
        (DyingHold::SwapHeld, _) if dying == 0 => Some(0),
        (DyingHold::SwapHeld, SwapEvidence::NodeSwapUsed(0)) => Some(0),
        (DyingHold::SwapHeld, _) => None,
    }
}

/// One observation.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sample {
    /// Seconds on any clock that only moves forward.
    pub t_s: f64,
    /// Dying memcgs.
    pub dying: u64,
    /// Dying memcgs that hold an ID; `None`: unknown.
    pub dying_holding: Option<u64>,
    /// memcg IDs in use (live memcgs plus `dying_holding`); `None`: unknown.
    pub ids_in_use: Option<u64>,
}

impl Sample {
    /// From counts of the running state or the history, where every memcg's
    /// ID is tracked: IDs in use are the live ones plus the holding dying ones.
    pub fn tracked(t_s: f64, live: u64, dying: u64, ids_in_use: u64) -> Sample {
        Sample {
            t_s,
            dying,
            dying_holding: Some(ids_in_use.saturating_sub(live).min(dying)),
            ids_in_use: Some(ids_in_use),
        }
    }
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
    /// Net growth of dying memcgs per hour (memory they keep; negative: shrinking).
    pub zombies_per_hour: f64,
    /// The leak rate: net growth per hour of the dying memcgs that hold an ID;
    /// `None` when which of them hold one is unknown.
    pub ids_per_hour: Option<f64>,
    pub ids_in_use: Option<u64>,
    pub id_limit: u32,
    /// Hours until every ID is in use at the leak rate; `None` unless it grows.
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

/// Time left only for a positive leak with known IDs in use; a flat or
/// falling count never runs out.
fn exhaustion(ids_in_use: Option<u64>, id_limit: u32, leak: Option<f64>) -> Option<f64> {
    let leak = leak.filter(|l| *l > 1e-9)?;
    let left = (id_limit as u64).saturating_sub(ids_in_use?) as f64;
    Some(left / leak)
}

/// A forecast from samples (any order); `None` with fewer than two distinct times.
///
/// A least-squares rate over the whole window lags a leak that began inside
/// it: the flat stretch before it is averaged in, so a fresh leak reads slow
/// (and its time left long) for up to the window's length. When the window
/// shows a leak, the rate is also fitted from the ID holders' last low (where
/// the current rise began); spanning at least [`MIN_WINDOW_S`] and faster, it
/// is the leak as it runs now and is used (`window_s` says over how long).
pub fn from_samples(samples: &[Sample], id_limit: u32, basis: Basis) -> Option<Forecast> {
    let mut v: Vec<Sample> = samples.to_vec();
    v.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
    let full = fit(&v, id_limit, basis)?;
    if full.hours_to_exhaustion.is_none() {
        return Some(full);
    }
    let Some(rise) = since_last_low(&v).filter(|r| r.len() < v.len()) else {
        return Some(full);
    };
    match fit(rise, id_limit, basis) {
        Some(r)
            if r.window_s >= MIN_WINDOW_S
                && r.hours_to_exhaustion.is_some()
                && r.ids_per_hour > full.ids_per_hour =>
        {
            Some(r)
        }
        _ => Some(full),
    }
}

/// The samples from the last one where the ID holders stood at their
/// window low; `None` when a holder count is unknown.
fn since_last_low(v: &[Sample]) -> Option<&[Sample]> {
    let low = v.iter().map(|s| s.dying_holding).min()??;
    let at = v.iter().rposition(|s| s.dying_holding == Some(low))?;
    Some(&v[at..])
}

/// The least-squares forecast over sorted samples.
fn fit(v: &[Sample], id_limit: u32, basis: Basis) -> Option<Forecast> {
    let (first, last) = (*v.first()?, *v.last()?);
    let dying: Vec<(f64, f64)> = v.iter().map(|s| (s.t_s, s.dying as f64)).collect();
    let zombies_per_hour = slope(&dying)? * 3600.0;
    let holding: Option<Vec<(f64, f64)>> = v
        .iter()
        .map(|s| Some((s.t_s, s.dying_holding? as f64)))
        .collect();
    let ids_per_hour = holding.and_then(|h| slope(&h)).map(|s| s * 3600.0);
    // A net fall over the window is no leak, whatever the fit says.
    let grew = match (first.dying_holding, last.dying_holding) {
        (Some(a), Some(b)) => b > a,
        _ => false,
    };
    Some(Forecast {
        basis,
        window_s: last.t_s - first.t_s,
        zombies_per_hour,
        ids_per_hour,
        ids_in_use: last.ids_in_use,
        id_limit,
        hours_to_exhaustion: exhaustion(last.ids_in_use, id_limit, ids_per_hour.filter(|_| grew)),
    })
}

/// A lifetime average from one reading: `dying` memcgs, `dying_holding` of
/// them holding IDs, accumulated since boot over `uptime_s` (there were none at boot).
pub fn since_boot(
    dying: u64,
    dying_holding: Option<u64>,
    ids_in_use: Option<u64>,
    uptime_s: f64,
    id_limit: u32,
) -> Forecast {
    let hours = (uptime_s / 3600.0).max(1.0 / 60.0);
    let ids_per_hour = dying_holding.map(|h| h as f64 / hours);
    Forecast {
        basis: Basis::SinceBoot,
        window_s: uptime_s,
        zombies_per_hour: dying as f64 / hours,
        ids_per_hour,
        ids_in_use,
        id_limit,
        hours_to_exhaustion: exhaustion(ids_in_use, id_limit, ids_per_hour),
    }
}

/// The forecast from the history's samples: those of the newest boot in the
/// last `window_s`, when they span at least [`MIN_WINDOW_S`].
pub fn from_history(
    samples: &[crate::store::samples::CountSample],
    window_s: f64,
    id_limit: u32,
) -> Option<Forecast> {
    let last = samples.iter().max_by_key(|s| s.ts)?;
    let start = last.ts as f64 / 1e9 - window_s;
    let v: Vec<Sample> = samples
        .iter()
        .filter(|s| s.boot_id == last.boot_id && s.ts as f64 / 1e9 >= start)
        .map(|s| Sample::tracked(s.ts as f64 / 1e9, s.live, s.dying, s.ids_in_use))
        .collect();
    from_samples(&v, id_limit, Basis::History).filter(|f| f.window_s >= MIN_WINDOW_S)
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
    /// The same forecast against the IDs in use now (one snapshot for every
    /// section of a report); still no time where the leak did not grow.
    pub fn at(self, ids_in_use: Option<u64>) -> Forecast {
        let hours =
            self.hours_to_exhaustion
                .and(exhaustion(ids_in_use, self.id_limit, self.ids_per_hour));
        Forecast {
            ids_in_use,
            hours_to_exhaustion: hours,
            ..self
        }
    }

    /// The leak rate every view shows (IDs per hour); `None`: unknown.
    pub fn leak_per_hour(&self) -> Option<f64> {
        self.ids_per_hour
    }

    /// Seconds until every ID is in use; +Inf when not filling or unknown (metrics).
    pub fn exhaustion_s(&self) -> f64 {
        self.hours_to_exhaustion
            .map(|h| h * 3600.0)
            .unwrap_or(f64::INFINITY)
    }

    /// `ID leak +12.0/h · full in 3d4h`, `ID leak +0.0/h · not filling`,
    /// `ID leak unknown`: the words of the live view and the NPD line.
    pub fn leak_text(&self) -> String {
        match (self.ids_per_hour, self.hours_to_exhaustion) {
            (Some(l), Some(h)) => format!("ID leak {l:+.1}/h · full in {}", human_hours(h)),
            (Some(l), None) if self.filling_unknown_ids() => {
                format!("ID leak {l:+.1}/h · IDs in use unknown")
            }
            (Some(l), None) => format!("ID leak {l:+.1}/h · not filling"),
            (None, _) => "ID leak unknown (swap may hold dying memcgs' IDs)".into(),
        }
    }

    /// One line for headers: `ID leak +12.0/h · full in 3d4h (5m); dying +12.0/h`.
    pub fn short(&self) -> String {
        let window = human_hours(self.window_s / 3600.0);
        format!(
            "{} ({window}); dying {:+.1}/h",
            self.leak_text(),
            self.zombies_per_hour
        )
    }

    /// A positive leak whose time to exhaustion is missing only because the
    /// IDs in use are unknown.
    fn filling_unknown_ids(&self) -> bool {
        self.ids_in_use.is_none() && self.ids_per_hour.is_some_and(|l| l > 1e-9)
    }

    /// The forecast in words for the report and the doctor's detail.
    pub fn outlook(&self) -> String {
        let basis = match self.basis {
            Basis::Running => "over this run",
            Basis::History => "over the history",
            Basis::SinceBoot => "average since boot",
        };
        let w = human_hours(self.window_s / 3600.0);
        match (self.ids_per_hour, self.hours_to_exhaustion) {
            (Some(l), Some(h)) => format!(
                "at {l:+.1} ID-holding dying memcgs/h ({basis}, {w}), every memcg ID is in use in {}",
                human_hours(h)
            ),
            // A leak against an unknown count of IDs in use: growing, but
            // when the space is full is not known (never "not filling").
            (Some(l), None) if self.filling_unknown_ids() => format!(
                "ID-holding dying memcgs grow {l:+.1}/h ({basis}, {w}), but how many IDs are in use is unknown, so not when every one is"
            ),
            (Some(l), None) => format!(
                "the ID space is not filling: ID-holding dying memcgs {l:+.1}/h ({basis}, {w}); dying memcgs {:+.1}/h cost memory, not IDs",
                self.zombies_per_hour
            ),
            (None, _) => format!(
                "the ID outlook is unknown: swap is in use and which dying memcgs it holds is not known without a census; dying memcgs {:+.1}/h ({basis}, {w})",
                self.zombies_per_hour
            ),
        }
    }
}

#[cfg(test)]
mod tests;
