//! What a test VM boots with: an uncompressed initramfs (written here as a
//! `newc` cpio: busybox, the guest scenario as `/init`, kmem-trace, and the
//! kernel's modules appended as a second archive, which the kernel unpacks on
//! top), a read-only ext4 data disk holding the files of the page-cache pins and an
//! empty ext4 scratch disk the guest writes to.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use super::suites::Suite;
use crate::{build::Arch, util::sh};

/// Files on the data disk: `pin-0`.. of this size (the guest's defaults).
pub const PIN_FILES: usize = 3;
pub const PIN_BYTES: usize = 1 << 20;

/// A `newc` cpio archive in memory. Uncompressed on purpose: under TCG the
/// kernel's decompressors are slow, and a memcpy of a few MiB is not.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn header(&mut self, name: &str, mode: u32, size: usize, rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime: fixed, so archives are reproducible
            size as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn dir(&mut self, name: &str) {
        self.header(name, 0o040755, 0, (0, 0));
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.header(name, 0o100000 | mode, data.len(), (0, 0));
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.header(name, 0o020600, 0, (major, minor));
    }

    /// Ends the archive; the kernel accepts several concatenated archives.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0));
        self.buf
    }
}

/// The part of the initramfs every kernel shares.
pub struct Payload {
    pub arch: Arch,
    pub busybox: PathBuf,
    pub guest: PathBuf,
    pub kmem_trace: PathBuf,
}

/// A stripped copy of a binary (debug info only costs copy time in the guest),
/// made in `scratch` with `arch`'s strip.
fn stripped(bin: &Path, scratch: &Path, arch: Arch) -> Result<Vec<u8>> {
    let name = bin.file_name().context("binary name")?;
    let out = scratch.join(name).with_extension("stripped");
    let ok = Command::new(arch.strip())
        .arg("--strip-debug")
        .arg("-o")
        .arg(&out)
        .arg(bin)
        .status()
        .is_ok_and(|s| s.success());
    // strip missing or failing: the unstripped binary works as well.
    let src = if ok { out.as_path() } else { bin };
    let data = fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    let _ = fs::remove_file(&out);
    Ok(data)
}

/// The shared archive: `/init` is the guest scenario (it is PID 1), busybox
/// gives it `sh`, `head`, `cat` and `insmod`, `/dev/console` exists before
/// devtmpfs is mounted so PID 1 has a console.
pub fn base_archive(p: &Payload, scratch: &Path) -> Result<Vec<u8>> {
    let mut c = Cpio::default();
    for d in [
        "bin", "sbin", "dev", "proc", "sys", "tmp", "modules", "disk", "shm", "scratch",
    ] {
        c.dir(d);
    }
    c.char_dev("dev/console", 5, 1);
    c.file("bin/busybox", 0o755, &fs::read(&p.busybox)?);
    c.file("init", 0o755, &stripped(&p.guest, scratch, p.arch)?);
    c.file(
        "bin/kmem-trace",
        0o755,
        &stripped(&p.kmem_trace, scratch, p.arch)?,
    );
    Ok(c.finish())
}

/// The per-kernel archive: its modules and their load order.
pub fn modules_archive(modules: &[PathBuf]) -> Result<Vec<u8>> {
    let mut c = Cpio::default();
    let mut order = String::new();
    for m in modules {
        let name = m
            .file_name()
            .and_then(|n| n.to_str())
            .context("module name")?;
        c.file(
            &format!("modules/{name}"),
            0o644,
            &fs::read(m).with_context(|| format!("reading {}", m.display()))?,
        );
        order.push_str(&format!("/modules/{name}\n"));
    }
    c.file("modules/order", 0o644, order.as_bytes());
    Ok(c.finish())
}

/// Writes `base` + the kernel's modules archive to `out`.
pub fn write_initramfs(out: &Path, base: &[u8], modules: &[PathBuf]) -> Result<()> {
    let mut f = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.write_all(base)?;
    f.write_all(&modules_archive(modules)?)?;
    Ok(())
}

/// The data disk, made once: ext4 without journal or metadata checksums (so the
/// guest needs neither jbd2 replay nor the crc32c driver), holding `pin-N`
/// files of non-zero bytes (zeros could become holes).
pub fn data_disk(cache: &Path) -> Result<PathBuf> {
    let img = cache.join(format!("data-{PIN_FILES}x{PIN_BYTES}.ext4"));
    if img.exists() {
        return Ok(img);
    }
    let staging = cache.join(".data-staging");
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging)?;
    for i in 0..PIN_FILES {
        let data: Vec<u8> = (0..PIN_BYTES).map(|b| (b % 251) as u8 + 1).collect();
        fs::write(staging.join(format!("pin-{i}")), data)?;
    }
    let size_mib = ((PIN_FILES * PIN_BYTES) >> 20) + 8;
    mkfs_ext4(&img, "kmtdata", Some(&staging), size_mib as u64)?;
    fs::remove_dir_all(&staging)?;
    Ok(img)
}

/// Makes `img`: ext4 labelled `label` of `size_mib`, without journal or
/// metadata checksums (the guest needs neither jbd2 replay nor the crc32c
/// driver), filled from `contents` if given. Built beside it and renamed, so
/// an interrupted build never leaves a half-made image under the final name.
fn mkfs_ext4(img: &Path, label: &str, contents: Option<&Path>, size_mib: u64) -> Result<()> {
    let tmp = img.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut c = Command::new("mkfs.ext4");
    c.args(["-q", "-F", "-O", "^metadata_csum,^has_journal", "-L", label]);
    if let Some(dir) = contents {
        c.arg("-d").arg(dir);
    }
    sh(c.arg(&tmp).arg(format!("{size_mib}M")))?;
    fs::rename(&tmp, img)?;
    Ok(())
}

/// busybox, statically linked (Debian's busybox-static, which replaces the
/// dynamically linked busybox package): the host's for its own architecture,
/// else Debian's package for `arch` from trixie, through that architecture's
/// private apt state, unpacked once into the cache.
pub fn busybox(cache: &Path, arch: Arch) -> Result<PathBuf> {
    if arch.is_host() {
        let p = PathBuf::from("/bin/busybox");
        if !p.exists() {
            bail!("no {}; install busybox-static", p.display());
        }
        return Ok(p);
    }
    let out = cache.join(format!("busybox-{}", arch.debian()));
    if out.exists() {
        return Ok(out);
    }
    let suite = Suite::named(cache, "trixie", arch).context("trixie")?;
    let tmp = cache.join(format!(".busybox-{}", arch.debian()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(tmp.join("x"))?;
    suite.unpack("busybox-static", &tmp, &tmp.join("x"))?;
    // usr/bin from trixie on (merged /usr), bin before.
    let bin = ["usr/bin/busybox", "bin/busybox"]
        .iter()
        .map(|b| tmp.join("x").join(b))
        .find(|p| p.exists())
        .context("busybox-static holds no busybox")?;
    fs::rename(&bin, &out)?;
    fs::remove_dir_all(&tmp)?;
    Ok(out)
}

/// Size of the swap disk (the guest's pin scenarios swap out 1 MiB).
const SWAP_BYTES: u64 = 64 << 20;

/// The swap disk: an empty sparse image the guest runs `mkswap` on. Every VM
/// attaches it with `snapshot=on`, so writes go to a private temporary copy and
/// VMs running at once share it.
pub fn swap_disk(cache: &Path) -> Result<PathBuf> {
    let img = cache.join(format!("swap-{}M.img", SWAP_BYTES >> 20));
    if !img.exists() {
        let f = fs::File::create(&img).with_context(|| format!("creating {}", img.display()))?;
        f.set_len(SWAP_BYTES)?;
    }
    Ok(img)
}

/// Size of the scratch disk (the writeback pin writes 1 MiB).
const SCRATCH_MIB: u64 = 16;

/// The scratch disk: an empty ext4 filesystem (no journal, no metadata
/// checksums, as the data disk) the guest mounts read-write at `/scratch`.
/// Attached with `snapshot=on` like the swap disk, so every VM writes to a
/// private copy and the image stays empty.
pub fn scratch_disk(cache: &Path) -> Result<PathBuf> {
    let img = cache.join(format!("scratch-{SCRATCH_MIB}M.ext4"));
    if img.exists() {
        return Ok(img);
    }
    mkfs_ext4(&img, "kmtscratch", None, SCRATCH_MIB)?;
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_newc_and_aligned() {
        let mut c = Cpio::default();
        c.dir("bin");
        c.file("bin/x", 0o755, b"hello");
        let a = c.finish();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        // Second header: after 110 + "bin\0" (4) = 114 → padded to 116.
        assert_eq!(&a[116..122], b"070701");
        let s = String::from_utf8_lossy(&a);
        assert!(s.contains("bin/x\0"));
        assert!(s.contains("hello"));
        assert!(s.contains("TRAILER!!!\0"));
        // mode of the file entry (second field), size 5 (seventh field).
        assert_eq!(&a[116 + 14..116 + 22], b"000081ed");
        assert_eq!(&a[116 + 54..116 + 62], b"00000005");
    }
}
