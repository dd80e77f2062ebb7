//! The few calls that need `unsafe`: fork, the controlling-terminal ioctl
//! and the immediate exit of a forked child.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

pub use nix::unistd::ForkResult;

/// fork(2). The `stasis` CLI is single-threaded; the containerd shim is
/// not, but its other threads hold no lock the child takes: glibc resets
/// its malloc and stdio locks in the child, and the shim installs no
/// `tracing` subscriber, so the child's logging takes no lock either.
pub fn fork() -> nix::Result<ForkResult> {
    // SAFETY: see above: the child only takes locks that are either
    // reset by glibc's fork or never held by the caller's other threads.
    unsafe { nix::unistd::fork() }
}

/// Leave a forked child at once: no atexit handlers, no stdio flush of the
/// parent's buffers.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Make `fd` (a terminal) the controlling terminal of this session.
pub fn set_ctty(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument, no memory is passed.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    nix::errno::Errno::result(r).map(drop)
}

/// Set the terminal size of `fd`.
pub fn set_winsize(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize that lives on our stack.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    nix::errno::Errno::result(r).map(drop)
}

/// Take ownership of an fd the kernel just installed in this process
/// (SCM_RIGHTS).
pub fn own_received_fd(fd: std::os::fd::RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was created by recvmsg for us and nothing else refers to it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
