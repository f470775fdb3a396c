//! Compact process records (creator, residents): fixed-size comm buffers,
//! shared between records, so a memcg with its residents stays small even at
//! 65,535 tracked memcgs.

use std::{fmt, sync::Arc};

use kmem_trace_common::COMM_LEN;
use serde::{ser::SerializeStruct, Deserialize, Serialize};

use super::intern::Interner;
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

/// A task's two names, its `comm` and its parent's, shared by every task
/// record with the same pair: the same few pairs (runc under containerd-shim,
/// nginx under runc, ...) recur across a node's memcgs, and a memcg keeps its
/// creator and residents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Names {
    pub comm: Comm,
    pub pcomm: Comm,
}

/// A process at one moment: who created a memcg, or who lived in it. 32 bytes
/// with its names shared (56 with them inline), for up to 65,535 memcgs with
/// several each (docs/PERFORMANCE.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tgid: u32,
    /// tgid of the parent process.
    pub ppid: u32,
    names: Arc<Names>,
    /// Monotonic ns when seen.
    pub ts_ns: u64,
}

impl Task {
    pub fn new(pid: u32, tgid: u32, comm: Comm, ppid: u32, pcomm: Comm, ts_ns: u64) -> Task {
        Task {
            pid,
            tgid,
            ppid,
            names: Arc::new(Names { comm, pcomm }),
            ts_ns,
        }
    }

    pub fn comm(&self) -> Comm {
        self.names.comm
    }

    /// comm of the parent process.
    pub fn pcomm(&self) -> Comm {
        self.names.pcomm
    }

    /// The same task under a new name (it called `exec()`).
    pub fn rename(&mut self, comm: Comm, table: &mut NameTable) {
        self.names = table.intern(Names {
            comm,
            pcomm: self.names.pcomm,
        });
    }

    /// The task that acted (created, removed, ...), its names shared
    /// through `table`.
    pub fn actor_in(ev: &TraceEvent, table: &mut NameTable) -> Task {
        Task {
            pid: ev.raw.pid,
            tgid: ev.raw.tgid,
            ppid: ev.raw.ppid,
            names: table.intern(Names {
                comm: Comm(ev.raw.comm),
                pcomm: Comm(ev.raw.pcomm),
            }),
            ts_ns: ev.raw.ts_ns,
        }
    }

    /// For `Resident` events the pid/comm fields describe the process that
    /// entered the memcg (the eBPF side fills them from that task).
    pub fn subject_in(ev: &TraceEvent, table: &mut NameTable) -> Task {
        Task::actor_in(ev, table)
    }
}

/// Task names in use, so equal pairs share one allocation (swept as
/// [`Interner`] says).
pub type NameTable = Interner<Names, 64>;

/// The JSON of a task, as before names were shared.
impl Serialize for Task {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Task", 6)?;
        st.serialize_field("pid", &self.pid)?;
        st.serialize_field("tgid", &self.tgid)?;
        st.serialize_field("comm", &self.names.comm)?;
        st.serialize_field("ppid", &self.ppid)?;
        st.serialize_field("pcomm", &self.names.pcomm)?;
        st.serialize_field("ts_ns", &self.ts_ns)?;
        st.end()
    }
}

impl<'de> Deserialize<'de> for Task {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Task, D::Error> {
        #[derive(Deserialize)]
        struct Plain {
            pid: u32,
            tgid: u32,
            comm: Comm,
            ppid: u32,
            pcomm: Comm,
            ts_ns: u64,
        }
        let p = Plain::deserialize(d)?;
        Ok(Task::new(p.pid, p.tgid, p.comm, p.ppid, p.pcomm, p.ts_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_names_are_shared_and_unused_ones_swept() {
        let mut t = NameTable::default();
        let pair = |comm: &str, pcomm: &str| Names {
            comm: Comm::new(comm),
            pcomm: Comm::new(pcomm),
        };
        let a = t.intern(pair("runc", "containerd-shim"));
        let b = t.intern(pair("runc", "containerd-shim"));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        for i in 0..200 {
            let _ = t.intern(pair(&format!("c{i}"), "p"));
        }
        assert!(t.len() <= 128, "{}", t.len());
        assert_eq!(std::mem::size_of::<Task>(), 32);
    }

    #[test]
    fn json_is_field_for_field() {
        let task = Task::new(1, 2, Comm::new("nginx"), 3, Comm::new("runc"), 4);
        let j = serde_json::to_string(&task).unwrap();
        assert_eq!(
            j,
            r#"{"pid":1,"tgid":2,"comm":"nginx","ppid":3,"pcomm":"runc","ts_ns":4}"#
        );
        assert_eq!(serde_json::from_str::<Task>(&j).unwrap(), task);
    }
}
