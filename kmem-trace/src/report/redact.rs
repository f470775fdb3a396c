//! `report --redact`: replaces the names that identify workloads (pod and
//! container names, images, pod UIDs, container IDs, the hostname) with stable
//! pseudonyms in the rendered report, so it can be shared outside the team
//! while still telling which zombies belong together.

use super::model::Report;

/// Pairs of (secret, pseudonym), longest secret first so a container ID is
/// replaced before its 12-character short form.
pub struct Redactor {
    pairs: Vec<(String, String)>,
}

/// Shortest name replaced: shorter ones are too likely to be ordinary words.
const MIN_LEN: usize = 3;

impl Redactor {
    /// Collects every identifying string the report shows.
    pub fn for_report(r: &Report) -> Redactor {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let add = |secret: &str, kind: &str, pairs: &mut Vec<(String, String)>| {
            if secret.len() < MIN_LEN || pairs.iter().any(|(s, _)| s == secret) {
                return;
            }
            let n = pairs.iter().filter(|(_, p)| p.starts_with(kind)).count() + 1;
            pairs.push((secret.to_string(), format!("{kind}-{n}")));
        };
        for row in &r.zombies {
            let Some(attr) = &row.zombie.owner else {
                continue;
            };
            let v = attr.view();
            if let Some(p) = v.pod {
                add(p, "pod", &mut pairs);
            }
            if let Some(c) = v.container {
                add(c, "container", &mut pairs);
            }
            if let Some(i) = v.image {
                add(i, "image", &mut pairs);
            }
            if let Some(uid) = v.pod_uid {
                add(uid, "uid", &mut pairs);
                // The systemd driver writes the UID with underscores.
                add(&uid.replace('-', "_"), "uid", &mut pairs);
            }
            if let Some(id) = v.container_id {
                add(id, "cid", &mut pairs);
            }
        }
        for o in &r.owners {
            add(&o.pod, "pod", &mut pairs);
            add(&o.container, "container", &mut pairs);
        }
        // Short forms of IDs (labels show 12 characters) map to the same pseudonym.
        let short: Vec<(String, String)> = pairs
            .iter()
            .filter(|(s, p)| (p.starts_with("cid-") || p.starts_with("uid-")) && s.len() > 12)
            .map(|(s, p)| (s[..12].to_string(), p.clone()))
            .collect();
        for (s, p) in short {
            if !pairs.iter().any(|(x, _)| *x == s) {
                pairs.push((s, p));
            }
        }
        if let Some(h) = &r.node.hostname {
            add(h, "node", &mut pairs);
        }
        // The HTML report shows names escaped.
        let escaped: Vec<(String, String)> = pairs
            .iter()
            .map(|(s, p)| (super::svg::esc(s), p.clone()))
            .filter(|(e, _)| !pairs.iter().any(|(s, _)| s == e))
            .collect();
        pairs.extend(escaped);
        pairs.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Redactor { pairs }
    }

    /// The text with every secret replaced where it stands as a whole name
    /// (not inside a longer word: a pod named `web` leaves `webhook` alone).
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (secret, pseudonym) in &self.pairs {
            out = replace_words(&out, secret, pseudonym);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Replaces `from` where neither neighbour is a letter or digit. IDs glued to
/// a prefix (`pod<uid>`, `cri-containerd-<id>`) still match: the boundary rule
/// only looks at alphanumerics, and UIDs/IDs start and end with them.
fn replace_words(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + from.len()..].chars().next();
        let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric());
        let is_id = from
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_');
        // IDs may follow a `pod` prefix; names must stand alone.
        let ok_before = !glued(before) || (is_id && rest[..i].ends_with("pod"));
        out.push_str(&rest[..i]);
        if ok_before && !glued(after) {
            out.push_str(to);
        } else {
            out.push_str(from);
        }
        rest = &rest[i + from.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_names_only() {
        assert_eq!(
            replace_words("web web-1 webhook /web/", "web", "pod-1"),
            "pod-1 pod-1-1 webhook /pod-1/"
        );
        assert_eq!(
            replace_words("/kubepods/pod5b2ae0e6-1b2c/abc", "5b2ae0e6-1b2c", "uid-1"),
            "/kubepods/poduid-1/abc"
        );
        assert_eq!(
            replace_words("cri-containerd-4f1c2d3e.scope", "4f1c2d3e", "cid-1"),
            "cri-containerd-cid-1.scope"
        );
    }
}
