//! The guest's side of the console protocol: one JSON object per line behind a
//! marker, so the host can pick results out of the serial console between
//! kernel messages. Record types: `env`, `step`, `probes`, `symbols`, `cell`,
//! `compare`, `kernel_log`, `error`, `done`.

use std::io::Write;

use serde_json::{json, Value};

/// Starts every protocol line; the host ignores everything else.
pub const MARKER: &str = "@@KMT ";

/// Writes one record as a single line with a single write.
pub fn emit(kind: &str, mut body: Value) {
    body["t"] = json!(kind);
    let line = format!("{MARKER}{body}\n");
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Progress for the host's display: which family, which step.
pub fn step(family: Option<&str>, step: &str) {
    emit("step", json!({"family": family, "step": step}));
}
