//! The result of one matrix row (a VM boot or the host run), built from the
//! guest's protocol records (`@@KMT {json}` lines on the serial console or the
//! host run's stdout), and its final verdict.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Starts every protocol line (the guest's `proto::MARKER`).
pub const MARKER: &str = "@@KMT ";

/// Console lines kept for the failure report.
const TAIL: usize = 25;
/// Characters kept of each tail line.
const TAIL_LINE: usize = 400;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunResult {
    /// `6.1.0-57-cloud-amd64 nokmem`, or `host`.
    pub label: String,
    pub host: bool,
    /// The kernel asked for (a Debian release, or the host's `uname -r`).
    pub release: String,
    /// Debian's architecture name (`amd64`, `arm64`); empty in results saved
    /// before arm64 runs (see [`RunResult::arch_name`]).
    pub arch: String,
    /// `uname -r` as the guest saw it.
    pub kernel: String,
    /// `default` or `nokmem` (`cgroup.memory=nokmem`).
    pub boot: String,
    pub cgroup: String,
    pub kmem: Option<bool>,
    /// Families that had to run and pass.
    pub families: Vec<String>,
    pub ok: bool,
    /// Why the run as a whole failed (panic, hang, timeout, guest error).
    pub failure: Option<String>,
    pub seconds: f64,
    /// Seconds from start to the guest's first record (boot time for a VM).
    pub ready_s: Option<f64>,
    pub cells: Vec<Value>,
    pub compare: Vec<Value>,
    /// `kmem-trace probes --json` on this kernel.
    pub probes: Option<Value>,
    /// `kmem-trace probes --json --transport perf` (the perf row's; `{"error"}`
    /// when it could not start), when the perf row ran.
    pub perf_probes: Option<Value>,
    /// memcg/css text symbols in the kernel's kallsyms.
    pub symbols: Vec<String>,
    pub kernel_log: Option<Value>,
    /// The census check (`status` pass, fail or unsupported, what it saw).
    pub census: Option<Value>,
    /// The swap and socket pin scenarios (cgroup v2 kernels; `status`, `scenarios`).
    pub pins: Option<Value>,
    /// The cgroup v2 `+memory` toggle, per family (`status`, `families`).
    pub toggle: Option<Value>,
    /// The ID exhaustion scenario (`--scenario exhaustion`): checks, figures, series.
    pub exhaustion: Option<Value>,
    /// Files the guest sent (`artifact` records: name, text), written beside the logs.
    #[serde(skip)]
    pub artifacts: Vec<(String, String)>,
    pub errors: Vec<String>,
    /// `seconds step` for every progress step, for finding slow steps.
    pub timeline: Vec<String>,
    pub done: Option<bool>,
    pub console: Option<String>,
    #[serde(skip)]
    pub tail: VecDeque<String>,
}

/// What a record means for the progress display.
pub struct Step {
    pub family: Option<String>,
    pub step: String,
}

impl RunResult {
    /// The run's architecture: its own record, else what its release says
    /// (`-arm64`), else amd64 (every run saved before arm64 ones was).
    pub fn arch_name(&self) -> &str {
        if !self.arch.is_empty() {
            &self.arch
        } else if self.release.ends_with("-arm64") {
            "arm64"
        } else {
            "amd64"
        }
    }

    /// Feeds one console/stdout line; returns a progress step if it was one.
    pub fn line(&mut self, line: &str, elapsed_s: f64) -> Option<Step> {
        let line = line.trim_end_matches(['\r', '\n']);
        if self.tail.len() == TAIL {
            self.tail.pop_front();
        }
        // Protocol records can be large (the exhaustion scenario's report, series).
        self.tail.push_back(line.chars().take(TAIL_LINE).collect());
        if line.contains("Kernel panic - not syncing") && self.failure.is_none() {
            self.failure = Some(format!(
                "kernel panic: {}",
                line.split("Kernel panic - ").nth(1).unwrap_or(line)
            ));
            return Some(Step {
                family: None,
                step: "kernel panic".into(),
            });
        }
        let (_, json) = line.split_once(MARKER)?;
        let v: Value = match serde_json::from_str(json) {
            Ok(v) => v,
            Err(e) => {
                self.errors
                    .push(format!("garbled protocol line ({e}): {json:.120}"));
                return None;
            }
        };
        self.ready_s.get_or_insert(elapsed_s);
        let step = self.record(v)?;
        let what = match &step.family {
            Some(f) => format!("{f}: {}", step.step),
            None => step.step.clone(),
        };
        self.timeline.push(format!("{elapsed_s:.1} {what}"));
        Some(step)
    }

    fn record(&mut self, v: Value) -> Option<Step> {
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        match v["t"].as_str().unwrap_or("") {
            "env" => {
                self.kernel = s("kernel");
                self.cgroup = s("cgroup");
                self.kmem = v["kmem"].as_bool();
            }
            "step" => {
                return Some(Step {
                    family: v["family"].as_str().map(str::to_string),
                    step: s("step"),
                })
            }
            "probes" => {
                self.probes = Some(v["report"].clone());
                self.perf_probes = (!v["perf"].is_null()).then(|| v["perf"].clone());
            }
            "symbols" => {
                self.symbols = v["symbols"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            }
            "cell" => {
                let step = format!("{} {}", s("family"), s("status"));
                self.cells.push(v);
                return Some(Step { family: None, step });
            }
            "compare" => self.compare = v["points"].as_array().cloned().unwrap_or_default(),
            "kernel_log" => self.kernel_log = Some(v),
            "census" => {
                let step = format!("census {}", s("status"));
                self.census = Some(v);
                return Some(Step { family: None, step });
            }
            "pins" => {
                let step = format!("pins {}", s("status"));
                self.pins = Some(v);
                return Some(Step { family: None, step });
            }
            "toggle" => {
                let step = format!("toggle {}", s("status"));
                self.toggle = Some(v);
                return Some(Step { family: None, step });
            }
            "exhaustion" => {
                let step = format!("exhaustion {}", s("status"));
                self.exhaustion = Some(v);
                return Some(Step { family: None, step });
            }
            "artifact" => {
                // Only a plain file name: the guest does not choose where it goes.
                let name = s("name");
                if !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.') {
                    self.artifacts.push((name, s("text")));
                }
            }
            "error" => self.errors.push(s("msg")),
            "done" => self.done = v["ok"].as_bool(),
            _ => {}
        }
        None
    }

    pub fn cell(&self, family: &str) -> Option<&Value> {
        self.cells.iter().find(|c| c["family"] == family)
    }

    /// The verdict: the guest finished and said ok, every family that had to
    /// run has a passing cell, and the census check did not fail.
    pub fn finish(&mut self) {
        if self.failure.is_none() {
            if self.done.is_none() {
                self.failure = Some("the guest stopped before reporting its result".into());
            } else if let Some(e) = self.errors.first() {
                self.failure = Some(format!("guest error: {e}"));
            }
        }
        let missing: Vec<&str> = self
            .families
            .iter()
            .filter(|f| self.cell(f).is_none())
            .map(String::as_str)
            .collect();
        if !missing.is_empty() && self.failure.is_none() {
            self.failure = Some(format!("no result for {}", missing.join(", ")));
        }
        if let (None, Some(x)) = (&self.failure, &self.exhaustion) {
            if x["status"] != "pass" {
                let why: Vec<&str> = x["errors"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                self.failure = Some(format!("exhaustion: {}", why.join("; ")));
            }
        } else if self.failure.is_none() && self.done.is_some() {
            match &self.census {
                None => self.failure = Some("no census result".into()),
                Some(c) if c["status"] == "fail" => {
                    let why: Vec<&str> = c["errors"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    self.failure = Some(format!("census: {}", why.join("; ")));
                }
                Some(_) => {}
            }
        }
        if let (None, Some(p)) = (&self.failure, &self.pins) {
            if p["status"] == "fail" {
                self.failure = Some(format!("pin scenarios: {}", pins_errors(p).join("; ")));
            }
        }
        if let (None, Some(t)) = (&self.failure, &self.toggle) {
            if t["status"] == "fail" {
                let why: Vec<String> = t["families"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|f| {
                        let fam = f["family"].as_str().unwrap_or("?").to_string();
                        f["errors"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_str)
                            .map(move |e| format!("{fam}: {e}"))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                self.failure = Some(format!("memory toggle: {}", why.join("; ")));
            }
        }
        // "unavailable": the probe table means no hook of the family for this
        // kernel (the guest checked every point's reasons), not a failure.
        let cells_ok = self.families.iter().all(|f| {
            self.cell(f)
                .is_some_and(|c| c["status"] == "pass" || c["status"] == "unavailable")
        });
        self.ok = self.failure.is_none() && self.done == Some(true) && cells_ok;
    }
}

/// `scenario: error` for every error of the pin scenarios.
pub fn pins_errors(p: &Value) -> Vec<String> {
    p["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            let name = s["name"].as_str().unwrap_or("?").to_string();
            s["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(move |e| format!("{name}: {e}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A finished run with one tracepoint cell whose `offline` point has `status`
/// (tests of the matrix and README renderers).
#[cfg(test)]
pub(crate) fn sample_run(release: &str, boot: &str, status: &str) -> RunResult {
    let pts = |kmem: u64| {
        serde_json::json!({
            "alloc": {"status": "pass", "expected": 20, "got": 20},
            "online": {"status": "pass", "expected": 20, "got": 20},
            "offline": {"status": status, "expected": 20, "got": 0},
            "released": {"status": "pass", "expected": 20, "got": 20},
            "free": {"status": "pass", "expected": 20, "got": 20},
            "id_release": {"status": "blind", "expected": 0, "got": 0},
            "kmem_activate": {"status": "pass", "expected": kmem, "got": kmem},
        })
    };
    let mut r = RunResult {
        label: format!("{release} {boot}"),
        release: release.into(),
        kernel: release.into(),
        boot: boot.into(),
        cgroup: "v1".into(),
        families: vec!["tracepoint".into()],
        cells: vec![serde_json::json!({"family": "tracepoint", "status": status,
                           "points": pts(if boot == "nokmem" { 0 } else { 20 }),
                           "checks": [{"name": "memcg IDs", "ok": true}]})],
        done: Some(status == "pass"),
        census: Some(serde_json::json!({"status": "pass", "errors": [],
            "seen": {"pins": [{"name": "tmpfs-pin", "pin": "tmpfs"},
                              {"name": "cache-pin", "pin": "page_cache"}], "freed": true}})),
        ..RunResult::default()
    };
    r.finish();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut RunResult, lines: &[&str]) {
        for l in lines {
            r.line(l, 1.0);
        }
    }

    #[test]
    fn a_family_unavailable_by_the_table_passes_one_unsupported_fails() {
        for (status, ok) in [("unavailable", true), ("unsupported", false)] {
            let mut r = RunResult {
                families: vec!["fentry".into(), "kprobe".into()],
                ..RunResult::default()
            };
            let cell = format!(r#"@@KMT {{"t":"cell","family":"fentry","status":"{status}"}}"#);
            feed(
                &mut r,
                &[
                    &cell,
                    r#"@@KMT {"t":"cell","family":"kprobe","status":"pass"}"#,
                    r#"@@KMT {"t":"census","status":"pass","errors":[]}"#,
                    r#"@@KMT {"t":"done","ok":true}"#,
                ],
            );
            r.finish();
            assert_eq!(r.ok, ok, "{status}: {r:?}");
        }
    }

    #[test]
    fn protocol_lines_are_found_between_kernel_messages() {
        let mut r = RunResult {
            families: vec!["kprobe".into()],
            ..RunResult::default()
        };
        feed(
            &mut r,
            &[
                "[    2.1] virtio_blk virtio1: [vda] 32768 512-byte logical blocks",
                r#"@@KMT {"t":"env","kernel":"6.1.0-57-amd64","cgroup":"v1","kmem":true}"#,
                r#"junk before @@KMT {"t":"step","family":"kprobe","step":"churn"}"#,
                r#"@@KMT {"t":"cell","family":"kprobe","status":"pass"}"#,
                r#"@@KMT {"t":"census","status":"pass","errors":[]}"#,
                r#"@@KMT {"t":"done","ok":true}"#,
            ],
        );
        r.finish();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.kernel, "6.1.0-57-amd64");
        assert_eq!(r.kmem, Some(true));
    }

    #[test]
    fn red_cells_panics_and_missing_families_fail_the_run() {
        let mut r = RunResult {
            families: vec!["kprobe".into(), "fentry".into()],
            ..RunResult::default()
        };
        feed(
            &mut r,
            &[
                r#"@@KMT {"t":"cell","family":"kprobe","status":"fail"}"#,
                r#"@@KMT {"t":"done","ok":false}"#,
            ],
        );
        r.finish();
        assert!(!r.ok);
        assert_eq!(r.failure.as_deref(), Some("no result for fentry"));

        let mut r = RunResult::default();
        feed(
            &mut r,
            &["[ 3.2] Kernel panic - not syncing: Attempted to kill init!"],
        );
        r.finish();
        assert_eq!(
            r.failure.as_deref(),
            Some("kernel panic: not syncing: Attempted to kill init!")
        );
    }

    #[test]
    fn garbled_lines_are_errors_not_crashes() {
        let mut r = RunResult::default();
        feed(
            &mut r,
            &[
                r#"@@KMT {"t":"cell","fam"#,
                r#"@@KMT {"t":"done","ok":true}"#,
            ],
        );
        r.finish();
        assert!(!r.ok);
        assert!(r
            .failure
            .unwrap()
            .starts_with("guest error: garbled protocol line"));
    }

    #[test]
    fn a_failed_or_missing_census_fails_the_run() {
        let cell = r#"@@KMT {"t":"cell","family":"tracepoint","status":"pass"}"#;
        let run = |lines: &[&str]| {
            let mut r = RunResult {
                families: vec!["tracepoint".into()],
                ..RunResult::default()
            };
            feed(&mut r, lines);
            r.finish();
            r
        };
        let r = run(&[
            cell,
            r#"@@KMT {"t":"census","status":"fail","errors":["tmpfs-pin: pin page_cache (expected tmpfs)"]}"#,
            r#"@@KMT {"t":"done","ok":false}"#,
        ]);
        assert!(!r.ok);
        assert_eq!(
            r.failure.as_deref(),
            Some("census: tmpfs-pin: pin page_cache (expected tmpfs)")
        );
        let r = run(&[cell, r#"@@KMT {"t":"done","ok":true}"#]);
        assert_eq!(r.failure.as_deref(), Some("no census result"));
        let r = run(&[
            cell,
            r#"@@KMT {"t":"census","status":"unsupported","errors":[]}"#,
            r#"@@KMT {"t":"done","ok":true}"#,
        ]);
        assert!(r.ok, "{r:?}");
    }
}
