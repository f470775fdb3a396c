//! Realistic synthetic event streams for the benchmarks: the recorded churn
//! fixture replicated with distinct addresses, IDs and cgroups (replay), and a
//! kubelet-shaped node of 65,535 memcgs with creators and residents (footprint).
#![allow(dead_code)] // each bench uses part of this module

use kmem_trace::decode::{decode_recording, TraceEvent};
use kmem_trace_common::{flags, hook, Event, EventKind, EVENT_SIZE, NAME_LEN};

/// Real events recorded on 6.18 (cgroup v1): a parent and 8 child lifecycles
/// (alloc, online, kmem_activate, offline, released, free; two stay dying).
pub const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/churn-6.18-v1.kmt"
);

fn set_name(e: &mut Event, name: &str) {
    let n = name.len().min(NAME_LEN);
    e.name = [0; NAME_LEN];
    e.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    e.name_len = n as u16;
}

fn set_comm(dst: &mut [u8; 16], s: &str) {
    *dst = [0; 16];
    let n = s.len().min(15);
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The fixture's events: the parent's own (level 1) and its children's.
fn fixture() -> (Vec<Event>, Vec<Event>) {
    let bytes = std::fs::read(FIXTURE).expect("reading the churn fixture");
    let (_, events) = decode_recording(&bytes).expect("decoding the churn fixture");
    events
        .into_iter()
        .map(|e| e.raw)
        .partition(|e| e.level <= 1)
}

/// Raw records (no recording header): the fixture's parent start, then
/// `copies` replicas of its 8 child lifecycles, each with its own memcg
/// address, cgroup id, name and (wrapping, like the kernel's) memcg ID, and
/// shifted in time so the stream stays ordered. Roughly 44 events per copy.
pub fn churn_stream(copies: usize) -> Vec<u8> {
    let (parent, children) = fixture();
    let start = parent
        .iter()
        .filter(|e| e.kind != EventKind::Offline as u32);
    let mut addrs: Vec<u64> = Vec::new();
    for e in &children {
        if e.memcg_addr != 0 && !addrs.contains(&e.memcg_addr) {
            addrs.push(e.memcg_addr);
        }
    }
    let first = children.first().map(|e| e.ts_ns).unwrap_or(0);
    let last = children.last().map(|e| e.ts_ns).unwrap_or(0);
    let span = last - first + 1_000_000;
    let mut out = Vec::with_capacity((3 + copies * children.len()) * EVENT_SIZE);
    for e in start {
        out.extend_from_slice(e.as_bytes());
    }
    for k in 0..copies {
        for e in &children {
            let mut e = *e;
            let j = addrs.iter().position(|a| *a == e.memcg_addr).unwrap_or(0);
            let n = (k * addrs.len() + j) as u64;
            e.memcg_addr = 0xffff_8880_0000_0000 + n * 0x1000;
            e.cgroup_id = 1_000_000 + n;
            if e.memcg_id != 0 {
                e.memcg_id = (n % 65_000) as u32 + 16;
            }
            e.ts_ns += k as u64 * span;
            set_name(&mut e, &format!("c{n}"));
            out.extend_from_slice(e.as_bytes());
        }
    }
    out
}

/// Number of records in a stream of raw records.
pub fn records(stream: &[u8]) -> usize {
    stream.len() / EVENT_SIZE
}

/// Builds the synthetic node's events one memcg at a time.
struct Node<F: FnMut(&TraceEvent)> {
    ts: u64,
    next_id: u32,
    sink: F,
}

impl<F: FnMut(&TraceEvent)> Node<F> {
    const HIER: u32 = 4;

    fn emit(&mut self, e: &mut Event) {
        self.ts += 1000;
        e.ts_ns = self.ts;
        let ev = TraceEvent::decode(e.as_bytes()).expect("valid synthetic event");
        (self.sink)(&ev);
    }

    /// mkdir of cgroup `cg` (under `parent`) by `creator`: alloc + online.
    fn mkdir(&mut self, cg: u64, parent: u64, level: u32, name: &str, creator: &str) -> Event {
        let id = self.next_id;
        self.next_id += 1;
        let mut e = Event::ZERO;
        e.hierarchy_id = Self::HIER;
        e.cgroup_id = cg;
        e.parent_cgroup_id = parent;
        e.level = level;
        e.memcg_id = id;
        e.memcg_addr = 0xffff_8881_0000_0000 + u64::from(id) * 0x1000;
        e.pid = 1000 + id;
        e.tgid = e.pid;
        e.ppid = 900;
        set_comm(&mut e.comm, creator);
        set_comm(&mut e.pcomm, "containerd-shim");
        set_name(&mut e, name);
        e.flags = flags::KMEM_ACTIVE;
        e.hook = hook::TP_CGROUP_MKDIR;
        for kind in [EventKind::Alloc, EventKind::Online] {
            e.kind = kind as u32;
            self.emit(&mut e);
        }
        e
    }

    fn residents(&mut self, m: &Event) {
        for (i, comm) in ["runc:[2:INIT]", "nginx", "sh"].iter().enumerate() {
            let mut r = *m;
            r.kind = EventKind::Resident as u32;
            r.hook = hook::TP_CGROUP_ATTACH;
            r.flags |= flags::ATTACH;
            r.pid = 100_000 + (m.memcg_id * 4) + i as u32;
            r.tgid = r.pid;
            set_comm(&mut r.comm, comm);
            self.emit(&mut r);
        }
    }

    fn rmdir(&mut self, m: &Event) {
        let mut o = *m;
        o.kind = EventKind::Offline as u32;
        o.hook = hook::TP_CGROUP_RMDIR;
        o.flags |= flags::MEM_COUNTER | flags::SWAP_COUNTER;
        o.mem_pages = 256;
        o.swap_pages = 256;
        set_comm(&mut o.comm, "runc");
        self.emit(&mut o);
    }
}

/// A kubelet-shaped node: `/kubepods/burstable/pod<uid>` with two containers
/// (64-hex container-ID leaves) per pod, i.e. three memcgs per pod. Calls `sink`
/// with each event: per memcg an alloc and an online from `kubelet`/`runc`,
/// three residents, and for every fourth pod an offline (dying, kept as a
/// zombie). `memcgs` memcgs in all (IDs 1..=memcgs).
pub fn node_events(memcgs: u32, sink: impl FnMut(&TraceEvent)) {
    let mut n = Node {
        ts: 1_000_000_000,
        next_id: 1,
        sink,
    };
    n.mkdir(2, 1, 1, "kubepods", "kubelet");
    n.mkdir(3, 2, 2, "burstable", "kubelet");
    let mut pod = 0u64;
    while n.next_id <= memcgs {
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (pod * 2_654_435_761) % (1 << 32),
            pod % 0xffff,
            pod % 0xfff,
            (pod * 7) % 0xfff,
            (pod * 0x9e37_79b9) % (1 << 48)
        );
        let pod_cg = 10 + pod * 4;
        let mut members = vec![n.mkdir(pod_cg, 3, 3, &format!("pod{uid}"), "kubelet")];
        for c in 1..3u64 {
            if n.next_id > memcgs {
                break;
            }
            let cid = format!(
                "{:016x}{:016x}{:016x}{:016x}",
                pod.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                c,
                pod,
                !pod
            );
            members.push(n.mkdir(pod_cg + c, pod_cg, 4, &cid, "runc"));
        }
        for m in &members {
            n.residents(m);
        }
        if pod % 4 == 3 {
            for m in members.iter().rev() {
                n.rmdir(m);
            }
        }
        pod += 1;
    }
}
