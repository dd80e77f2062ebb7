//! AF_UNIX sockets: stream, datagram and seqpacket; pairs, bound (path and
//! abstract) and listening sockets, pending connections, queued data,
//! shutdown state and socket options.
//!
//! Images are CRIU's: a `unix_sk_entry` per socket in files.img (peers are
//! linked by inode), its receive queue in sk-queues.img as `sk_packet_entry`
//! {id_for = the receiving socket's file id, length} + the bytes.
//!
//! Two kinds of entries describe sockets no task holds:
//! - an external peer (`uflags` USK_EXTERN, as CRIU writes it): a socket
//!   outside the tree that a dumped socket is connected to; restore connects
//!   to its address again (needs `--ext-unix-sk`);
//! - a pending connection's server end (`uflags` [`USK_EMBRYO`], ours: CRIU
//!   refuses pending connections that carry data): `peer` is the client's
//!   inode (the listener's when the client was closed), its queued data is
//!   in sk-queues.img under its own id, and the order of these entries (by
//!   id) is the listener's accept order. The client's own entry has `peer`
//!   = the listener's inode, as in CRIU.
//!
//! Restore builds every socket of one connected component (pairs, a
//! listener with its pending clients, a datagram server with the sockets
//! connected to it) in one task, the lowest common ancestor of all holders,
//! so everything is inherited where it is needed: see [`restore`].

pub mod diag;
mod dump;
mod restore;

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{MsgFlags, UnixAddr};
use stasis_proto::criu::{FileEntry, SkOptsEntry, UnixSkEntry};

use crate::sys::sock;

pub use dump::{dump_fd, finish_dump, prepare, DumpState};
pub use restore::{check_restore, create, preload_queues};

/// The peer is outside the dumped tree (CRIU's flag).
pub const USK_EXTERN: u32 = 1 << 0;
/// A pending (not yet accepted) connection's server end (stasis).
pub const USK_EMBRYO: u32 = 1 << 16;

pub const SK_QUEUES_IMG: &str = "sk-queues.img";

const SO_RCVTIMEO_OLD: i32 = 20;
const SO_SNDTIMEO_OLD: i32 = 21;
const SO_BUF_LOCK: i32 = 72;
/// Send buffer used while refilling queues, so the writes never wait.
const FILL_SNDBUF: i32 = 64 << 20;

pub(crate) fn entry(f: &FileEntry) -> Option<&UnixSkEntry> {
    f.usk.as_deref()
}

fn is_real(e: &UnixSkEntry) -> bool {
    e.uflags & (USK_EXTERN | USK_EMBRYO) == 0
}

/// File ids of every unix entry linked to `id` by peer relations (its
/// connected component), sorted.
pub fn component(files: &HashMap<u32, FileEntry>, id: u32) -> Vec<u32> {
    // Built by the restorer once (super::memo), or here for other maps.
    let memo = super::memo::get(files);
    let own;
    let (by_ino, by_peer) = match &memo {
        Some(ix) => (&ix.usk_by_ino, &ix.usk_by_peer),
        None => {
            own = super::memo::usk_maps(files);
            (&own.0, &own.1)
        }
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![id];
    while let Some(x) = todo.pop() {
        if !seen.insert(x) {
            continue;
        }
        let Some(e) = files.get(&x).and_then(entry) else {
            continue;
        };
        if e.peer != 0 {
            todo.extend(by_ino.get(&e.peer).into_iter().flatten());
        }
        if e.ino != 0 {
            todo.extend(by_peer.get(&e.ino).into_iter().flatten());
        }
    }
    seen.into_iter().collect()
}

/// The group key of a unix entry: the smallest id of its component.
pub fn group_key(files: &HashMap<u32, FileEntry>, id: u32) -> u32 {
    component(files, id).first().copied().unwrap_or(id)
}

/// Read the options CRIU keeps in `sk_opts_entry`.
pub(crate) fn read_opts(fd: BorrowedFd<'_>) -> io::Result<SkOptsEntry> {
    let int = |opt| sock::getsockopt_int(fd, libc::SOL_SOCKET, opt);
    let flag = |opt| int(opt).map(|v| v != 0);
    let tv = |opt| -> io::Result<(u64, u64)> {
        let mut b = [0u8; 16];
        sock::getsockopt_bytes(fd, libc::SOL_SOCKET, opt, &mut b)?;
        Ok((
            u64::from_ne_bytes(b[..8].try_into().unwrap()),
            u64::from_ne_bytes(b[8..].try_into().unwrap()),
        ))
    };
    let (snd_s, snd_us) = tv(SO_SNDTIMEO_OLD)?;
    let (rcv_s, rcv_us) = tv(SO_RCVTIMEO_OLD)?;
    let mut lb = [0u8; 8];
    sock::getsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, &mut lb)?;
    let l_onoff = i32::from_ne_bytes(lb[..4].try_into().unwrap());
    let l_linger = i32::from_ne_bytes(lb[4..].try_into().unwrap());
    Ok(SkOptsEntry {
        so_sndbuf: int(libc::SO_SNDBUF)? as u32,
        so_rcvbuf: int(libc::SO_RCVBUF)? as u32,
        so_snd_tmo_sec: snd_s,
        so_snd_tmo_usec: snd_us,
        so_rcv_tmo_sec: rcv_s,
        so_rcv_tmo_usec: rcv_us,
        reuseaddr: Some(flag(libc::SO_REUSEADDR)?),
        so_priority: Some(int(libc::SO_PRIORITY)? as u32),
        so_rcvlowat: Some(int(libc::SO_RCVLOWAT)? as u32),
        so_mark: Some(int(libc::SO_MARK)? as u32),
        // Unix and netlink sockets only on recent kernels (EOPNOTSUPP).
        so_passcred: flag(libc::SO_PASSCRED).ok(),
        so_passsec: flag(libc::SO_PASSSEC).ok(),
        so_dontroute: Some(flag(libc::SO_DONTROUTE)?),
        so_no_check: Some(flag(libc::SO_NO_CHECK)?),
        so_bound_dev: None,
        so_filter: Vec::new(),
        so_reuseport: Some(flag(libc::SO_REUSEPORT)?),
        so_broadcast: Some(flag(libc::SO_BROADCAST)?),
        so_keepalive: Some(flag(libc::SO_KEEPALIVE)?),
        tcp_keepcnt: None,
        tcp_keepidle: None,
        tcp_keepintvl: None,
        so_oobinline: Some(int(libc::SO_OOBINLINE)? as u32),
        so_linger: (l_onoff != 0).then_some(l_linger as u32),
        so_buf_lock: int(SO_BUF_LOCK).ok().map(|v| v as u32),
    })
}

/// Set the options of `o` on `fd`: buffer sizes exactly as read (the kernel
/// doubles what it is given), with the user-lock bits as they were; the
/// others only where they differ from a new socket's.
pub(crate) fn apply_opts(fd: BorrowedFd<'_>, o: &SkOptsEntry) -> Result<(), String> {
    let set = |name: &str, opt: i32, v: i32| {
        sock::setsockopt_int(fd, libc::SOL_SOCKET, opt, v).map_err(|e| format!("set {name}: {e}"))
    };
    if o.so_sndbuf != 0 {
        set(
            "SO_SNDBUFFORCE",
            libc::SO_SNDBUFFORCE,
            (o.so_sndbuf / 2) as i32,
        )?;
    }
    if o.so_rcvbuf != 0 {
        set(
            "SO_RCVBUFFORCE",
            libc::SO_RCVBUFFORCE,
            (o.so_rcvbuf / 2) as i32,
        )?;
    }
    if let Some(l) = o.so_buf_lock {
        // Setting the sizes locked them; put the lock bits back as they were
        // (SO_BUF_LOCK exists since 5.14).
        match sock::setsockopt_int(fd, libc::SOL_SOCKET, SO_BUF_LOCK, l as i32) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT | libc::EINVAL)) => {}
            Err(e) => return Err(format!("set SO_BUF_LOCK: {e}")),
        }
    }
    let tv = |name: &str, opt: i32, s: u64, us: u64| -> Result<(), String> {
        if s == 0 && us == 0 {
            return Ok(());
        }
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&s.to_ne_bytes());
        b[8..].copy_from_slice(&us.to_ne_bytes());
        sock::setsockopt_bytes(fd, libc::SOL_SOCKET, opt, &b)
            .map_err(|e| format!("set {name}: {e}"))
    };
    tv(
        "SO_SNDTIMEO",
        SO_SNDTIMEO_OLD,
        o.so_snd_tmo_sec,
        o.so_snd_tmo_usec,
    )?;
    tv(
        "SO_RCVTIMEO",
        SO_RCVTIMEO_OLD,
        o.so_rcv_tmo_sec,
        o.so_rcv_tmo_usec,
    )?;
    let flags = [
        ("SO_REUSEADDR", libc::SO_REUSEADDR, o.reuseaddr),
        ("SO_PASSCRED", libc::SO_PASSCRED, o.so_passcred),
        ("SO_PASSSEC", libc::SO_PASSSEC, o.so_passsec),
        ("SO_DONTROUTE", libc::SO_DONTROUTE, o.so_dontroute),
        ("SO_NO_CHECK", libc::SO_NO_CHECK, o.so_no_check),
        ("SO_REUSEPORT", libc::SO_REUSEPORT, o.so_reuseport),
        ("SO_BROADCAST", libc::SO_BROADCAST, o.so_broadcast),
        ("SO_KEEPALIVE", libc::SO_KEEPALIVE, o.so_keepalive),
    ];
    for (name, opt, v) in flags {
        if v == Some(true) {
            set(name, opt, 1)?;
        }
    }
    let ints = [
        ("SO_PRIORITY", libc::SO_PRIORITY, o.so_priority, 0),
        ("SO_RCVLOWAT", libc::SO_RCVLOWAT, o.so_rcvlowat, 1),
        ("SO_MARK", libc::SO_MARK, o.so_mark, 0),
        ("SO_OOBINLINE", libc::SO_OOBINLINE, o.so_oobinline, 0),
    ];
    for (name, opt, v, default) in ints {
        if let Some(v) = v.filter(|&v| v != default) {
            set(name, opt, v as i32)?;
        }
    }
    if let Some(secs) = o.so_linger {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&1i32.to_ne_bytes());
        b[4..].copy_from_slice(&(secs as i32).to_ne_bytes());
        sock::setsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_LINGER, &b)
            .map_err(|e| format!("set SO_LINGER: {e}"))?;
    }
    Ok(())
}

/// Make writes into `fd` never wait for buffer space while queues are
/// refilled (the options are set to their dumped values afterwards).
pub(crate) fn big_sndbuf(fd: BorrowedFd<'_>) -> Result<(), String> {
    sock::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, FILL_SNDBUF)
        .map_err(|e| format!("set SO_SNDBUFFORCE: {e}"))
}

/// Copies of every message queued for reading on `fd`, without consuming
/// them: MSG_PEEK at an explicit SO_PEEK_OFF, one message per datagram or
/// seqpacket record, chunks for streams. The socket's own peek offset is
/// put back. Queued file descriptors (SCM_RIGHTS) are refused. A
/// zero-length datagram that was peeked before (by its owner, or by an
/// earlier dump) is skipped by the kernel at any peek offset and is missed.
pub(crate) fn peek_queue(
    fd: BorrowedFd<'_>,
    ty: u8,
    rcv_shutdown: bool,
) -> Result<Vec<Vec<u8>>, String> {
    let old = sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(|e| format!("get SO_PEEK_OFF: {e}"))?;
    let r = peek_all(fd, ty as i32, rcv_shutdown);
    let back = sock::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old)
        .map_err(|e| format!("put SO_PEEK_OFF back to {old}: {e}"));
    let out = r?;
    back?;
    Ok(out)
}

fn peek_all(fd: BorrowedFd<'_>, ty: i32, rcv_shutdown: bool) -> Result<Vec<Vec<u8>>, String> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut off: usize = 0;
    let mut buf = vec![0u8; 64 << 10];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 253], libc::ucred);
    loop {
        if off > i32::MAX as usize {
            return Err("receive queue too large".into());
        }
        sock::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off as i32)
            .map_err(|e| format!("set SO_PEEK_OFF: {e}"))?;
        let mut flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        if ty != libc::SOCK_STREAM {
            flags |= MsgFlags::MSG_TRUNC;
        }
        let (n, fds) = {
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            cmsg.clear();
            let m = match nix::sys::socket::recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                flags,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("peek at the receive queue: {e}")),
            };
            let mut fds = Vec::new();
            let mut trunc = false;
            match m.cmsgs() {
                Ok(it) => {
                    for c in it {
                        if let nix::sys::socket::ControlMessageOwned::ScmRights(v) = c {
                            fds.extend(v);
                        }
                    }
                }
                Err(_) => trunc = true,
            }
            if trunc {
                fds.push(-1);
            }
            (m.bytes, fds)
        };
        if !fds.is_empty() {
            for &f in fds.iter().filter(|&&f| f >= 0) {
                let _ = nix::unistd::close(f);
            }
            return Err("queued file descriptors (SCM_RIGHTS) are not supported yet".to_string());
        }
        if ty == libc::SOCK_STREAM {
            if n == 0 {
                break; // end of stream
            }
            out.push(buf[..n].to_vec());
            off += n;
            continue;
        }
        if n == 0 && rcv_shutdown {
            break; // shut down and empty (zero-length records cannot be told apart)
        }
        if n > buf.len() {
            // Larger than the buffer: peek the same record again, whole.
            buf.resize(n.next_power_of_two(), 0);
            continue;
        }
        out.push(buf[..n].to_vec());
        off += n;
        if out.len() > 1 << 20 {
            return Err("too many queued messages".into());
        }
    }
    Ok(out)
}

/// Send `packets` on `fd` without waiting: one write per record for
/// datagram and seqpacket sockets (boundaries kept), all of it for streams.
/// `to` sends datagrams to an address instead of the connected peer.
pub(crate) fn send_packets(
    fd: BorrowedFd<'_>,
    ty: u32,
    packets: &[Vec<u8>],
    to: Option<&UnixAddr>,
) -> Result<(), String> {
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    for p in packets {
        if ty == libc::SOCK_STREAM as u32 {
            let mut done = 0;
            while done < p.len() {
                match nix::sys::socket::send(fd.as_raw_fd(), &p[done..], flags) {
                    Ok(n) => done += n,
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(format!("write {} queued bytes: {e}", p.len())),
                }
            }
            continue;
        }
        let r = match to {
            Some(a) => nix::sys::socket::sendto(fd.as_raw_fd(), p, a, flags),
            None => nix::sys::socket::send(fd.as_raw_fd(), p, flags),
        };
        match r {
            Ok(n) if n == p.len() => {}
            Ok(n) => return Err(format!("short send of a {}-byte message ({n})", p.len())),
            Err(e) => return Err(format!("send a {}-byte queued message: {e}", p.len())),
        }
    }
    Ok(())
}

/// A printable form of a socket name for messages.
pub(crate) fn show_name(name: &[u8]) -> String {
    if name.is_empty() {
        return "(unnamed)".into();
    }
    if name[0] == 0 {
        return format!(
            "@{}",
            String::from_utf8_lossy(&name[1..]).replace('\0', "@")
        );
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    fn pair(t: SockType) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
        socketpair(AddressFamily::Unix, t, None, SockFlag::SOCK_CLOEXEC).unwrap()
    }

    #[test]
    fn peek_keeps_boundaries_and_data() {
        for (t, ty) in [
            (SockType::Datagram, libc::SOCK_DGRAM),
            (SockType::SeqPacket, libc::SOCK_SEQPACKET),
        ] {
            let (a, b) = pair(t);
            let big = vec![7u8; 100_000];
            send_packets(
                b.as_fd(),
                ty as u32,
                &[b"one".to_vec(), vec![], big.clone(), b"three".to_vec()],
                None,
            )
            .unwrap();
            let q = peek_queue(a.as_fd(), ty as u8, false).unwrap();
            assert_eq!(
                q,
                vec![b"one".to_vec(), vec![], big.clone(), b"three".to_vec()],
                "{ty}"
            );
            // Twice: nothing was consumed, the peek offset is back. (The
            // kernel skips zero-length records it has handed out to a peek
            // before, so the second pass misses that one.)
            let q2 = peek_queue(a.as_fd(), ty as u8, false).unwrap();
            assert_eq!(
                q2,
                vec![b"one".to_vec(), big.clone(), b"three".to_vec()],
                "{ty}"
            );
            assert_eq!(
                sock::getsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
                -1
            );
            let mut b1 = [0u8; 16];
            let n = nix::sys::socket::recv(a.as_raw_fd(), &mut b1, MsgFlags::empty()).unwrap();
            assert_eq!(&b1[..n], b"one");
        }
    }

    #[test]
    fn peek_stream_and_shutdown() {
        let (a, b) = pair(SockType::Stream);
        send_packets(
            b.as_fd(),
            libc::SOCK_STREAM as u32,
            &[b"hello ".to_vec(), b"world".to_vec()],
            None,
        )
        .unwrap();
        nix::sys::socket::shutdown(b.as_raw_fd(), nix::sys::socket::Shutdown::Write).unwrap();
        let q = peek_queue(a.as_fd(), libc::SOCK_STREAM as u8, true).unwrap();
        assert_eq!(q.concat(), b"hello world");
        let mut x = [0u8; 32];
        let n = nix::sys::socket::recv(a.as_raw_fd(), &mut x, MsgFlags::empty()).unwrap();
        assert_eq!(&x[..n], b"hello world");
    }

    #[test]
    fn peek_refuses_fds() {
        let (a, b) = pair(SockType::Stream);
        let iov = [io::IoSlice::new(b"x")];
        let fds = [a.as_raw_fd()];
        nix::sys::socket::sendmsg::<()>(
            b.as_raw_fd(),
            &iov,
            &[nix::sys::socket::ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        let e = peek_queue(a.as_fd(), libc::SOCK_STREAM as u8, false).unwrap_err();
        assert!(e.contains("SCM_RIGHTS"), "{e}");
    }

    #[test]
    fn opts_roundtrip() {
        let (a, _b) = pair(SockType::Stream);
        sock::setsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUF, 50_000).unwrap();
        sock::setsockopt_int(a.as_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, 1).unwrap();
        let o = read_opts(a.as_fd()).unwrap();
        let (c, _d) = pair(SockType::Stream);
        if !nix::unistd::geteuid().is_root() {
            return; // SO_SNDBUFFORCE needs CAP_NET_ADMIN
        }
        apply_opts(c.as_fd(), &o).unwrap();
        let o2 = read_opts(c.as_fd()).unwrap();
        assert_eq!(o, o2);
    }

    fn usk(id: u32, ino: u32, peer: u32, uflags: u32) -> (u32, FileEntry) {
        (
            id,
            FileEntry {
                id,
                usk: Some(Box::new(UnixSkEntry {
                    id,
                    ino,
                    peer,
                    uflags,
                    ..Default::default()
                })),
                ..Default::default()
            },
        )
    }

    #[test]
    fn components() {
        let files: HashMap<u32, FileEntry> = [
            usk(1, 100, 101, 0), // pair 1-2
            usk(2, 101, 100, 0),
            usk(3, 200, 0, 0),            // listener
            usk(4, 201, 200, 0),          // its pending client
            usk(9, 555, 201, USK_EMBRYO), // the client's server end
            usk(5, 300, 0, 0),            // datagram server
            usk(6, 301, 300, 0),          // a client of it
            usk(7, 400, 0, 0),            // alone
            usk(8, 500, 900, 0),          // connected outside
            usk(10, 900, 0, USK_EXTERN),
        ]
        .into_iter()
        .collect();
        assert_eq!(component(&files, 2), vec![1, 2]);
        assert_eq!(component(&files, 9), vec![3, 4, 9]);
        assert_eq!(group_key(&files, 4), 3);
        assert_eq!(component(&files, 5), vec![5, 6]);
        assert_eq!(component(&files, 7), vec![7]);
        assert_eq!(group_key(&files, 10), 8);
    }

    #[test]
    fn names() {
        assert_eq!(show_name(b"/tmp/s\0"), "/tmp/s");
        assert_eq!(show_name(b"\0abc"), "@abc");
        assert_eq!(show_name(b""), "(unnamed)");
    }
}
