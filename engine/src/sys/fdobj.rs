//! Kernel objects behind fds that have no path: pipes, eventfd, signalfd,
//! timerfd and memfd. Safe wrappers for creating them and for looking at them
//! without changing what their owner sees (tee, FIONREAD, gettime, seals).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just returned to us;
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// pipe2(2): (read end, write end).
pub fn pipe2(flags: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1i32; 2];
    // SAFETY: `fds` has room for the two descriptors the kernel writes.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } as libc::c_long)?;
    Ok((owned(fds[0] as libc::c_long), owned(fds[1] as libc::c_long)))
}

/// tee(2): duplicate up to `len` bytes queued in pipe `from` into pipe `to`
/// without consuming them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize, flags: u32) -> io::Result<usize> {
    // SAFETY: plain descriptor and integer arguments; no memory is passed.
    let n = unsafe { libc::tee(from.as_raw_fd(), to.as_raw_fd(), len, flags) };
    Ok(cvt(n as libc::c_long)? as usize)
}

/// ioctl(FIONREAD): bytes queued in a pipe (or socket).
pub fn fionread(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer we pass.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } as libc::c_long)?;
    Ok(n.max(0) as usize)
}

/// fcntl(F_GETPIPE_SZ).
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: integer-only fcntl.
    Ok(cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) } as libc::c_long)? as usize)
}

/// fcntl(F_SETPIPE_SZ); returns the capacity the kernel chose.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    // SAFETY: integer-only fcntl.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) };
    Ok(cvt(r as libc::c_long)? as usize)
}

/// fcntl(F_GETFL).
pub fn get_fl(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: integer-only fcntl.
    Ok(cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) } as libc::c_long)? as i32)
}

/// fcntl(F_SETFL).
pub fn set_fl(fd: BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    // SAFETY: integer-only fcntl.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) } as libc::c_long)?;
    Ok(())
}

/// eventfd2(2) with an initial count of 0 (larger counts are written after).
pub fn eventfd(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_eventfd2, 0u32, flags) })?;
    Ok(owned(fd))
}

/// signalfd4(2) for a new signalfd accepting the signals of `mask` (bit
/// `n-1` = signal `n`).
pub fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: the kernel reads 8 bytes (the sigset size we pass) from `mask`.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_signalfd4,
            -1i32,
            &mask as *const u64,
            8usize,
            flags,
        )
    })?;
    Ok(owned(fd))
}

/// A timer value: (seconds, nanoseconds) of the first expiry and the period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerSpec {
    pub value: (u64, u64),
    pub interval: (u64, u64),
}

fn ts(v: (u64, u64)) -> libc::timespec {
    libc::timespec {
        tv_sec: v.0 as libc::time_t,
        tv_nsec: v.1 as libc::c_long,
    }
}

/// timerfd_create(2).
pub fn timerfd_create(clockid: i32, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_timerfd_create, clockid, flags) })?;
    Ok(owned(fd))
}

/// timerfd_settime(2) (the old value is not returned).
pub fn timerfd_settime(fd: BorrowedFd<'_>, flags: i32, spec: &TimerSpec) -> io::Result<()> {
    let new = libc::itimerspec {
        it_interval: ts(spec.interval),
        it_value: ts(spec.value),
    };
    // SAFETY: `new` is a valid itimerspec read by the kernel; the old-value
    // pointer is NULL.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_timerfd_settime,
            fd.as_raw_fd(),
            flags,
            &new as *const libc::itimerspec,
            std::ptr::null_mut::<libc::itimerspec>(),
        )
    })?;
    Ok(())
}

/// timerfd_gettime(2): time left and period. On an expired periodic timer
/// this also accounts the missed periods in its tick count and re-arms it,
/// exactly as the owner's next read would.
pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> io::Result<TimerSpec> {
    // SAFETY: an all-zero itimerspec is valid.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: `cur` is a valid itimerspec for the kernel to fill.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_timerfd_gettime,
            fd.as_raw_fd(),
            &mut cur as *mut libc::itimerspec,
        )
    })?;
    Ok(TimerSpec {
        value: (cur.it_value.tv_sec as u64, cur.it_value.tv_nsec as u64),
        interval: (
            cur.it_interval.tv_sec as u64,
            cur.it_interval.tv_nsec as u64,
        ),
    })
}

/// `TFD_IOC_SET_TICKS` = _IOW('T', 0, u64) (needs CONFIG_CHECKPOINT_RESTORE).
pub const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// Set the unread expiration count of a timerfd (must be > 0).
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> io::Result<()> {
    // SAFETY: the ioctl reads one u64 from the pointer we pass.
    cvt(
        unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) }
            as libc::c_long,
    )?;
    Ok(())
}

/// clock_gettime(2) as (seconds, nanoseconds).
pub fn clock_gettime(clockid: i32) -> io::Result<(u64, u64)> {
    // SAFETY: an all-zero timespec is valid.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid timespec for the kernel to fill.
    cvt(unsafe { libc::clock_gettime(clockid, &mut t) } as libc::c_long)?;
    Ok((t.tv_sec as u64, t.tv_nsec as u64))
}

/// memfd_create(2) with explicit flags.
pub fn memfd_create(name: &str, flags: u32) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_memfd_create, c.as_ptr(), flags) })?;
    Ok(owned(fd))
}

/// fcntl(F_GET_SEALS).
pub fn get_seals(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: integer-only fcntl.
    Ok(cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) } as libc::c_long)? as u32)
}

/// fcntl(F_ADD_SEALS).
pub fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    // SAFETY: integer-only fcntl.
    cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) }
            as libc::c_long,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn tee_peeks_without_consuming() {
        let (r, w) = pipe2(libc::O_CLOEXEC).unwrap();
        nix::unistd::write(&w, b"hello").unwrap();
        assert_eq!(fionread(r.as_fd()).unwrap(), 5);
        let (pr, pw) = pipe2(libc::O_CLOEXEC).unwrap();
        assert_eq!(tee(r.as_fd(), pw.as_fd(), 5, 0).unwrap(), 5);
        assert_eq!(fionread(r.as_fd()).unwrap(), 5);
        let mut b = [0u8; 5];
        nix::unistd::read(pr.as_raw_fd(), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(pipe_size(r.as_fd()).unwrap() >= 4096);
    }

    #[test]
    fn timerfd_ticks_can_be_set() {
        let t = timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC).unwrap();
        let spec = TimerSpec {
            value: (100, 0),
            interval: (100, 0),
        };
        timerfd_settime(t.as_fd(), 0, &spec).unwrap();
        timerfd_set_ticks(t.as_fd(), 7).unwrap();
        let mut b = [0u8; 8];
        nix::unistd::read(t.as_raw_fd(), &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 7);
        let got = timerfd_gettime(t.as_fd()).unwrap();
        assert_eq!(got.interval, (100, 0));
        assert!(got.value.0 <= 100 && got.value.0 >= 98);
    }

    #[test]
    fn memfd_seals() {
        let m = memfd_create("t", libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING).unwrap();
        add_seals(m.as_fd(), libc::F_SEAL_GROW as u32).unwrap();
        assert_eq!(get_seals(m.as_fd()).unwrap(), libc::F_SEAL_GROW as u32);
        let s = signalfd(1 << (libc::SIGUSR1 - 1), libc::SFD_CLOEXEC).unwrap();
        drop(s);
        let e = eventfd(libc::EFD_CLOEXEC).unwrap();
        drop(e);
    }
}
