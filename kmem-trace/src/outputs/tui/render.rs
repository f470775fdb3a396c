//! Draws the live view from a [`Model`] with ratatui widgets: a title line,
//! gauges (live, dying, zombies; ID usage with the forecast; drops and hooks),
//! the owner table beside a sparkline of the dying count, the event tail and a
//! key line. Pure drawing into a frame, so a `TestBackend` renders it in tests.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Gauge, List, ListItem, Paragraph, Row, Sparkline, Table},
    Frame,
};

use super::model::Model;
use crate::outputs::line::human_bytes;

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 / whole as f64).clamp(0.0, 1.0)
    }
}

/// Draws the whole view into `f`.
pub fn draw(f: &mut Frame<'_>, m: &Model) {
    let [title, gauges, ids, middle, tail, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(3),
        Constraint::Min(6),
        Constraint::Min(5),
        Constraint::Length(1),
    ])
    .areas(f.area());
    draw_title(f, title, m);
    draw_gauges(f, gauges, ids, m);
    let [owners, spark] =
        Layout::horizontal([Constraint::Percentage(65), Constraint::Percentage(35)]).areas(middle);
    draw_owners(f, owners, m);
    draw_sparkline(f, spark, m);
    draw_tail(f, tail, m);
    draw_keys(f, keys, m);
}

fn draw_title(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let text = match &m.status {
        Some(s) => format!(
            " kmem-trace watch · hooks {} · {:.0}s · {} events",
            s.hook_family, s.elapsed_s, m.events
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
    let forecast = match m.status.as_ref().and_then(|s| s.forecast.as_ref()) {
        Some(fc) => format!(" · {}", fc.leak_text()),
        None => " · forecast after a minute".into(),
    };
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

/// `…` and the last `width - 1` characters: the end of a long path or label
/// is the part that tells owners apart.
fn tail_fit(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width || width == 0 {
        return s.to_string();
    }
    let skip = n - width + 1;
    format!("…{}", s.chars().skip(skip).collect::<String>())
}

fn draw_owners(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let header = Row::new(
        [
            "OWNER (namespace/pod/container)",
            "KIND",
            "ZOMBIES",
            "DYING",
            "LIVE",
            "PINNED",
        ]
        .into_iter()
        .map(|h| Cell::from(h).style(Style::new().add_modifier(Modifier::BOLD))),
    );
    // Borders, the fixed columns and the spaces between columns.
    let owner_width = (area.width as usize).saturating_sub(2 + 10 + 8 + 6 + 5 + 9 + 5);
    let rows: Vec<Row> = m
        .visible_owners()
        .map(|r| {
            let style = if r.zombies > 0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(tail_fit(&r.label(), owner_width)),
                Cell::from(r.kind),
                Cell::from(r.zombies.to_string()),
                Cell::from(r.dying.to_string()),
                Cell::from(r.live.to_string()),
                Cell::from(if r.pinned_bytes > 0 {
                    human_bytes(r.pinned_bytes)
                } else {
                    "-".into()
                }),
            ])
            .style(style)
        })
        .collect();
    let shown = rows.len();
    let widths = [
        Constraint::Min(10),
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(9),
    ];
    let title = format!(
        "owners by {} ({shown} of {}){}",
        m.sort.name(),
        m.owners.len(),
        if m.filter.is_empty() {
            String::new()
        } else {
            format!(" · filter {:?}", m.filter)
        }
    );
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        area,
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
    let items: Vec<ListItem> = m
        .visible_tail(n)
        .into_iter()
        .map(|l| {
            let style = if l.note {
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
            } else {
                Style::new()
            };
            ListItem::new(l.text.clone()).style(style)
        })
        .collect();
    f.render_widget(
        List::new(items).block(Block::bordered().title("events")),
        area,
    );
}

fn draw_keys(f: &mut Frame<'_>, area: Rect, m: &Model) {
    let text = if m.editing {
        format!(" filter: {}█   Enter keep · Esc clear", m.filter)
    } else {
        format!(
            " q quit · s sort ({}) · / filter{}",
            m.sort.name(),
            if m.filter.is_empty() {
                String::new()
            } else {
                format!(" ({}) · Esc clears", m.filter)
            }
        )
    };
    f.render_widget(
        Paragraph::new(text).style(Style::new().add_modifier(Modifier::REVERSED)),
        area,
    );
}
