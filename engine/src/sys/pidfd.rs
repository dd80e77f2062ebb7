//! pidfd: race-free process handles, fd stealing and signalling.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use super::cvt;

/// `pidfd_open(pid, 0)`: a handle on a live process (thread-group leader).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0) })?;
    // SAFETY: the kernel just returned this new fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A pidfd of thread `tid` (PIDFD_THREAD, Linux 6.9): readable once that
/// thread has exited, not only once its whole process has.
pub fn pidfd_open_thread(tid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_open,
            tid as libc::c_long,
            libc::O_EXCL as libc::c_long,
        )
    })?;
    // SAFETY: the kernel just returned this new fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_getfd(pidfd, fd, 0)`: duplicates the target's `fd` into this
/// process. The copy refers to the same open file description (offsets,
/// queued data and locks are shared: reading it consumes the target's data)
/// and always has FD_CLOEXEC. Needs ptrace access to the target.
pub fn pidfd_getfd(pidfd: impl AsFd, fd: i32) -> io::Result<OwnedFd> {
    let pidfd = pidfd.as_fd().as_raw_fd();
    // SAFETY: plain integer arguments; `pidfd` is borrowed for the call.
    let r = cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd as libc::c_long,
            fd as libc::c_long,
            0,
        )
    })?;
    // SAFETY: the kernel just returned this new fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`: like kill(2), but cannot hit a
/// recycled pid.
pub fn pidfd_send_signal(pidfd: impl AsFd, sig: i32) -> io::Result<()> {
    let pidfd = pidfd.as_fd().as_raw_fd();
    // SAFETY: a null siginfo pointer is allowed (the kernel fills SI_USER).
    cvt(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd as libc::c_long,
            sig as libc::c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::kcmp::kcmp_file;
    use std::os::fd::AsRawFd;

    #[test]
    fn steal_own_fd_and_signal_zero() {
        let me = std::process::id() as i32;
        let pidfd = pidfd_open(me).unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let stolen = pidfd_getfd(&pidfd, file.as_raw_fd()).unwrap();
        // Same open file description.
        assert!(kcmp_file(me, file.as_raw_fd(), me, stolen.as_raw_fd()).unwrap());
        let flags = nix::fcntl::fcntl(stolen.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & libc::FD_CLOEXEC, 0);
        let e = pidfd_getfd(&pidfd, 99_999).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        // Signal 0 only checks permission and existence.
        pidfd_send_signal(&pidfd, 0).unwrap();
    }
}
