//! The OCI image layout of the kmem-trace image, written byte for byte here
//! (no registry, no container tool): one uncompressed layer holding the static
//! binary, the image config, the manifest and the index, packed into one
//! deterministic tar (fixed mtime, owner and order) so one commit gives one
//! digest. A docker `manifest.json` rides along so `docker load` takes it too.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::util;

/// Where the binary sits in the image (the Containerfile's COPY target).
pub const BINARY_PATH: &str = "kmem-trace";
/// The binary's mode in the image.
pub const BINARY_MODE: u32 = 0o755;

/// What the image says about itself.
#[derive(Clone, Debug)]
pub struct Meta {
    /// `repository:tag` the loaded image gets.
    pub reference: String,
    pub version: String,
    /// The git commit (or "unknown").
    pub revision: String,
    pub source: String,
    pub licenses: String,
    /// Seconds since the epoch for every timestamp (the commit's time).
    pub epoch: u64,
}

/// The OCI labels, also the Containerfile's LABEL lines.
pub fn labels(meta: &Meta) -> BTreeMap<String, String> {
    [
        ("org.opencontainers.image.title", "kmem-trace"),
        (
            "org.opencontainers.image.description",
            "eBPF tracer of the Linux memcg lifecycle: zombie memory cgroups and who left them",
        ),
        ("org.opencontainers.image.source", &meta.source),
        ("org.opencontainers.image.revision", &meta.revision),
        ("org.opencontainers.image.version", &meta.version),
        ("org.opencontainers.image.licenses", &meta.licenses),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The entrypoint (the Containerfile's ENTRYPOINT).
pub fn entrypoint() -> Vec<String> {
    vec![format!("/{BINARY_PATH}")]
}

/// The sha256 of `data` as `sha256:HEX`.
pub fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut s = String::from("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Appends one ustar entry (`kind` b'0' file, b'5' directory).
fn tar_entry(out: &mut Vec<u8>, name: &str, kind: u8, mode: u32, data: &[u8], epoch: u64) {
    assert!(name.len() < 100, "tar name too long: {name}");
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, u64::from(mode));
    octal(&mut h, 108, 8, 0); // uid root
    octal(&mut h, 116, 8, 0); // gid root
    octal(&mut h, 124, 12, data.len() as u64);
    octal(&mut h, 136, 12, epoch);
    h[148..156].copy_from_slice(b"        ");
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// A tar of `files` (name, mode, data) in the given order.
pub fn tar(files: &[(&str, u32, &[u8])], epoch: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, mode, data) in files {
        if let Some(dir) = name.strip_suffix('/') {
            tar_entry(&mut out, &format!("{dir}/"), b'5', *mode, &[], epoch);
        } else {
            tar_entry(&mut out, name, b'0', *mode, data, epoch);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// The image config for a layer whose uncompressed digest is `diff_id`.
pub fn config(meta: &Meta, diff_id: &str) -> Value {
    json!({
        "created": util::rfc3339(meta.epoch),
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint(),
            "Labels": labels(meta),
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": util::rfc3339(meta.epoch),
            "created_by": "cargo xtask image",
        }],
    })
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": digest(blob), "size": blob.len() })
}

/// The whole image as one OCI-layout tar (with a docker `manifest.json`),
/// and the manifest's digest (the image's identity).
pub fn archive(meta: &Meta, binary: &[u8]) -> (Vec<u8>, String) {
    let layer = tar(&[(BINARY_PATH, BINARY_MODE, binary)], meta.epoch);
    let config = serde_json::to_vec(&config(meta, &digest(&layer))).expect("json");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
        "annotations": labels(meta),
    }))
    .expect("json");
    let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
    entry["annotations"] = json!({
        "org.opencontainers.image.ref.name": meta.reference,
        "io.containerd.image.name": meta.reference,
    });
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    }))
    .expect("json");
    let blob = |b: &[u8]| format!("blobs/sha256/{}", &digest(b)["sha256:".len()..]);
    let docker = serde_json::to_vec(&json!([{
        "Config": blob(&config),
        "RepoTags": [meta.reference],
        "Layers": [blob(&layer)],
    }]))
    .expect("json");
    let (lb, cb, mb) = (blob(&layer), blob(&config), blob(&manifest));
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let files: [(&str, u32, &[u8]); 8] = [
        ("oci-layout", 0o644, layout),
        ("blobs/", 0o755, &[]),
        ("blobs/sha256/", 0o755, &[]),
        (&lb, 0o644, &layer),
        (&cb, 0o644, &config),
        (&mb, 0o644, &manifest),
        ("index.json", 0o644, &index),
        ("manifest.json", 0o644, &docker),
    ];
    (tar(&files, meta.epoch), digest(&manifest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            reference: "ghcr.io/kmem-trace/kmem-trace:0.1.0".into(),
            version: "0.1.0".into(),
            revision: "abc".into(),
            source: "https://github.com/kmem-trace/kmem-trace".into(),
            licenses: "GPL-2.0".into(),
            epoch: 1_780_000_000,
        }
    }

    #[test]
    fn same_input_same_digest_and_revision_changes_it() {
        let (a, da) = archive(&meta(), b"binary");
        let (b, db) = archive(&meta(), b"binary");
        assert_eq!(a, b);
        assert_eq!(da, db);
        let mut m = meta();
        m.revision = "def".into();
        assert_ne!(archive(&m, b"binary").1, da);
        assert_ne!(archive(&meta(), b"other").1, da);
    }

    #[test]
    fn tar_is_readable_by_gnu_tar() {
        let t = tar(&[("d/", 0o755, &[]), ("d/f", 0o644, b"hello")], 0);
        assert_eq!(t.len() % 512, 0);
        let dir = std::env::temp_dir().join(format!("xtask-tar-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.tar");
        std::fs::write(&path, &t).unwrap();
        let out = std::process::Command::new("tar")
            .args(["-tvf"])
            .arg(&path)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(list.contains("root/root") && list.contains("d/f"), "{list}");
        assert!(list.contains("1970-01-01"), "{list}");
    }

    #[test]
    fn static_binaries_are_told_from_dynamic_ones() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(!super::super::is_static(&sh), "/bin/sh is dynamic");
        assert!(!super::super::is_static(b"not an elf"));
        if let Ok(bb) = std::fs::read("/bin/busybox") {
            assert!(super::super::is_static(&bb), "busybox-static is static");
        }
    }
}
