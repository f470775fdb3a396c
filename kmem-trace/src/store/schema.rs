//! The history database's schema as numbered migrations. `PRAGMA user_version`
//! holds how many have been applied; each runs once, in a transaction, in
//! order. Never edit a released migration: add the next one.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Migration `i` takes the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: memcg lifecycles with owner, processes and counters; key/value meta.
    r#"
    CREATE TABLE memcg (
        id                 INTEGER PRIMARY KEY,
        boot_id            TEXT    NOT NULL,
        addr               INTEGER NOT NULL,
        memcg_id           INTEGER NOT NULL,
        hierarchy_id       INTEGER NOT NULL,
        cgroup_id          INTEGER NOT NULL,
        level              INTEGER NOT NULL,
        path               TEXT    NOT NULL,
        state              TEXT    NOT NULL,
        origin             TEXT    NOT NULL,
        kmem_active        INTEGER NOT NULL,
        id_released        INTEGER NOT NULL,
        alloc_at           INTEGER,
        online_at          INTEGER,
        offline_at         INTEGER,
        released_at        INTEGER,
        free_at            INTEGER,
        offline_mem_pages  INTEGER,
        offline_kmem_pages INTEGER,
        offline_swap_pages INTEGER,
        free_mem_pages     INTEGER,
        free_kmem_pages    INTEGER,
        free_swap_pages    INTEGER,
        owner_kind         TEXT,
        namespace          TEXT,
        pod                TEXT,
        pod_uid            TEXT,
        container          TEXT,
        container_id       TEXT,
        runtime            TEXT,
        image              TEXT,
        unit               TEXT,
        attribution        TEXT,
        creator            TEXT,
        residents          TEXT,
        last_resident      TEXT,
        residents_dropped  INTEGER NOT NULL DEFAULT 0,
        first_seen         INTEGER NOT NULL,
        updated_at         INTEGER NOT NULL
    );
    CREATE INDEX memcg_key ON memcg (boot_id, addr, memcg_id);
    CREATE INDEX memcg_state ON memcg (state, boot_id);
    CREATE INDEX memcg_pod ON memcg (namespace, pod);
    CREATE INDEX memcg_updated ON memcg (updated_at);
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    "#,
    // 2: periodic count samples for the report's timeline (`samples.rs`).
    r#"
    CREATE TABLE sample (
        ts         INTEGER NOT NULL,
        boot_id    TEXT    NOT NULL,
        live       INTEGER NOT NULL,
        dying      INTEGER NOT NULL,
        zombies    INTEGER NOT NULL,
        ids_in_use INTEGER NOT NULL,
        id_limit   INTEGER NOT NULL,
        drops      INTEGER NOT NULL,
        hooks      TEXT    NOT NULL
    );
    CREATE INDEX sample_ts ON sample (ts);
    "#,
    // 3: the first time a memcg was seen already dying without an offline
    // event (the start-up census, a recheck, a restart): it went offline
    // before then, so `now - dying_by` is a true lower bound of its age.
    r#"
    ALTER TABLE memcg ADD COLUMN dying_by INTEGER;
    "#,
];

/// The schema version this binary writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

/// The schema version of the database `conn` has open.
pub fn version(conn: &Connection) -> Result<u32, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Brings the database to [`VERSION`]; refuses a newer one. Each step runs in
/// `BEGIN IMMEDIATE` and reads the version again inside it: the write lock
/// is taken before the check, so two processes migrating at once cannot
/// both apply a step (the writer lock of `lock.rs` already prevents that
/// between kmem-traces; this covers anything else opening the file).
pub fn migrate(conn: &mut Connection) -> Result<u32, StoreError> {
    let first = version(conn)?;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = version(&tx)?;
        if found > VERSION {
            return Err(StoreError::Newer {
                found,
                supported: VERSION,
            });
        }
        let Some(sql) = MIGRATIONS.get(found as usize) else {
            return Ok(first);
        };
        tx.execute_batch(sql)?;
        // PRAGMA takes no parameters; the value is our own integer.
        tx.execute_batch(&format!("PRAGMA user_version = {}", found + 1))?;
        tx.commit()?;
    }
}
