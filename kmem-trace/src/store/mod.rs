//! The persistent history (SQLite): every memcg's lifecycle with IDs, path,
//! owner, container metadata, creator, residents, wall-clock times and page
//! counters, so a zombie found days later still names its pod. Written by a
//! thread fed through a channel ([`writer`]); read back for `zombies` and to
//! reconcile the state after a restart ([`reconcile`]). One row per memcg
//! instance of one boot: kernel addresses and memcg IDs only mean something
//! within the boot (and the address only while the memcg lives).

pub mod feed;
pub mod reconcile;
pub mod samples;
pub mod schema;
pub mod writer;

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rusqlite::{named_params, Connection, OpenFlags, Row};

use crate::{
    attribution::Attribution,
    decode::Counters,
    lifecycle::{Memcg, Origin, State, Task},
};

/// Where the history lives unless `--db` says otherwise.
pub const DEFAULT_DB: &str = "/var/lib/kmem-trace/history.db";
/// How long finished rows are kept unless `--retain` says otherwise.
pub const DEFAULT_RETAIN: Duration = Duration::from_secs(14 * 86400);

/// Errors of the history database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("history database {path}: {source}; pass another --db PATH (or --no-history to run without one)")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "history database {0} does not exist; `kmem-trace watch` records it, or pass --db PATH"
    )]
    Missing(String),
    #[error("history database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("history database {0} is not a SQLite database (corrupt, or another file); move it aside or pass another --db PATH")]
    NotADatabase(String),
    #[error("history database {0} is locked by another process (another kmem-trace writing it?); stop that one, or pass another --db PATH")]
    Locked(String),
    #[error("history database has schema version {found}, newer than this kmem-trace understands ({supported}); upgrade kmem-trace or pass another --db")]
    Newer { found: u32, supported: u32 },
    #[error("history database row is malformed: {0}")]
    Json(#[from] serde_json::Error),
}

/// One memcg as the lifecycle and attribution stages know it, to be written.
#[derive(Clone, Debug)]
pub struct Record {
    pub memcg: Memcg,
    pub attribution: Option<Arc<Attribution>>,
}

/// Wall-clock times of a history row (ns since the epoch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WallTimes {
    pub alloc: Option<i64>,
    pub online: Option<i64>,
    pub offline: Option<i64>,
    pub released: Option<i64>,
    pub free: Option<i64>,
    pub first_seen: i64,
    pub updated: i64,
}

/// A row read back. `memcg`'s times are monotonic again (converted with the
/// clock offset the reader passed); `wall` has them as stored.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    pub row_id: i64,
    /// `live`, `dying`, `freed`, or `lost` (gone while no tracer saw it).
    pub state: String,
    pub memcg: Memcg,
    pub wall: WallTimes,
    pub attribution: Option<Attribution>,
}

/// An open history database.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// `/proc/sys/kernel/random/boot_id` of this boot.
    pub boot_id: String,
}

/// The kernel's boot ID; rows of other boots describe memcgs that no longer exist.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn io(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Store {
    /// Opens (creating it if needed, mode 0600 in a 0700 directory) and migrates.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| io(dir, e))?;
            }
        }
        // Create the file ourselves so it never exists with a looser mode.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io(path, e))?;
        tighten(path)?;
        Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    /// Opens an existing database (`zombies`); never creates one.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing(path.display().to_string()));
        }
        Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE)
    }

    fn connect(path: &Path, flags: OpenFlags) -> Result<Store, StoreError> {
        Self::connect_inner(path, flags).map_err(|e| match e {
            StoreError::Sql(rusqlite::Error::SqliteFailure(f, _)) => match f.code {
                rusqlite::ErrorCode::NotADatabase => {
                    StoreError::NotADatabase(path.display().to_string())
                }
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                    StoreError::Locked(path.display().to_string())
                }
                _ => StoreError::Sql(rusqlite::Error::SqliteFailure(f, None)),
            },
            e => e,
        })
    }

    fn connect_inner(path: &Path, flags: OpenFlags) -> Result<Store, StoreError> {
        let mut conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| match e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::CannotOpen => {
                io(path, std::io::Error::other("cannot open (permissions?)"))
            }
            e => StoreError::Sql(e),
        })?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // WAL: `zombies` reads while the tracer writes. The -wal and -shm files
        // get the database file's mode from SQLite.
        let _: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        schema::migrate(&mut conn)?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            boot_id: boot_id(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For tests: pretend to be another boot.
    pub fn with_boot_id(mut self, id: &str) -> Store {
        self.boot_id = id.to_string();
        self
    }

    /// Writes a batch in one transaction. `offset_ns` turns the records'
    /// monotonic times into wall-clock times; `now` is wall-clock ns.
    /// Freed records should come first (the writer sorts them so).
    pub fn write(&mut self, batch: &[Record], offset_ns: i64, now: i64) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for r in batch {
            write_one(&tx, &self.boot_id, r, offset_ns, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Rows of this boot whose memcg was, as last seen, not freed.
    pub fn open_rows(&self, offset_ns: i64) -> Result<Vec<HistoryRow>, StoreError> {
        self.query(
            "WHERE boot_id = ?1 AND state IN ('live', 'dying') ORDER BY id",
            &self.boot_id,
            offset_ns,
        )
    }

    /// Dying memcgs of this boot, oldest offline first.
    pub fn dying(&self, offset_ns: i64) -> Result<Vec<HistoryRow>, StoreError> {
        self.query(
            "WHERE boot_id = ?1 AND state = 'dying' ORDER BY offline_at, id",
            &self.boot_id,
            offset_ns,
        )
    }

    /// Every row of this boot (tests, debugging).
    pub fn all(&self, offset_ns: i64) -> Result<Vec<HistoryRow>, StoreError> {
        self.query("WHERE boot_id = ?1 ORDER BY id", &self.boot_id, offset_ns)
    }

    fn query(&self, tail: &str, boot: &str, off: i64) -> Result<Vec<HistoryRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM memcg {tail}");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map([boot], |r| read_row(r, off))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Marks rows whose memcg is gone without a tracer seeing its free.
    pub fn mark_lost(&mut self, row_ids: &[i64], now: i64) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for id in row_ids {
            n += tx.execute(
                "UPDATE memcg SET state = 'lost', updated_at = ?2 WHERE id = ?1 AND state IN ('live', 'dying')",
                rusqlite::params![id, now],
            )?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Rows of earlier boots that were not freed: a reboot freed them all.
    pub fn retire_other_boots(&mut self, now: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE memcg SET state = 'lost', updated_at = ?2 WHERE boot_id != ?1 AND state IN ('live', 'dying')",
            rusqlite::params![self.boot_id, now],
        )?)
    }

    /// Deletes finished rows (freed, lost) last updated before `now - retain`.
    pub fn prune(&mut self, retain: Duration, now: i64) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(retain.as_nanos().min(i64::MAX as u128) as i64);
        self.prune_samples(cutoff)?;
        Ok(self.conn.execute(
            "DELETE FROM memcg WHERE state IN ('freed', 'lost') AND updated_at < ?1",
            [cutoff],
        )?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [key, value],
        )?;
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut st = self.conn.prepare("SELECT value FROM meta WHERE key = ?1")?;
        let mut rows = st.query([key])?;
        Ok(match rows.next()? {
            Some(r) => Some(r.get(0)?),
            None => None,
        })
    }

    pub fn schema_version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }
}

/// The database (and its WAL files) readable by the owner only.
fn tighten(path: &Path) -> Result<(), StoreError> {
    for p in [
        path.to_path_buf(),
        PathBuf::from(format!("{}-wal", path.display())),
        PathBuf::from(format!("{}-shm", path.display())),
    ] {
        let Ok(md) = fs::metadata(&p) else { continue };
        if md.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(|e| io(&p, e))?;
        }
    }
    Ok(())
}

const COLUMNS: &str = "id, state, addr, memcg_id, hierarchy_id, cgroup_id, level, path, origin, \
    kmem_active, id_released, alloc_at, online_at, offline_at, released_at, free_at, \
    offline_mem_pages, offline_kmem_pages, offline_swap_pages, free_mem_pages, free_kmem_pages, \
    free_swap_pages, attribution, creator, residents, last_resident, residents_dropped, \
    first_seen, updated_at";

fn wall(mono: Option<u64>, off: i64) -> Option<i64> {
    mono.map(|m| (m as i64).saturating_add(off))
}

fn mono(wall: Option<i64>, off: i64) -> Option<u64> {
    wall.map(|w| w.saturating_sub(off).max(0) as u64)
}

fn task_json(t: Option<&Task>, off: i64) -> Result<Option<String>, StoreError> {
    t.map(|t| {
        let mut t = t.clone();
        t.ts_ns = (t.ts_ns as i64).saturating_add(off).max(0) as u64;
        serde_json::to_string(&t)
    })
    .transpose()
    .map_err(Into::into)
}

fn tasks_back(mut t: Task, off: i64) -> Task {
    t.ts_ns = (t.ts_ns as i64).saturating_sub(off).max(0) as u64;
    t
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Live => "live",
        State::Dying => "dying",
        State::Freed => "freed",
    }
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Traced => "traced",
        Origin::Census => "census",
        Origin::History => "history",
        Origin::Partial => "partial",
    }
}

fn origin_of(s: &str) -> Origin {
    match s {
        "traced" => Origin::Traced,
        "census" => Origin::Census,
        "partial" => Origin::Partial,
        _ => Origin::History,
    }
}

fn pages(v: Option<u64>) -> Option<i64> {
    v.map(|p| p.min(i64::MAX as u64) as i64)
}

fn write_one(
    tx: &rusqlite::Transaction<'_>,
    boot: &str,
    r: &Record,
    off: i64,
    now: i64,
) -> Result<(), StoreError> {
    let m = &r.memcg;
    let attr = r.attribution.as_deref();
    let view = attr.map(Attribution::view);
    let v = view.as_ref();
    let attr_json = attr.map(serde_json::to_string).transpose()?;
    let residents = if m.residents.is_empty() {
        None
    } else {
        let shifted: Vec<Task> = m
            .residents
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t.ts_ns = (t.ts_ns as i64).saturating_add(off).max(0) as u64;
                t
            })
            .collect();
        Some(serde_json::to_string(&shifted)?)
    };
    let state = state_name(m.state);
    let params = named_params! {
        ":boot": boot,
        ":addr": m.addr as i64,
        ":memcg_id": m.memcg_id,
        ":hierarchy_id": m.hierarchy_id,
        ":cgroup_id": m.cgroup_id as i64,
        ":level": m.level,
        ":path": &*m.path,
        ":state": state,
        ":origin": origin_name(m.origin),
        ":kmem_active": m.kmem_active,
        ":id_released": m.id_released,
        ":alloc_at": wall(m.alloc_ns, off),
        ":online_at": wall(m.online_ns, off),
        ":offline_at": wall(m.offline_ns, off),
        ":released_at": wall(m.released_ns, off),
        ":free_at": wall(m.free_ns, off),
        ":off_mem": pages(m.at_offline.mem_pages),
        ":off_kmem": pages(m.at_offline.kmem_pages),
        ":off_swap": pages(m.at_offline.swap_pages),
        ":free_mem": pages(m.at_free.mem_pages),
        ":free_kmem": pages(m.at_free.kmem_pages),
        ":free_swap": pages(m.at_free.swap_pages),
        ":owner_kind": v.map(|v| v.kind),
        ":namespace": v.and_then(|v| v.namespace),
        ":pod": v.and_then(|v| v.pod),
        ":pod_uid": v.and_then(|v| v.pod_uid),
        ":container": v.and_then(|v| v.container),
        ":container_id": v.and_then(|v| v.container_id),
        ":runtime": v.and_then(|v| v.runtime),
        ":image": v.and_then(|v| v.image),
        ":unit": v.and_then(|v| v.unit),
        ":attribution": attr_json,
        ":creator": task_json(m.creator.as_ref(), off)?,
        ":residents": residents,
        ":last_resident": task_json(m.last_resident.as_ref(), off)?,
        ":dropped": m.residents_dropped,
        ":now": now,
    };
    // The same memcg: same boot, address and ID, not finished, and the same
    // cgroup when both sides know it (address and ID can both be recycled).
    let updated = tx.execute(
        "UPDATE memcg SET
            hierarchy_id = CASE WHEN :cgroup_id != 0 THEN :hierarchy_id ELSE hierarchy_id END,
            cgroup_id = CASE WHEN :cgroup_id != 0 THEN :cgroup_id ELSE cgroup_id END,
            level = CASE WHEN :cgroup_id != 0 THEN :level ELSE level END,
            path = CASE WHEN :path != '' THEN :path ELSE path END,
            state = :state, origin = COALESCE(origin, :origin),
            kmem_active = :kmem_active, id_released = :id_released,
            alloc_at = COALESCE(:alloc_at, alloc_at), online_at = COALESCE(:online_at, online_at),
            offline_at = COALESCE(:offline_at, offline_at),
            released_at = COALESCE(:released_at, released_at), free_at = COALESCE(:free_at, free_at),
            offline_mem_pages = COALESCE(:off_mem, offline_mem_pages),
            offline_kmem_pages = COALESCE(:off_kmem, offline_kmem_pages),
            offline_swap_pages = COALESCE(:off_swap, offline_swap_pages),
            free_mem_pages = COALESCE(:free_mem, free_mem_pages),
            free_kmem_pages = COALESCE(:free_kmem, free_kmem_pages),
            free_swap_pages = COALESCE(:free_swap, free_swap_pages),
            owner_kind = COALESCE(:owner_kind, owner_kind), namespace = COALESCE(:namespace, namespace),
            pod = COALESCE(:pod, pod), pod_uid = COALESCE(:pod_uid, pod_uid),
            container = COALESCE(:container, container), container_id = COALESCE(:container_id, container_id),
            runtime = COALESCE(:runtime, runtime), image = COALESCE(:image, image), unit = COALESCE(:unit, unit),
            attribution = COALESCE(:attribution, attribution), creator = COALESCE(:creator, creator),
            residents = COALESCE(:residents, residents), last_resident = COALESCE(:last_resident, last_resident),
            residents_dropped = MAX(:dropped, residents_dropped), updated_at = :now
         WHERE boot_id = :boot AND addr = :addr AND memcg_id = :memcg_id
           AND state IN ('live', 'dying')
           AND (cgroup_id = :cgroup_id OR cgroup_id = 0 OR :cgroup_id = 0)",
        params,
    )?;
    if updated > 0 {
        return Ok(());
    }
    if m.state != State::Freed {
        // A memcg that exists holds this address: whatever row still claims it
        // was freed while nobody watched.
        tx.execute(
            "UPDATE memcg SET state = 'lost', updated_at = :now
             WHERE boot_id = :boot AND addr = :addr AND state IN ('live', 'dying')",
            named_params! {":boot": boot, ":addr": m.addr as i64, ":now": now},
        )?;
    }
    tx.execute(
        "INSERT INTO memcg (boot_id, addr, memcg_id, hierarchy_id, cgroup_id, level, path, state,
            origin, kmem_active, id_released, alloc_at, online_at, offline_at, released_at, free_at,
            offline_mem_pages, offline_kmem_pages, offline_swap_pages, free_mem_pages,
            free_kmem_pages, free_swap_pages, owner_kind, namespace, pod, pod_uid, container,
            container_id, runtime, image, unit, attribution, creator, residents, last_resident,
            residents_dropped, first_seen, updated_at)
         VALUES (:boot, :addr, :memcg_id, :hierarchy_id, :cgroup_id, :level, :path, :state,
            :origin, :kmem_active, :id_released, :alloc_at, :online_at, :offline_at, :released_at,
            :free_at, :off_mem, :off_kmem, :off_swap, :free_mem, :free_kmem, :free_swap,
            :owner_kind, :namespace, :pod, :pod_uid, :container, :container_id, :runtime, :image,
            :unit, :attribution, :creator, :residents, :last_resident, :dropped, :now, :now)",
        params,
    )?;
    Ok(())
}

fn read_row(r: &Row<'_>, off: i64) -> rusqlite::Result<Result<HistoryRow, StoreError>> {
    let state: String = r.get(1)?;
    let addr: i64 = r.get(2)?;
    let mut m = Memcg::new(addr as u64, r.get(3)?, origin_of(&r.get::<_, String>(8)?));
    m.hierarchy_id = r.get(4)?;
    m.cgroup_id = r.get::<_, i64>(5)? as u64;
    m.level = r.get(6)?;
    m.path = Arc::from(r.get::<_, String>(7)?);
    m.state = match state.as_str() {
        "live" => State::Live,
        "dying" => State::Dying,
        _ => State::Freed,
    };
    m.kmem_active = r.get(9)?;
    m.id_released = r.get(10)?;
    let w = WallTimes {
        alloc: r.get(11)?,
        online: r.get(12)?,
        offline: r.get(13)?,
        released: r.get(14)?,
        free: r.get(15)?,
        first_seen: r.get(27)?,
        updated: r.get(28)?,
    };
    m.alloc_ns = mono(w.alloc, off);
    m.online_ns = mono(w.online, off);
    m.offline_ns = mono(w.offline, off);
    m.released_ns = mono(w.released, off);
    m.free_ns = mono(w.free, off);
    let counters = |a: usize, b: usize, c: usize| -> rusqlite::Result<Counters> {
        Ok(Counters {
            mem_pages: r.get::<_, Option<i64>>(a)?.map(|v| v as u64),
            kmem_pages: r.get::<_, Option<i64>>(b)?.map(|v| v as u64),
            swap_pages: r.get::<_, Option<i64>>(c)?.map(|v| v as u64),
        })
    };
    m.at_offline = counters(16, 17, 18)?;
    m.at_free = counters(19, 20, 21)?;
    m.residents_dropped = r.get(26)?;
    let attr: Option<String> = r.get(22)?;
    let creator: Option<String> = r.get(23)?;
    let residents: Option<String> = r.get(24)?;
    let last: Option<String> = r.get(25)?;
    let row_id = r.get(0)?;
    Ok((|| {
        let task = |s: Option<String>| -> Result<Option<Task>, StoreError> {
            Ok(s.map(|s| serde_json::from_str::<Task>(&s))
                .transpose()?
                .map(|t| tasks_back(t, off)))
        };
        m.creator = task(creator)?;
        m.last_resident = task(last)?;
        if let Some(s) = residents {
            let v: Vec<Task> = serde_json::from_str(&s)?;
            m.residents = v.into_iter().map(|t| tasks_back(t, off)).collect();
        }
        let attribution = attr.map(|s| serde_json::from_str(&s)).transpose()?;
        Ok(HistoryRow {
            row_id,
            state,
            memcg: m,
            wall: w,
            attribution,
        })
    })())
}

#[cfg(test)]
mod tests;
