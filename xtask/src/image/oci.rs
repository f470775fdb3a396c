//! The OCI image layout of the kmem-trace image, written byte for byte here
//! (no registry, no container tool): one uncompressed layer holding the static
//! binary, the image config, the manifest and the index (per architecture,
//! under a multi-architecture index when there are several), packed into one
//! deterministic tar (fixed mtime, owner and order) so one commit gives one
//! digest. A docker `manifest.json` rides along so `docker load` takes it too.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::{build::Arch, util};

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

/// The image config for `arch` and a layer whose uncompressed digest is `diff_id`.
pub fn config(meta: &Meta, diff_id: &str, arch: Arch) -> Value {
    json!({
        "created": util::rfc3339(meta.epoch),
        "architecture": arch.debian(),
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

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One platform's image: its layer, config and manifest blobs.
struct Image {
    arch: Arch,
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl Image {
    fn new(meta: &Meta, arch: Arch, binary: &[u8]) -> Image {
        let layer = tar(&[(BINARY_PATH, BINARY_MODE, binary)], meta.epoch);
        let config = serde_json::to_vec(&config(meta, &digest(&layer), arch)).expect("json");
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
            "annotations": labels(meta),
        }))
        .expect("json");
        Image {
            arch,
            layer,
            config,
            manifest,
        }
    }
}

/// `blobs/sha256/HEX` of a blob.
fn blob_path(b: &[u8]) -> String {
    format!("blobs/sha256/{}", &digest(b)["sha256:".len()..])
}

/// The whole image as one OCI-layout tar (with a docker `manifest.json`),
/// and its digest (the image's identity): one static binary per
/// architecture in `binaries`.
///
/// One architecture: `index.json` names its manifest (the layout of before
/// multi-architecture images, so its digest did not change). Several:
/// `index.json` names one image index, the multi-architecture one, listing
/// a manifest per platform; the digest is that index's. The extra level is
/// how `docker buildx` and registries lay out a multi-platform image, and
/// what lets tools choose: podman, containerd and skopeo follow an index
/// *entry* to the platform they run on (or `--override-arch`), while several
/// manifests directly in `index.json` under one name would all match it and
/// the first would win on every host. The docker `manifest.json` (one image
/// per name) names the first architecture's image.
pub fn archive(meta: &Meta, binaries: &[(Arch, &[u8])]) -> (Vec<u8>, String) {
    assert!(!binaries.is_empty(), "an image of no architecture");
    let images: Vec<Image> = binaries
        .iter()
        .map(|(arch, bin)| Image::new(meta, *arch, bin))
        .collect();
    let annotations = json!({
        "org.opencontainers.image.ref.name": meta.reference,
        "io.containerd.image.name": meta.reference,
    });
    let list = (images.len() > 1).then(|| {
        let manifests: Vec<Value> = images
            .iter()
            .map(|i| {
                let mut d = descriptor(MANIFEST, &i.manifest);
                d["platform"] = json!({ "architecture": i.arch.debian(), "os": "linux" });
                d
            })
            .collect();
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": INDEX,
            "manifests": manifests,
            "annotations": labels(meta),
        }))
        .expect("json")
    });
    let mut entry = match &list {
        Some(list) => descriptor(INDEX, list),
        None => descriptor(MANIFEST, &images[0].manifest),
    };
    entry["annotations"] = annotations;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [entry],
    }))
    .expect("json");
    let first = &images[0];
    let docker = serde_json::to_vec(&json!([{
        "Config": blob_path(&first.config),
        "RepoTags": [meta.reference],
        "Layers": [blob_path(&first.layer)],
    }]))
    .expect("json");
    let mut blobs: Vec<(String, &[u8])> = Vec::new();
    for i in &images {
        for b in [&i.layer, &i.config, &i.manifest] {
            blobs.push((blob_path(b), b));
        }
    }
    if let Some(list) = &list {
        blobs.push((blob_path(list), list));
    }
    let layout: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut files: Vec<(&str, u32, &[u8])> = vec![
        ("oci-layout", 0o644, layout),
        ("blobs/", 0o755, &[]),
        ("blobs/sha256/", 0o755, &[]),
    ];
    files.extend(blobs.iter().map(|(p, b)| (p.as_str(), 0o644, *b)));
    files.push(("index.json", 0o644, &index));
    files.push(("manifest.json", 0o644, &docker));
    let id = match &list {
        Some(list) => digest(list),
        None => digest(&first.manifest),
    };
    (tar(&files, meta.epoch), id)
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
        let amd64 = |b: &'static [u8]| [(Arch::Amd64, b)];
        let (a, da) = archive(&meta(), &amd64(b"binary"));
        let (b, db) = archive(&meta(), &amd64(b"binary"));
        assert_eq!(a, b);
        assert_eq!(da, db);
        let mut m = meta();
        m.revision = "def".into();
        assert_ne!(archive(&m, &amd64(b"binary")).1, da);
        assert_ne!(archive(&meta(), &amd64(b"other")).1, da);
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
    fn several_architectures_make_an_index_of_platforms() {
        let bins: [(Arch, &[u8]); 2] = [(Arch::Amd64, b"x86"), (Arch::Arm64, b"arm")];
        let (tar_bytes, id) = archive(&meta(), &bins);
        // The blobs, found by digest in the tar (ustar: name at 0, data at 512).
        let file = |name: &str| -> Vec<u8> {
            let mut at = 0;
            while at + 512 <= tar_bytes.len() {
                let h = &tar_bytes[at..at + 512];
                let n = h.iter().position(|&b| b == 0).unwrap_or(100).min(100);
                let size = usize::from_str_radix(
                    std::str::from_utf8(&h[124..135])
                        .unwrap()
                        .trim_end_matches('\0'),
                    8,
                )
                .unwrap_or(0);
                if &h[..n] == name.as_bytes() {
                    return tar_bytes[at + 512..at + 512 + size].to_vec();
                }
                at += 512 + size.div_ceil(512) * 512;
            }
            panic!("{name} not in the archive");
        };
        let json = |b: Vec<u8>| -> Value { serde_json::from_slice(&b).unwrap() };
        let by_digest =
            |d: &Value| json(file(&format!("blobs/sha256/{}", &d.as_str().unwrap()[7..])));
        let index = json(file("index.json"));
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        let entry = &index["manifests"][0];
        assert_eq!(entry["mediaType"], INDEX);
        assert_eq!(entry["digest"], id.as_str());
        let list = by_digest(&entry["digest"]);
        let platforms: Vec<(String, String)> = list["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let manifest = by_digest(&m["digest"]);
                let config = by_digest(&manifest["config"]["digest"]);
                assert_eq!(config["architecture"], m["platform"]["architecture"]);
                (
                    m["platform"]["os"].as_str().unwrap().to_string(),
                    config["architecture"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(
            platforms,
            [
                ("linux".into(), "amd64".into()),
                ("linux".into(), "arm64".into())
            ]
        );
    }
}
