//! `--json`: exactly one JSON object per line per event, then one summary object.

use std::io::Write;

use kmem_trace_common::EventKind;
use serde::Serialize;

use super::{page_size, Clock, HookLabels, Output, OutputError, Status, Summary};
use crate::{
    attribution::{Attribution, OwnerView},
    decode::TraceEvent,
    lifecycle::{Applied, State},
};

/// One event line.
#[derive(Serialize)]
pub struct JsonEvent<'a> {
    pub kind: &'static str,
    pub ts: String,
    pub ts_ns: u64,
    pub memcg_id: Option<u32>,
    pub memcg_addr: Option<String>,
    pub cgroup_id: Option<u64>,
    pub parent_cgroup_id: Option<u64>,
    pub hierarchy_id: u32,
    pub level: u32,
    pub name: &'a str,
    pub path: Option<&'a str>,
    pub pid: u32,
    pub tgid: u32,
    pub comm: &'a str,
    pub ppid: u32,
    pub pcomm: &'a str,
    pub hook: Option<&'a str>,
    pub inferred: bool,
    pub kmem_active: bool,
    pub state: Option<State>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kmem_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anomaly: Option<crate::lifecycle::Anomaly>,
    /// Who the memcg belongs to (null until its path is known).
    pub owner: Option<OwnerView<'a>>,
    /// Resident events: how the process entered (`attach`, `fork`, `exec`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entered_by: Option<&'static str>,
    /// Resident events: tgid of the task that moved or forked it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_tgid: Option<u64>,
}

/// How a resident entered its memcg, from the event flags.
fn entered_by(ev: &TraceEvent) -> Option<&'static str> {
    use kmem_trace_common::flags;
    if ev.kind != EventKind::Resident {
        return None;
    }
    Some(if ev.has(flags::EXEC) {
        "exec"
    } else if ev.has(flags::FORK) {
        "fork"
    } else {
        "attach"
    })
}

pub struct JsonOutput<W: Write> {
    w: W,
    clock: Clock,
    hooks: HookLabels,
    page: u64,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(w: W, clock: Clock, hooks: HookLabels) -> Self {
        JsonOutput {
            w,
            clock,
            hooks,
            page: page_size(),
        }
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

impl<W: Write> Output for JsonOutput<W> {
    fn event(
        &mut self,
        ev: &TraceEvent,
        applied: &Applied,
        owner: Option<&Attribution>,
    ) -> Result<(), OutputError> {
        let name = ev.name();
        let comm = ev.comm();
        let pcomm = ev.pcomm();
        let c = ev.counters();
        let page = self.page;
        let line = JsonEvent {
            kind: ev.kind.name(),
            ts: self.clock.rfc3339(ev.ts_ns()),
            ts_ns: ev.ts_ns(),
            memcg_id: applied.memcg_id.or(ev.memcg_id()),
            memcg_addr: applied.addr.or(ev.memcg_addr()).map(|a| format!("{a:#x}")),
            cgroup_id: ev.cgroup_key().map(|k| k.1),
            parent_cgroup_id: ev.cgroup_key().map(|_| ev.raw.parent_cgroup_id),
            hierarchy_id: ev.raw.hierarchy_id,
            level: ev.raw.level,
            name: &name,
            path: applied.path.as_deref(),
            pid: ev.raw.pid,
            tgid: ev.raw.tgid,
            comm: &comm,
            ppid: ev.raw.ppid,
            pcomm: &pcomm,
            hook: self.hooks.get(&ev.raw.hook).map(|s| &**s),
            inferred: ev.inferred(),
            kmem_active: ev.has(kmem_trace_common::flags::KMEM_ACTIVE),
            state: applied.state,
            mem_bytes: c.mem_pages.map(|p| p * page),
            kmem_bytes: c.kmem_pages.map(|p| p * page),
            swap_bytes: c.swap_pages.map(|p| p * page),
            anomaly: applied.anomaly,
            owner: owner.map(Attribution::view),
            entered_by: entered_by(ev),
            actor_tgid: (ev.kind == EventKind::Resident).then_some(ev.raw.aux),
        };
        serde_json::to_writer(&mut self.w, &line)?;
        self.w.write_all(b"\n")?;
        Ok(())
    }

    fn status(&mut self, _status: &Status) -> Result<(), OutputError> {
        // Status lines would break "one object per event"; the summary carries them.
        self.w.flush()?;
        Ok(())
    }

    fn summary(&mut self, summary: &Summary) -> Result<(), OutputError> {
        serde_json::to_writer(&mut self.w, summary)?;
        self.w.write_all(b"\n")?;
        self.w.flush()?;
        Ok(())
    }

    fn note(&mut self, msg: &str) -> Result<(), OutputError> {
        eprintln!("kmem-trace: {msg}");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        lifecycle::{Lifecycle, LifecycleConfig},
        outputs::line::LineOutput,
        watch::{replay, Recording},
    };

    const CHURN: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/churn-6.18-v1.kmt"
    );

    #[test]
    fn replay_prints_one_object_per_event_then_a_summary() {
        let lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
        let mut out = JsonOutput::new(Vec::new(), Clock::from_offset(0), HookLabels::new());
        replay(
            &Recording::read(std::path::Path::new(CHURN)).unwrap(),
            lc,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 49);
        for e in &lines[..48] {
            for field in ["kind", "ts", "memcg_id", "cgroup_id", "path", "pid", "comm"] {
                assert!(e.get(field).is_some(), "{field} missing in {e}");
            }
        }
        let offline = lines.iter().find(|e| e["kind"] == "offline").unwrap();
        assert!(offline["mem_bytes"].as_u64().is_some());
        assert!(offline["path"]
            .as_str()
            .unwrap()
            .starts_with("/kmem-trace-fixture-"));
        let summary = lines.last().unwrap();
        assert_eq!(summary["kind"], "summary");
        assert_eq!(summary["dying"], 3);
        assert_eq!(summary["events"]["alloc"], 9);
        assert_eq!(summary["drops"], 0);
    }

    #[test]
    fn piped_line_output_has_no_escape_codes() {
        let lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
        let mut out = LineOutput::new(Vec::new(), Clock::from_offset(0), HookLabels::new(), false);
        replay(
            &Recording::read(std::path::Path::new(CHURN)).unwrap(),
            lc,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        assert!(!text.contains('\x1b'));
        assert!(text
            .lines()
            .any(|l| l.contains(" offline ") && l.contains("/c3")));
        assert!(text.contains("summary after"));
    }

    #[test]
    fn residents_say_how_they_entered_and_events_carry_the_owner() {
        use kmem_trace_common::{flags, Event};
        let mut e = Event::ZERO;
        e.kind = EventKind::Resident as u32;
        e.flags = flags::EXEC;
        e.memcg_addr = 0x1000;
        e.aux = 77;
        let ev = TraceEvent::from_raw(e).unwrap();
        let applied = crate::lifecycle::Applied {
            addr: Some(0x1000),
            memcg_id: Some(3),
            path: Some(std::sync::Arc::from("/system.slice/cron.service")),
            state: Some(State::Live),
            freed: None,
            anomaly: None,
        };
        let owner = Attribution::of_path("/system.slice/cron.service");
        let mut out = JsonOutput::new(Vec::new(), Clock::from_offset(0), HookLabels::new());
        out.event(&ev, &applied, Some(&owner)).unwrap();
        out.event(&ev, &applied, None).unwrap();
        let text = String::from_utf8(out.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["entered_by"], "exec");
        assert_eq!(lines[0]["actor_tgid"], 77);
        assert_eq!(lines[0]["owner"]["kind"], "systemd");
        assert_eq!(lines[0]["owner"]["unit"], "cron.service");
        assert!(lines[1]["owner"].is_null());
    }
}
