//! Bytes to typed events: validates ring-buffer records (and recorded files of
//! them) and exposes their fields with proper types. Never panics on input.

use std::{borrow::Cow, fmt, io};

use kmem_trace_common::{
    flags, Event, EventKind, COMM_LEN, EVENT_ABI_OLDEST, EVENT_ABI_VERSION, EVENT_SIZE, NAME_LEN,
};

/// Errors of decoding one record or a recording.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event record is {0} bytes, expected {EVENT_SIZE}; the eBPF object does not match this binary, rebuild both")]
    Size(usize),
    #[error("event record has unknown kind {0}; the eBPF object is newer than this binary, rebuild both")]
    Kind(u32),
    #[error("event record name length {0} exceeds {NAME_LEN}")]
    NameLen(u16),
    #[error(
        "not a kmem-trace recording (bad magic); record one with `kmem-trace watch --record FILE`"
    )]
    Magic,
    #[error("recording has event ABI {found}, this binary reads {EVENT_ABI_VERSION}; replay it with the kmem-trace version that made it")]
    Abi { found: u32 },
    #[error("recording is truncated: {0} trailing bytes do not form a record")]
    Truncated(usize),
}

/// A validated event. Wraps the raw record (cheap to copy, no allocation).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceEvent {
    pub kind: EventKind,
    pub raw: Event,
}

/// The kind of a record whose `kind` and `name_len` are valid: the checks
/// [`TraceEvent::decode`] and [`TraceEvent::from_raw`] share.
fn checked_kind(kind: u32, name_len: u16) -> Result<EventKind, DecodeError> {
    let kind = EventKind::from_u32(kind).ok_or(DecodeError::Kind(kind))?;
    if name_len as usize > NAME_LEN {
        return Err(DecodeError::NameLen(name_len));
    }
    Ok(kind)
}

impl TraceEvent {
    /// Decodes one ring-buffer record.
    pub fn decode(bytes: &[u8]) -> Result<TraceEvent, DecodeError> {
        if bytes.len() != EVENT_SIZE {
            return Err(DecodeError::Size(bytes.len()));
        }
        // Validate from the bytes first, then copy the record once, straight
        // into the result (going through `from_raw` copied it twice: a tenth
        // of replay time, docs/PERFORMANCE.md).
        let (k, n) = (
            std::mem::offset_of!(Event, kind),
            std::mem::offset_of!(Event, name_len),
        );
        let kind = u32::from_ne_bytes([bytes[k], bytes[k + 1], bytes[k + 2], bytes[k + 3]]);
        let name_len = u16::from_ne_bytes([bytes[n], bytes[n + 1]]);
        Ok(TraceEvent {
            kind: checked_kind(kind, name_len)?,
            // SAFETY: length checked; Event is repr(C) plain data valid for any
            // bits; read_unaligned because ring-buffer records are only 8-byte
            // aligned by convention, and recordings not at all.
            raw: unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) },
        })
    }

    pub fn from_raw(raw: Event) -> Result<TraceEvent, DecodeError> {
        let kind = checked_kind(raw.kind, raw.name_len)?;
        Ok(TraceEvent { kind, raw })
    }

    /// Hands `f` every lifecycle point this record stands for, each as the
    /// record a hook would have sent for that point alone: the record itself,
    /// then an online and an (inferred) kmem activation when it carries
    /// [`flags::ALSO_ONLINE`] / [`flags::ALSO_KMEM_ACTIVATE`] (a hook that sees
    /// several points at once sends one record, docs/PERFORMANCE.md).
    pub fn expand<E>(&self, mut f: impl FnMut(&TraceEvent) -> Result<(), E>) -> Result<(), E> {
        const ALSO: u32 = flags::ALSO_ONLINE | flags::ALSO_KMEM_ACTIVATE;
        if self.raw.flags & ALSO == 0 {
            return f(self);
        }
        let mut one = *self;
        one.raw.flags &= !ALSO;
        if one.kind != EventKind::KmemActivate {
            one.raw.aux = 0;
        }
        f(&one)?;
        if self.has(flags::ALSO_ONLINE) && self.kind == EventKind::Alloc {
            one.kind = EventKind::Online;
            one.raw.kind = EventKind::Online as u32;
            f(&one)?;
        }
        if self.has(flags::ALSO_KMEM_ACTIVATE) && self.kind != EventKind::KmemActivate {
            one.kind = EventKind::KmemActivate;
            one.raw.kind = EventKind::KmemActivate as u32;
            one.raw.flags |= flags::INFERRED;
            one.raw.aux = self.raw.aux;
            f(&one)?;
        }
        Ok(())
    }

    pub fn has(&self, flag: u32) -> bool {
        self.raw.flags & flag != 0
    }

    /// Monotonic kernel timestamp (ns).
    pub fn ts_ns(&self) -> u64 {
        self.raw.ts_ns
    }

    /// Memcg address, if this hook knew it.
    pub fn memcg_addr(&self) -> Option<u64> {
        (!self.has(flags::NO_MEMCG) && self.raw.memcg_addr != 0).then_some(self.raw.memcg_addr)
    }

    pub fn memcg_id(&self) -> Option<u32> {
        self.memcg_addr().map(|_| self.raw.memcg_id)
    }

    /// `(hierarchy_id, cgroup_id)`, if this hook knew the cgroup.
    pub fn cgroup_key(&self) -> Option<(u32, u64)> {
        (!self.has(flags::NO_CGROUP) && self.raw.cgroup_id != 0)
            .then_some((self.raw.hierarchy_id, self.raw.cgroup_id))
    }

    /// Leaf name of the cgroup (lossy for non-UTF-8 names).
    pub fn name(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.raw.name[..self.raw.name_len as usize])
    }

    pub fn comm(&self) -> Cow<'_, str> {
        cstr(&self.raw.comm)
    }

    pub fn pcomm(&self) -> Cow<'_, str> {
        cstr(&self.raw.pcomm)
    }

    pub fn inferred(&self) -> bool {
        self.has(flags::INFERRED)
    }

    /// Page counters carried by the event (offline and census). On cgroup v1
    /// (hierarchy id != 0) the kernel's counter is `memsw` = memory + swap, so
    /// swap is the difference; on v2 it is the `swap` counter itself.
    pub fn counters(&self) -> Counters {
        let mem = self.has(flags::MEM_COUNTER).then_some(self.raw.mem_pages);
        let swap = self.has(flags::SWAP_COUNTER).then(|| {
            if self.raw.hierarchy_id != 0 {
                self.raw.swap_pages.saturating_sub(mem.unwrap_or(0))
            } else {
                self.raw.swap_pages
            }
        });
        Counters {
            mem_pages: mem,
            kmem_pages: self.has(flags::KMEM_COUNTER).then_some(self.raw.kmem_pages),
            swap_pages: swap,
        }
    }
}

impl fmt::Debug for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceEvent")
            .field("kind", &self.kind)
            .field("memcg_id", &self.raw.memcg_id)
            .field("memcg_addr", &format_args!("{:#x}", self.raw.memcg_addr))
            .field("cgroup_id", &self.raw.cgroup_id)
            .field("name", &self.name())
            .field("comm", &self.comm())
            .field("flags", &format_args!("{:#x}", self.raw.flags))
            .finish()
    }
}

/// A memcg's page counters, in pages; `None` where the kernel has no such counter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    pub mem_pages: Option<u64>,
    pub kmem_pages: Option<u64>,
    pub swap_pages: Option<u64>,
}

fn cstr(b: &[u8; COMM_LEN]) -> Cow<'_, str> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end])
}

/// Recording format: a 32-byte header, then raw records back to back.
/// Header: magic, ABI version, record size, and the wall-clock offset of the
/// monotonic clock when recording started (so replays show real times).
pub const RECORDING_MAGIC: &[u8; 8] = b"KMEMTRC\x01";
pub const HEADER_LEN: usize = 32;

/// Header of a recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordingHeader {
    pub abi: u32,
    /// Wall clock minus monotonic clock, in ns, when recording began.
    pub wall_offset_ns: i64,
}

impl RecordingHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[..8].copy_from_slice(RECORDING_MAGIC);
        h[8..12].copy_from_slice(&self.abi.to_le_bytes());
        h[12..16].copy_from_slice(&(EVENT_SIZE as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.wall_offset_ns.to_le_bytes());
        h
    }
}

/// Parses a whole recording: header and events (records standing for several
/// points expanded, see [`TraceEvent::expand`]). Truncation is an error that
/// names how many bytes were left over; every complete record before it is
/// returned by [`decode_recording_lossy`].
pub fn decode_recording(bytes: &[u8]) -> Result<(RecordingHeader, Vec<TraceEvent>), DecodeError> {
    let (header, events, rest) = decode_recording_lossy(bytes)?;
    if rest != 0 {
        return Err(DecodeError::Truncated(rest));
    }
    Ok((header, events?))
}

/// Like [`decode_recording`], but returns the complete records before a
/// truncated tail and the tail's length (a recorder killed mid-write).
#[allow(clippy::type_complexity)]
pub fn decode_recording_lossy(
    bytes: &[u8],
) -> Result<(RecordingHeader, Result<Vec<TraceEvent>, DecodeError>, usize), DecodeError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != RECORDING_MAGIC {
        return Err(DecodeError::Magic);
    }
    let abi = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let size = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
    if !(EVENT_ABI_OLDEST..=EVENT_ABI_VERSION).contains(&abi) || size as usize != EVENT_SIZE {
        return Err(DecodeError::Abi { found: abi });
    }
    let wall_offset_ns = i64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let body = &bytes[HEADER_LEN..];
    let chunks = body.chunks_exact(EVENT_SIZE);
    let rest = chunks.remainder().len();
    let mut events = Vec::with_capacity(body.len() / EVENT_SIZE);
    let events = chunks
        .into_iter()
        .try_for_each(|c| {
            TraceEvent::decode(c)?.expand(|e| {
                events.push(*e);
                Ok::<(), DecodeError>(())
            })
        })
        .map(|()| events);
    Ok((
        RecordingHeader {
            abi,
            wall_offset_ns,
        },
        events,
        rest,
    ))
}

/// Writes a recording header.
pub fn write_header(w: &mut impl io::Write, wall_offset_ns: i64) -> io::Result<()> {
    w.write_all(
        &RecordingHeader {
            abi: EVENT_ABI_VERSION,
            wall_offset_ns,
        }
        .encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::ZERO;
        e.kind = EventKind::Offline as u32;
        e.memcg_id = 42;
        e.memcg_addr = 0xffff_8880_1234_0000;
        e.cgroup_id = 77;
        e.flags = flags::MEM_COUNTER | flags::SWAP_COUNTER;
        e.mem_pages = 4096;
        e.swap_pages = 0;
        e.name[..5].copy_from_slice(b"pod-a");
        e.name_len = 5;
        e.comm[..4].copy_from_slice(b"runc");
        e
    }

    #[test]
    fn round_trips_a_record() {
        let e = sample();
        let t = TraceEvent::decode(e.as_bytes()).unwrap();
        assert_eq!(t.kind, EventKind::Offline);
        assert_eq!(t.name(), "pod-a");
        assert_eq!(t.comm(), "runc");
        assert_eq!(t.memcg_id(), Some(42));
        assert_eq!(
            t.counters(),
            Counters {
                mem_pages: Some(4096),
                kmem_pages: None,
                swap_pages: Some(0)
            }
        );
    }

    #[test]
    fn v1_swap_is_memsw_minus_memory() {
        let mut e = sample();
        e.hierarchy_id = 4;
        e.mem_pages = 100;
        e.swap_pages = 130; // memsw
        let t = TraceEvent::decode(e.as_bytes()).unwrap();
        assert_eq!(t.counters().swap_pages, Some(30));
        e.hierarchy_id = 0; // v2: the swap counter itself
        let t = TraceEvent::decode(e.as_bytes()).unwrap();
        assert_eq!(t.counters().swap_pages, Some(130));
    }

    #[test]
    fn rejects_bad_records() {
        let mut e = sample();
        assert_eq!(
            TraceEvent::decode(&e.as_bytes()[..100]),
            Err(DecodeError::Size(100))
        );
        e.kind = 99;
        assert_eq!(TraceEvent::decode(e.as_bytes()), Err(DecodeError::Kind(99)));
        let mut e = sample();
        e.name_len = 500;
        assert_eq!(
            TraceEvent::decode(e.as_bytes()),
            Err(DecodeError::NameLen(500))
        );
    }

    #[test]
    fn no_memcg_flag_hides_the_address() {
        let mut e = sample();
        e.flags |= flags::NO_MEMCG;
        let t = TraceEvent::decode(e.as_bytes()).unwrap();
        assert_eq!(t.memcg_addr(), None);
        assert_eq!(t.memcg_id(), None);
    }

    #[test]
    fn recordings_round_trip_and_report_truncation() {
        let mut buf = Vec::new();
        write_header(&mut buf, 1_700_000_000_000_000_000).unwrap();
        buf.extend_from_slice(sample().as_bytes());
        buf.extend_from_slice(sample().as_bytes());
        let (h, evs) = decode_recording(&buf).unwrap();
        assert_eq!(h.wall_offset_ns, 1_700_000_000_000_000_000);
        assert_eq!(evs.len(), 2);
        buf.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_recording(&buf), Err(DecodeError::Truncated(3)));
        let (_, evs, rest) = decode_recording_lossy(&buf).unwrap();
        assert_eq!((evs.unwrap().len(), rest), (2, 3));
        assert_eq!(decode_recording(b"nonsense"), Err(DecodeError::Magic));
    }

    #[test]
    fn one_record_expands_to_every_point_it_stands_for() {
        let mut e = sample();
        e.kind = EventKind::Alloc as u32;
        e.flags = flags::ALSO_ONLINE | flags::ALSO_KMEM_ACTIVATE | flags::KMEM_ACTIVE;
        e.aux = 3;
        let mut out = Vec::new();
        TraceEvent::decode(e.as_bytes())
            .unwrap()
            .expand(|x| {
                out.push(*x);
                Ok::<(), ()>(())
            })
            .unwrap();
        let kinds: Vec<EventKind> = out.iter().map(|x| x.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::Alloc, EventKind::Online, EventKind::KmemActivate]
        );
        assert!(out.iter().all(|x| x.raw.kind == x.kind as u32));
        assert!(out.iter().all(|x| x.has(flags::KMEM_ACTIVE)));
        assert!(out
            .iter()
            .all(|x| !x.has(flags::ALSO_ONLINE | flags::ALSO_KMEM_ACTIVATE)));
        assert_eq!((out[0].raw.aux, out[1].raw.aux, out[2].raw.aux), (0, 0, 3));
        assert_eq!(
            (out[0].inferred(), out[1].inferred(), out[2].inferred()),
            (false, false, true)
        );
        // A recording expands too; one of ABI 1 (no such records) still reads.
        let mut buf = Vec::new();
        write_header(&mut buf, 0).unwrap();
        buf.extend_from_slice(e.as_bytes());
        assert_eq!(decode_recording(&buf).unwrap().1, out);
        buf[8..12].copy_from_slice(&1u32.to_le_bytes());
        assert!(decode_recording(&buf).is_ok());
        buf[8..12].copy_from_slice(&(EVENT_ABI_VERSION + 1).to_le_bytes());
        assert!(decode_recording(&buf).is_err());
    }

    #[test]
    fn invalid_utf8_names_do_not_panic() {
        let mut e = sample();
        e.name[..3].copy_from_slice(&[0xff, 0xfe, b'a']);
        e.name_len = 3;
        let t = TraceEvent::decode(e.as_bytes()).unwrap();
        assert_eq!(t.name(), "\u{fffd}\u{fffd}a");
    }
}
