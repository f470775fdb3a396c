//! Files kmem-trace creates at a path the user names (`watch --record`,
//! `report -o`): never through a symlink, and readable by their owner only.
//! kmem-trace runs as root, so following a link planted at that path (in
//! /tmp, say) would truncate or expose whatever file it points at.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::Path,
};

/// Mode of the files: reports and recordings quote process command lines,
/// pod, container and cgroup names and the node's kernel command line, so
/// only their owner (root, usually) reads them; sharing one is a choice
/// (`report --redact` exists for that), not a default.
pub const MODE: u32 = 0o600;

/// Creates (or truncates) `path` for writing, mode 0600. A symlink at `path`
/// is refused (`O_NOFOLLOW`), so is anything but a regular file (a FIFO or a
/// device would block or be written to); an existing file looser than 0600
/// is tightened through the opened descriptor, never by path.
pub fn create_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::other(
                "it is a symbolic link, which kmem-trace does not follow; name the real file",
            ),
            _ => e,
        })?;
    let md = file.metadata()?;
    if !md.file_type().is_file() {
        return Err(io::Error::other(
            "it is not a regular file; name a file to write",
        ));
    }
    if md.permissions().mode() & 0o777 & !MODE != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(MODE))?;
    }
    file.set_len(0)?;
    Ok(file)
}

/// [`create_private`] and write `bytes`.
pub fn write_private(path: &Path, bytes: impl AsRef<[u8]>) -> io::Result<()> {
    use std::io::Write;
    let mut f = create_private(path)?;
    f.write_all(bytes.as_ref())?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_0600_and_links_are_not_followed() {
        let d = std::env::temp_dir().join(format!("kmem-trace-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let new = d.join("report.md");
        write_private(&new, "x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&new), 0o600);
        // An existing loose file is tightened and truncated.
        let loose = d.join("loose");
        std::fs::write(&loose, "old content").unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&loose, "y").unwrap();
        assert_eq!(
            (mode(&loose), std::fs::read_to_string(&loose).unwrap()),
            (0o600, "y".into())
        );
        // A link: refused, its target untouched (content and mode).
        let target = d.join("precious");
        std::fs::write(&target, "keep").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = write_private(&link, "z").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(mode(&target), 0o644);
        // Not a regular file.
        assert!(write_private(&d, "z").is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
