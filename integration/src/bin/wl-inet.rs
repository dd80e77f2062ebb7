//! wl-inet STATEDIR: listening TCP sockets, UDP sockets and their options,
//! on loopback (run it in a namespace of its own: the ports are fixed by
//! the kernel at set-up and must be free again on restore).
//!
//! - fd 10: TCP listener on 127.0.0.1 (ephemeral port, written to
//!   `tcp4-port`), SO_REUSEADDR, TCP_NODELAY, SO_KEEPALIVE, TCP_KEEPIDLE 77,
//!   TCP_KEEPCNT 5, SO_RCVBUF 100000, backlog 7;
//! - fd 11: TCP listener on [::1], IPV6_V6ONLY, SO_BINDTODEVICE lo,
//!   SO_REUSEPORT;
//! - fds 12, 13: UDP sockets on 127.0.0.1 connected to each other, fd 12
//!   O_NONBLOCK, SO_SNDBUF 50000;
//! - fd 14: UDP on [::] (dual stack, IPV6_V6ONLY off), unconnected;
//! - fd 15: a TCP socket never bound, TCP_NODELAY.
//!
//! With an argument `raw`, `packet` or `netlink`, fd 16 is such a socket
//! (for refusal tests).
//!
//! Check: every option and address as set; both listeners accept a new
//! connection that carries data; fds 12 and 13 exchange datagrams (and
//! still refuse datagrams from elsewhere); fd 14 receives over IPv4 and
//! IPv6; fd 15 can still connect.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::time::Duration;

use stasis_integration::fdutil::*;
use stasis_integration::workload::{Ctx, Verdict};

fn sock(fam: i32, ty: i32) -> R<i32> {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::socket(fam, ty, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", errno()));
    }
    Ok(fd)
}

fn setopt(fd: i32, level: i32, opt: i32, v: i32) -> R<()> {
    // SAFETY: v is a valid int the kernel reads.
    let r = unsafe { libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), 4) };
    if r < 0 {
        return Err(format!("fd {fd}: setsockopt {level}/{opt}: {}", errno()));
    }
    Ok(())
}

fn getopt(fd: i32, level: i32, opt: i32) -> R<i32> {
    let mut v: i32 = 0;
    let mut len = 4u32;
    // SAFETY: v and len are valid for an int option.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut len) };
    if r < 0 {
        return Err(format!("fd {fd}: getsockopt {level}/{opt}: {}", errno()));
    }
    Ok(v)
}

fn bound_dev(fd: i32) -> R<String> {
    let mut b = [0u8; 16];
    let mut len = 16u32;
    // SAFETY: b and len are valid for 16 bytes.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(format!("SO_BINDTODEVICE: {}", errno()));
    }
    let n = b[..len as usize]
        .iter()
        .position(|&c| c == 0)
        .unwrap_or(len as usize);
    Ok(String::from_utf8_lossy(&b[..n]).into_owned())
}

fn to_raw(a: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let s = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            s.sin_family = libc::AF_INET as u16;
            s.sin_port = v.port().to_be();
            s.sin_addr.s_addr = u32::from_ne_bytes(v.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v) => {
            // SAFETY: as above, for sockaddr_in6.
            let s = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            s.sin6_family = libc::AF_INET6 as u16;
            s.sin6_port = v.port().to_be();
            s.sin6_addr.s6_addr = v.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as u32)
}

fn bind(fd: i32, a: SocketAddr) -> R<()> {
    let (ss, len) = to_raw(a);
    // SAFETY: ss holds a valid address of len bytes.
    if unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(format!("bind {a}: {}", errno()));
    }
    Ok(())
}

fn connect(fd: i32, a: SocketAddr) -> R<()> {
    let (ss, len) = to_raw(a);
    // SAFETY: as in bind.
    if unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } < 0 {
        return Err(format!("connect {a}: {}", errno()));
    }
    Ok(())
}

fn name_of(fd: i32, peer: bool) -> R<SocketAddr> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: ss and len describe a writable buffer.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r < 0 {
        return Err(format!(
            "fd {fd}: get{}name: {}",
            if peer { "peer" } else { "sock" },
            errno()
        ));
    }
    Ok(match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in.
            let s = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in) };
            SocketAddr::new(
                IpAddr::from(s.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(s.sin_port),
            )
        }
        _ => {
            // SAFETY: the kernel wrote a sockaddr_in6.
            let s = unsafe { &*(&ss as *const _ as *const libc::sockaddr_in6) };
            SocketAddr::new(IpAddr::from(s.sin6_addr.s6_addr), u16::from_be(s.sin6_port))
        }
    })
}

/// A listener's backlog: `tcpi_sacked` of its TCP_INFO.
fn backlog(fd: i32) -> R<u32> {
    let mut b = [0u8; 104];
    let mut len = b.len() as u32;
    // SAFETY: b and len describe a writable buffer.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            b.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 || len < 32 {
        return Err(format!("TCP_INFO: {}", errno()));
    }
    Ok(u32::from_ne_bytes(b[28..32].try_into().unwrap()))
}

struct Setup {
    names: Vec<(i32, SocketAddr)>,
    rcvbuf10: i32,
    sndbuf12: i32,
}

fn setup(ctx: &Ctx) -> R<Setup> {
    let t4 = sock(libc::AF_INET, libc::SOCK_STREAM)?;
    move_fd(t4, 10, false)?;
    setopt(10, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    setopt(10, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    setopt(10, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setopt(10, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77)?;
    setopt(10, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 5)?;
    setopt(10, libc::SOL_SOCKET, libc::SO_RCVBUF, 100_000)?;
    bind(10, "127.0.0.1:0".parse().unwrap())?;
    // SAFETY: integer arguments.
    if unsafe { libc::listen(10, 7) } < 0 {
        return Err(format!("listen: {}", errno()));
    }
    let t6 = sock(libc::AF_INET6, libc::SOCK_STREAM)?;
    move_fd(t6, 11, false)?;
    setopt(11, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    setopt(11, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    // SAFETY: "lo" and its length.
    if unsafe {
        libc::setsockopt(
            11,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            b"lo".as_ptr().cast(),
            2,
        )
    } < 0
    {
        return Err(format!("SO_BINDTODEVICE: {}", errno()));
    }
    bind(11, "[::1]:0".parse().unwrap())?;
    // SAFETY: integer arguments.
    if unsafe { libc::listen(11, 16) } < 0 {
        return Err(format!("listen: {}", errno()));
    }
    let u1 = sock(libc::AF_INET, libc::SOCK_DGRAM)?;
    move_fd(u1, 12, false)?;
    let u2 = sock(libc::AF_INET, libc::SOCK_DGRAM)?;
    move_fd(u2, 13, false)?;
    setopt(12, libc::SOL_SOCKET, libc::SO_SNDBUF, 50_000)?;
    bind(12, "127.0.0.1:0".parse().unwrap())?;
    bind(13, "127.0.0.1:0".parse().unwrap())?;
    connect(12, name_of(13, false)?)?;
    connect(13, name_of(12, false)?)?;
    setfl(12, libc::O_RDWR | libc::O_NONBLOCK)?;
    let u6 = sock(libc::AF_INET6, libc::SOCK_DGRAM)?;
    move_fd(u6, 14, false)?;
    setopt(14, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    bind(14, "[::]:0".parse().unwrap())?;
    let t = sock(libc::AF_INET, libc::SOCK_STREAM)?;
    move_fd(t, 15, false)?;
    setopt(15, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    let mut names = Vec::new();
    for fd in 10..=14 {
        names.push((fd, name_of(fd, false)?));
    }
    write_atomic_port(ctx, names[0].1.port())?;
    Ok(Setup {
        names,
        rcvbuf10: getopt(10, libc::SOL_SOCKET, libc::SO_RCVBUF)?,
        sndbuf12: getopt(12, libc::SOL_SOCKET, libc::SO_SNDBUF)?,
    })
}

fn write_atomic_port(ctx: &Ctx, port: u16) -> R<()> {
    stasis_integration::workload::write_atomic(&ctx.path("tcp4-port"), &port.to_string())
        .map_err(|e| format!("port file: {e}"))
}

/// Connect to listener `fd` from a new socket and pass a few bytes.
fn through_listener(fd: i32, at: SocketAddr) -> R<()> {
    let mut c = std::net::TcpStream::connect_timeout(&at, Duration::from_secs(5))
        .map_err(|e| format!("connect {at}: {e}"))?;
    // SAFETY: accept with null address pointers returns a new fd or -1.
    let a = unsafe { libc::accept(fd, std::ptr::null_mut(), std::ptr::null_mut()) };
    if a < 0 {
        return Err(format!("accept on fd {fd}: {}", errno()));
    }
    // SAFETY: `a` is a new fd we own.
    let mut s = unsafe { std::net::TcpStream::from_raw_fd(a) };
    use std::io::{Read, Write};
    c.write_all(b"hello").map_err(|e| e.to_string())?;
    let mut b = [0u8; 5];
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.read_exact(&mut b).map_err(|e| format!("read: {e}"))?;
    if &b != b"hello" {
        return Err("garbled".into());
    }
    Ok(())
}

fn dgram(from: i32, to: i32, msg: &[u8]) -> R<()> {
    write_all(from, msg)?;
    if !poll_one(to, libc::POLLIN, 5000)? {
        return Err(format!("fd {to}: nothing arrived from fd {from}"));
    }
    let mut b = [0u8; 64];
    let n = read_once(to, &mut b).map_err(|e| format!("fd {to}: read: errno {e}"))?;
    if &b[..n] != msg {
        return Err(format!("fd {to}: got {:?}", &b[..n]));
    }
    Ok(())
}

fn check(s: &Setup) -> Verdict {
    let mut v = Verdict::new();
    let g = |fd, l, o| getopt(fd, l, o).unwrap_or(-1);
    for &(fd, a) in &s.names {
        v.eq(&format!("fd {fd} address"), name_of(fd, false), Ok(a));
    }
    v.eq(
        "fd 10 SO_REUSEADDR",
        g(10, libc::SOL_SOCKET, libc::SO_REUSEADDR),
        1,
    );
    v.eq(
        "fd 10 TCP_NODELAY",
        g(10, libc::IPPROTO_TCP, libc::TCP_NODELAY),
        1,
    );
    v.eq(
        "fd 10 SO_KEEPALIVE",
        g(10, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        1,
    );
    v.eq(
        "fd 10 TCP_KEEPIDLE",
        g(10, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        77,
    );
    v.eq(
        "fd 10 TCP_KEEPCNT",
        g(10, libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
        5,
    );
    v.eq(
        "fd 10 SO_RCVBUF",
        g(10, libc::SOL_SOCKET, libc::SO_RCVBUF),
        s.rcvbuf10,
    );
    v.eq(
        "fd 10 SO_ACCEPTCONN",
        g(10, libc::SOL_SOCKET, libc::SO_ACCEPTCONN),
        1,
    );
    v.eq("fd 10 backlog", backlog(10), Ok(7));
    v.eq(
        "fd 11 IPV6_V6ONLY",
        g(11, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        1,
    );
    v.eq(
        "fd 11 SO_REUSEPORT",
        g(11, libc::SOL_SOCKET, libc::SO_REUSEPORT),
        1,
    );
    v.eq(
        "fd 11 SO_REUSEADDR",
        g(11, libc::SOL_SOCKET, libc::SO_REUSEADDR),
        0,
    );
    v.eq("fd 11 bound device", bound_dev(11), Ok("lo".to_string()));
    v.eq(
        "fd 12 SO_SNDBUF",
        g(12, libc::SOL_SOCKET, libc::SO_SNDBUF),
        s.sndbuf12,
    );
    v.eq(
        "fd 12 flags",
        status_flags(12),
        Ok(libc::O_RDWR | libc::O_NONBLOCK),
    );
    v.eq("fd 13 flags", status_flags(13), Ok(libc::O_RDWR));
    v.eq("fd 12 peer", name_of(12, true), name_of(13, false));
    v.eq("fd 13 peer", name_of(13, true), name_of(12, false));
    v.eq(
        "fd 14 IPV6_V6ONLY",
        g(14, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
        0,
    );
    v.eq(
        "fd 15 TCP_NODELAY",
        g(15, libc::IPPROTO_TCP, libc::TCP_NODELAY),
        1,
    );
    v.result("fd 10 accepts", through_listener(10, s.names[0].1));
    v.result("fd 11 accepts", through_listener(11, s.names[1].1));
    v.result("fd 12 -> 13", dgram(12, 13, b"to thirteen"));
    v.result("fd 13 -> 12", dgram(13, 12, b"to twelve"));
    let port14 = s.names[4].1.port();
    let other = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string());
    v.result(
        "fd 14 over IPv4",
        other.and_then(|o| {
            o.send_to(b"v4", ("127.0.0.1", port14))
                .map_err(|e| e.to_string())?;
            let fd = o.into_raw_fd();
            close(fd);
            if !poll_one(14, libc::POLLIN, 5000)? {
                return Err("nothing arrived".into());
            }
            let mut b = [0u8; 8];
            let n = read_once(14, &mut b).map_err(|e| format!("errno {e}"))?;
            if &b[..n] != b"v4" {
                return Err(format!("got {:?}", &b[..n]));
            }
            Ok(())
        }),
    );
    let other6 = std::net::UdpSocket::bind("[::1]:0").map_err(|e| e.to_string());
    v.result(
        "fd 14 over IPv6",
        other6.and_then(|o| {
            o.send_to(b"v6", ("::1", port14))
                .map_err(|e| e.to_string())?;
            if !poll_one(14, libc::POLLIN, 5000)? {
                return Err("nothing arrived".into());
            }
            let mut b = [0u8; 8];
            let n = read_once(14, &mut b).map_err(|e| format!("errno {e}"))?;
            if &b[..n] != b"v6" {
                return Err(format!("got {:?}", &b[..n]));
            }
            let _ = o.as_raw_fd();
            Ok(())
        }),
    );
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string());
    v.result(
        "fd 15 connects",
        l.and_then(|l| {
            connect(15, l.local_addr().map_err(|e| e.to_string())?)?;
            l.accept().map(|_| ()).map_err(|e| e.to_string())
        }),
    );
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-inet STATEDIR");
    let s = match setup(&ctx) {
        Ok(s) => s,
        Err(e) => ctx.setup_failed("root", &e),
    };
    let extra = match ctx.args.first().map(String::as_str) {
        Some("raw") => Some((libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)),
        Some("packet") => Some((libc::AF_PACKET, libc::SOCK_DGRAM, 0)),
        Some("netlink") => Some((libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)),
        _ => None,
    };
    if let Some((f, t, p)) = extra {
        // SAFETY: integer arguments only.
        let fd = unsafe { libc::socket(f, t, p) };
        if fd < 0 {
            ctx.setup_failed("root", &format!("socket({f}, {t}, {p}): {}", errno()));
        }
        if let Err(e) = move_fd(fd, 16, false) {
            ctx.setup_failed("root", &e);
        }
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let v = check(&s);
    ctx.finish("root", v);
}
