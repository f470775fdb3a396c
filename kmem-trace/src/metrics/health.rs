//! Liveness and readiness of `serve` (`/healthz`, `/readyz` on the metrics
//! endpoint) and the `--listen` address syntax, which also takes a bracketed
//! IPv4 address so one template (`[$(POD_IP)]:9464`) fits both pod IP families.

use std::{
    ffi::CString,
    net::{IpAddr, SocketAddr},
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::OnceLock,
};

/// Parses `IP:PORT`, `[IPv6]:PORT` or `[IPv4]:PORT`.
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (host, port) = s.strip_prefix('[')?.split_once("]:")?;
    let ip: IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, port.parse().ok()?))
}

/// What the probes say once the tracer runs. `/healthz` answers as long as
/// the endpoint does (the process is alive and its runtime turns); `/readyz`
/// only once the probes are attached and, when there is a history, while its
/// database can be written.
#[derive(Debug, Default)]
pub struct Health {
    /// Set when the probes are attached: the history database, if any.
    attached: OnceLock<Option<PathBuf>>,
}

impl Health {
    /// The probes are attached; `history` is the database written to (if any).
    pub fn attached(&self, history: Option<PathBuf>) {
        let _ = self.attached.set(history);
    }

    /// The answer to `path` (status, body), or `None` when it is not a health path.
    pub fn answer(&self, path: &str) -> Option<(u16, String)> {
        match path {
            "/healthz" => Some((200, "ok\n".into())),
            "/readyz" => Some(match self.readiness() {
                Ok(()) => (200, "ready\n".into()),
                Err(why) => (503, format!("not ready: {why}\n")),
            }),
            _ => None,
        }
    }

    fn readiness(&self) -> Result<(), String> {
        match self.attached.get() {
            None => Err("the probes are not attached yet".into()),
            Some(None) => Ok(()),
            Some(Some(db)) => writable(db),
        }
    }
}

/// True when the database file (or, before it exists, its directory) may be
/// written by this process: `access(2)` with W_OK, which sees a read-only
/// mount (EROFS) and permissions.
fn writable(db: &Path) -> Result<(), String> {
    let target = if db.exists() {
        db
    } else {
        db.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    let c = CString::new(target.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path; access has no other preconditions.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(format!(
            "history {} is not writable ({e}); mount it read-write",
            target.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        let v4: SocketAddr = "10.1.2.3:9464".parse().unwrap();
        assert_eq!(parse_listen("10.1.2.3:9464"), Some(v4));
        assert_eq!(parse_listen("[10.1.2.3]:9464"), Some(v4));
        let v6: SocketAddr = "[fd00::1]:9464".parse().unwrap();
        assert_eq!(parse_listen("[fd00::1]:9464"), Some(v6));
        assert_eq!(parse_listen(" [::]:9464 ").unwrap().port(), 9464);
        // A bare IPv6 address with a port appended is ambiguous: refused.
        assert_eq!(parse_listen("fd00::1:9464"), None);
        assert_eq!(parse_listen("[fd00::1]"), None);
        assert_eq!(parse_listen("[10.1.2.3]:x"), None);
        assert_eq!(parse_listen("localhost:9464"), None);
    }

    #[test]
    fn ready_only_once_attached_and_history_writable() {
        let h = Health::default();
        assert_eq!(h.answer("/healthz").unwrap().0, 200);
        assert_eq!(h.answer("/metrics"), None);
        let (code, body) = h.answer("/readyz").unwrap();
        assert_eq!(code, 503);
        assert!(body.contains("not attached"), "{body}");

        let dir = std::env::temp_dir().join(format!("kmem-health-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let h = Health::default();
        h.attached(Some(dir.join("history.db")));
        assert_eq!(h.answer("/readyz").unwrap().0, 200);

        let h = Health::default();
        h.attached(Some(PathBuf::from("/proc/1/history.db")));
        let (code, body) = h.answer("/readyz").unwrap();
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("not writable"), "{body}");
        std::fs::remove_dir_all(&dir).unwrap();

        let h = Health::default();
        h.attached(None);
        assert_eq!(h.answer("/readyz").unwrap().0, 200);
    }
}
