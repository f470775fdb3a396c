//! `kmem-trace census` output: a human table of the dying memcgs (or all of
//! them) with their pin cause, or one JSON document. Reads a `Census`, never
//! changes it.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use serde::Serialize;

use super::{Census, CensusConfig, CensusError, PinCause, Source};
use crate::{
    cli::CensusArgs,
    lifecycle::{Memcg, State},
    outputs::{line::human_bytes, page_size, text::Term},
};

/// One memcg in the JSON output.
#[derive(Serialize)]
struct Entry<'a> {
    memcg_id: u32,
    addr: String,
    state: State,
    path: &'a str,
    level: u32,
    cgroup_id: u64,
    kmem_active: bool,
    id_released: bool,
    mem_bytes: Option<u64>,
    kmem_bytes: Option<u64>,
    swap_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pin: Option<PinCause>,
    /// The pin cause comes from the memcg's own counters (`own_pages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pin_exact: Option<bool>,
    /// The memcg's own page-state counters in pages, where the kernel's
    /// layout lets the census program read them.
    #[serde(skip_serializing_if = "Option::is_none")]
    own_pages: Option<&'a super::OwnStats>,
}

#[derive(Serialize)]
struct Doc<'a> {
    kind: &'static str,
    #[serde(flatten)]
    census: &'a Census,
    consistent: bool,
    memcgs: Vec<Entry<'a>>,
}

fn entry<'a>(c: &'a Census, m: &'a Memcg, page: u64) -> Entry<'a> {
    let k = m.census_counters().unwrap_or_default();
    Entry {
        memcg_id: m.memcg_id,
        addr: format!("{:#x}", m.addr),
        state: m.state,
        path: &m.path,
        level: m.level,
        cgroup_id: m.cgroup_id,
        kmem_active: m.kmem_active,
        id_released: m.id_released,
        mem_bytes: k.mem_pages.map(|p| p * page),
        kmem_bytes: k.kmem_pages.map(|p| p * page),
        swap_bytes: k.swap_pages.map(|p| p * page),
        pin: c.pins.get(&m.addr).map(|p| p.cause),
        pin_exact: c.pins.get(&m.addr).map(|p| p.exact),
        own_pages: c.own.get(&m.addr),
    }
}

/// The census as one JSON document (every memcg, live and dying).
pub fn json(c: &Census, w: &mut dyn Write) -> io::Result<()> {
    let page = page_size();
    let doc = Doc {
        kind: "census",
        census: c,
        consistent: c.consistent(),
        memcgs: c.memcgs.iter().map(|m| entry(c, m, page)).collect(),
    };
    serde_json::to_writer(&mut *w, &doc)?;
    writeln!(w)
}

/// Human output: totals, reconciliation, then the dying memcgs (`all`: every memcg).
pub fn text(c: &Census, all: bool, w: &mut dyn Write) -> io::Result<()> {
    let page = page_size();
    let h = &c.hierarchy;
    let source = match c.source {
        Source::BpfIterator => "BPF iterator".to_string(),
        Source::CountsOnly => format!(
            "COUNTS ONLY (no BPF census: {})",
            c.fallback.as_deref().unwrap_or("unavailable")
        ),
    };
    writeln!(
        w,
        "census of {} (cgroup {}, hierarchy {}): {source}",
        h.mount.display(),
        h.version.name(),
        h.hierarchy_id
    )?;
    let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
    writeln!(
        w,
        "  memcgs {}: {} online, {} dying",
        n(c.totals.memcgs),
        n(c.totals.online),
        n(c.totals.dying)
    )?;
    if let Some(b) = c.dying_basis {
        writeln!(w, "  dying counted as {}", b.label())?;
    }
    if let Some(t) = &c.timing {
        writeln!(
            w,
            "  walk {} µs in the kernel, {:.1} ms in all (load {:.1} ms, BTF {:.1} ms)",
            t.walk_us,
            t.total_us as f64 / 1e3,
            t.load_us as f64 / 1e3,
            t.btf_us as f64 / 1e3
        )?;
    }
    for ch in &c.checks {
        writeln!(
            w,
            "  {} {}: census {}, kernel {}{}",
            if ch.matches { "ok      " } else { "MISMATCH" },
            ch.what,
            ch.census,
            ch.kernel,
            ch.note
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        )?;
    }
    for p in &c.problems {
        writeln!(w, "  WARNING: {}", Term(p))?;
    }
    if c.source == Source::CountsOnly {
        return Ok(());
    }
    let list: Vec<&Memcg> = c
        .memcgs
        .iter()
        .filter(|m| all || m.state == State::Dying)
        .collect();
    if list.is_empty() {
        writeln!(w, "no dying memcgs")?;
        return Ok(());
    }
    writeln!(
        w,
        "{:<6} {:<18} {:<6} {:>9} {:>9} {:>9}  {:<22} PATH",
        "ID", "ADDRESS", "STATE", "MEM", "KMEM", "SWAP", "PIN"
    )?;
    let b = |v: Option<u64>| {
        v.map(|p| human_bytes(p * page))
            .unwrap_or_else(|| "-".into())
    };
    for m in list {
        let k = m.census_counters().unwrap_or_default();
        // The kernel zeroes `memcg->id.id` when it releases the ID (6.x).
        let id = if m.id_released && m.memcg_id == 0 {
            "-".to_string()
        } else if m.id_released {
            format!("({})", m.memcg_id)
        } else {
            m.memcg_id.to_string()
        };
        writeln!(
            w,
            "{:<6} {:<18} {:<6} {:>9} {:>9} {:>9}  {:<22} {}",
            id,
            format!("{:#x}", m.addr),
            match m.state {
                State::Live => "online",
                State::Dying => "dying",
                State::Freed => "freed",
            },
            b(k.mem_pages),
            b(k.kmem_pages),
            b(k.swap_pages),
            c.pins.get(&m.addr).map(|p| p.cause.name()).unwrap_or(""),
            Term(&m.path)
        )?;
    }
    let mut causes: Vec<(PinCause, usize)> = Vec::new();
    for p in c.pins.values() {
        match causes.iter_mut().find(|(k, _)| *k == p.cause) {
            Some((_, n)) => *n += 1,
            None => causes.push((p.cause, 1)),
        }
    }
    causes.sort();
    if !causes.is_empty() {
        let exact = c.pins.values().filter(|p| p.exact).count();
        writeln!(
            w,
            "pinned by ({exact} of {} from the memcg's own counters; the rest approximate, split by the nearest live ancestor's memory.stat):",
            c.pins.len()
        )?;
        for (cause, n) in causes {
            writeln!(w, "  {n:>6} {:<22} {}", cause.name(), cause.remedy())?;
        }
    }
    writeln!(
        w,
        "(ID - or in parentheses: already released to the kernel's ID pool)"
    )?;
    Ok(())
}

/// `kmem-trace census`: exit 0, also for counts only (the output says so).
pub fn command(args: &CensusArgs) -> Result<ExitCode, CensusError> {
    let cfg = CensusConfig {
        host_root: args.host_root.clone(),
        btf: args.btf.clone(),
        counts_only: args.counts_only,
    };
    let c = super::take(&cfg)?;
    let stdout = io::stdout();
    let mut w = io::BufWriter::new(stdout.lock());
    let r = if args.json {
        json(&c, &mut w)
    } else {
        text(&c, args.all, &mut w)
    };
    r.and_then(|_| w.flush())
        .map_err(|source| CensusError::Io {
            path: "stdout".into(),
            source,
        })?;
    Ok(ExitCode::SUCCESS)
}
