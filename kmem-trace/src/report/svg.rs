//! The timeline chart as inline SVG, drawn here from the points (no chart
//! library, no external resource): live, dying and zombie counts over time,
//! with a grid, axis labels in UTC and a legend. Pure.

use std::fmt::Write;

use super::{model::rfc3339, timeline::Point};
use crate::outputs::text::{hostile, push_escaped};

/// A series: name, colour, and its value at a point.
type Series = (&'static str, &'static str, fn(&Point) -> u64);

const SERIES: [Series; 3] = [
    ("live", "#2e7d32", |p| p.live),
    ("dying", "#ef6c00", |p| p.dying),
    ("zombies", "#c62828", |p| p.zombies),
];

/// Escapes text for XML/HTML content and attributes; control and bidi
/// characters show as `\x1b`, `\u{202e}`.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            // Visible, like every text output (outputs::text).
            c if hostile(c) && c != '\n' && c != '\t' => push_escaped(&mut o, c),
            c => o.push(c),
        }
    }
    o
}

/// 1, 2 or 5 times a power of ten, at least `v`.
pub fn nice_ceil(v: u64) -> u64 {
    if v <= 1 {
        return 1;
    }
    let mut p = 1u64;
    loop {
        for m in [1u64, 2, 5] {
            let c = m.saturating_mul(p);
            if c >= v {
                return c;
            }
        }
        p = p.saturating_mul(10);
    }
}

/// A time label: `HH:MM:SS` within ten minutes, `HH:MM` within a day, else
/// `MM-DD HH:MM` (UTC).
fn time_label(t: i64, span_ns: i64) -> String {
    let s = rfc3339(t);
    if span_ns <= 600 * 1_000_000_000 {
        s.get(11..19).unwrap_or(&s).to_string()
    } else if span_ns <= 86_400 * 1_000_000_000 {
        s.get(11..16).unwrap_or(&s).to_string()
    } else {
        format!(
            "{} {}",
            s.get(5..10).unwrap_or(""),
            s.get(11..16).unwrap_or("")
        )
    }
}

/// The chart, `w`×`h` pixels.
pub fn timeline(points: &[Point], w: u32, h: u32) -> String {
    let (w, h) = (w.max(200) as f64, h.max(120) as f64);
    let (left, right, top, bottom) = (56.0, 16.0, 30.0, 40.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="live, dying and zombie memcgs over time"><title>live, dying and zombie memcgs over time</title>"#
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/><rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#9e9e9e"/>"##
    );
    if points.is_empty() {
        let _ = write!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" font-size="14" fill="#616161">no timeline data in the history for this period</text></svg>"##,
            left + pw / 2.0,
            top + ph / 2.0
        );
        return s;
    }
    let t0 = points.iter().map(|p| p.t).min().unwrap_or(0);
    let mut t1 = points.iter().map(|p| p.t).max().unwrap_or(0);
    if t1 <= t0 {
        t1 = t0 + 60_000_000_000;
    }
    let vmax = points
        .iter()
        .map(|p| p.live.max(p.dying).max(p.zombies))
        .max()
        .unwrap_or(0);
    let ymax = nice_ceil(vmax.max(1)) as f64;
    let x = |t: i64| left + (t - t0) as f64 / (t1 - t0) as f64 * pw;
    let y = |v: u64| top + ph - v as f64 / ymax * ph;
    // Horizontal grid and value labels.
    for k in 0..=4 {
        let v = ymax * k as f64 / 4.0;
        let yy = top + ph - ph * k as f64 / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11" fill="#424242">{}</text>"##,
            left + pw,
            left - 6.0,
            yy + 4.0,
            if v.fract() == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        );
    }
    // Time ticks.
    for k in 0..=5 {
        let t = t0 + (t1 - t0) * k / 5;
        let xx = x(t);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="#9e9e9e"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="#424242">{}</text>"##,
            top + ph,
            top + ph + 5.0,
            top + ph + 18.0,
            esc(&time_label(t, t1 - t0))
        );
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="#616161">time (UTC)</text>"##,
        left + pw / 2.0,
        h - 6.0
    );
    // The series, zombies drawn last (on top).
    for (name, colour, val) in SERIES {
        if points.len() == 1 {
            let p = &points[0];
            let _ = write!(
                s,
                r#"<circle class="series-{name}" cx="{:.1}" cy="{:.1}" r="4" fill="{colour}"/>"#,
                x(p.t),
                y(val(p))
            );
            continue;
        }
        let pts: Vec<String> = points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t), y(val(p))))
            .collect();
        // Zombies are a subset of dying: dashed, so equal counts show both lines.
        let dash = if name == "zombies" {
            r#" stroke-dasharray="7 5""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<polyline class="series-{name}" fill="none" stroke="{colour}" stroke-width="2" stroke-linejoin="round"{dash} points="{}"/>"#,
            pts.join(" ")
        );
    }
    // Legend with the last values.
    let last = points[points.len() - 1];
    let mut lx = left;
    for (name, colour, val) in SERIES {
        let label = format!("{name} {}", val(&last));
        let _ = write!(
            s,
            r##"<rect x="{lx:.1}" y="8" width="14" height="14" fill="{colour}"/><text x="{:.1}" y="19" font-size="12" fill="#212121">{}</text>"##,
            lx + 19.0,
            esc(&label)
        );
        lx += 30.0 + label.len() as f64 * 7.5;
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(t: i64, live: u64, dying: u64, zombies: u64) -> Point {
        Point {
            t,
            live,
            dying,
            zombies,
        }
    }

    #[test]
    fn draws_three_series_scaled_into_the_plot() {
        let t0 = 1_700_000_000_000_000_000;
        let pts: Vec<Point> = (0..10)
            .map(|i| pt(t0 + i * 60_000_000_000, 40, i as u64 * 3, i as u64))
            .collect();
        let s = timeline(&pts, 800, 300);
        assert!(s.starts_with("<svg") && s.ends_with("</svg>"));
        assert_eq!(s.matches("<polyline").count(), 3);
        assert!(s.contains("series-zombies") && s.contains("zombies 9"));
        // y axis tops at a nice number above the largest value (40 → 50).
        assert!(s.contains(">50<"), "{s}");
        assert!(s.contains(">22:13:20<"), "time labels in UTC: {s}");
        // Every coordinate inside the plot area.
        for p in s.split("points=\"").skip(1) {
            for xy in p.split('"').next().unwrap().split(' ') {
                let (x, y) = xy.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!(
                    (56.0..=784.1).contains(&x) && (29.9..=260.1).contains(&y),
                    "{xy}"
                );
            }
        }
        let tl = tl::parse(&s, tl::ParserOptions::default()).unwrap();
        assert!(tl.query_selector("polyline").unwrap().count() == 3);
    }

    #[test]
    fn empty_and_single_point_charts_still_render() {
        let e = timeline(&[], 600, 200);
        assert!(e.contains("no timeline data"));
        let one = timeline(&[pt(5, 1, 2, 3)], 600, 200);
        assert_eq!(one.matches("<circle").count(), 3);
        assert_eq!(nice_ceil(0), 1);
        assert_eq!(nice_ceil(41), 50);
        assert_eq!(nice_ceil(101), 200);
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
