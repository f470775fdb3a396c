//! The persistent history (SQLite): every memcg's lifecycle with IDs, path,
//! owner, container metadata, creator, residents, wall-clock times and page
//! counters, so a zombie found days later still names its pod. Written by a
//! thread fed through a channel ([`writer`]); read back for `zombies` and to
//! reconcile the state after a restart ([`reconcile`]). One row per memcg
//! instance of one boot: kernel addresses and memcg IDs only mean something
//! within the boot (and the address only while the memcg lives).

/// The row states of a memcg that was, as last seen, not freed (an SQL
/// list): the rows a restart restores and an unseen free closes.
macro_rules! open_states {
    () => {
        "('live', 'dying', 'unconfirmed')"
    };
}

pub mod feed;
pub mod lock;
mod paths;
pub mod reconcile;
pub mod samples;
pub mod schema;
mod upsert;
pub mod writer;

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rusqlite::{Connection, OpenFlags, Row};

use lock::WriterLock;
use paths::{immutable_uri, is_cannot_open, refuse_symlinks, tighten, unreadable};

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
    /// The writer (`watch`, `serve`) could not create or open the file.
    #[error("history database {path}: {source}; pass another --db PATH (or --no-history to run without one)")]
    Io {
        path: String,
        source: std::io::Error,
    },
    /// A reader (`zombies`, `report`, `doctor`) could not get at the file.
    #[error("history database {path}: {source}; {hint}")]
    Unreadable {
        path: String,
        source: std::io::Error,
        hint: &'static str,
    },
    #[error(
        "history database {0} does not exist; `kmem-trace watch` records it, or pass --db PATH"
    )]
    Missing(String),
    #[error("history database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// SQLite failed while opening `path` (its own error code and text).
    #[error("history database {path}: SQLite cannot open it ({source}); check that it and its directory are readable, or pass another --db PATH")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("history database {0} is not a SQLite database (corrupt, or another file); move it aside or pass another --db PATH")]
    NotADatabase(String),
    #[error("history database {0} is locked by another process (another kmem-trace writing it?); stop that one, or pass another --db PATH")]
    Locked(String),
    /// Another tracer holds the writer lock (`lock.rs`).
    #[error("history database {path} is being written by another kmem-trace ({}); one tracer writes a history: stop that one, read its history with `kmem-trace zombies`, or run this one with another --db PATH or --no-history", pid_text(*.pid))]
    Busy { path: String, pid: Option<u32> },
    /// A symlink where the history (or its lock, WAL or shared-memory file) goes.
    #[error("history database {0} is a symbolic link; kmem-trace does not follow links there (it runs as root): pass the real path with --db")]
    Symlink(String),
    #[error("history database has schema version {found}, newer than this kmem-trace understands ({supported}); upgrade kmem-trace or pass another --db")]
    Newer { found: u32, supported: u32 },
    #[error("history database {path} has schema version {found}, older than this kmem-trace reads ({supported}); `kmem-trace watch` or `serve` of this version upgrades it")]
    Older {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("history database row is malformed: {0}")]
    Json(#[from] serde_json::Error),
}

fn pid_text(pid: Option<u32>) -> String {
    match pid {
        Some(p) if p != 0 => format!("pid {p}"),
        _ => "pid unknown".into(),
    }
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
    /// First seen already dying with no offline event: it went offline before.
    pub dying_by: Option<i64>,
}

/// A row read back. `memcg`'s times are monotonic again (converted with the
/// clock offset the reader passed); `wall` has them as stored.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    pub row_id: i64,
    /// `live`, `dying`, `unconfirmed` (dying as last seen, not confirmed
    /// since a restart), `freed`, or `lost` (gone while no tracer saw it).
    pub state: String,
    pub memcg: Memcg,
    pub wall: WallTimes,
    pub attribution: Option<Attribution>,
}

/// An open history database: the one writer (holding [`WriterLock`]) or a
/// read-only reader.
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Held for the life of a writer; `None` for readers.
    lock: Option<WriterLock>,
    /// `/proc/sys/kernel/random/boot_id` of this boot.
    pub boot_id: String,
    /// This boot's open rows by address, loaded at the first write and kept
    /// by the writes (see [`upsert::OpenRows`]); `None` after anything else
    /// changed open rows.
    open: Option<upsert::OpenRows>,
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
    /// Opens for writing (creating it if needed, mode 0600 in a 0700
    /// directory), takes the writer lock and migrates. A second writer gets
    /// [`StoreError::Busy`]. Never follows a symlink at `path` (or its lock,
    /// WAL and shared-memory files): as root that would create or chmod
    /// whatever the link points at.
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
        refuse_symlinks(path)?;
        // Before SQLite touches the file: the migration and the restore
        // belong to the writer that holds the lock.
        let lock = WriterLock::acquire(path)?;
        // Create the file ourselves so it never exists with a looser mode.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| io(path, e))?;
        tighten(path)?;
        let mut store = Self::connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE, false)?;
        store.lock = Some(lock);
        Ok(store)
    }

    /// Opens an existing database read-only (`zombies`, `report`, `doctor`):
    /// never creates, migrates or writes it, and works on a read-only copy.
    pub fn open_existing(path: &Path) -> Result<Store, StoreError> {
        if let Err(e) = fs::metadata(path) {
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound => StoreError::Missing(path.display().to_string()),
                _ => unreadable(path, e),
            });
        }
        if let Err(e) = fs::File::open(path) {
            return Err(unreadable(path, e));
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY;
        match Self::connect(path, flags, true) {
            // A WAL database needs its -shm file, which a reader without
            // write access to the directory (a copy on read-only media, a
            // 0444 file) cannot create: read it as immutable then. Only
            // when no tracer is writing it, as immutable skips all locking.
            Err(StoreError::Open { source, .. })
                if is_cannot_open(&source) && lock::writer_pid(path).ok().flatten().is_none() =>
            {
                log::info!("history {}: read as an immutable copy", path.display());
                Self::connect(
                    &immutable_uri(path),
                    flags | OpenFlags::SQLITE_OPEN_URI,
                    true,
                )
                .map(|mut s| {
                    s.path = path.to_path_buf();
                    s
                })
                .map_err(|e| match e {
                    StoreError::Open { source, .. } => StoreError::Open {
                        path: path.display().to_string(),
                        source,
                    },
                    e => e,
                })
            }
            r => r,
        }
    }

    fn connect(path: &Path, flags: OpenFlags, read_only: bool) -> Result<Store, StoreError> {
        Self::connect_inner(path, flags, read_only).map_err(|e| match e {
            StoreError::Sql(rusqlite::Error::SqliteFailure(f, msg)) => match f.code {
                rusqlite::ErrorCode::NotADatabase => {
                    StoreError::NotADatabase(path.display().to_string())
                }
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked => {
                    StoreError::Locked(path.display().to_string())
                }
                // Whatever else fails at open (SQLITE_CANTOPEN = 14,
                // SQLITE_READONLY, SQLITE_PERM...) is named with the path.
                _ => StoreError::Open {
                    path: path.display().to_string(),
                    source: rusqlite::Error::SqliteFailure(f, msg),
                },
            },
            e => e,
        })
    }

    fn connect_inner(path: &Path, flags: OpenFlags, read_only: bool) -> Result<Store, StoreError> {
        let mut conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        if read_only {
            let found = schema::version(&conn)?;
            if found > schema::VERSION {
                return Err(StoreError::Newer {
                    found,
                    supported: schema::VERSION,
                });
            }
            if found < schema::VERSION {
                return Err(StoreError::Older {
                    path: path.display().to_string(),
                    found,
                    supported: schema::VERSION,
                });
            }
        } else {
            // WAL: `zombies` reads while the tracer writes. The -wal and -shm
            // files get the database file's mode from SQLite.
            let _: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            schema::migrate(&mut conn)?;
        }
        Ok(Store {
            conn,
            path: path.to_path_buf(),
            lock: None,
            boot_id: boot_id(),
            open: None,
        })
    }

    /// Whether this is the writer (it holds the lock).
    pub fn is_writer(&self) -> bool {
        self.lock.is_some()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For tests: pretend to be another boot.
    pub fn with_boot_id(mut self, id: &str) -> Store {
        self.boot_id = id.to_string();
        self.open = None;
        self
    }

    /// Writes a batch in one transaction. `offset_ns` turns the records'
    /// monotonic times into wall-clock times; `now` is wall-clock ns.
    /// Freed records should come first (the writer sorts them so).
    pub fn write(&mut self, batch: &[Record], offset_ns: i64, now: i64) -> Result<(), StoreError> {
        self.write_all(&[], &[(offset_ns, batch)], &[], now)
    }

    /// Everything the writer has at once in one transaction: the count
    /// samples, the record batches (each with its clock offset) and meta
    /// keys. One commit per writer wake-up instead of one per batch and one
    /// per meta key.
    pub fn write_all<R: AsRef<[Record]>>(
        &mut self,
        samples: &[samples::CountSample],
        batches: &[(i64, R)],
        meta: &[(&str, &str)],
        now: i64,
    ) -> Result<(), StoreError> {
        // Taken out while writing: a failed transaction rolls back, and the
        // map would no longer match the rows; it is reloaded at the next write.
        let mut open = match self.open.take() {
            Some(o) => o,
            None => upsert::OpenRows::load(&self.conn, &self.boot_id)?,
        };
        let tx = self.conn.transaction()?;
        for s in samples {
            samples::insert_sample(&tx, &self.boot_id, s)?;
        }
        for (offset_ns, records) in batches {
            upsert::write_records(
                &tx,
                &self.boot_id,
                records.as_ref(),
                *offset_ns,
                now,
                &mut open,
            )?;
        }
        for (k, v) in meta {
            put_meta(&tx, k, v)?;
        }
        tx.commit()?;
        self.open = Some(open);
        Ok(())
    }

    /// Rows of this boot whose memcg was, as last seen, not freed.
    pub fn open_rows(&self, offset_ns: i64) -> Result<Vec<HistoryRow>, StoreError> {
        self.query(
            concat!(
                "WHERE boot_id = ?1 AND state IN ",
                open_states!(),
                " ORDER BY id"
            ),
            [&self.boot_id],
            offset_ns,
        )
    }

    /// Dying memcgs of this boot, oldest offline first.
    pub fn dying(&self, offset_ns: i64) -> Result<Vec<HistoryRow>, StoreError> {
        self.query(
            "WHERE boot_id = ?1 AND state = 'dying' ORDER BY offline_at, id",
            [&self.boot_id],
            offset_ns,
        )
    }

    /// Every row of this boot (tests, debugging).
    pub fn all(&self, offset_ns: i64) -> Result<Vec<HistoryRow>, StoreError> {
        self.query("WHERE boot_id = ?1 ORDER BY id", [&self.boot_id], offset_ns)
    }

    /// Rows matching `tail` (`WHERE ... ORDER BY ...` with `params`), their
    /// times made monotonic with `off`.
    fn query(
        &self,
        tail: &str,
        params: impl rusqlite::Params,
        off: i64,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM memcg {tail}");
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(params, |r| read_row(r, off))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Marks rows whose memcg is gone without a tracer seeing its free.
    pub fn mark_lost(&mut self, row_ids: &[i64], now: i64) -> Result<usize, StoreError> {
        self.open = None;
        let tx = self.conn.transaction()?;
        let mut n = 0;
        for id in row_ids {
            n += tx.execute(upsert::LOSE_ROW, rusqlite::params![id, now])?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// Rows of earlier boots that were not freed: a reboot freed them all.
    pub fn retire_other_boots(&mut self, now: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            concat!(
                "UPDATE memcg SET state = 'lost', updated_at = ?2 WHERE boot_id != ?1 AND state IN ",
                open_states!()
            ),
            rusqlite::params![self.boot_id, now],
        )?)
    }

    /// Deletes finished rows (freed, lost) last updated before `now - retain`.
    pub fn prune(&mut self, retain: Duration, now: i64) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(retain.as_nanos().min(i64::MAX as u128) as i64);
        self.prune_samples(cutoff)?;
        // By `updated_at`: through the state index SQLite read every finished
        // row to check its time, ~35 ms per 64k rows at each start
        // (docs/PERFORMANCE.md).
        Ok(self.conn.execute(
            "DELETE FROM memcg INDEXED BY memcg_updated
             WHERE updated_at < ?1 AND state IN ('freed', 'lost')",
            [cutoff],
        )?)
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<(), StoreError> {
        put_meta(&self.conn, key, value)
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

fn put_meta(conn: &Connection, key: &str, value: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

const COLUMNS: &str = "id, state, addr, memcg_id, hierarchy_id, cgroup_id, level, path, origin, \
    kmem_active, id_released, alloc_at, online_at, offline_at, released_at, free_at, \
    offline_mem_pages, offline_kmem_pages, offline_swap_pages, free_mem_pages, free_kmem_pages, \
    free_swap_pages, attribution, creator, residents, last_resident, residents_dropped, \
    first_seen, updated_at, dying_by";

fn mono(wall: Option<i64>, off: i64) -> Option<u64> {
    wall.map(|w| w.saturating_sub(off).max(0) as u64)
}

fn tasks_back(mut t: Task, off: i64) -> Task {
    t.ts_ns = (t.ts_ns as i64).saturating_sub(off).max(0) as u64;
    t
}

/// The row state of `m`: its lifecycle state, or `unconfirmed` for a dying
/// memcg nothing has confirmed since a restart (readers do not count those
/// rows as dying or zombies; see `reconcile.rs`).
fn state_name(m: &Memcg) -> &'static str {
    match m.state {
        State::Dying if m.unconfirmed => "unconfirmed",
        State::Live => "live",
        State::Dying => "dying",
        State::Freed => "freed",
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
        "dying" | "unconfirmed" => State::Dying,
        _ => State::Freed,
    };
    m.unconfirmed = state == "unconfirmed";
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
        dying_by: r.get(29)?,
    };
    m.alloc_ns = mono(w.alloc, off).into();
    m.online_ns = mono(w.online, off).into();
    m.offline_ns = mono(w.offline, off).into();
    m.released_ns = mono(w.released, off).into();
    m.free_ns = mono(w.free, off).into();
    let counters = |a: usize, b: usize, c: usize| -> rusqlite::Result<Counters> {
        Ok(Counters {
            mem_pages: r.get::<_, Option<i64>>(a)?.map(|v| v as u64),
            kmem_pages: r.get::<_, Option<i64>>(b)?.map(|v| v as u64),
            swap_pages: r.get::<_, Option<i64>>(c)?.map(|v| v as u64),
        })
    };
    m.set_at_offline(counters(16, 17, 18)?);
    m.set_at_free(counters(19, 20, 21)?);
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
        if let Some(c) = task(creator)? {
            m.set_creator(c);
        }
        if let Some(s) = residents {
            let v: Vec<Task> = serde_json::from_str(&s)?;
            m.set_residents(v.into_iter().map(|t| tasks_back(t, off)).collect());
        }
        m.set_last_resident(task(last)?);
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
