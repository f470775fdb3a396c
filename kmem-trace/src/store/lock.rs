//! One writer per history database: a `flock` on a sidecar file (`DB.lock`)
//! held for the writer's life. SQLite's own locks last one transaction only,
//! so two tracers on one file (the DaemonSet's `serve` and an operator's
//! `watch`) would interleave and mark each other's rows lost. The kernel
//! drops a `flock` when its holder dies (even with SIGKILL), so a stale lock
//! file never blocks the next writer. Readers test the lock to tell whether a
//! tracer is writing now.

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{OpenOptionsExt, PermissionsExt},
    },
    path::{Path, PathBuf},
};

use super::StoreError;

/// The lock file of the database at `db`.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// The held writer lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct WriterLock {
    _file: File,
    path: PathBuf,
}

impl WriterLock {
    /// Takes the lock of `db` without waiting. Another live writer makes this
    /// [`StoreError::Busy`], naming its PID. The lock file is created 0600 and
    /// never through a symlink (`O_NOFOLLOW`: as root, a planted link must not
    /// make us create or truncate another file).
    pub fn acquire(db: &Path) -> Result<WriterLock, StoreError> {
        let path = lock_path(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| super::io(&path, e))?;
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(|e| super::io(&path, e))? {
            return Err(StoreError::Busy {
                path: db.display().to_string(),
                pid: read_pid(&mut file),
            });
        }
        if file
            .metadata()
            .is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
        {
            let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
        }
        // The PID is for the message of a refused second writer.
        let _ = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        Ok(WriterLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether a writer holds the lock of `db` now: `Some(pid)` (0 if it wrote
/// none) when it does, `None` when no process holds it (or there is no lock
/// file), `Err` when it cannot be told (the lock file is unreadable to us).
pub fn writer_pid(db: &Path) -> Result<Option<u32>, std::io::Error> {
    let path = lock_path(db);
    let mut file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // A shared lock is refused while the writer holds its exclusive one; if we
    // get it we release it at once (closing the file).
    if flock(&file, libc::LOCK_SH | libc::LOCK_NB)? {
        return Ok(None);
    }
    Ok(Some(read_pid(&mut file).unwrap_or(0)))
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// `flock(2)`; false when another holder refuses it (`EWOULDBLOCK`).
fn flock(file: &File, op: libc::c_int) -> Result<bool, std::io::Error> {
    loop {
        // SAFETY: flock on an fd we own; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kmem-trace-lock-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("history.db")
    }

    #[test]
    fn a_second_writer_is_refused_with_the_first_ones_pid() {
        let db = scratch("two");
        assert_eq!(writer_pid(&db).unwrap(), None);
        let first = WriterLock::acquire(&db).unwrap();
        let e = WriterLock::acquire(&db).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("--db"),
            "{msg}"
        );
        assert_eq!(writer_pid(&db).unwrap(), Some(std::process::id()));
        drop(first);
        assert_eq!(writer_pid(&db).unwrap(), None);
        let again = WriterLock::acquire(&db).unwrap();
        assert_eq!(
            std::fs::metadata(again.path())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        std::fs::remove_dir_all(db.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let db = scratch("link");
        let target = db.with_file_name("target");
        std::fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, lock_path(&db)).unwrap();
        assert!(WriterLock::acquire(&db).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        std::fs::remove_dir_all(db.parent().unwrap()).unwrap();
    }
}
