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

/// A wall-clock time as RFC 3339 with nanoseconds, written without a `String`.
#[derive(Clone, Copy)]
pub struct Rfc3339(pub std::time::SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_rfc3339_nanos(self.0).fmt(f)
    }
}

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A kernel address as `0x…`, written without a `String`.
#[derive(Clone, Copy)]
pub struct Hex(pub u64);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:#x}", self.0))
    }
}

/// One event line. [`JsonEvent::write_to`] writes what `serde_json` makes of
/// it, faster (`jsonw`).
#[derive(Serialize)]
pub struct JsonEvent<'a> {
    pub kind: &'static str,
    pub ts: Rfc3339,
    pub ts_ns: u64,
    pub memcg_id: Option<u32>,
    pub memcg_addr: Option<Hex>,
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

impl JsonEvent<'_> {
    /// The line without its newline, byte for byte what `serde_json` writes.
    pub fn write_to<W: Write>(&self, w: &mut W) -> std::io::Result<()> {
        use super::jsonw::{boolean, opt_string, opt_uint, owner, string, uint};
        w.write_all(b"{\"kind\":")?;
        string(w, self.kind)?;
        // RFC 3339 and hex never need escaping.
        write!(w, ",\"ts\":\"{}\",\"ts_ns\":", self.ts)?;
        uint(w, self.ts_ns)?;
        w.write_all(b",\"memcg_id\":")?;
        opt_uint(w, self.memcg_id.map(u64::from))?;
        w.write_all(b",\"memcg_addr\":")?;
        match self.memcg_addr {
            Some(a) => write!(w, "\"{:#x}\"", a.0)?,
            None => w.write_all(b"null")?,
        }
        w.write_all(b",\"cgroup_id\":")?;
        opt_uint(w, self.cgroup_id)?;
        w.write_all(b",\"parent_cgroup_id\":")?;
        opt_uint(w, self.parent_cgroup_id)?;
        w.write_all(b",\"hierarchy_id\":")?;
        uint(w, self.hierarchy_id.into())?;
        w.write_all(b",\"level\":")?;
        uint(w, self.level.into())?;
        w.write_all(b",\"name\":")?;
        string(w, self.name)?;
        w.write_all(b",\"path\":")?;
        opt_string(w, self.path)?;
        w.write_all(b",\"pid\":")?;
        uint(w, self.pid.into())?;
        w.write_all(b",\"tgid\":")?;
        uint(w, self.tgid.into())?;
        w.write_all(b",\"comm\":")?;
        string(w, self.comm)?;
        w.write_all(b",\"ppid\":")?;
        uint(w, self.ppid.into())?;
        w.write_all(b",\"pcomm\":")?;
        string(w, self.pcomm)?;
        w.write_all(b",\"hook\":")?;
        opt_string(w, self.hook)?;
        w.write_all(b",\"inferred\":")?;
        boolean(w, self.inferred)?;
        w.write_all(b",\"kmem_active\":")?;
        boolean(w, self.kmem_active)?;
        w.write_all(b",\"state\":")?;
        opt_string(w, self.state.map(super::jsonw::state))?;
        for (key, v) in [
            (&b",\"mem_bytes\":"[..], self.mem_bytes),
            (b",\"kmem_bytes\":", self.kmem_bytes),
            (b",\"swap_bytes\":", self.swap_bytes),
        ] {
            if let Some(v) = v {
                w.write_all(key)?;
                uint(w, v)?;
            }
        }
        if let Some(a) = self.anomaly {
            w.write_all(b",\"anomaly\":")?;
            string(w, super::jsonw::anomaly(a))?;
        }
        w.write_all(b",\"owner\":")?;
        match &self.owner {
            Some(o) => owner(w, o)?,
            None => w.write_all(b"null")?,
        }
        if let Some(e) = self.entered_by {
            w.write_all(b",\"entered_by\":")?;
            string(w, e)?;
        }
        if let Some(t) = self.actor_tgid {
            w.write_all(b",\"actor_tgid\":")?;
            uint(w, t)?;
        }
        w.write_all(b"}")
    }
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
    lines: Lines,
}

/// What turns events into lines (apart from the writer, so a line can borrow
/// it while the writer takes it).
struct Lines {
    clock: Clock,
    hooks: HookLabels,
    page: u64,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(w: W, clock: Clock, hooks: HookLabels) -> Self {
        JsonOutput {
            w,
            lines: Lines {
                clock,
                hooks,
                page: page_size(),
            },
        }
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

impl Lines {
    /// The line of one event (`name`, `comm` and `pcomm` are the event's, decoded).
    fn line<'a>(
        &'a self,
        ev: &'a TraceEvent,
        applied: &'a Applied,
        owner: Option<&'a Attribution>,
        name: &'a str,
        comm: &'a str,
        pcomm: &'a str,
    ) -> JsonEvent<'a> {
        let c = ev.counters();
        let page = self.page;
        JsonEvent {
            kind: ev.kind.name(),
            ts: Rfc3339(self.clock.wall(ev.ts_ns())),
            ts_ns: ev.ts_ns(),
            memcg_id: applied.memcg_id.or(ev.memcg_id()),
            memcg_addr: applied.addr.or(ev.memcg_addr()).map(Hex),
            cgroup_id: ev.cgroup_key().map(|k| k.1),
            parent_cgroup_id: ev.cgroup_key().map(|_| ev.raw.parent_cgroup_id),
            hierarchy_id: ev.raw.hierarchy_id,
            level: ev.raw.level,
            name,
            path: applied.path.as_deref(),
            pid: ev.raw.pid,
            tgid: ev.raw.tgid,
            comm,
            ppid: ev.raw.ppid,
            pcomm,
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
        }
    }
}

impl<W: Write> Output for JsonOutput<W> {
    fn event(
        &mut self,
        ev: &TraceEvent,
        applied: &Applied,
        owner: Option<&Attribution>,
    ) -> Result<(), OutputError> {
        let (name, comm, pcomm) = (ev.name(), ev.comm(), ev.pcomm());
        let line = self.lines.line(ev, applied, owner, &name, &comm, &pcomm);
        line.write_to(&mut self.w)?;
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

    /// The same record as the summary, `"kind":"snapshot"`.
    fn interim(&mut self, summary: &Summary) -> Result<(), OutputError> {
        self.summary(summary)
    }

    fn note(&mut self, msg: &str) -> Result<(), OutputError> {
        eprintln!("kmem-trace: {msg}");
        Ok(())
    }

    /// A record in the stream (`{"kind":"drops",...}`), and the note on stderr.
    fn health(&mut self, h: &super::Health) -> Result<(), OutputError> {
        serde_json::to_writer(&mut self.w, h)?;
        self.w.write_all(b"\n")?;
        self.note(&h.to_string())
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

    /// SIGUSR1's snapshot: the summary so far as its own record, the run
    /// going on to the real summary.
    #[test]
    fn a_snapshot_is_the_summary_so_far_and_the_run_goes_on() {
        use crate::watch::Pipeline;
        let rec = Recording::read(std::path::Path::new(CHURN)).unwrap();
        let lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
        let mut out = JsonOutput::new(Vec::new(), Clock::from_offset(0), HookLabels::new());
        let mut pipe = Pipeline::new(lc, &mut out);
        let half = rec.events.len() / 2;
        let status = |pipe: &mut Pipeline, ts| pipe.status(0, "replay", Default::default(), ts);
        for ev in &rec.events[..half] {
            pipe.feed_event(ev).unwrap();
        }
        let st = status(&mut pipe, rec.events[half - 1].ts_ns()).unwrap();
        let snap = pipe.interim(st).unwrap();
        for ev in &rec.events[half..] {
            pipe.feed_event(ev).unwrap();
        }
        let st = status(&mut pipe, rec.events.last().unwrap().ts_ns()).unwrap();
        let end = pipe.finish(st).unwrap();
        drop(pipe);
        let text = String::from_utf8(out.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), rec.events.len() + 2);
        assert_eq!(lines[half]["kind"], "snapshot");
        assert_eq!(lines.last().unwrap()["kind"], "summary");
        let alloc = |v: &serde_json::Value| v["events"]["alloc"].as_u64().unwrap();
        assert!(alloc(&lines[half]) < alloc(lines.last().unwrap()));
        assert_eq!(alloc(&lines[half]), snap.events["alloc"]);
        assert_eq!(alloc(lines.last().unwrap()), end.events["alloc"]);
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

    /// Every line `write_to` makes is what `serde_json` makes of the same
    /// event: the recorded churn, and events with names to escape, counters,
    /// anomalies and a fully described owner.
    #[test]
    fn fast_lines_are_serde_json_lines() {
        use kmem_trace_common::{flags, Event};

        use crate::{
            attribution::{Attributor, ContainerMeta, Runtime},
            decode::decode_recording,
            lifecycle::Anomaly,
        };
        let mut labels = HookLabels::new();
        labels.insert(1, std::sync::Arc::from("tp_btf \"cgroup_mkdir\""));
        let out = JsonOutput::new(Vec::new(), Clock::from_offset(1 << 60), labels);
        let check = |ev: &TraceEvent, applied: &Applied, owner: Option<&Attribution>| {
            let (name, comm, pcomm) = (ev.name(), ev.comm(), ev.pcomm());
            let line = out.lines.line(ev, applied, owner, &name, &comm, &pcomm);
            let mut fast = Vec::new();
            line.write_to(&mut fast).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                serde_json::to_string(&line).unwrap()
            );
        };
        let (_, events) = decode_recording(&std::fs::read(CHURN).unwrap()).unwrap();
        let mut lc = Lifecycle::new(LifecycleConfig::default()).unwrap();
        let mut attr = Attributor::paths_only();
        for ev in &events {
            let applied = lc.apply(ev);
            let owner = attr.observe(&applied);
            check(ev, &applied, owner.as_deref());
        }
        let mut e = Event::ZERO;
        e.kind = EventKind::Offline as u32;
        e.hook = 1;
        e.memcg_addr = 0xffff_8880_0000_1000;
        e.cgroup_id = 9;
        e.flags = flags::MEM_COUNTER | flags::KMEM_COUNTER | flags::SWAP_COUNTER;
        e.mem_pages = 3;
        e.swap_pages = 5;
        let name = "q\"b\\s\u{1}\u{1f}\t\n\r\u{8}\u{c}\u{7f}é—\u{1F600}";
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e.name_len = name.len() as u16;
        e.comm[..3].copy_from_slice(b"a\"b");
        let ev = TraceEvent::from_raw(e).unwrap();
        let mut meta = ContainerMeta {
            source: Some(Runtime::Containerd),
            pod_name: Some("web\\1".into()),
            namespace: Some("shop".into()),
            container_name: Some("nginx".into()),
            image: Some("reg/x:\"1\"".into()),
            ..ContainerMeta::default()
        };
        let path = "/kubepods/burstable/pod5b2ae0e6-4d1c-4c35-9b8e-2f8f3a1e9c7d/\
                    4c1f0e5b9d2a7c3e8f6b1a0d9e8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c";
        let mut owner = Attribution::of_path(path);
        owner.meta = Some(Box::new(meta.clone()));
        for anomaly in [None, Some(Anomaly::MissedFree), Some(Anomaly::IdReused)] {
            let applied = Applied {
                addr: Some(0x1000),
                memcg_id: None,
                path: Some(std::sync::Arc::from(path)),
                state: Some(State::Dying),
                freed: None,
                anomaly,
            };
            check(&ev, &applied, Some(&owner));
            check(&ev, &applied, None);
        }
        meta.container_name = None;
        for p in [
            "/system.slice/cron.service",
            "/odd\"path",
            "/docker/4c1f0e5b9d2a",
        ] {
            let mut o = Attribution::of_path(p);
            o.meta = Some(Box::new(meta.clone()));
            let applied = Applied {
                addr: None,
                memcg_id: Some(1),
                path: None,
                state: None,
                freed: None,
                anomaly: Some(Anomaly::Untracked),
            };
            check(&ev, &applied, Some(&o));
        }
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
