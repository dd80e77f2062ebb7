//! NETLINK_SOCK_DIAG for AF_UNIX (`unix_diag`): one dump request returns
//! every unix socket of a network namespace with its name, bound file,
//! peer, pending connections ("icons"), queue lengths and shutdown state,
//! keyed by inode. The request is built and the answer parsed here; the
//! socket calls are in `sys::sock`.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::sys::sock;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const REQ_LEN: usize = 24;
const MSG_LEN: usize = 16;

pub const UDIAG_SHOW_NAME: u32 = 0x01;
pub const UDIAG_SHOW_VFS: u32 = 0x02;
pub const UDIAG_SHOW_PEER: u32 = 0x04;
pub const UDIAG_SHOW_ICONS: u32 = 0x08;
pub const UDIAG_SHOW_RQLEN: u32 = 0x10;
pub const UDIAG_SHOW_UID: u32 = 0x40;

const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const UNIX_DIAG_UID: u16 = 7;

/// Socket states as unix_diag reports them (TCP_* numbers).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;

/// What the kernel says about one unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkDiag {
    pub ino: u32,
    /// SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    pub ty: u8,
    pub state: u8,
    /// The bound address as the kernel keeps it: a path (with its trailing
    /// NUL) or an abstract name (leading NUL). None when unbound.
    pub name: Option<Vec<u8>>,
    /// (inode, device) of the socket file of a path-bound socket.
    pub vfs: Option<(u32, u32)>,
    /// Inode of the peer; 0 when unconnected, when the peer is gone, or when
    /// the peer is a not-yet-accepted connection.
    pub peer: u32,
    /// Listening sockets: inodes of the clients of pending connections, in
    /// accept order (0 for a client that was closed).
    pub icons: Vec<u32>,
    /// Listening: pending connections; others: bytes queued for reading
    /// (first datagram for datagram sockets).
    pub rqlen: u32,
    /// Listening: the backlog; others: bytes sent and not yet read by
    /// the peer.
    pub wqlen: u32,
    /// RCV_SHUTDOWN (1) | SEND_SHUTDOWN (2).
    pub shutdown: u8,
    pub uid: Option<u32>,
}

impl SkDiag {
    /// Bound to a path (not abstract, not unbound).
    pub fn has_path(&self) -> bool {
        self.name
            .as_ref()
            .is_some_and(|n| !n.is_empty() && n[0] != 0)
    }
}

/// The dump request for every unix socket with everything we use.
pub fn request(seq: u32) -> Vec<u8> {
    let show = UDIAG_SHOW_NAME
        | UDIAG_SHOW_VFS
        | UDIAG_SHOW_PEER
        | UDIAG_SHOW_ICONS
        | UDIAG_SHOW_RQLEN
        | UDIAG_SHOW_UID;
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    // unix_diag_req
    b.push(libc::AF_UNIX as u8);
    b.push(0);
    b.extend_from_slice(&0u16.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    b.extend_from_slice(&0u32.to_ne_bytes()); // ino
    b.extend_from_slice(&show.to_ne_bytes());
    b.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes(b[o..o + 4].try_into().unwrap())
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parse one datagram of answers into `out`. Returns true once the dump is
/// complete (NLMSG_DONE).
pub fn parse(buf: &[u8], out: &mut HashMap<u32, SkDiag>) -> Result<bool, String> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off) as usize;
        let ty = u16_at(buf, off + 4);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(format!("bad netlink message length {len}"));
        }
        let body = &buf[off + NLMSG_HDRLEN..off + len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let e = if body.len() >= 4 {
                    -(u32_at(body, 0) as i32)
                } else {
                    0
                };
                return Err(format!(
                    "sock_diag error: {}",
                    io::Error::from_raw_os_error(e)
                ));
            }
            SOCK_DIAG_BY_FAMILY => {
                let d = parse_msg(body)?;
                out.insert(d.ino, d);
            }
            _ => {}
        }
        off += align4(len);
    }
    Ok(false)
}

/// One unix_diag_msg with its attributes.
fn parse_msg(b: &[u8]) -> Result<SkDiag, String> {
    if b.len() < MSG_LEN {
        return Err("short unix_diag_msg".into());
    }
    let mut d = SkDiag {
        ty: b[1],
        state: b[2],
        ino: u32_at(b, 4),
        ..Default::default()
    };
    let mut off = MSG_LEN;
    while off + 4 <= b.len() {
        let alen = u16_at(b, off) as usize;
        let aty = u16_at(b, off + 2) & 0x3fff;
        if alen < 4 || off + alen > b.len() {
            return Err(format!("bad attribute length {alen}"));
        }
        let p = &b[off + 4..off + alen];
        match aty {
            UNIX_DIAG_NAME => d.name = Some(p.to_vec()),
            UNIX_DIAG_VFS if p.len() >= 8 => d.vfs = Some((u32_at(p, 0), u32_at(p, 4))),
            UNIX_DIAG_PEER if p.len() >= 4 => d.peer = u32_at(p, 0),
            UNIX_DIAG_ICONS => d.icons = p.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
            UNIX_DIAG_RQLEN if p.len() >= 8 => {
                d.rqlen = u32_at(p, 0);
                d.wqlen = u32_at(p, 4);
            }
            UNIX_DIAG_SHUTDOWN if !p.is_empty() => d.shutdown = p[0],
            UNIX_DIAG_UID if p.len() >= 4 => d.uid = Some(u32_at(p, 0)),
            _ => {}
        }
        off += align4(alen);
    }
    Ok(d)
}

/// Every unix socket of the network namespace `netns` (a /proc/PID/ns/net
/// path; None or our own namespace: ours).
pub fn dump_all(netns: Option<&str>) -> io::Result<HashMap<u32, SkDiag>> {
    let sk = diag_socket_in(netns)?;
    sock::nl_send(sk.as_fd(), &request(1))?;
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = sock::nl_recv(sk.as_fd(), &mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag closed",
            ));
        }
        match parse(&buf[..n], &mut out) {
            Ok(true) => return Ok(out),
            Ok(false) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

/// A sock_diag socket in `netns`: made by a short-lived thread that joins
/// the namespace (a socket stays in the namespace it was created in).
fn diag_socket_in(netns: Option<&str>) -> io::Result<OwnedFd> {
    let Some(ns) = netns else {
        return sock::diag_socket();
    };
    let theirs = std::fs::metadata(ns)?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
    if theirs.ino() == ours.ino() && theirs.dev() == ours.dev() {
        return sock::diag_socket();
    }
    let f = std::fs::File::open(ns)?;
    std::thread::spawn(move || -> io::Result<OwnedFd> {
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
        sock::diag_socket()
    })
    .join()
    .map_err(|_| io::Error::other("sock_diag thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, p: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + p.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(p);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn msg(ty: u16, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&2u16.to_ne_bytes());
        v.extend_from_slice(&1u32.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn request_layout() {
        let r = request(7);
        assert_eq!(r.len(), 40);
        assert_eq!(u32_at(&r, 0), 40);
        assert_eq!(u16_at(&r, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(r[16], libc::AF_UNIX as u8);
    }

    #[test]
    fn parse_synthetic() {
        let mut body = vec![libc::AF_UNIX as u8, 1, TCP_LISTEN, 0];
        body.extend_from_slice(&77u32.to_ne_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend(attr(UNIX_DIAG_NAME, b"/tmp/x\0"));
        let mut icons = Vec::new();
        icons.extend_from_slice(&5u32.to_ne_bytes());
        icons.extend_from_slice(&6u32.to_ne_bytes());
        body.extend(attr(UNIX_DIAG_ICONS, &icons));
        let mut rq = Vec::new();
        rq.extend_from_slice(&2u32.to_ne_bytes());
        rq.extend_from_slice(&128u32.to_ne_bytes());
        body.extend(attr(UNIX_DIAG_RQLEN, &rq));
        body.extend(attr(UNIX_DIAG_SHUTDOWN, &[3]));
        let mut buf = msg(SOCK_DIAG_BY_FAMILY, &body);
        buf.extend(msg(NLMSG_DONE, &[0; 4]));
        let mut out = HashMap::new();
        assert!(parse(&buf, &mut out).unwrap());
        let d = &out[&77];
        assert_eq!(d.state, TCP_LISTEN);
        assert_eq!(d.name.as_deref(), Some(&b"/tmp/x\0"[..]));
        assert_eq!(d.icons, vec![5, 6]);
        assert_eq!((d.rqlen, d.wqlen, d.shutdown), (2, 128, 3));
        assert!(d.has_path());
    }

    #[test]
    fn parse_error() {
        let buf = msg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert!(parse(&buf, &mut HashMap::new()).is_err());
    }

    #[test]
    fn live_socketpair() {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        nix::unistd::write(&a, b"abc").unwrap();
        let ia = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&a))
            .unwrap()
            .st_ino as u32;
        let ib = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&b))
            .unwrap()
            .st_ino as u32;
        let all = dump_all(None).unwrap();
        assert_eq!(all[&ia].peer, ib);
        assert_eq!(all[&ib].peer, ia);
        assert_eq!(all[&ib].rqlen, 3);
        assert_eq!(all[&ia].state, TCP_ESTABLISHED);
    }
}
