//! The host-kernel lock (`flock /tmp/kmem-trace-kernel.lock`) for root tests
//! that change the cgroup tree or load BPF programs. xtask compiles this file
//! too (`#[path]` in xtask/src/util.rs: it cannot depend on this crate) for
//! its own kernel-touching tasks.

use std::{
    fs::{self, File},
    os::fd::AsRawFd,
};

/// The lock file every helper and test takes while it touches the kernel.
pub const KERNEL_LOCK: &str = "/tmp/kmem-trace-kernel.lock";

/// `flock /tmp/kmem-trace-kernel.lock` for the test's lifetime, unless a
/// parent process already holds it (`flock /tmp/kmem-trace-kernel.lock cargo
/// test ...`): waiting for it then would wait forever.
pub struct KernelLock {
    _file: File,
}

impl KernelLock {
    pub fn take() -> KernelLock {
        let f = File::options()
            .create(true)
            .append(true)
            .open(KERNEL_LOCK)
            .expect("opening the kernel lock");
        // SAFETY: flock on an fd we own; released when the file is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return KernelLock { _file: f };
        }
        if held_by_an_ancestor(&f) {
            eprintln!("the kernel lock is held by a parent process: running under it");
            return KernelLock { _file: f };
        }
        eprintln!("waiting for the kernel lock");
        // SAFETY: as above.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
        KernelLock { _file: f }
    }
}

/// Whether a granted lock on `f`'s inode in /proc/locks belongs to one of our ancestors.
pub fn held_by_an_ancestor(f: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = f.metadata().map(|m| m.ino()).unwrap_or(0);
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    let holders: Vec<u32> = locks
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // `1: FLOCK ADVISORY WRITE <pid> <maj:min:ino> 0 EOF`; waiters have `->`.
            if fields.get(1) == Some(&"->") {
                return None;
            }
            let dev_ino = fields.get(5)?;
            (dev_ino.rsplit(':').next()? == ino.to_string()).then(|| fields.get(4)?.parse().ok())?
        })
        .collect();
    let mut pid = std::process::id();
    for _ in 0..64 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The ppid follows the `)` closing the command name.
        let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
        else {
            return false;
        };
        if ppid <= 1 {
            return false;
        }
        if holders.contains(&ppid) {
            return true;
        }
        pid = ppid;
    }
    false
}
