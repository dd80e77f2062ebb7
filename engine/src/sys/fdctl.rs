//! fcntl/ioctl calls on one fd that pass structures: the owner of an open
//! file (F_GETOWN_EX/F_SETOWN_EX, F_GETOWNER_UIDS, F_GETSIG/F_SETSIG) and
//! terminal state (termios, window size, pty number and flags).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_GETOWNER_UIDS: i32 = 17;

#[repr(C)]
#[derive(Default)]
struct FOwnerEx {
    ty: i32,
    pid: i32,
}

/// fcntl(F_GETOWN_EX): (owner type F_OWNER_TID/PID/PGRP, pid).
pub fn get_owner(fd: BorrowedFd<'_>) -> io::Result<(i32, i32)> {
    let mut o = FOwnerEx::default();
    // SAFETY: F_GETOWN_EX writes one struct f_owner_ex to the pointer.
    cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut o as *mut FOwnerEx) }
            as libc::c_long,
    )?;
    Ok((o.ty, o.pid))
}

/// fcntl(F_SETOWN_EX).
pub fn set_owner(fd: BorrowedFd<'_>, ty: i32, pid: i32) -> io::Result<()> {
    let o = FOwnerEx { ty, pid };
    // SAFETY: F_SETOWN_EX reads one struct f_owner_ex from the pointer.
    cvt(
        unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &o as *const FOwnerEx) } as libc::c_long,
    )?;
    Ok(())
}

/// fcntl(F_GETOWNER_UIDS): (uid, euid) recorded when the owner was set.
pub fn get_owner_uids(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    let mut u = [0u32; 2];
    // SAFETY: F_GETOWNER_UIDS writes two uid_t values to the pointer.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWNER_UIDS, u.as_mut_ptr()) } as libc::c_long)?;
    Ok((u[0], u[1]))
}

/// fcntl(F_GETSIG).
pub fn get_sig(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: integer-only fcntl.
    Ok(cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) } as libc::c_long)? as i32)
}

/// fcntl(F_SETSIG).
pub fn set_sig(fd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: integer-only fcntl.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig) } as libc::c_long)?;
    Ok(())
}

/// An fd number of our own table, borrowed for a call (`fd` must be open).
pub fn with_raw<T>(fd: i32, f: impl FnOnce(BorrowedFd<'_>) -> T) -> T {
    // SAFETY: the caller names an fd that is open in this process for the
    // duration of the call; it is not closed through the borrow.
    f(unsafe { BorrowedFd::borrow_raw(fd) })
}

// ------------------------------------------------------------- terminals

/// An all-zero termios to fill in.
pub fn zero_termios() -> libc::termios {
    // SAFETY: termios is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// tcgetattr as the kernel's `struct termios` (TCGETS).
pub fn tcgets(fd: BorrowedFd<'_>) -> io::Result<libc::termios> {
    let mut t = zero_termios();
    // SAFETY: TCGETS writes one struct termios to the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS, &mut t) } as libc::c_long)?;
    Ok(t)
}

/// tcsetattr(TCSANOW) (TCSETS).
pub fn tcsets(fd: BorrowedFd<'_>, t: &libc::termios) -> io::Result<()> {
    // SAFETY: TCSETS reads one struct termios from the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS, t) } as libc::c_long)?;
    Ok(())
}

/// TIOCGWINSZ.
pub fn get_winsize(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    // SAFETY: winsize is plain old data.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one struct winsize to the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w) } as libc::c_long)?;
    Ok(w)
}

/// TIOCSWINSZ.
pub fn set_winsize(fd: BorrowedFd<'_>, w: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads one struct winsize from the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, w) } as libc::c_long)?;
    Ok(())
}

/// An ioctl that reads one int: TIOCGPTN, TIOCGPKT, TIOCGPTLCK, TIOCGSID,
/// TIOCGPGRP, TIOCGEXCL.
pub fn ioctl_get_int(fd: BorrowedFd<'_>, req: libc::Ioctl) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these requests write one int to the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) } as libc::c_long)?;
    Ok(v)
}

/// An ioctl that takes a pointer to one int: TIOCSPTLCK, TIOCPKT, TIOCSPGRP.
pub fn ioctl_set_int(fd: BorrowedFd<'_>, req: libc::Ioctl, v: i32) -> io::Result<()> {
    let v: libc::c_int = v;
    // SAFETY: these requests read one int from the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, &v) } as libc::c_long)?;
    Ok(())
}

/// An ioctl with an integer argument: TIOCSCTTY, TIOCEXCL.
pub fn ioctl_arg(fd: BorrowedFd<'_>, req: libc::Ioctl, arg: libc::c_ulong) -> io::Result<()> {
    // SAFETY: integer argument only.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) } as libc::c_long)?;
    Ok(())
}

/// TIOCGPTPEER: open the slave of pty master `fd` with `flags`.
pub fn open_peer(fd: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer argument only; a new fd is returned.
    let r = cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTPEER, flags) } as libc::c_long)?;
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}
