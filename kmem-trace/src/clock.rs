//! Kernel timestamps (CLOCK_MONOTONIC ns, `bpf_ktime_get_ns`) to wall-clock time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall clock = monotonic + offset, with the offset measured once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub offset_ns: i64,
}

fn clock_ns(id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out pointer.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

impl Clock {
    /// Measures the offset now (the two reads are ~50 ns apart).
    pub fn measure() -> Clock {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    pub fn from_offset(offset_ns: i64) -> Clock {
        Clock { offset_ns }
    }

    /// The current monotonic time in ns (comparable with event timestamps).
    pub fn mono_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }

    pub fn wall(&self, mono_ns: u64) -> SystemTime {
        let ns = mono_ns as i64 + self.offset_ns;
        if ns >= 0 {
            UNIX_EPOCH + Duration::from_nanos(ns as u64)
        } else {
            UNIX_EPOCH
        }
    }

    /// RFC 3339 UTC with nanoseconds.
    pub fn rfc3339(&self, mono_ns: u64) -> String {
        humantime::format_rfc3339_nanos(self.wall(mono_ns)).to_string()
    }

    /// `HH:MM:SS.mmm` UTC, for the human tail.
    pub fn hms(&self, mono_ns: u64) -> String {
        let s = humantime::format_rfc3339_millis(self.wall(mono_ns)).to_string();
        s.get(11..23).unwrap_or(&s).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_monotonic_to_wall_clock() {
        let c = Clock::from_offset(1_700_000_000_000_000_000);
        assert_eq!(c.rfc3339(5_000_000_123), "2023-11-14T22:13:25.000000123Z");
        assert_eq!(c.hms(5_000_000_123), "22:13:25.000");
    }

    #[test]
    fn measured_clock_is_close_to_now() {
        let c = Clock::measure();
        let wall = c.wall(Clock::mono_now());
        let diff = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(diff < Duration::from_secs(1));
    }
}
