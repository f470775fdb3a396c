//! The socket pins' plumbing: a socket created by a child inside a memcg
//! (charged to it) and passed back to the guest with SCM_RIGHTS, so the
//! guest holds the memcg's socket memory after the child and the cgroup are
//! gone.

use std::{
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::Path,
    thread,
};

use anyhow::{bail, Context, Result};

use crate::scenario::in_cgroup;

/// A socket of `kind` created by a child inside `cgroup` and passed back over a
/// UNIX socket with SCM_RIGHTS; the child has exited when this returns.
pub fn socket_from(cgroup: &Path, kind: &str) -> Result<OwnedFd> {
    let path = format!("/tmp/kmt-pass-{kind}");
    let _ = fs::remove_file(&path);
    let listener = UnixListener::bind(&path).with_context(|| format!("binding {path}"))?;
    let cg = cgroup.to_path_buf();
    let kind_s = kind.to_string();
    let p2 = path.clone();
    let child = thread::spawn(move || in_cgroup(&cg, &["socket", &kind_s, &p2]));
    let (stream, _) = listener
        .accept()
        .context("accepting the child's connection")?;
    let fd = recv_fd(&stream)?;
    child
        .join()
        .map_err(|_| anyhow::anyhow!("child thread panicked"))??;
    let _ = fs::remove_file(&path);
    Ok(fd)
}

/// `child CGROUP socket KIND PATH`: (already in the cgroup) creates the socket
/// and sends it to the UNIX socket at PATH.
pub fn child_socket(kind: &str, path: &str) -> Result<()> {
    let (domain, ty) = match kind {
        "udp" => (libc::AF_INET, libc::SOCK_DGRAM),
        "tcp" => (libc::AF_INET, libc::SOCK_STREAM),
        "unix" => (libc::AF_UNIX, libc::SOCK_STREAM),
        _ => bail!("unknown socket kind {kind:?}"),
    };
    // SAFETY: plain socket(2); the result is checked and owned below.
    let raw = unsafe { libc::socket(domain, ty, 0) };
    if raw < 0 {
        bail!("socket({kind}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: raw is a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let stream = UnixStream::connect(path).with_context(|| format!("connecting {path}"))?;
    send_fd(&stream, sock.as_raw_fd())
}

const CMSG_SPACE: usize = 24; // CMSG_SPACE(sizeof(int)) on 64-bit Linux

fn send_fd(stream: &UnixStream, fd: RawFd) -> Result<()> {
    let mut byte = [0u8; 1];
    let mut buf = [0u8; CMSG_SPACE];
    // SAFETY: msghdr and cmsg built over local buffers that outlive sendmsg;
    // CMSG_* compute offsets inside `buf`, sized for one int.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        if libc::sendmsg(stream.as_raw_fd(), &msg, 0) < 0 {
            bail!("sendmsg: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fd(stream: &UnixStream) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut buf = [0u8; CMSG_SPACE];
    // SAFETY: as in send_fd; the received descriptor is checked before use.
    unsafe {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = buf.len();
        if libc::recvmsg(stream.as_raw_fd(), &mut msg, 0) < 1 {
            bail!("recvmsg: {}", std::io::Error::last_os_error());
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            bail!("no descriptor passed");
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}
