//! `doctor --try-mkdir`: whether the kernel still gives out memcgs, asked the
//! only certain way (making one and removing it at once).

use std::{fs, io, path::Path};

use serde::Serialize;

use super::exhausted::{EBUSY, ENOSPC};

/// What one probe `mkdir` under the memory controller's root answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MkdirProbe {
    /// The directory tried (removed again when made).
    pub path: String,
    /// `None`: made (and removed); else the errno's name (`ENOSPC`, `EBUSY`, ...).
    pub errno: Option<String>,
    /// The error's words as `mkdir` prints them.
    pub words: Option<String>,
}

impl MkdirProbe {
    /// The kernel refused a memcg for want of an ID: ENOSPC from
    /// `idr_alloc()` before 6.12, EBUSY from `xa_alloc()` from 6.12
    /// (`mem_cgroup_alloc()`). Other errors (EACCES, EROFS, EAGAIN from
    /// cgroup.max.descendants) say nothing about IDs.
    pub fn out_of_ids(&self) -> bool {
        [ENOSPC, EBUSY]
            .iter()
            .any(|e| self.errno.as_deref() == Some(e.name))
    }

    /// The kernel made the memcg: the ID space is not exhausted.
    pub fn made(&self) -> bool {
        self.errno.is_none()
    }
}

/// Makes and removes `kmem-trace-doctor-<pid>` under `mount` (the memory
/// hierarchy's root: every child there gets a memcg, and an empty memcg is
/// freed at rmdir, so the ID goes back at once).
pub fn probe(mount: &Path) -> MkdirProbe {
    let dir = mount.join(format!("kmem-trace-doctor-{}", std::process::id()));
    let path = dir.display().to_string();
    match fs::create_dir(&dir) {
        Ok(()) => {
            let _ = fs::remove_dir(&dir);
            MkdirProbe {
                path,
                errno: None,
                words: None,
            }
        }
        Err(e) => refused(path, &e),
    }
}

/// The probe's answer for a failed `mkdir`.
fn refused(path: String, e: &io::Error) -> MkdirProbe {
    let errno = e.raw_os_error().map(|n| match n {
        libc::ENOSPC => ENOSPC.name.to_string(),
        libc::EBUSY => EBUSY.name.to_string(),
        libc::EACCES => "EACCES".to_string(),
        libc::EPERM => "EPERM".to_string(),
        libc::EROFS => "EROFS".to_string(),
        libc::EAGAIN => "EAGAIN".to_string(),
        libc::ENOMEM => "ENOMEM".to_string(),
        libc::ENOENT => "ENOENT".to_string(),
        n => format!("errno {n}"),
    });
    // io::Error prints "Device or resource busy (os error 16)": mkdir's words.
    let words = e.to_string();
    let words = words
        .split(" (os error")
        .next()
        .unwrap_or(&words)
        .to_string();
    MkdirProbe {
        path,
        errno: errno.or_else(|| Some("unknown".into())),
        words: Some(words),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_that_mean_no_ids_and_those_that_do_not() {
        let busy = refused("x".into(), &io::Error::from_raw_os_error(libc::EBUSY));
        assert!(busy.out_of_ids() && !busy.made());
        assert_eq!(busy.words.as_deref(), Some("Device or resource busy"));
        let nospc = refused("x".into(), &io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(nospc.out_of_ids());
        assert_eq!(nospc.words.as_deref(), Some("No space left on device"));
        let acces = refused("x".into(), &io::Error::from_raw_os_error(libc::EACCES));
        assert!(!acces.out_of_ids() && !acces.made());
    }

    #[test]
    fn a_made_directory_is_removed() {
        let tmp = std::env::temp_dir().join(format!("kmt-mkdir-probe-{}", std::process::id()));
        fs::create_dir_all(&tmp).unwrap();
        let p = probe(&tmp);
        assert!(p.made(), "{p:?}");
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        let missing = probe(&tmp.join("absent"));
        assert_eq!(missing.errno.as_deref(), Some("ENOENT"));
        fs::remove_dir(&tmp).unwrap();
    }
}
