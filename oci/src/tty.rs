//! Terminals: a new pty inside the container whose master goes to the
//! caller's --console-socket with SCM_RIGHTS (runc's protocol: the payload
//! is the pty name, the fd rides along).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::OFlag;
use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use crate::error::{bail, IoCtx, Result, SysCtx};
use crate::sys;

pub fn connect(path: &Path) -> Result<UnixStream> {
    match UnixStream::connect(path) {
        Ok(s) => Ok(s),
        Err(e) => bail!("console socket {}: {e}", path.display()),
    }
}

/// Open a pty in this (container) mount namespace, send its master over
/// `sock`, make the slave our controlling terminal and stdio.
pub fn setup(sock: &UnixStream, size: Option<(u16, u16)>) -> Result<()> {
    let master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).what("open /dev/ptmx")?;
    grantpt(&master).what("grantpt")?;
    unlockpt(&master).what("unlockpt")?;
    let name = ptsname_r(&master).what("ptsname")?;
    let slave: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .at(&name)?
        .into();
    if let Some((rows, cols)) = size {
        let _ = sys::set_winsize(slave.as_fd(), rows, cols);
    }
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(name.as_bytes())];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .what("send the pty master to the console socket")?;
    drop(master);
    nix::unistd::setsid().what("setsid")?;
    sys::set_ctty(slave.as_fd()).what("TIOCSCTTY")?;
    for fd in 0..3 {
        nix::unistd::dup2(slave.as_raw_fd(), fd).what("dup2 the pty slave")?;
    }
    Ok(())
}

/// The console-socket side: the pty master a container process sent
/// over `sock` (runc's protocol, see [`setup`]).
pub fn recv_master(sock: &UnixStream) -> Result<OwnedFd> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .what("receive the pty master from the console socket")?;
    let mut got = Vec::new();
    for c in msg.cmsgs().what("console socket control message")? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            got.extend(fds.into_iter().map(sys::own_received_fd));
        }
    }
    match got.into_iter().next() {
        Some(fd) => Ok(fd),
        None => bail!("console socket: no pty master in the message"),
    }
}

/// Set the size of a terminal (the pty master a shim holds).
pub fn resize(fd: std::os::fd::BorrowedFd<'_>, rows: u16, cols: u16) -> Result<()> {
    sys::set_winsize(fd, rows, cols).what("TIOCSWINSZ")
}

/// Send an existing pty master (a restored container's) over `sock`, as
/// runc forwards CRIU's orphan-pts-master.
pub fn send_master(sock: &UnixStream, master: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [IoSlice::new(b"orphan-pts-master")];
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .what("send the restored pty master to the console socket")?;
    Ok(())
}
