//! The pin cause of each zombie of the report, and their totals: the
//! census's reading now where it has one ([`Pin`] by memcg address), else
//! the counters the tracer's offline hook read as the memcg went dying
//! (`memory`, v1 `kmem`, and swap: v2's swap counter or v1's `memsw` minus
//! `memory`, see `decode`), classified by the same rules
//! ([`census::pin::classify`]). Before 6.1 there is no BPF cgroup iterator,
//! so no census reads a dying memcg now and the offline reading is all there
//! is: it is labelled as such, never shown as what holds the memcg now
//! (swap can be faulted back or freed since). Pure.

use std::collections::{BTreeMap, HashMap};

use super::model::{AppendixRow, CauseTotal};
use crate::{
    census::{self, Pin, PinCause},
    decode::Counters,
    zombies::{CountersAt, Zombie},
};

/// What a zombie's cause was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Basis {
    /// The census, now.
    Now,
    /// The tracer's offline event: what it held when it went dying.
    AtOffline,
}

/// A zombie's cause and where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZombieCause {
    pub cause: PinCause,
    pub basis: Basis,
}

/// `z`'s cause: the census's pin if it read the memcg, else its counters
/// at offline if the tracer saw the offline; `None` when neither is there
/// (counters a census read without a pin are no offline reading).
pub fn of_zombie(
    z: &Zombie,
    census: Option<&Pin>,
    page: u64,
    kmem_pins: bool,
) -> Option<ZombieCause> {
    if let Some(p) = census {
        return Some(ZombieCause {
            cause: p.cause,
            basis: Basis::Now,
        });
    }
    if z.counters_at != CountersAt::Offline || page == 0 {
        return None;
    }
    let pages = |b: Option<u64>| b.map(|b| b / page);
    let at = Counters {
        mem_pages: pages(z.pinned_bytes),
        kmem_pages: pages(z.kmem_bytes),
        swap_pages: pages(z.swap_bytes),
    };
    at.mem_pages?;
    let pin = census::pin::classify(Some(&at), None, None, None, kmem_pins);
    // Without a census the page counters cannot tell page cache from tmpfs
    // (`classify` says "page cache or tmpfs"), and an unknown is no cause.
    (pin.cause != PinCause::Unknown).then_some(ZombieCause {
        cause: pin.cause,
        basis: Basis::AtOffline,
    })
}

/// The words for a cause: its name, and for an offline reading when it
/// was read and why nothing reads it now (`why_not_now`, e.g. "this
/// kernel has no BPF iterator to read it now").
pub fn label(c: ZombieCause, why_not_now: &str) -> String {
    match c.basis {
        Basis::Now => c.cause.name().to_string(),
        Basis::AtOffline => format!("{} (at offline; {why_not_now})", c.cause.name()),
    }
}

/// Marks an appendix row's cause read from the counters at offline.
pub const AT_OFFLINE_MARK: &str = "\u{2020}";

/// What [`AT_OFFLINE_MARK`] means, said once above the appendix.
pub const AT_OFFLINE_LEGEND: &str =
    "\u{2020} read from the memcg's counters when it went offline: nothing reads them now (see Pin causes)";

/// The short words for one appendix row: the cause and [`AT_OFFLINE_MARK`]
/// for an offline reading; the pin-causes section says why once (with the
/// why on every row, the 220-zombie layout test's page was 15,793 px tall
/// at 390 px, over its 12,000 px budget).
pub fn short_label(c: ZombieCause) -> String {
    match c.basis {
        Basis::Now => c.cause.name().to_string(),
        Basis::AtOffline => format!("{}{AT_OFFLINE_MARK}", c.cause.name()),
    }
}

/// Why no census reads dying memcgs now: the kernel lacks the BPF cgroup
/// iterator (`iterator` false: before 6.1), or the census counted only for
/// another reason (`fallback`: no root, BPF refused).
pub fn why_not_now(iterator: Option<bool>, fallback: Option<&str>) -> String {
    match (iterator, fallback) {
        (Some(false), _) => "this kernel has no BPF iterator to read it now".into(),
        (_, Some(f)) if !f.is_empty() => {
            format!(
                "no BPF census read it now: {}",
                crate::outputs::text::Term(f)
            )
        }
        _ => "no BPF census read it now".into(),
    }
}

/// Every zombie's cause, by memcg address.
pub fn of_rows(
    zombies: &[Zombie],
    pins: &HashMap<String, Pin>,
    page: u64,
    kmem_pins: bool,
) -> HashMap<String, ZombieCause> {
    zombies
        .iter()
        .filter_map(|z| {
            let c = of_zombie(z, pins.get(&z.memcg_addr), page, kmem_pins)?;
            Some((z.memcg_addr.clone(), c))
        })
        .collect()
}

/// Zombies and bytes per cause (a cause read now and the same at offline
/// apart), most zombies first.
pub fn totals(
    rows: &[AppendixRow],
    causes: &HashMap<String, ZombieCause>,
    why_not_now: &str,
) -> Vec<CauseTotal> {
    let mut by: BTreeMap<(PinCause, Basis), (u64, u64)> = BTreeMap::new();
    for r in rows {
        let key = causes
            .get(&r.zombie.memcg_addr)
            .map_or((PinCause::Unknown, Basis::Now), |c| (c.cause, c.basis));
        let e = by.entry(key).or_default();
        e.0 += 1;
        e.1 += r.zombie.pinned_bytes.unwrap_or(0);
    }
    let mut v: Vec<CauseTotal> = by
        .into_iter()
        .map(|((c, basis), (n, b))| {
            let zc = ZombieCause { cause: c, basis };
            CauseTotal {
                kind: c,
                cause: label(zc, why_not_now),
                at_offline: (basis == Basis::AtOffline).then(|| why_not_now.to_string()),
                zombies: n,
                pinned_bytes: b,
                remedy: c.remedy().to_string(),
            }
        })
        .collect();
    v.sort_by(|a, b| {
        b.zombies
            .cmp(&a.zombies)
            .then(b.pinned_bytes.cmp(&a.pinned_bytes))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    fn zombie(addr: &str, at: CountersAt, mem: u64, kmem: u64, swap: u64) -> Zombie {
        let mut z = super::super::tests::pod_zombie(1, "app", mem * PAGE);
        z.memcg_addr = addr.into();
        z.kmem_bytes = Some(kmem * PAGE);
        z.swap_bytes = Some(swap * PAGE);
        z.counters_at = at;
        z
    }

    #[test]
    fn offline_counters_name_the_cause_when_no_census_read_it() {
        // 5.10 v1: one page charged (kmem), 16 pages of tmpfs in swap.
        let z = zombie("0x1", CountersAt::Offline, 1, 1, 16);
        let c = of_zombie(&z, None, PAGE, false).unwrap();
        assert_eq!((c.cause, c.basis), (PinCause::Swap, Basis::AtOffline));
        let why = why_not_now(Some(false), Some("iterator missing"));
        assert_eq!(
            label(c, &why),
            "swap (at offline; this kernel has no BPF iterator to read it now)"
        );
        // The census's reading wins, and is current.
        let pin = Pin {
            cause: PinCause::Tmpfs,
            ..Pin::UNKNOWN
        };
        let now = of_zombie(&z, Some(&pin), PAGE, false).unwrap();
        assert_eq!((now.cause, now.basis), (PinCause::Tmpfs, Basis::Now));
        assert_eq!(label(now, &why), "tmpfs/shmem");
    }

    #[test]
    fn census_counters_or_none_are_never_an_offline_cause() {
        let census = zombie("0x1", CountersAt::Census, 1, 0, 16);
        assert_eq!(of_zombie(&census, None, PAGE, false), None);
        let none = zombie("0x2", CountersAt::None, 1, 0, 16);
        assert_eq!(of_zombie(&none, None, PAGE, false), None);
        let mut no_mem = zombie("0x3", CountersAt::Offline, 0, 0, 0);
        no_mem.pinned_bytes = None;
        assert_eq!(of_zombie(&no_mem, None, PAGE, false), None);
        // Nothing charged at offline: references only, still at offline.
        let empty = zombie("0x4", CountersAt::Offline, 0, 0, 0);
        let c = of_zombie(&empty, None, PAGE, false).unwrap();
        assert_eq!((c.cause, c.basis), (PinCause::NoCharge, Basis::AtOffline));
    }

    #[test]
    fn totals_keep_offline_readings_apart_and_escape_the_reason() {
        let zs = [
            zombie("0x1", CountersAt::Offline, 1, 0, 16),
            zombie("0x2", CountersAt::Offline, 1, 0, 16),
            zombie("0x3", CountersAt::None, 1, 0, 0),
        ];
        let rows: Vec<AppendixRow> = zs
            .iter()
            .map(|z| AppendixRow {
                zombie: z.clone(),
                cause: None,
                cause_at_offline: false,
            })
            .collect();
        let causes = of_rows(&zs, &HashMap::new(), PAGE, false);
        let why = why_not_now(None, Some("bpf refused\x1b[31m"));
        assert!(!why.contains('\x1b'), "{why}");
        let t = totals(&rows, &causes, &why);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].kind, t[0].zombies), (PinCause::Swap, 2));
        assert!(t[0]
            .cause
            .starts_with("swap (at offline; no BPF census read it now: bpf refused"));
        assert_eq!(t[0].at_offline.as_deref(), Some(why.as_str()));
        assert_eq!(
            (t[1].kind, t[1].at_offline.as_deref()),
            (PinCause::Unknown, None)
        );
    }
}
