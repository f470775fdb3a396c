//! Keeps the repository's `Containerfile` equivalent to the image
//! `cargo xtask image` writes: the same base (scratch), file, mode,
//! entrypoint and labels. Parses just the instructions that file uses.

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{meta, oci};
    use crate::build::Arch;

    /// The static amd64 build's target, whose binary the Containerfile copies.
    const TARGET: &str = Arch::Amd64.triple();
    use crate::util;

    /// The Containerfile's instructions, continuation lines joined, comments dropped.
    fn instructions(text: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut cur = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') || (line.is_empty() && cur.is_empty()) {
                continue;
            }
            match line.strip_suffix('\\') {
                Some(part) => cur.push_str(part),
                None => {
                    cur.push_str(line);
                    let (op, rest) = cur.split_once(' ').unwrap_or((&cur, ""));
                    out.push((op.to_uppercase(), rest.trim().to_string()));
                    cur.clear();
                }
            }
        }
        out
    }

    /// `k="v" k2="v2"` pairs of a LABEL instruction.
    fn label_pairs(mut s: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some((k, rest)) = s.trim_start().split_once("=\"") {
            let (v, rest) = rest.split_once('"').expect("closing quote");
            out.push((k.trim().to_string(), v.to_string()));
            s = rest;
        }
        out
    }

    #[test]
    fn containerfile_matches_the_xtask_image() {
        let root = util::root();
        let text = std::fs::read_to_string(root.join("Containerfile")).unwrap();
        let mut meta = meta(&root).unwrap();
        meta.revision = "${REVISION}".into();
        let ins = instructions(&text);
        let ops: Vec<&str> = ins.iter().map(|(op, _)| op.as_str()).collect();
        assert_eq!(
            ops,
            ["FROM", "ARG", "COPY", "LABEL", "ENTRYPOINT"],
            "{ins:?}"
        );
        assert_eq!(ins[0].1, "scratch");
        assert_eq!(ins[1].1, "REVISION=unknown");
        let copy: Vec<&str> = ins[2].1.split_whitespace().collect();
        let mode = format!("--chmod={:04o}", oci::BINARY_MODE);
        let src = format!("target/{TARGET}/release/kmem-trace");
        let dest = format!("/{}", oci::BINARY_PATH);
        assert_eq!(copy, [mode.as_str(), src.as_str(), dest.as_str()]);
        let labels: BTreeMap<String, String> = label_pairs(&ins[3].1).into_iter().collect();
        assert_eq!(labels, oci::labels(&meta));
        let entry: Vec<String> = serde_json::from_str(&ins[4].1).unwrap();
        assert_eq!(entry, oci::entrypoint());
        // The same entrypoint and labels end up in the config the xtask writes.
        let config = oci::config(&meta, "sha256:0", crate::build::Arch::Amd64);
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!(entry));
        assert_eq!(config["config"]["Labels"], serde_json::json!(labels));
    }

    #[test]
    fn ignore_file_lets_only_the_binary_in() {
        let text = std::fs::read_to_string(util::root().join(".containerignore")).unwrap();
        let rules: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            rules,
            ["*", &format!("!target/{TARGET}/release/kmem-trace")]
        );
    }
}
