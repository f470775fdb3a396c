//! The image read back per platform by skopeo, a tool other than the one
//! that wrote it: the archive lists exactly the architectures built, and
//! what skopeo hands an `--override-arch` host is that architecture's config
//! and a static binary for it (an arm64 node pulling the amd64 binary would
//! only fail on the node, with "exec format error").

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{build::Arch, cross_check, util::which};

/// Checks every platform of `archive` (built for `archs`).
pub fn verify(archive: &Path, archs: &[Arch]) -> Result<()> {
    if which("skopeo").is_none() {
        crate::setup::apt_install(&["skopeo"], false)?;
    }
    let source = format!("oci-archive:{}", archive.display());
    let top = json(Command::new("skopeo").args(["inspect", "--raw", &source]))?;
    if archs.len() > 1 {
        let listed: Vec<String> = top["manifests"]
            .as_array()
            .context("the multi-architecture index has no manifests")?
            .iter()
            .map(|m| {
                let p = &m["platform"];
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap_or("?"),
                    p["architecture"].as_str().unwrap_or("?")
                )
            })
            .collect();
        let want: Vec<String> = archs.iter().map(|a| format!("linux/{a}")).collect();
        if top["mediaType"] != "application/vnd.oci.image.index.v1+json" || listed != want {
            bail!("{source}: expected an image index of {want:?}, skopeo reads {top}");
        }
    }
    let dir = std::env::temp_dir().join(format!("kmem-trace-platforms-{}", std::process::id()));
    let result = archs
        .iter()
        .try_for_each(|&arch| platform(&source, &dir, arch));
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    let names: Vec<&str> = archs.iter().map(|a| a.debian()).collect();
    println!(
        "image: skopeo reads {} platform(s): {}",
        archs.len(),
        names.join(", ")
    );
    Ok(())
}

/// `skopeo copy --override-arch` of one platform into a `dir:` and its
/// config and binary checked.
fn platform(source: &str, dir: &Path, arch: Arch) -> Result<()> {
    let out = dir.join(arch.debian());
    std::fs::create_dir_all(&out)?;
    let status = Command::new("skopeo")
        .args(["--override-os", "linux", "--override-arch", arch.debian()])
        .args(["copy", "--quiet", source])
        .arg(format!("dir:{}", out.display()))
        .status()
        .context("running skopeo copy")?;
    if !status.success() {
        bail!("skopeo copy --override-arch {arch} {source} failed ({status})");
    }
    let blob = |digest: &Value| -> Result<Vec<u8>> {
        let hex = digest
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .context("a descriptor without a sha256 digest")?;
        Ok(std::fs::read(out.join(hex))?)
    };
    let manifest: Value = serde_json::from_slice(&std::fs::read(out.join("manifest.json"))?)?;
    let config: Value = serde_json::from_slice(&blob(&manifest["config"]["digest"])?)?;
    if config["architecture"] != arch.debian() || config["os"] != "linux" {
        bail!(
            "{source} --override-arch {arch}: its config says {}/{}",
            config["os"],
            config["architecture"]
        );
    }
    let layer = out.join(
        manifest["layers"][0]["digest"]
            .as_str()
            .and_then(|d| d.strip_prefix("sha256:"))
            .context("no layer")?,
    );
    let binary = Command::new("tar")
        .arg("-xOf")
        .arg(&layer)
        .arg(super::oci::BINARY_PATH)
        .output()?;
    if !binary.status.success() {
        bail!(
            "{}: no {} in the layer",
            layer.display(),
            super::oci::BINARY_PATH
        );
    }
    cross_check::check_binary(&binary.stdout, arch)
        .with_context(|| format!("{source} --override-arch {arch}: the image's binary"))
}

/// A command's stdout as JSON.
fn json(cmd: &mut Command) -> Result<Value> {
    let out = cmd.output().context("running skopeo")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            crate::util::show(cmd),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The last `cargo xtask image` archive read back per platform, without
    /// podman (`cargo test -p xtask -- --ignored archive_platforms`): it
    /// holds amd64, and arm64 when the file `kmem-trace-arm64` beside it says
    /// the cross build made one.
    #[test]
    #[ignore = "needs target/image from `cargo xtask image` and skopeo"]
    fn archive_platforms() {
        let dir = crate::util::root().join("target/image");
        let mut archs = vec![Arch::Amd64];
        if dir.join("kmem-trace-arm64").exists() {
            archs.push(Arch::Arm64);
        }
        verify(&dir.join("kmem-trace.oci.tar"), &archs).unwrap();
    }
}
