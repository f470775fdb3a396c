//! The exhaustion scenario's leaky workload and its pace. The issue asks
//! for "a steady rate": one swap-pinned container memcg per fixed period,
//! chosen longer than the slowest push to swap of the first
//! [`CALIBRATION`] leaks (7.3's `memory.reclaim` takes milliseconds, 5.10's
//! `memory.force_empty` on cgroup v1 under TCG about 1.7 s, so a fixed
//! 2/s fell behind there and leaked as fast as the pushes went). The ID
//! headroom left after those leaks is then cut, with live filler memcgs
//! (which hold IDs but are no leak: the forecast follows dying ID holders),
//! to what the period uses up in about [`TARGET`]: more than the
//! forecast's minute of samples and the checks' half minute after it,
//! and the cell stays short whatever the period.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::proto;

/// Leaks made back to back to measure the push before the pace is chosen.
pub const CALIBRATION: usize = 3;
/// The fastest pace: 2/s, as the scenario ran on every kernel before.
pub const MIN_PERIOD: Duration = Duration::from_millis(500);
/// How long the paced leak should take to use up the headroom.
pub const TARGET: Duration = Duration::from_secs(150);
/// Bytes of tmpfs written per leaked memcg (pushed out to swap).
const LEAK_BYTES: &str = "65536";

/// What the leak loop saw. Times are seconds since the scenario started.
#[derive(Debug, Default)]
pub struct Leak {
    pub leaked: u64,
    /// When the first leaked memcg was removed: the dying ID holders, what
    /// the forecast follows, rise from here (the first push before it leaks
    /// nothing).
    pub start_s: f64,
    /// When `mkdir` failed (or the loop stopped).
    pub end_s: f64,
    /// When the last leaked memcg was removed.
    pub last_s: f64,
    pub errno: Option<(String, String)>,
    pub failed_path: String,
    /// The knob that pushed the pages to swap (`memory.reclaim`, ...).
    pub pushed_by: Option<&'static str>,
    /// The pace chosen from the calibration leaks.
    pub period: Option<Duration>,
    /// The calibration leaks' durations (mkdir, write, push, rmdir), seconds.
    pub calibration_s: Vec<f64>,
    /// Paced leaks that started after their time (the one before took
    /// longer than the period: the pace slipped).
    pub late: u64,
    /// Live filler memcgs made after the calibration to size the headroom.
    pub topped_up: u64,
    pub errors: Vec<String>,
}

impl Leak {
    /// The rate the workload reached, per second: leaked memcgs after the
    /// first over the time between the first and the last removal.
    pub fn rate_reached(&self) -> Option<f64> {
        let span = self.last_s - self.start_s;
        (self.leaked > 1 && span > 0.0).then(|| (self.leaked - 1) as f64 / span)
    }
}

/// The pace: 1.3 times the slowest calibration leak, rounded up to a tenth
/// of a second, never faster than [`MIN_PERIOD`].
pub fn period(calibration: &[Duration]) -> Duration {
    let slowest = calibration.iter().max().copied().unwrap_or_default();
    let tenths = (slowest.as_secs_f64() * 1.3 * 10.0).ceil() as u64;
    Duration::from_millis(tenths * 100).max(MIN_PERIOD)
}

/// Leaks to leave room for: what `period` makes in [`TARGET`], at most the
/// `headroom` there is (the rest is filled with live memcgs).
pub fn leaks_wanted(period: Duration, headroom: u64) -> u64 {
    let n = (TARGET.as_secs_f64() / period.as_secs_f64()).ceil() as u64;
    n.clamp(1, headroom.max(1))
}

/// Where the leak runs and how the IDs are counted.
pub struct Setup<'a> {
    /// The pod's cgroup; each leak is a `cri-containerd-<cid>.scope` in it.
    pub pod: &'a Path,
    /// tmpfs directory for the pinned files.
    pub shm: &'a Path,
    /// Where live filler memcgs go, and the next free filler index.
    pub filler: &'a Path,
    pub next_filler: u64,
    /// The size of the ID space.
    pub id_limit: u64,
    /// memcgs the kernel holds now.
    pub kernel_memcgs: &'a dyn Fn() -> Option<u64>,
    /// Seconds since the scenario started.
    pub now_s: &'a dyn Fn() -> f64,
    /// The loop's safety stop: `mkdir` still works after this many leaks.
    pub max_leaks: u64,
}

/// Creates, pins and removes container memcgs until `mkdir` fails:
/// [`CALIBRATION`] back to back, then at the chosen period.
pub fn run(s: &Setup) -> Result<Leak> {
    let mut leak = Leak::default();
    let mut calibration = Vec::new();
    let mut paced_from: Option<(Instant, Duration)> = None;
    let mut paced = 0u32;
    loop {
        if let Some((from, period)) = paced_from {
            let due = from + period * paced;
            match due.checked_duration_since(Instant::now()) {
                Some(wait) => thread::sleep(wait),
                None if paced > 0 => leak.late += 1,
                None => {}
            }
            paced += 1;
        }
        let began = Instant::now();
        let cid = format!("{:064x}", 0xc0ffee_u64 + leak.leaked);
        let cg = s.pod.join(format!("cri-containerd-{cid}.scope"));
        if let Err(e) = fs::create_dir(&cg) {
            leak.end_s = (s.now_s)();
            leak.errno = Some(errno_words(&e));
            leak.failed_path = cg.display().to_string();
            break;
        }
        if let Err(e) =
            crate::swap_push::pin_swap(&cg, &s.shm.join(&cid), LEAK_BYTES, &mut leak.pushed_by)
        {
            leak.errors.push(format!("{e:#}"));
            let _ = fs::remove_dir(&cg);
            leak.end_s = (s.now_s)();
            break;
        }
        fs::remove_dir(&cg).with_context(|| format!("rmdir {}", cg.display()))?;
        leak.last_s = (s.now_s)();
        if leak.leaked == 0 {
            leak.start_s = leak.last_s;
        }
        leak.leaked += 1;
        if paced_from.is_none() {
            calibration.push(began.elapsed());
            if calibration.len() == CALIBRATION {
                let p = period(&calibration);
                leak.period = Some(p);
                leak.calibration_s = calibration.iter().map(Duration::as_secs_f64).collect();
                top_up(s, p, &mut leak)?;
                proto::step(
                    None,
                    &format!(
                        "exhaustion: pace one leak per {:.1} s (slowest of {CALIBRATION} pushes {:.2} s); {} live filler memcgs added so the leak lasts about {} s",
                        p.as_secs_f64(),
                        calibration.iter().max().map_or(0.0, Duration::as_secs_f64),
                        leak.topped_up,
                        TARGET.as_secs()
                    ),
                );
                paced_from = Some((Instant::now(), p));
            }
        }
        if leak.leaked.is_multiple_of(25) {
            proto::step(None, &format!("exhaustion: leaked {}", leak.leaked));
        }
        if leak.leaked > s.max_leaks {
            leak.errors
                .push(format!("mkdir still works after {} leaks", leak.leaked));
            leak.end_s = (s.now_s)();
            break;
        }
    }
    Ok(leak)
}

/// Fills the headroom beyond what the pace needs with live memcgs.
fn top_up(s: &Setup, period: Duration, leak: &mut Leak) -> Result<()> {
    let used = (s.kernel_memcgs)().context("counting memcgs after the calibration")?;
    let headroom = s.id_limit.saturating_sub(used);
    let extra = headroom.saturating_sub(leaks_wanted(period, headroom));
    for i in 0..extra {
        let dir = s.filler.join(format!("f{}", s.next_filler + i));
        fs::create_dir(&dir).with_context(|| format!("filler memcg {}", dir.display()))?;
    }
    leak.topped_up = extra;
    Ok(())
}

/// The errno's name and the words `mkdir` prints for it.
pub fn errno_words(e: &std::io::Error) -> (String, String) {
    let name = match e.raw_os_error() {
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::ENOMEM) => "ENOMEM",
        _ => "other",
    };
    let text = e.to_string();
    let words = text.split(" (os error").next().unwrap_or(&text).to_string();
    (name.to_string(), words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_outlasts_the_slowest_push() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        // 7.3: pushes of milliseconds keep 2/s.
        assert_eq!(period(&ms(&[3, 5, 4])), MIN_PERIOD);
        // 5.10 v1 under TCG: 1.7 s pushes give one leak per 2.3 s.
        assert_eq!(
            period(&ms(&[1650, 1720, 1690])),
            Duration::from_millis(2300)
        );
        assert_eq!(period(&[]), MIN_PERIOD);
    }

    #[test]
    fn the_headroom_fits_the_target_time() {
        assert_eq!(leaks_wanted(MIN_PERIOD, 297), 297);
        assert_eq!(leaks_wanted(Duration::from_millis(2300), 297), 66);
        assert_eq!(leaks_wanted(Duration::from_millis(2300), 10), 10);
        assert_eq!(leaks_wanted(Duration::from_secs(1000), 0), 1);
    }

    #[test]
    fn the_rate_reached_spans_first_to_last_removal() {
        let leak = Leak {
            leaked: 67,
            start_s: 100.0,
            last_s: 100.0 + 66.0 * 2.3,
            ..Leak::default()
        };
        let r = leak.rate_reached().unwrap();
        assert!((r - 1.0 / 2.3).abs() < 1e-9, "{r}");
        assert_eq!(Leak::default().rate_reached(), None);
    }
}
