//! Writes `--json` event lines byte for byte as `serde_json` would, faster:
//! keys are literals, numbers go through `itoa`, and a string is escaped only
//! when one pass over its bytes finds something to escape. `serde_json`
//! escaped every key and value byte by byte, a sixth of the tracer's event
//! loop under churn (`perf`, docs/PERFORMANCE.md). The test below checks every
//! line against `serde_json`.

use std::io::{self, Write};

use crate::{
    attribution::OwnerView,
    lifecycle::{Anomaly, State},
};

/// `"s"`, escaped as `serde_json` escapes (`\"`, `\\`, `\b \f \n \r \t`,
/// other control bytes as `\u00XX`; everything else as is).
pub fn string<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\') {
        w.write_all(b"\"")?;
        w.write_all(b)?;
        return w.write_all(b"\"");
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    w.write_all(b"\"")?;
    let mut start = 0;
    let mut u = *b"\\u0000";
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => {
                u[4] = HEX[(c >> 4) as usize];
                u[5] = HEX[(c & 0xf) as usize];
                &u
            }
            _ => continue,
        };
        w.write_all(&b[start..i])?;
        w.write_all(esc)?;
        start = i + 1;
    }
    w.write_all(&b[start..])?;
    w.write_all(b"\"")
}

pub fn uint<W: Write>(w: &mut W, v: u64) -> io::Result<()> {
    w.write_all(itoa::Buffer::new().format(v).as_bytes())
}

pub fn opt_uint<W: Write>(w: &mut W, v: Option<u64>) -> io::Result<()> {
    match v {
        Some(v) => uint(w, v),
        None => w.write_all(b"null"),
    }
}

pub fn opt_string<W: Write>(w: &mut W, v: Option<&str>) -> io::Result<()> {
    match v {
        Some(v) => string(w, v),
        None => w.write_all(b"null"),
    }
}

pub fn boolean<W: Write>(w: &mut W, v: bool) -> io::Result<()> {
    w.write_all(if v { b"true" } else { b"false" })
}

pub fn state(s: State) -> &'static str {
    match s {
        State::Live => "live",
        State::Dying => "dying",
        State::Freed => "freed",
    }
}

pub fn anomaly(a: Anomaly) -> &'static str {
    match a {
        Anomaly::Untracked => "untracked",
        Anomaly::MissedFree => "missed_free",
        Anomaly::IdReused => "id_reused",
    }
}

/// An [`OwnerView`] object (absent fields left out, as its `Serialize` does).
pub fn owner<W: Write>(w: &mut W, v: &OwnerView<'_>) -> io::Result<()> {
    w.write_all(b"{\"kind\":")?;
    string(w, v.kind)?;
    let fields: [(&[u8], Option<&str>); 10] = [
        (b",\"namespace\":", v.namespace),
        (b",\"pod\":", v.pod),
        (b",\"pod_uid\":", v.pod_uid),
        (b",\"qos\":", v.qos),
        (b",\"container\":", v.container),
        (b",\"container_id\":", v.container_id),
        (b",\"runtime\":", v.runtime),
        (b",\"image\":", v.image),
        (b",\"unit\":", v.unit),
        (b",\"path\":", v.path),
    ];
    for (key, val) in fields {
        if let Some(val) = val {
            w.write_all(key)?;
            string(w, val)?;
        }
    }
    w.write_all(b"}")
}
