//! The two exposition formats and which one a scraper asked for. Prometheus
//! sends `Accept: application/openmetrics-text;version=1.0.0,...;q=0.5
//! text/plain;version=0.0.4...`; curl, older Prometheus servers and most
//! other tools send none or `*/*` and read the classic text format 0.0.4.
//!
//! `prometheus-client` encodes OpenMetrics only. The 0.0.4 text is derived
//! from it: in OpenMetrics a counter family `x` has samples `x_total` and
//! its `# HELP`/`# TYPE` lines name `x`; in 0.0.4 they must name the sample
//! `x_total` (else `promtool check metrics`: "no help text"). `# UNIT` and
//! `# EOF` do not exist in 0.0.4.

use prometheus_client::registry::Registry;

/// OpenMetrics 1.0.0 text.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format 0.0.4.
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Text,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::Text => TEXT,
        }
    }

    /// The format an `Accept` header value asks for (`None`: no header):
    /// the acceptable one of highest `q`, OpenMetrics on a tie; the text
    /// format when nothing we serve is named (`*/*`, `text/*`, nothing).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best: Option<(f32, Format)> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut version) = (1.0f32, None);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            let f = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", None | Some("1.0.0")) => Format::OpenMetrics,
                ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => Format::Text,
                _ => continue,
            };
            if q <= 0.0 {
                continue;
            }
            let better = match best {
                None => true,
                Some((bq, bf)) => q > bq || (q == bq && f == Format::OpenMetrics && bf != f),
            };
            if better {
                best = Some((q, f));
            }
        }
        best.map(|(_, f)| f).unwrap_or(Format::Text)
    }
}

/// The registry in `format`.
pub fn encode(r: &Registry, format: Format) -> String {
    let om = super::encode(r);
    match format {
        Format::OpenMetrics => om,
        Format::Text => to_text(&om),
    }
}

/// OpenMetrics text (as `prometheus-client` writes it) to text 0.0.4.
pub fn to_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_everyone_else_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        // Prometheus configured for the classic format (scrape_protocols).
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4;q=1,*/*;q=0.1")),
            Format::Text
        );
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;q=0.2, application/openmetrics-text;q=0.9")),
            Format::OpenMetrics
        );
        // A version we do not write is not picked.
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;version=2.0.0")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Text
        );
    }

    #[test]
    fn counters_are_named_by_their_samples_in_text() {
        let om = "# HELP x_events Events.\n# TYPE x_events counter\nx_events_total{kind=\"a\"} 1\n\
                  # HELP x_g A gauge.\n# TYPE x_g gauge\n# UNIT x_g bytes\nx_g 2\n# EOF\n";
        assert_eq!(
            to_text(om),
            "# HELP x_events_total Events.\n# TYPE x_events_total counter\nx_events_total{kind=\"a\"} 1\n\
             # HELP x_g A gauge.\n# TYPE x_g gauge\nx_g 2\n"
        );
    }
}
