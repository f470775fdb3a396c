//! Small helpers for running commands and locating the workspace, the
//! kernel lock and the apt lock.

use std::{
    fs::File,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `cargo` as invoked for this xtask.
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The kernel lock ([`KERNEL_LOCK`]) as the root tests take it: held for
/// the holder's life unless an ancestor (`flock LOCK cargo xtask test`)
/// already holds it, where waiting would wait forever.
#[path = "../../tests/src/lock.rs"]
mod kernel_lock;
pub use kernel_lock::{held_by_an_ancestor, KernelLock, KERNEL_LOCK};

/// Serialises this suite's apt calls (the test steps run some at once).
pub const APT_LOCK: &str = "/tmp/kmem-apt.lock";
/// Seconds an apt call waits for the dpkg lock held by another apt (the
/// system's unattended upgrades, another run) instead of failing.
pub const APT_LOCK_WAIT_S: u32 = 600;

/// `apt-get` (privileged) that waits for the dpkg lock instead of failing
/// ("Could not get lock /var/lib/dpkg/lock-frontend"); run it with [`apt`].
pub fn apt_get() -> Command {
    let mut c = privileged("apt-get");
    c.arg(format!("-oDPkg::Lock::Timeout={APT_LOCK_WAIT_S}"));
    c
}

/// [`APT_LOCK`], held until the file is dropped: `apt-get update` does not
/// wait for its lists lock the way dpkg's lock waits, so two of this suite's
/// apt calls (the machine's, the private states' of the VM matrix) never run
/// at once.
pub fn apt_lock() -> Result<File> {
    // flock needs no write access: a lock file another user (root) made opens
    // read-only.
    let f = File::open(APT_LOCK)
        .or_else(|_| File::create(APT_LOCK))
        .with_context(|| format!("opening {APT_LOCK}"))?;
    f.lock().with_context(|| format!("locking {APT_LOCK}"))?;
    Ok(f)
}

/// Runs an [`apt_get`] command holding [`apt_lock`].
pub fn apt(cmd: &mut Command) -> Result<()> {
    let _lock = apt_lock()?;
    sh(cmd)
}

/// Runs a command, echoing it, failing on a non-zero exit.
pub fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

/// True when the command runs and exits 0 (quietly).
pub fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `sudo` prefix when not root.
pub fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg(program);
        c
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// RFC 3339 UTC of `epoch` (civil-from-days, Howard Hinnant's algorithm).
pub fn rfc3339(epoch: u64) -> String {
    let (days, secs) = ((epoch / 86400) as i64, epoch % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_780_000_000), "2026-05-28T20:26:40Z");
    }
}
