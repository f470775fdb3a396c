//! Periodic count samples in the history (live, dying, zombie memcgs, IDs in
//! use, drops, hook family), written by the `watch`/`serve` writer once every
//! [`SAMPLE_EVERY`], for the incident report's timeline and the forecast.

use std::time::Duration;

use serde::Serialize;

use super::{Store, StoreError};

/// How often the tracer writes a count sample (and once more when it stops).
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// One sample of the counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CountSample {
    /// Wall-clock ns since the epoch.
    pub ts: i64,
    /// `/proc/sys/kernel/random/boot_id` of the boot the counts are from.
    pub boot_id: String,
    pub live: u64,
    pub dying: u64,
    pub zombies: u64,
    pub ids_in_use: u64,
    pub id_limit: u32,
    /// Ring-buffer drops so far in that run.
    pub drops: u64,
    /// Hook family in use (`tracepoint`, `fentry+tracepoint`).
    pub hooks: String,
}

fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// Inserts one sample (in the caller's transaction, if any); an empty
/// `boot_id` means `this_boot`.
pub(super) fn insert_sample(
    conn: &rusqlite::Connection,
    this_boot: &str,
    s: &CountSample,
) -> Result<(), StoreError> {
    let boot = if s.boot_id.is_empty() {
        this_boot
    } else {
        s.boot_id.as_str()
    };
    conn.prepare_cached(
        "INSERT INTO sample (ts, boot_id, live, dying, zombies, ids_in_use, id_limit, drops, hooks)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(rusqlite::params![
        s.ts,
        boot,
        int(s.live),
        int(s.dying),
        int(s.zombies),
        int(s.ids_in_use),
        s.id_limit,
        int(s.drops),
        s.hooks
    ])?;
    Ok(())
}

impl Store {
    /// Writes one sample; an empty `boot_id` means this boot.
    pub fn write_sample(&mut self, s: &CountSample) -> Result<(), StoreError> {
        insert_sample(&self.conn, &self.boot_id, s)
    }

    /// Samples taken at or after `since` (wall ns), oldest first, every boot.
    pub fn samples(&self, since: i64) -> Result<Vec<CountSample>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT ts, boot_id, live, dying, zombies, ids_in_use, id_limit, drops, hooks
             FROM sample WHERE ts >= ?1 ORDER BY ts",
        )?;
        let rows = st.query_map([since], |r| {
            Ok(CountSample {
                ts: r.get(0)?,
                boot_id: r.get(1)?,
                live: r.get::<_, i64>(2)?.max(0) as u64,
                dying: r.get::<_, i64>(3)?.max(0) as u64,
                zombies: r.get::<_, i64>(4)?.max(0) as u64,
                ids_in_use: r.get::<_, i64>(5)?.max(0) as u64,
                id_limit: r.get(6)?,
                drops: r.get::<_, i64>(7)?.max(0) as u64,
                hooks: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Deletes samples older than `cutoff` (wall ns); part of the retention.
    pub fn prune_samples(&mut self, cutoff: i64) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM sample WHERE ts < ?1", [cutoff])?)
    }

    /// Every row of every boot: the report's appendix and timeline fallback
    /// (rows of earlier boots still name what leaked then).
    pub fn rows_since(
        &self,
        since: i64,
        offset_ns: i64,
    ) -> Result<Vec<super::HistoryRow>, StoreError> {
        self.query(
            concat!(
                "WHERE updated_at >= ?1 OR state IN ",
                open_states!(),
                " ORDER BY id"
            ),
            [since],
            offset_ns,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(tag: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        std::env::temp_dir().join(format!(
            "kmem-trace-samples-{tag}-{}-{nanos}/h.db",
            std::process::id()
        ))
    }

    #[test]
    fn samples_round_trip_and_are_pruned() {
        let db = temp_db("rt");
        let mut s = Store::open(&db).unwrap().with_boot_id("boot-a");
        for i in 0..5u64 {
            s.write_sample(&CountSample {
                ts: 1_000 + i as i64 * 10,
                live: 100 + i,
                dying: i,
                zombies: i / 2,
                ids_in_use: 100 + i,
                id_limit: 65_535,
                drops: 0,
                hooks: "tracepoint".into(),
                ..CountSample::default()
            })
            .unwrap();
        }
        let all = s.samples(0).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[4].dying, 4);
        assert_eq!(all[0].boot_id, "boot-a");
        assert_eq!(s.samples(1_020).unwrap().len(), 3);
        assert_eq!(s.prune_samples(1_020).unwrap(), 2);
        assert_eq!(s.samples(0).unwrap()[0].ts, 1_020);
        assert!(s.schema_version().unwrap() >= 2);
        let _ = std::fs::remove_dir_all(db.parent().unwrap());
    }
}
