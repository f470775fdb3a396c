//! Draws the live view from a [`Model`] with ratatui widgets: a title line,
//! gauges (live, dying, zombies; ID usage with the forecast; drops and hooks),
//! the owner table beside a sparkline of the dying count, the event tail and a
//! key line. Below 32 rows the gauges fold into two lines of text and below
//! 120 columns the sparkline goes, so 80×24 keeps a usable owner table and
//! tail. Every name is escaped and fitted to its column ([`fit`]). Pure
//! drawing into a frame, so a `TestBackend` renders it in tests.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Gauge, List, ListItem, Paragraph, Row, Sparkline, Table, TableState},
    Frame,
};

use super::{
    fit,
    model::Model,
    owners::{LineKind, OwnerLine},
    tail::{fit_owner, TailLine},
};
use crate::outputs::{line::human_bytes, text::term};

/// Below this height the gauges become two lines of text.
const COMPACT_ROWS: u16 = 32;
/// From this width the sparkline sits beside the owner table.
const SPARK_COLS: u16 = 120;

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64).clamp(0.0, 1.0)
    }
}

/// Draws the whole view into `f`.
pub fn draw(f: &mut Frame<'_>, m: &Model) {
    let area = f.area();
    let (title, middle, tail, keys) = if area.height < COMPACT_ROWS {
        let [title, summary, middle, tail, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(2),
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(area);
        draw_summary(f, summary, m);
        (title, middle, tail, keys)
    } else {
        let [title, gauges, ids, middle, tail, keys] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(3),
            Constraint::Length(3),
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(1),
        ])
        .areas(area);
        draw_gauges(f, gauges, ids, m);
        (title, middle, tail, keys)
    };
    draw_title(f, title, m);
    if middle.width >= SPARK_COLS {
        let [owners, spark] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(40)]).areas(middle);
        draw_owners(f, owners, m);
        draw_sparkline(f, spark, m);
    } else {
        draw_owners(f, middle, m);
    }
    draw_tail(f, tail, m);
    draw_keys(f, keys, m);
}

/// The ID forecast as the gauge and the summary show it.
fn forecast_text(m: &Model) -> String {
    match m.status.as_ref().and_then(|s| s.forecast.as_ref()) {
        Some(fc) => fc.leak_text(),
        None => "forecast after a minute".into(),
    }
}

/// The gauges as two lines of text (small terminals).
fn draw_summary(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let c = m
        .status
        .as_ref()
        .map(|s| s.counts.clone())
        .unwrap_or_default();
    let drops = m.status.as_ref().map_or(0, |s| s.drops);
    let all = c.live + c.dying;
    let zombie_style = if c.zombies > 0 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new().fg(Color::Green)
    };
    let drop_style = if drops > 0 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    let used = ratio(c.ids_in_use, c.id_limit as u64);
    let lines = vec![
        Line::from(vec![
            Span::raw(format!(
                " live {} · dying {} ({:.0}%) · ",
                c.live,
                c.dying,
                ratio(c.dying, all) * 100.0
            )),
            Span::styled(format!("zombies {}", c.zombies), zombie_style),
            Span::raw(" · "),
            Span::styled(format!("drops {drops}"), drop_style),
        ]),
        Line::from(format!(
            " memcg IDs {}/{} ({:.1}%) · {}",
            c.ids_in_use,
            c.id_limit,
            used * 100.0,
            forecast_text(m)
        )),
    ];
    f.render_widget(Paragraph::new(lines), area);
}

fn draw_title(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let text = match &m.status {
        Some(s) => format!(
            " kmem-trace watch · hooks {} · {:.0}s · {} events",
            s.hook_family, s.elapsed_s, m.tail.events
        ),
        None => " kmem-trace watch · waiting for the first tick".to_string(),
    };
    f.render_widget(
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED)),
        area,
    );
}

fn draw_gauges(f: &mut Frame<'_>, area: Rect, ids_area: Rect, m: &Model) {
    let c = m
        .status
        .as_ref()
        .map(|s| s.counts.clone())
        .unwrap_or_default();
    let [live, dying, zombies] = Layout::horizontal([Constraint::Ratio(1, 3); 3]).areas(area);
    let all = c.live + c.dying;
    f.render_widget(
        Gauge::default()
            .block(Block::bordered().title("live memcgs"))
            .gauge_style(Style::new().fg(Color::Green))
            .ratio(ratio(c.live, all))
            .label(format!("{}", c.live)),
        live,
    );
    f.render_widget(
        Gauge::default()
            .block(Block::bordered().title("dying (removed, not freed)"))
            .gauge_style(Style::new().fg(Color::Yellow))
            .ratio(ratio(c.dying, all))
            .label(format!(
                "{} ({:.0}% of all)",
                c.dying,
                ratio(c.dying, all) * 100.0
            )),
        dying,
    );
    f.render_widget(
        Gauge::default()
            .block(Block::bordered().title("zombies"))
            .gauge_style(Style::new().fg(if c.zombies > 0 {
                Color::Red
            } else {
                Color::Green
            }))
            .ratio(ratio(c.zombies, c.dying))
            .label(format!("{} of {} dying", c.zombies, c.dying)),
        zombies,
    );
    let [idg, info] = Layout::horizontal([Constraint::Percentage(70), Constraint::Percentage(30)])
        .areas(ids_area);
    let used = ratio(c.ids_in_use, c.id_limit as u64);
    let forecast = format!(" · {}", forecast_text(m));
    let color = if used >= 0.8 {
        Color::Red
    } else if used >= 0.5 {
        Color::Yellow
    } else {
        Color::Green
    };
    f.render_widget(
        Gauge::default()
            .block(Block::bordered().title(format!("memcg IDs (of {})", c.id_limit)))
            .gauge_style(Style::new().fg(color))
            .ratio(used)
            .label(format!(
                "{}/{} ({:.1}%){forecast}",
                c.ids_in_use,
                c.id_limit,
                used * 100.0
            )),
        idg,
    );
    let (drops, family) = m
        .status
        .as_ref()
        .map(|s| (s.drops, s.hook_family.as_str()))
        .unwrap_or((0, "?"));
    let drop_style = if drops > 0 {
        Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else {
        Style::new()
    };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!("drops {drops}"), drop_style),
            Span::raw(format!(" · hooks {family}")),
        ]))
        .block(Block::bordered().title("tracer")),
        info,
    );
}

/// The owner cell of a line in `w` characters, escaped.
fn owner_cell(l: &OwnerLine, w: usize) -> String {
    let r = &l.row;
    match l.kind {
        LineKind::Group { members, expanded } => {
            let mark = if expanded { '▾' } else { '▸' };
            let suffix = format!(" ({members})");
            let room = w.saturating_sub(2 + fit::width(&suffix));
            format!("{mark} {}{suffix}", fit::path(&term(&r.path), room))
        }
        LineKind::Member => {
            let name = r.path.rsplit('/').next().unwrap_or(&r.path);
            format!("  {}", fit::middle(&term(name), w.saturating_sub(2)))
        }
        // Path owners are no pod (their pod column is empty).
        LineKind::Owner if r.kind == "path" => fit::path(&term(&r.container), w),
        LineKind::Owner => fit_owner(&r.namespace, &r.pod, &r.container, w),
    }
}

fn draw_owners(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let inner = area.width.saturating_sub(2);
    let wide = inner >= 110;
    // (header, width) of the fixed columns; the owner takes the rest.
    let mut fixed = vec![("ZOMBIES", 7), ("LEAK/h", 8), ("DYING", 6)];
    if inner >= 90 {
        fixed.push(("LIVE", 5));
    }
    fixed.push(("PINNED", 9));
    // "Which workload keeps doing this" beside the owner when there is room;
    // owners that are no pod show their kind there.
    if wide {
        fixed.insert(0, ("WORKLOAD/KIND", 22));
    }
    let used: u16 = fixed.iter().map(|c| c.1 + 1).sum();
    let owner_w = inner.saturating_sub(used).max(10);
    let lines = m.owner_lines();
    let header = Row::new(
        std::iter::once("OWNER (namespace/pod/container)")
            .chain(fixed.iter().map(|c| c.0))
            .map(|h| Cell::from(h).style(Style::new().add_modifier(Modifier::BOLD))),
    );
    let rows: Vec<Row> = lines
        .iter()
        .map(|l| {
            let r = &l.row;
            let style = if r.zombies > 0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            let leak = match l.leak_per_hour(&m.leak) {
                Some(v) => format!("{v:+.1}"),
                None => "…".into(),
            };
            let mut cells = vec![Cell::from(owner_cell(l, owner_w as usize))];
            if wide {
                let what = if r.workload.is_empty() {
                    r.kind
                } else {
                    &r.workload
                };
                cells.push(Cell::from(fit::middle(&term(what), 22)));
            }
            cells.push(Cell::from(r.zombies.to_string()));
            cells.push(Cell::from(leak));
            cells.push(Cell::from(r.dying.to_string()));
            if inner >= 90 {
                cells.push(Cell::from(r.live.to_string()));
            }
            cells.push(Cell::from(if r.pinned_bytes > 0 {
                human_bytes(r.pinned_bytes)
            } else {
                "-".into()
            }));
            Row::new(cells).style(style)
        })
        .collect();
    let widths: Vec<Constraint> = std::iter::once(Constraint::Length(owner_w))
        .chain(fixed.iter().map(|c| Constraint::Length(c.1)))
        .collect();
    let shown: usize = lines
        .iter()
        .map(|l| match l.kind {
            LineKind::Owner => 1,
            LineKind::Group { members, .. } => members,
            LineKind::Member => 0,
        })
        .sum();
    let mut title = format!(
        "owners by {} ({shown} of {})",
        m.sort.name(),
        m.owners.len()
    );
    if inner >= 100 {
        title.push_str(" · LEAK = net zombies/h since start");
    }
    let mut state = TableState::default();
    if !lines.is_empty() {
        state.select(Some(m.selected.min(lines.len() - 1)));
    }
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(header)
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
            .block(Block::bordered().title(title)),
        area,
        &mut state,
    );
}

fn draw_sparkline(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let width = area.width.saturating_sub(2) as usize;
    let data: Vec<u64> = m
        .dying_history
        .iter()
        .skip(m.dying_history.len().saturating_sub(width))
        .copied()
        .collect();
    let now = data.last().copied().unwrap_or(0);
    let max = data.iter().copied().max().unwrap_or(0);
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(format!("dying: now {now}, max {max}")))
            .style(Style::new().fg(Color::Yellow))
            .max(max.max(1))
            .data(&data),
        area,
    );
}

fn draw_tail(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let n = area.height.saturating_sub(2) as usize;
    let w = area.width.saturating_sub(2) as usize;
    let items: Vec<ListItem> = m
        .visible_tail(n)
        .into_iter()
        .map(|l| match l {
            TailLine::Note(text) => ListItem::new(fit::head(&format!("! {}", term(text)), w))
                .style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)),
            TailLine::Event(e) => {
                let style = if e.resident() {
                    Style::new().fg(Color::DarkGray)
                } else {
                    Style::new()
                };
                ListItem::new(e.fit(w)).style(style)
            }
        })
        .collect();
    let mut title = if m.residents {
        format!("events + {} residents (r hides)", m.tail.residents_seen)
    } else {
        format!(
            "lifecycle events · {} resident lines hidden (r shows)",
            m.tail.residents_seen
        )
    };
    if !m.filter.is_empty() {
        title.push_str(&format!(" · filter {:?}", term(&m.filter)));
    }
    f.render_widget(
        List::new(items).block(Block::bordered().title(fit::head(&title, w))),
        area,
    );
}

fn draw_keys(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let text = if m.editing {
        format!(
            " filter (owner or path): {}█   Enter keep · Esc clear",
            term(&m.filter)
        )
    } else {
        let mut t = format!(
            " q quit · s sort ({}) · / filter{} · r residents · ↑↓ Enter group",
            m.sort.name(),
            if m.filter.is_empty() {
                String::new()
            } else {
                format!(" ({}) · Esc clears", term(&m.filter))
            }
        );
        t = fit::head(&t, area.width as usize);
        t
    };
    f.render_widget(
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED)),
        area,
    );
}
