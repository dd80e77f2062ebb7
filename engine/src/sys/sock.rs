//! Sockets: the raw socket options and ioctls nix does not wrap (or wraps
//! too strictly), and the NETLINK_SOCK_DIAG socket through which the kernel
//! describes unix sockets (peers, names, pending connections).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::cvt;

/// SIOCPROTOPRIVATE + 0 on AF_UNIX: an O_PATH fd of the bound socket file.
const SIOCUNIXFILE: libc::c_ulong = 0x89E0;
/// NETLINK_SOCK_DIAG protocol number.
const NETLINK_SOCK_DIAG: i32 = 4;

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: callers pass a descriptor the kernel just returned to us;
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// getsockopt for an int-sized option.
pub fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32) -> io::Result<i32> {
    let mut v: i32 = 0;
    let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
    // SAFETY: `v` and `len` are valid for writes of the sizes given.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&mut v as *mut i32).cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok(v)
}

/// setsockopt for an int-sized option.
pub fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: `v` is a valid int the kernel only reads.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    } as libc::c_long)?;
    Ok(())
}

/// getsockopt into a byte buffer; returns the length the kernel wrote.
pub fn getsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: i32,
    opt: i32,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is valid for writes of `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok(len as usize)
}

/// setsockopt from a byte buffer.
pub fn setsockopt_bytes(fd: BorrowedFd<'_>, level: i32, opt: i32, buf: &[u8]) -> io::Result<()> {
    // SAFETY: `buf` is valid for reads of its length.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            buf.as_ptr().cast(),
            buf.len() as libc::socklen_t,
        )
    } as libc::c_long)?;
    Ok(())
}

/// SIOCINQ: bytes queued for reading (for datagram sockets: the size of
/// the first datagram).
pub fn inq(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCINQ writes one int to the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut v) } as libc::c_long)?;
    Ok(v)
}

/// SIOCUNIXFILE: an O_PATH descriptor of the file a unix socket is bound
/// to (ENOENT when unbound or bound to an abstract name).
pub fn unix_file(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: SIOCUNIXFILE takes no argument and returns a new descriptor.
    let r = cvt(unsafe { libc::ioctl(fd.as_raw_fd(), SIOCUNIXFILE as _, 0) } as libc::c_long)?;
    Ok(owned(r))
}

/// socket(2).
pub fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; the result is a new fd.
    let r = cvt(unsafe { libc::socket(domain, ty, proto) } as libc::c_long)?;
    Ok(owned(r))
}

/// listen(2) with any backlog (the kernel clamps it to somaxconn).
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) } as libc::c_long)?;
    Ok(())
}

/// accept4 with SOCK_CLOEXEC | SOCK_NONBLOCK, no peer address.
pub fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; the result is a new fd.
    let r = cvt(unsafe {
        libc::accept4(
            fd.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    } as libc::c_long)?;
    Ok(owned(r))
}

/// Whether `fd` is readable (or has a pending connection) right now.
pub fn readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = cvt(unsafe { libc::poll(&mut p, 1, timeout_ms) } as libc::c_long)?;
    Ok(n > 0 && p.revents & libc::POLLIN != 0)
}

/// A NETLINK_SOCK_DIAG socket (in the caller's network namespace).
pub fn diag_socket() -> io::Result<OwnedFd> {
    // SAFETY: integer arguments; the result is a new fd.
    let r = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    } as libc::c_long)?;
    Ok(owned(r))
}

/// Send one netlink request to the kernel.
pub fn nl_send(fd: BorrowedFd<'_>, msg: &[u8]) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_nl is valid (pid 0: the kernel).
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    loop {
        // SAFETY: `msg` and `sa` are valid for reads of the sizes given.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        match cvt(r as libc::c_long) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(n) if n as usize != msg.len() => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short netlink send",
                ))
            }
            Ok(_) => return Ok(()),
        }
    }
}

/// Receive one netlink datagram (a batch of messages).
pub fn nl_recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    super::cvt_retry(|| {
        // SAFETY: `buf` is valid for writes of its length.
        unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) as libc::c_long }
    })
    .map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn options_and_inq() {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        assert_eq!(
            getsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap(),
            libc::AF_UNIX
        );
        assert_eq!(
            getsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
            -1
        );
        setsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1).unwrap();
        assert_eq!(
            getsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED).unwrap(),
            1
        );
        nix::unistd::write(&b, b"hello").unwrap();
        assert_eq!(inq(a.as_fd()).unwrap(), 5);
        assert!(readable(a.as_fd(), 0).unwrap());
        assert!(!readable(b.as_fd(), 0).unwrap());
        // Unbound: no socket file.
        assert!(unix_file(a.as_fd()).is_err());
    }
}
