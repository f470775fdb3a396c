//! Human output: a header line with the counts and one line per event. On a
//! terminal the header stays on top and the tail scrolls below it; when piped,
//! plain lines without escape codes, with the header repeated now and then.

use std::{collections::VecDeque, fmt::Write as _, io::Write};

use super::{
    page_size,
    text::{term, Term},
    Clock, HookLabels, Output, OutputError, Status, Summary,
};
use crate::{
    attribution::{Attribution, OwnerCounts},
    decode::TraceEvent,
    lifecycle::Applied,
};

pub struct LineOutput<W: Write> {
    w: W,
    clock: Clock,
    hooks: HookLabels,
    tty: bool,
    tail: VecDeque<String>,
    tail_len: usize,
    last_header: Option<String>,
    page: u64,
    /// Owner counts for the header (`owners pod 12 (3 dying), ...`).
    owners: String,
}

impl<W: Write> LineOutput<W> {
    /// `tty`: redraw a fixed header and tail with ANSI codes.
    pub fn new(w: W, clock: Clock, hooks: HookLabels, tty: bool) -> Self {
        LineOutput {
            w,
            clock,
            hooks,
            tty,
            tail: VecDeque::new(),
            tail_len: terminal_rows().saturating_sub(4).max(5),
            last_header: None,
            page: page_size(),
            owners: String::new(),
        }
    }

    pub fn into_inner(self) -> W {
        self.w
    }

    fn format_event(
        &self,
        ev: &TraceEvent,
        applied: &Applied,
        owner: Option<&Attribution>,
    ) -> String {
        let (id, path) = super::id_and_path(ev, applied);
        let mut s = format!(
            "{} {:<13} id={:<5} {}  pid {} ({}) <- {} ({})",
            self.clock.hms(ev.ts_ns()),
            ev.kind.name(),
            id,
            Term(&path),
            ev.raw.tgid,
            Term(&ev.comm()),
            ev.raw.ppid,
            Term(&ev.pcomm())
        );
        // Writing to a String cannot fail.
        let c = ev.counters();
        if let Some(m) = c.mem_pages {
            let _ = write!(s, "  mem={}", human_bytes(m * self.page));
        }
        if let Some(k) = c.kmem_pages {
            let _ = write!(s, " kmem={}", human_bytes(k * self.page));
        }
        if let Some(o) = owner {
            // The path already says it for plain paths.
            if o.owner.kind() != "path" {
                let _ = write!(s, "  [{}]", Term(&o.label()));
            }
        }
        if ev.inferred() {
            s.push_str("  (inferred)");
        }
        if let Some(a) = applied.anomaly {
            let _ = write!(s, "  [{a:?}]");
        }
        if let Some(h) = self.hooks.get(&ev.raw.hook) {
            if self.tty {
                let _ = write!(s, "  via {h}");
            }
        }
        s
    }

    fn header(&self, status: &Status) -> String {
        let mut h = Self::counts_header(status);
        if let Some(f) = &status.forecast {
            h.push_str("  ");
            h.push_str(&f.short());
        }
        if !self.owners.is_empty() {
            h.push_str("  ");
            // Owner labels come from workloads.
            h.push_str(&term(&self.owners));
        }
        h
    }

    fn counts_header(status: &Status) -> String {
        format!(
            "live {}  dying {}  zombies {}  IDs {}/{}  drops {}  hooks {}",
            status.counts.live,
            status.counts.dying,
            status.counts.zombies,
            status.counts.ids_in_use,
            status.counts.id_limit,
            status.drops,
            status.hook_family
        )
    }

    /// Adds a line to the terminal tail, dropping the oldest beyond its length.
    fn push_tail(&mut self, line: String) {
        if self.tail.len() >= self.tail_len {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn redraw(&mut self, header: &str) -> Result<(), OutputError> {
        // Home, clear screen, header in reverse video, then the tail.
        write!(self.w, "\x1b[H\x1b[2J\x1b[7m{header}\x1b[0m\r\n")?;
        for l in &self.tail {
            write!(self.w, "{l}\r\n")?;
        }
        self.w.flush()?;
        Ok(())
    }
}

impl<W: Write> Output for LineOutput<W> {
    fn event(
        &mut self,
        ev: &TraceEvent,
        applied: &Applied,
        owner: Option<&Attribution>,
    ) -> Result<(), OutputError> {
        let line = self.format_event(ev, applied, owner);
        if self.tty {
            self.push_tail(line);
        } else {
            writeln!(self.w, "{line}")?;
        }
        Ok(())
    }

    fn owners(&mut self, counts: &OwnerCounts) -> Result<(), OutputError> {
        self.owners = counts.render();
        Ok(())
    }

    fn status(&mut self, status: &Status) -> Result<(), OutputError> {
        let header = self.header(status);
        if self.tty {
            self.redraw(&header)?;
        } else if self.last_header.as_deref() != Some(&header) {
            writeln!(self.w, "# {header}")?;
            self.w.flush()?;
        }
        self.last_header = Some(header);
        Ok(())
    }

    fn summary(&mut self, s: &Summary) -> Result<(), OutputError> {
        let header = self.header(&s.status);
        if self.tty {
            self.redraw(&header)?;
        }
        let mut kinds: Vec<_> = s.events.iter().filter(|(_, n)| **n > 0).collect();
        kinds.sort();
        let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
        // "summary" at the end, "snapshot" for SIGUSR1's (`interim`).
        writeln!(
            self.w,
            "{} after {:.1}s: {header}",
            s.kind, s.status.elapsed_s
        )?;
        writeln!(
            self.w,
            "events: {}",
            if kinds.is_empty() {
                "none".into()
            } else {
                kinds.join(", ")
            }
        )?;
        if s.offline_to_free.count > 0 {
            writeln!(
                self.w,
                "offline->free: n={} p50={} p99={} max={}",
                s.offline_to_free.count,
                human_us(s.offline_to_free.p50_us),
                human_us(s.offline_to_free.p99_us),
                human_us(s.offline_to_free.max_us)
            )?;
        }
        if s.status.drops > 0 {
            writeln!(
                self.w,
                "WARNING: {} events were dropped (event buffer full); raise --ring-buffer-size (per CPU with perf buffers)",
                s.status.drops
            )?;
        }
        if s.bad_records > 0 {
            writeln!(
                self.w,
                "WARNING: {} records could not be decoded",
                s.bad_records
            )?;
        }
        self.w.flush()?;
        Ok(())
    }

    fn interim(&mut self, s: &Summary) -> Result<(), OutputError> {
        self.summary(s)
    }

    fn note(&mut self, msg: &str) -> Result<(), OutputError> {
        // Notes quote paths and names.
        let msg = term(msg);
        if self.tty {
            self.push_tail(format!("! {msg}"));
        } else {
            writeln!(self.w, "! {msg}")?;
        }
        Ok(())
    }
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn human_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

fn terminal_rows() -> usize {
    // SAFETY: winsize is plain data; ioctl fills it or fails.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0 {
            ws.ws_row as usize
        } else {
            24
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(16 << 20), "16.0MiB");
        assert_eq!(human_us(1500), "1.5ms");
    }

    #[test]
    fn the_terminal_tail_stays_bounded_with_notes() {
        let mut raw = kmem_trace_common::Event::ZERO;
        raw.kind = kmem_trace_common::EventKind::Online as u32;
        let ev = TraceEvent::from_raw(raw).unwrap();
        let applied = Applied {
            addr: None,
            memcg_id: None,
            path: None,
            state: None,
            freed: None,
            anomaly: None,
        };
        let mut out = LineOutput::new(Vec::new(), Clock::from_offset(0), HookLabels::new(), true);
        for _ in 0..out.tail_len {
            out.event(&ev, &applied, None).unwrap();
        }
        out.note("3 events dropped").unwrap();
        for _ in 0..10 {
            out.event(&ev, &applied, None).unwrap();
        }
        assert_eq!(out.tail.len(), out.tail_len);
    }

    #[test]
    fn hostile_process_and_cgroup_names_are_escaped() {
        use crate::{attribution::Attribution, outputs::text};
        for (tty, h) in [
            (false, 0),
            (true, 1),
            (false, 2),
            (false, 3),
            (false, 5),
            (true, 6),
        ] {
            let name = text::HOSTILE[h];
            let mut raw = kmem_trace_common::Event::ZERO;
            raw.kind = kmem_trace_common::EventKind::Offline as u32;
            let n = name.len().min(raw.comm.len() - 1);
            raw.comm[..n].copy_from_slice(&name.as_bytes()[..n]);
            // Invalid UTF-8 in the parent's name.
            raw.pcomm[..3].copy_from_slice(b"\xff\x1b[");
            let ev = TraceEvent::from_raw(raw).unwrap();
            let path = format!("/kubepods/pod1/{name}");
            let applied = Applied {
                addr: None,
                memcg_id: Some(7),
                path: Some(path.as_str().into()),
                state: None,
                freed: None,
                anomaly: None,
            };
            let owner = Attribution::of_path(&format!("/kubepods/burstable/pod1/{name}"));
            let mut out =
                LineOutput::new(Vec::new(), Clock::from_offset(0), HookLabels::new(), tty);
            out.event(&ev, &applied, Some(&owner)).unwrap();
            out.note(&format!("history: {name}")).unwrap();
            let line = out.format_event(&ev, &applied, Some(&owner));
            text::assert_inert(&line);
            if !tty {
                let all = String::from_utf8(out.into_inner()).unwrap();
                text::assert_inert(&all);
                assert!(
                    all.contains("\\x1b")
                        || all.contains("\\u{")
                        || all.contains("\\x0d")
                        || all.contains("\\x9b"),
                    "{all}"
                );
            } else {
                assert!(out.tail.iter().all(|l| !l.chars().any(text::hostile)));
            }
        }
    }
}
