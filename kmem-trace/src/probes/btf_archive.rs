//! BTF files as operators get them for kernels without `/sys/kernel/btf/vmlinux`:
//! a raw `.btf` (BTFHub's extracted files, `kmem-trace btf --minimize` output)
//! or a BTFHub archive, `<release>.btf.tar.xz`, a tar holding one `<release>.btf`.
//! Told apart by their first bytes, not their names.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Errors of reading a `--btf` file.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read {path}: {source}; check the --btf path")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid xz file ({reason}); download the BTFHub archive again, or pass the extracted .btf")]
    Xz { path: PathBuf, reason: String },
    #[error("{path} is not a valid tar archive ({reason}); a BTFHub archive is a .btf.tar.xz holding one <release>.btf: download it again, or pass the extracted .btf")]
    Tar { path: PathBuf, reason: String },
    #[error(
        "{path} holds no .btf file; pass a BTFHub archive (<release>.btf.tar.xz) or a raw .btf"
    )]
    NoBtf { path: PathBuf },
    #[error("{path} holds several .btf files ({names}); extract the one for this kernel ({release}.btf) and pass it")]
    Several {
        path: PathBuf,
        names: String,
        release: String,
    },
    #[error("{path} unpacks to more than {limit} MiB; this is not a kernel BTF archive")]
    TooBig { path: PathBuf, limit: usize },
    #[error("{path} is neither BTF nor a BTFHub .btf.tar.xz archive (it starts with {head}); pass the kernel's BTF: a raw .btf or its BTFHub archive")]
    Unknown { path: PathBuf, head: String },
}

/// `BTF_MAGIC` (0xeB9F) as stored little- or big-endian.
const BTF_LE: [u8; 2] = [0x9f, 0xeb];
const BTF_BE: [u8; 2] = [0xeb, 0x9f];
/// The xz stream header magic.
const XZ: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
/// Largest unpacked archive accepted: vmlinux BTF is 3 to 10 MiB, so this only
/// stops a decompression bomb.
const LIMIT_MIB: usize = 256;

/// The raw BTF in `path`: the file itself, or the `.btf` inside a BTFHub
/// archive (xz-compressed tar; an uncompressed tar too). With several, the one
/// named after `release` (`uname -r`).
pub fn read(path: &Path, release: &str) -> Result<Vec<u8>, ArchiveError> {
    let bytes = std::fs::read(path).map_err(|source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(path, bytes, release)
}

/// [`read`] on bytes already read (`path` only names them in errors).
pub fn from_bytes(path: &Path, bytes: Vec<u8>, release: &str) -> Result<Vec<u8>, ArchiveError> {
    if bytes.starts_with(&BTF_LE) || bytes.starts_with(&BTF_BE) {
        return Ok(bytes);
    }
    if bytes.starts_with(&XZ) {
        let tar = unxz(path, &bytes)?;
        return untar(path, &tar, release);
    }
    if is_tar(&bytes) {
        return untar(path, &bytes, release);
    }
    let head = bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    Err(ArchiveError::Unknown {
        path: path.to_path_buf(),
        head: if head.is_empty() {
            "nothing: it is empty".into()
        } else {
            head
        },
    })
}

/// A POSIX tar: `ustar` at offset 257 of the first header block.
fn is_tar(bytes: &[u8]) -> bool {
    bytes.get(257..262) == Some(b"ustar")
}

/// A `Vec` that refuses to grow past [`LIMIT_MIB`].
struct Capped(Vec<u8>);

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > LIMIT_MIB << 20 {
            return Err(std::io::Error::other("limit"));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn unxz(path: &Path, bytes: &[u8]) -> Result<Vec<u8>, ArchiveError> {
    let mut out = Capped(Vec::with_capacity(bytes.len() * 4));
    match lzma_rs::xz_decompress(&mut std::io::Cursor::new(bytes), &mut out) {
        Ok(()) => Ok(out.0),
        Err(_) if out.0.len() + (1 << 20) > LIMIT_MIB << 20 => Err(ArchiveError::TooBig {
            path: path.to_path_buf(),
            limit: LIMIT_MIB,
        }),
        Err(e) => Err(ArchiveError::Xz {
            path: path.to_path_buf(),
            reason: e.to_string().to_lowercase(),
        }),
    }
}

fn untar(path: &Path, tar: &[u8], release: &str) -> Result<Vec<u8>, ArchiveError> {
    let bad = |e: std::io::Error| ArchiveError::Tar {
        path: path.to_path_buf(),
        reason: e.to_string().to_lowercase(),
    };
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        if !name.ends_with(".btf") {
            continue;
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(bad)?;
        found.push((name, data));
    }
    let want = format!("{release}.btf");
    let pick = match found.len() {
        0 => None,
        1 => found.pop(),
        _ => match found.iter().position(|(n, _)| {
            Path::new(n).file_name().and_then(|f| f.to_str()) == Some(want.as_str())
        }) {
            Some(i) => Some(found.swap_remove(i)),
            None => {
                return Err(ArchiveError::Several {
                    path: path.to_path_buf(),
                    names: found
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    release: release.to_string(),
                })
            }
        },
    };
    match pick {
        Some((_, data)) => Ok(data),
        None => Err(ArchiveError::NoBtf {
            path: path.to_path_buf(),
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const RAW: &[u8] = &[0x9f, 0xeb, 1, 0, 24, 0, 0, 0];

    /// A BTFHub-style archive: a tar of `files`, xz-compressed.
    pub(crate) fn archive(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut std::io::Cursor::new(tar), &mut xz).unwrap();
        xz
    }

    fn read(bytes: Vec<u8>) -> Result<Vec<u8>, ArchiveError> {
        from_bytes(Path::new("f"), bytes, "5.4.0-1-generic")
    }

    #[test]
    fn raw_btf_passes_through() {
        assert_eq!(read(RAW.to_vec()).unwrap(), RAW);
    }

    #[test]
    fn a_btfhub_archive_gives_its_btf() {
        let a = archive(&[("5.4.0-1-generic.btf", RAW)]);
        assert_eq!(read(a).unwrap(), RAW);
        // A directory inside, and other files beside it.
        let a = archive(&[("README", b"x"), ("ubuntu/5.4.0-1-generic.btf", RAW)]);
        assert_eq!(read(a).unwrap(), RAW);
    }

    #[test]
    fn of_several_the_running_release_is_taken() {
        let other: &[u8] = &[0x9f, 0xeb, 1, 0, 24, 0, 0, 1];
        let a = archive(&[("4.18.0.btf", other), ("5.4.0-1-generic.btf", RAW)]);
        assert_eq!(read(a).unwrap(), RAW);
        let a = archive(&[("4.18.0.btf", other), ("5.10.0.btf", RAW)]);
        assert_eq!(
            read(a).unwrap_err().to_string(),
            "f holds several .btf files (4.18.0.btf, 5.10.0.btf); extract the one for this kernel (5.4.0-1-generic.btf) and pass it"
        );
    }

    #[test]
    fn bad_files_say_what_to_do() {
        let e = read(archive(&[("README", b"x")])).unwrap_err().to_string();
        assert_eq!(
            e,
            "f holds no .btf file; pass a BTFHub archive (<release>.btf.tar.xz) or a raw .btf"
        );
        let mut a = archive(&[("5.4.0-1-generic.btf", RAW)]);
        a.truncate(a.len() / 2);
        let e = read(a).unwrap_err().to_string();
        assert!(e.starts_with("f is not a valid xz file ("), "{e}");
        assert!(e.ends_with("download the BTFHub archive again, or pass the extracted .btf"));
        let e = read(b"\x7fELF\x02\x01\x01\x00rest".to_vec())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "f is neither BTF nor a BTFHub .btf.tar.xz archive (it starts with 7f 45 4c 46 02 01 01 00); pass the kernel's BTF: a raw .btf or its BTFHub archive");
        let e = read(Vec::new()).unwrap_err().to_string();
        assert!(e.contains("(it starts with nothing: it is empty)"), "{e}");
        let e = super::read(Path::new("/nonexistent.btf.tar.xz"), "r")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read /nonexistent.btf.tar.xz: "),
            "{e}"
        );
        // An xz stream that is not a tar.
        let mut xz = Vec::new();
        lzma_rs::xz_compress(&mut std::io::Cursor::new(vec![1u8; 1000]), &mut xz).unwrap();
        let e = read(xz).unwrap_err().to_string();
        assert!(
            e.starts_with("f is not a valid tar archive") || e.starts_with("f holds no .btf"),
            "{e}"
        );
    }
}
