//! After a restart: which memcgs of the history are still there, so they keep
//! their owner, creator and residents. Pure: fed with the history's open rows,
//! the cgroups that exist now, and (when a census ran) the memcgs the kernel
//! still has. A history row and a memcg are the same when address, memcg ID
//! and cgroup ID agree; the address is only unique while a memcg lives, which
//! is why only rows not yet freed are considered.

use crate::{
    attribution::Attribution,
    lifecycle::{CgroupKey, Memcg, Origin, State},
};

use super::HistoryRow;

/// What to restore and what to close.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Memcgs to seed into the lifecycle, with their kept attribution.
    pub restore: Vec<(Memcg, Option<Attribution>)>,
    /// History rows whose memcg is gone (freed while no tracer watched).
    pub lost: Vec<i64>,
    /// Rows that were live and whose cgroup is gone: they went offline unseen.
    pub went_offline: Vec<u64>,
}

/// Same memcg: address equal, and ID and cgroup ID equal where both know them.
/// An ID of 0 is unknown: `mem_cgroup_id_remove()` zeroes `memcg->id.id` at
/// offline on recent kernels, so a census of dying memcgs reads 0 there.
pub fn same(row: &Memcg, m: &Memcg) -> bool {
    let known_eq = |a: u64, b: u64| a == 0 || b == 0 || a == b;
    row.addr == m.addr
        && known_eq(row.memcg_id as u64, m.memcg_id as u64)
        && known_eq(row.cgroup_id, m.cgroup_id)
}

/// Reconciles the open history rows with what exists now. `census` is the
/// kernel's own list of memcgs when one was taken (authoritative: rows not in
/// it are lost). Without it nothing can confirm that a removed memcg still
/// exists: a dying row whose cgroup directory exists again is lost (a
/// removed cgroup has no directory, so that cgroup ID now names another
/// one); every other dying row, and every live row whose directory is gone
/// (it went offline unseen), is restored *unconfirmed*: not a zombie until
/// an event or a later census (`census::recheck`) shows the kernel has it.
pub fn reconcile(
    rows: Vec<HistoryRow>,
    cgroup_exists: impl Fn(CgroupKey) -> bool,
    census: Option<&[Memcg]>,
) -> Reconciled {
    let mut out = Reconciled::default();
    for row in rows {
        let HistoryRow {
            row_id,
            memcg: mut m,
            attribution,
            ..
        } = row;
        if let Some(census) = census {
            let Some(now) = census.iter().find(|c| same(&m, c)) else {
                out.lost.push(row_id);
                continue;
            };
            // The kernel's view wins for state and counters; the history
            // keeps what the kernel cannot tell (times, owner, processes).
            m.state = now.state;
            if now.cgroup_id != 0 {
                m.hierarchy_id = now.hierarchy_id;
                m.cgroup_id = now.cgroup_id;
            }
            if m.path.is_empty() {
                m.path = now.path.clone();
            }
        } else {
            let exists = m.key().map(&cgroup_exists);
            match (m.state, exists) {
                (State::Dying, Some(true)) => {
                    out.lost.push(row_id);
                    continue;
                }
                (State::Live, Some(false)) => {
                    m.state = State::Dying;
                    m.unconfirmed = true;
                    out.went_offline.push(m.addr);
                }
                (State::Dying, _) => m.unconfirmed = true,
                _ => {}
            }
        }
        m.origin = Origin::History;
        out.restore.push((m, attribution));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::WallTimes;

    fn row(id: i64, addr: u64, memcg_id: u32, cgroup_id: u64, state: State) -> HistoryRow {
        let mut m = Memcg::new(addr, memcg_id, Origin::Traced);
        m.cgroup_id = cgroup_id;
        m.hierarchy_id = 4;
        m.state = state;
        m.path = Arc::from(format!("/c{id}"));
        HistoryRow {
            row_id: id,
            state: "x".into(),
            memcg: m,
            wall: WallTimes::default(),
            attribution: Some(Attribution::of_path("/system.slice/a.service")),
        }
    }

    #[test]
    fn without_census_removed_memcgs_are_unconfirmed_not_zombies() {
        let rows = vec![
            row(1, 0x10, 5, 100, State::Dying),
            row(2, 0x20, 6, 200, State::Live),
            row(3, 0x30, 7, 300, State::Live),
            row(4, 0x40, 8, 400, State::Dying), // its cgroup ID has a directory
        ];
        let r = reconcile(rows, |k| k == (4, 300) || k == (4, 400), None);
        assert_eq!(r.lost, vec![4]);
        assert_eq!(r.went_offline, vec![0x20]);
        let states: Vec<(State, bool)> = r
            .restore
            .iter()
            .map(|(m, _)| (m.state, m.unconfirmed))
            .collect();
        assert_eq!(
            states,
            vec![
                (State::Dying, true),
                (State::Dying, true),
                (State::Live, false)
            ]
        );
        // Restored into a lifecycle, none counts as dying or a zombie.
        let mut lc = crate::lifecycle::Lifecycle::new(Default::default()).unwrap();
        for (m, _) in r.restore.iter().cloned() {
            lc.seed_memcg(m);
        }
        let c = lc.counts(u64::MAX);
        assert_eq!((c.live, c.dying, c.zombies, c.unconfirmed), (1, 0, 0, 2));
        assert!(r
            .restore
            .iter()
            .all(|(m, a)| m.origin == Origin::History && a.is_some()));
    }

    #[test]
    fn with_census_only_matching_memcgs_survive() {
        let rows = vec![
            row(1, 0x10, 5, 100, State::Dying),
            row(2, 0x20, 6, 200, State::Dying), // address reused by another cgroup
            row(3, 0x30, 7, 300, State::Dying), // freed while nobody watched
            row(4, 0x40, 8, 0, State::Dying),   // cgroup id unknown in the history
        ];
        let mut c1 = Memcg::new(0x10, 5, Origin::Census);
        c1.cgroup_id = 100;
        c1.state = State::Dying;
        let mut c2 = Memcg::new(0x20, 6, Origin::Census);
        c2.cgroup_id = 999;
        let mut c4 = Memcg::new(0x40, 8, Origin::Census);
        c4.cgroup_id = 400;
        c4.hierarchy_id = 4;
        c4.state = State::Dying;
        let census = [c1, c2, c4];
        let r = reconcile(rows, |_| true, Some(&census));
        assert_eq!(r.lost, vec![2, 3]);
        let kept: Vec<(u64, u64)> = r
            .restore
            .iter()
            .map(|(m, _)| (m.addr, m.cgroup_id))
            .collect();
        assert_eq!(kept, vec![(0x10, 100), (0x40, 400)]);
    }
}
