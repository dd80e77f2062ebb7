//! kcmp(2): are two kernel objects, seen from two tasks, the same?
//!
//! Results order objects by kernel pointer (scrambled), so they can also be
//! used to sort and dedupe: 0 equal, 1 less, 2 greater, 3 different but not
//! ordered.

use std::io;

use super::cvt;

/// Compare open file descriptions (`idx1`, `idx2` are fds).
pub const KCMP_FILE: i32 = 0;
/// Compare address spaces.
pub const KCMP_VM: i32 = 1;
/// Compare fd tables.
pub const KCMP_FILES: i32 = 2;
/// Compare fs info (root, cwd, umask).
pub const KCMP_FS: i32 = 3;
/// Compare signal handler tables.
pub const KCMP_SIGHAND: i32 = 4;
/// Compare I/O contexts.
pub const KCMP_IO: i32 = 5;
/// Compare SysV semaphore undo lists.
pub const KCMP_SYSVSEM: i32 = 6;
/// Compare a file with an epoll target (see [`kcmp_epoll_tfd`]).
pub const KCMP_EPOLL_TFD: i32 = 7;

/// `kcmp(pid1, pid2, kind, idx1, idx2)`: 0 if the objects are the same.
///
/// `KCMP_EPOLL_TFD` takes a pointer argument and is only available through
/// [`kcmp_epoll_tfd`]; passing it here fails with EINVAL.
pub fn kcmp(pid1: i32, pid2: i32, kind: i32, idx1: u64, idx2: u64) -> io::Result<i32> {
    if kind == KCMP_EPOLL_TFD {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: all other kinds take integers only; the kernel dereferences
    // no pointer of ours.
    let r = cvt(unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            kind as libc::c_long,
            idx1 as libc::c_ulong,
            idx2 as libc::c_ulong,
        )
    })?;
    Ok(r as i32)
}

/// Whether `fd1` of `pid1` and `fd2` of `pid2` are the same open file
/// description (dup'd, inherited or passed), not merely the same file.
pub fn kcmp_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> io::Result<bool> {
    Ok(kcmp(pid1, pid2, KCMP_FILE, fd1 as u64, fd2 as u64)? == 0)
}

#[repr(C)]
struct KcmpEpollSlot {
    efd: u32,
    tfd: u32,
    toff: u32,
}

/// Whether `fd1` of `pid1` is the file registered as target `tfd` (the
/// `toff`-th registration of that fd number) in epoll `epfd` of `pid2`.
pub fn kcmp_epoll_tfd(
    pid1: i32,
    fd1: i32,
    pid2: i32,
    epfd: i32,
    tfd: i32,
    toff: u32,
) -> io::Result<bool> {
    let slot = KcmpEpollSlot {
        efd: epfd as u32,
        tfd: tfd as u32,
        toff,
    };
    // SAFETY: for KCMP_EPOLL_TFD the kernel reads one kcmp_epoll_slot from
    // idx2, which points at `slot`, alive for the call.
    let r = cvt(unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            KCMP_EPOLL_TFD as libc::c_long,
            fd1 as libc::c_ulong,
            &slot as *const KcmpEpollSlot,
        )
    })?;
    Ok(r == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn self_comparisons() {
        let me = std::process::id() as i32;
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let g = f.try_clone().unwrap(); // dup: same description
        let h = std::fs::File::open("/proc/self/status").unwrap();
        assert!(kcmp_file(me, f.as_raw_fd(), me, g.as_raw_fd()).unwrap());
        assert!(!kcmp_file(me, f.as_raw_fd(), me, h.as_raw_fd()).unwrap());
        assert_eq!(kcmp(me, me, KCMP_VM, 0, 0).unwrap(), 0);
        assert_eq!(kcmp(me, me, KCMP_FILES, 0, 0).unwrap(), 0);
        assert!(kcmp(me, me, KCMP_EPOLL_TFD, 0, 0).is_err());
    }

    #[test]
    fn epoll_target() {
        use std::os::fd::{FromRawFd, OwnedFd};
        let me = std::process::id() as i32;
        // SAFETY: plain syscall; the result is checked before use.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        assert!(ep >= 0);
        // SAFETY: `ep` is a fresh fd that we own from here on.
        let ep = unsafe { OwnedFd::from_raw_fd(ep) };
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: 1,
        };
        // SAFETY: valid fds and a valid event struct for the call.
        let rc =
            unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, r.as_raw_fd(), &mut ev) };
        assert_eq!(rc, 0);
        let (epfd, rfd) = (ep.as_raw_fd(), r.as_raw_fd());
        assert!(kcmp_epoll_tfd(me, rfd, me, epfd, rfd, 0).unwrap());
        assert!(!kcmp_epoll_tfd(me, w.as_raw_fd(), me, epfd, rfd, 0).unwrap());
    }
}
