//! Writing memcg records: one row per memcg instance, updated in place while
//! it lives, inserted when first seen. The statements are prepared once per
//! connection (`prepare_cached`) and bound by position: re-parsing the SQL and
//! looking up named parameters for every record was most of the history's CPU
//! under churn (docs/PERFORMANCE.md).

use rusqlite::{types::ToSql, Connection, Transaction};

use super::{state_name, StoreError};
use crate::{
    attribution::Attribution,
    lifecycle::{KeyMap, Memcg, Origin, Stamp, State, Task},
    store::Record,
};

/// Parameters: ?1 boot, ?2 addr, ?3 memcg_id, ?4 hierarchy_id, ?5 cgroup_id,
/// ?6 level, ?7 path, ?8 state, ?9 origin, ?10 kmem_active, ?11 id_released,
/// ?12..?16 alloc/online/offline/released/free times, ?17..?19 offline
/// counters, ?20..?22 free counters, ?23 owner kind, ?24 namespace, ?25 pod,
/// ?26 pod uid, ?27 container, ?28 container id, ?29 runtime, ?30 image,
/// ?31 unit, ?32 attribution, ?33 creator, ?34 residents, ?35 last resident,
/// ?36 residents dropped, ?37 now.
///
/// The same memcg: same boot, address and ID, not finished, and the same
/// cgroup when both sides know it (address and ID can both be recycled).
macro_rules! set_columns {
    () => {
        "UPDATE memcg SET
    hierarchy_id = CASE WHEN ?5 != 0 THEN ?4 ELSE hierarchy_id END,
    cgroup_id = CASE WHEN ?5 != 0 THEN ?5 ELSE cgroup_id END,
    level = CASE WHEN ?5 != 0 THEN ?6 ELSE level END,
    path = CASE WHEN ?7 != '' THEN ?7 ELSE path END,
    state = ?8, origin = COALESCE(origin, ?9),
    kmem_active = ?10, id_released = ?11,
    alloc_at = COALESCE(?12, alloc_at), online_at = COALESCE(?13, online_at),
    offline_at = COALESCE(?14, offline_at),
    released_at = COALESCE(?15, released_at), free_at = COALESCE(?16, free_at),
    offline_mem_pages = COALESCE(?17, offline_mem_pages),
    offline_kmem_pages = COALESCE(?18, offline_kmem_pages),
    offline_swap_pages = COALESCE(?19, offline_swap_pages),
    free_mem_pages = COALESCE(?20, free_mem_pages),
    free_kmem_pages = COALESCE(?21, free_kmem_pages),
    free_swap_pages = COALESCE(?22, free_swap_pages),
    owner_kind = COALESCE(?23, owner_kind), namespace = COALESCE(?24, namespace),
    pod = COALESCE(?25, pod), pod_uid = COALESCE(?26, pod_uid),
    container = COALESCE(?27, container), container_id = COALESCE(?28, container_id),
    runtime = COALESCE(?29, runtime), image = COALESCE(?30, image), unit = COALESCE(?31, unit),
    attribution = COALESCE(?32, attribution), creator = COALESCE(?33, creator),
    residents = COALESCE(?34, residents), last_resident = COALESCE(?35, last_resident),
    residents_dropped = MAX(?36, residents_dropped), updated_at = ?37,
    dying_by = COALESCE(dying_by, CASE WHEN ?8 IN ('dying', 'unconfirmed')
        AND COALESCE(?14, offline_at) IS NULL THEN ?37 END)"
    };
}

/// The open row of this memcg, found through the index on (boot, address, ID).
const UPDATE: &str = concat!(
    set_columns!(),
    "
 WHERE boot_id = ?1 AND addr = ?2 AND memcg_id = ?3
   AND state IN ",
    open_states!(),
    "
   AND (cgroup_id = ?5 OR cgroup_id = 0 OR ?5 = 0)"
);

/// The same by row id (?38), when [`OpenRows`] knows the address's open row.
const UPDATE_ROW: &str = concat!(
    set_columns!(),
    "
 WHERE id = ?38 AND memcg_id = ?3
   AND state IN ",
    open_states!(),
    "
   AND (cgroup_id = ?5 OR cgroup_id = 0 OR ?5 = 0)"
);

/// Row ?1 was freed while nobody watched (another memcg holds its address). ?2 now.
pub(super) const LOSE_ROW: &str = concat!(
    "UPDATE memcg SET state = 'lost', updated_at = ?2 WHERE id = ?1 AND state IN ",
    open_states!()
);

/// Every open row at an address: freed while nobody watched (a memcg that
/// exists holds the address now). ?1 boot, ?2 addr, ?3 now.
const LOSE: &str = concat!(
    "UPDATE memcg SET state = 'lost', updated_at = ?3
 WHERE boot_id = ?1 AND addr = ?2 AND state IN ",
    open_states!()
);

const INSERT: &str = "INSERT INTO memcg (boot_id, addr, memcg_id, hierarchy_id, cgroup_id,
    level, path, state, origin, kmem_active, id_released, alloc_at, online_at, offline_at,
    released_at, free_at, offline_mem_pages, offline_kmem_pages, offline_swap_pages,
    free_mem_pages, free_kmem_pages, free_swap_pages, owner_kind, namespace, pod, pod_uid,
    container, container_id, runtime, image, unit, attribution, creator, residents,
    last_resident, residents_dropped, first_seen, updated_at, dying_by)
 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
    ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35, ?36,
    ?37, ?37, CASE WHEN ?8 IN ('dying', 'unconfirmed') AND ?14 IS NULL THEN ?37 END)";

fn wall(ns: Stamp, off: i64) -> Option<i64> {
    ns.get().map(|m| (m as i64).saturating_add(off))
}

fn pages(v: Option<u64>) -> Option<i64> {
    v.map(|p| p.min(i64::MAX as u64) as i64)
}

pub(super) fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Traced => "traced",
        Origin::Census => "census",
        Origin::History => "history",
        Origin::Partial => "partial",
    }
}

/// A task as stored: JSON with its time on the wall clock.
fn task_json(t: &Task, off: i64) -> Result<String, StoreError> {
    let mut t = t.clone();
    t.ts_ns = (t.ts_ns as i64).saturating_add(off).max(0) as u64;
    Ok(serde_json::to_string(&t)?)
}

/// Marks an address whose open rows [`OpenRows`] cannot tell apart.
const AMBIGUOUS: i64 = -1;

/// The open rows (live or dying) of this boot by memcg address. Kernels reuse
/// memcg addresses and IDs all the time, so under churn thousands of finished
/// rows share an (address, ID) pair and the indexed upsert read every one of
/// them from disk to check its state: most of the history writer's CPU
/// (docs/PERFORMANCE.md). While it runs the writer is the only one writing
/// rows, so a map loaded once knows every open row: the upsert goes by row
/// id, and a memcg with no open row at its address is inserted at once.
#[derive(Debug, Default)]
pub(super) struct OpenRows {
    by_addr: KeyMap<u64, i64>,
}

impl OpenRows {
    pub(super) fn load(conn: &Connection, boot: &str) -> Result<OpenRows, StoreError> {
        let mut st = conn.prepare_cached(concat!(
            "SELECT id, addr FROM memcg WHERE state IN ",
            open_states!(),
            " AND boot_id = ?1"
        ))?;
        let mut rows = st.query([boot])?;
        let mut open = OpenRows::default();
        while let Some(r) = rows.next()? {
            let (id, addr): (i64, i64) = (r.get(0)?, r.get(1)?);
            open.by_addr
                .entry(addr as u64)
                .and_modify(|v| *v = AMBIGUOUS)
                .or_insert(id);
        }
        Ok(open)
    }
}

/// Writes `records` in the caller's transaction. `open` must hold every open
/// row of `boot` (see [`OpenRows`]); it is kept up to date.
pub(super) fn write_records(
    tx: &Transaction<'_>,
    boot: &str,
    records: &[Record],
    off: i64,
    now: i64,
    open: &mut OpenRows,
) -> Result<(), StoreError> {
    for r in records {
        write_one(tx, boot, r, off, now, open)?;
    }
    Ok(())
}

fn write_one(
    tx: &Transaction<'_>,
    boot: &str,
    r: &Record,
    off: i64,
    now: i64,
    open: &mut OpenRows,
) -> Result<(), StoreError> {
    let m: &Memcg = &r.memcg;
    let attr = r.attribution.as_deref();
    let view = attr.map(Attribution::view);
    let v = view.as_ref();
    let pod_uid = v.and_then(|v| v.pod_uid.as_ref()).map(|u| u.to_string());
    let attr_json = attr.map(serde_json::to_string).transpose()?;
    let residents = if m.residents().is_empty() {
        None
    } else {
        let shifted: Vec<Task> = m
            .residents()
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t.ts_ns = (t.ts_ns as i64).saturating_add(off).max(0) as u64;
                t
            })
            .collect();
        Some(serde_json::to_string(&shifted)?)
    };
    let creator = m.creator().map(|t| task_json(t, off)).transpose()?;
    let last = m.last_resident().map(|t| task_json(t, off)).transpose()?;
    let (at_off, at_free) = (m.at_offline(), m.at_free());
    let times = [
        wall(m.alloc_ns, off),
        wall(m.online_ns, off),
        wall(m.offline_ns, off),
        wall(m.released_ns, off),
        wall(m.free_ns, off),
    ];
    let counters = [
        pages(at_off.mem_pages),
        pages(at_off.kmem_pages),
        pages(at_off.swap_pages),
        pages(at_free.mem_pages),
        pages(at_free.kmem_pages),
        pages(at_free.swap_pages),
    ];
    let addr = m.addr as i64;
    let cgroup_id = m.cgroup_id as i64;
    let path: &str = &m.path;
    let owner = [
        v.map(|v| v.kind),
        v.and_then(|v| v.namespace),
        v.and_then(|v| v.pod),
        pod_uid.as_deref(),
        v.and_then(|v| v.container),
        v.and_then(|v| v.container_id),
        v.and_then(|v| v.runtime),
        v.and_then(|v| v.image),
        v.and_then(|v| v.unit),
    ];
    let row = open.by_addr.get(&m.addr).copied();
    let params: [&dyn ToSql; 38] = [
        &boot,
        &addr,
        &m.memcg_id,
        &m.hierarchy_id,
        &cgroup_id,
        &m.level,
        &path,
        &state_name(m),
        &origin_name(m.origin),
        &m.kmem_active,
        &m.id_released,
        &times[0],
        &times[1],
        &times[2],
        &times[3],
        &times[4],
        &counters[0],
        &counters[1],
        &counters[2],
        &counters[3],
        &counters[4],
        &counters[5],
        &owner[0],
        &owner[1],
        &owner[2],
        &owner[3],
        &owner[4],
        &owner[5],
        &owner[6],
        &owner[7],
        &owner[8],
        &attr_json,
        &creator,
        &residents,
        &last,
        &m.residents_dropped,
        &now,
        &row,
    ];
    let finished = m.state == State::Freed;
    // Update the open row of this memcg if there is one.
    let updated = match row {
        None => 0,
        Some(AMBIGUOUS) => tx.prepare_cached(UPDATE)?.execute(&params[..37])?,
        Some(_) => tx.prepare_cached(UPDATE_ROW)?.execute(&params[..])?,
    };
    if updated > 0 {
        // With several open rows at the address, the others are still open.
        if finished && row != Some(AMBIGUOUS) {
            open.by_addr.remove(&m.addr);
        }
        return Ok(());
    }
    if !finished {
        // A memcg that exists holds this address: whatever row still claims
        // it was freed while nobody watched.
        match row {
            None => {}
            Some(AMBIGUOUS) => {
                tx.prepare_cached(LOSE)?
                    .execute(rusqlite::params![boot, addr, now])?;
            }
            Some(id) => {
                tx.prepare_cached(LOSE_ROW)?
                    .execute(rusqlite::params![id, now])?;
            }
        }
    }
    tx.prepare_cached(INSERT)?.execute(&params[..37])?;
    if !finished {
        open.by_addr.insert(m.addr, tx.last_insert_rowid());
    }
    Ok(())
}
