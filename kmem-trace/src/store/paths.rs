//! Where the history's files are and how they may be opened: the database
//! and its companions (`-wal`, `-shm`, `.lock`) are never followed through
//! a symlink (the writer runs as root) and are kept 0600; a reader's
//! failure names the path and, for permissions, who can read it.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::{io, lock, StoreError};

/// The database and its companions (`-wal`, `-shm`, `.lock`).
fn companions(path: &Path) -> [PathBuf; 4] {
    let with = |sfx: &str| {
        let mut s = path.as_os_str().to_owned();
        s.push(sfx);
        PathBuf::from(s)
    };
    [
        path.to_path_buf(),
        with("-wal"),
        with("-shm"),
        lock::lock_path(path),
    ]
}

/// Refuses a symlink at the database or a companion: SQLite follows them.
pub(super) fn refuse_symlinks(path: &Path) -> Result<(), StoreError> {
    for p in companions(path) {
        if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(StoreError::Symlink(p.display().to_string()));
        }
    }
    Ok(())
}

/// The database (and its WAL files) readable by the owner only. Links were
/// refused before; `symlink_metadata` so a link made since is not followed.
pub(super) fn tighten(path: &Path) -> Result<(), StoreError> {
    for p in companions(path) {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.file_type().is_symlink() {
            return Err(StoreError::Symlink(p.display().to_string()));
        }
        if md.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(|e| io(&p, e))?;
        }
    }
    Ok(())
}

pub(super) fn unreadable(path: &Path, e: std::io::Error) -> StoreError {
    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
        "it (or a directory above it, /var/lib/kmem-trace is 0700) is not readable by this user: run as root, or pass another --db PATH"
    } else {
        "pass another --db PATH"
    };
    StoreError::Unreadable {
        path: path.display().to_string(),
        source: e,
        hint,
    }
}

pub(super) fn is_cannot_open(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::CannotOpen | rusqlite::ErrorCode::ReadOnly))
}

/// `file:` URI of `path` with `immutable=1` (percent-encoding what a URI
/// path cannot hold).
pub(super) fn immutable_uri(path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    PathBuf::from(uri)
}
