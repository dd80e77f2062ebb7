//! TCP repair mode (TCP_REPAIR and friends) and the TCP queue ioctls, for
//! saving and rebuilding established connections. Measured behaviour is in
//! KERNEL-NOTES §7; in short:
//! - in repair mode a socket sends nothing, closing it sends no FIN/RST,
//!   `connect` sends no SYN, and `recv(MSG_PEEK)`/`send` act on the queue
//!   chosen with TCP_REPAIR_QUEUE;
//! - TCP_QUEUE_SEQ reads rcv_nxt / write_seq of the chosen queue and sets
//!   them only on a closed socket;
//! - TCP_REPAIR_OPTIONS is set-only and accepted once connected, before any
//!   data was sent.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::cvt;
use super::sock::{getsockopt_bytes, getsockopt_int, setsockopt_bytes, setsockopt_int};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;

const SIOCOUTQ: libc::c_ulong = 0x5411;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;

/// TCP option kinds TCP_REPAIR_OPTIONS takes.
pub const TCPOPT_MAXSEG: u32 = 2;
pub const TCPOPT_WINDOW: u32 = 3;
pub const TCPOPT_SACK_PERM: u32 = 4;
pub const TCPOPT_TIMESTAMP: u32 = 8;

/// `tcpi_options` bits.
pub const TCPI_OPT_TIMESTAMPS: u32 = 1;
pub const TCPI_OPT_SACK: u32 = 2;
pub const TCPI_OPT_WSCALE: u32 = 4;

/// Which queue repair-mode reads, writes and TCP_QUEUE_SEQ act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    None = 0,
    Recv = 1,
    Send = 2,
}

/// Turn repair mode on or off. Off sends a window probe to the peer.
pub fn set_repair(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, TCP_REPAIR, on as i32)
}

pub fn set_queue(fd: BorrowedFd<'_>, q: Queue) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, q as i32)
}

/// The next sequence number of the selected queue (rcv_nxt or write_seq).
pub fn queue_seq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    getsockopt_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ).map(|v| v as u32)
}

/// Set the start sequence number of the selected queue (closed socket).
pub fn set_queue_seq(fd: BorrowedFd<'_>, seq: u32) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, TCP_QUEUE_SEQ, seq as i32)
}

/// Negotiated options, as (TCPOPT_* kind, value) pairs.
pub fn set_options(fd: BorrowedFd<'_>, opts: &[(u32, u32)]) -> io::Result<()> {
    if opts.is_empty() {
        return Ok(());
    }
    let mut b = Vec::with_capacity(opts.len() * 8);
    for &(code, val) in opts {
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&val.to_ne_bytes());
    }
    setsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &b)
}

/// The socket's TCP timestamp clock (readable any time, settable in repair).
pub fn timestamp(fd: BorrowedFd<'_>) -> io::Result<u32> {
    getsockopt_int(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP).map(|v| v as u32)
}

pub fn set_timestamp(fd: BorrowedFd<'_>, ts: u32) -> io::Result<()> {
    setsockopt_int(fd, libc::IPPROTO_TCP, TCP_TIMESTAMP, ts as i32)
}

/// `struct tcp_repair_window`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

pub fn window(fd: BorrowedFd<'_>) -> io::Result<Window> {
    let mut b = [0u8; 20];
    let n = getsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &mut b)?;
    if n != b.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let w = |i: usize| u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
    Ok(Window {
        snd_wl1: w(0),
        snd_wnd: w(1),
        max_window: w(2),
        rcv_wnd: w(3),
        rcv_wup: w(4),
    })
}

/// Set the window state (in repair mode, after the receive queue is
/// refilled: the kernel refuses an rcv_wup beyond rcv_nxt).
pub fn set_window(fd: BorrowedFd<'_>, w: &Window) -> io::Result<()> {
    let mut b = Vec::with_capacity(20);
    for v in [w.snd_wl1, w.snd_wnd, w.max_window, w.rcv_wnd, w.rcv_wup] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    setsockopt_bytes(fd, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &b)
}

/// The parts of `struct tcp_info` we use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Info {
    /// TCP_* state (TCP_ESTABLISHED = 1, TCP_LISTEN = 10, ...).
    pub state: u8,
    /// TCPI_OPT_* bits.
    pub options: u8,
    pub snd_wscale: u8,
    pub rcv_wscale: u8,
    /// For a listener: pending connections (accept queue length).
    pub unacked: u32,
    /// For a listener: its backlog.
    pub sacked: u32,
}

pub fn info(fd: BorrowedFd<'_>) -> io::Result<Info> {
    let mut b = [0u8; 104];
    let n = getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut b)?;
    if n < 32 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let u = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    Ok(Info {
        state: b[0],
        options: b[5],
        snd_wscale: b[6] & 0xf,
        rcv_wscale: b[6] >> 4,
        unacked: u(24),
        sacked: u(28),
    })
}

fn ioctl_int(fd: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the SIOC*Q ioctls write one int to the pointer.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), req as _, &mut v) } as libc::c_long)?;
    Ok(v as u32)
}

/// Bytes in the send queue (sent and not acknowledged, plus unsent).
pub fn outq(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQ)
}

/// Bytes in the send queue not sent yet.
pub fn outq_unsent(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioctl_int(fd, SIOCOUTQNSD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn info_of_a_listener_and_a_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let i = info(l.as_fd()).unwrap();
        assert_eq!(i.state, 10);
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(b"abc").unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).unwrap();
        let i = info(c.as_fd()).unwrap();
        assert_eq!(i.state, 1);
        assert_eq!(outq(c.as_fd()).unwrap(), 0);
        assert_eq!(outq_unsent(c.as_fd()).unwrap(), 0);
        assert!(timestamp(c.as_fd()).is_ok());
    }
}
