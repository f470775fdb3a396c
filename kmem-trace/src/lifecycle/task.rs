//! Compact process records (creator, residents): fixed-size comm buffers so a
//! memcg with its residents stays small even at 65,535 tracked memcgs.

use std::fmt;

use kmem_trace_common::COMM_LEN;
use serde::{Deserialize, Serialize};

use crate::decode::TraceEvent;

/// A task's `comm` (NUL-padded, at most 15 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Comm(pub [u8; COMM_LEN]);

impl Comm {
    pub fn as_str(&self) -> std::borrow::Cow<'_, str> {
        let end = self.0.iter().position(|&c| c == 0).unwrap_or(COMM_LEN);
        String::from_utf8_lossy(&self.0[..end])
    }

    pub fn new(s: &str) -> Comm {
        let mut b = [0u8; COMM_LEN];
        let n = s.len().min(COMM_LEN - 1);
        b[..n].copy_from_slice(&s.as_bytes()[..n]);
        Comm(b)
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str())
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.as_str())
    }
}

impl<'de> Deserialize<'de> for Comm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Comm, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Comm::new(&s))
    }
}

/// A process at one moment: who created a memcg, or who lived in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub pid: u32,
    pub tgid: u32,
    pub comm: Comm,
    /// tgid and comm of the parent process.
    pub ppid: u32,
    pub pcomm: Comm,
    /// Monotonic ns when seen.
    pub ts_ns: u64,
}

impl Task {
    /// The task that acted (created, removed, ...).
    pub fn actor(ev: &TraceEvent) -> Task {
        Task {
            pid: ev.raw.pid,
            tgid: ev.raw.tgid,
            comm: Comm(ev.raw.comm),
            ppid: ev.raw.ppid,
            pcomm: Comm(ev.raw.pcomm),
            ts_ns: ev.raw.ts_ns,
        }
    }

    /// For `Resident` events the pid/comm fields describe the process that
    /// entered the memcg (the eBPF side fills them from that task).
    pub fn subject(ev: &TraceEvent) -> Task {
        Task::actor(ev)
    }
}
