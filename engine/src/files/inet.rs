//! AF_INET and AF_INET6 sockets: TCP (closed, bound, listening, and
//! established with `--tcp-established`) and UDP (bound, connected).
//!
//! Images are CRIU's: an `inet_sk_entry` per socket in files.img (kind
//! INETSK; addresses as raw network-order words, ports in host order,
//! generic options in `sk_opts_entry`, TCP ones in `tcp_opts_entry`), and
//! for an established connection `tcp-stream-<ino>.img` (see [`stream`]).
//!
//! Dump: [`prepare`] looks at every inet socket of the tree before any task
//! is dumped: it refuses what cannot be saved (raw sockets, TCP connecting
//! or half-closed by the peer, connections without `--tcp-established`,
//! listeners with connections waiting to be accepted), then locks the
//! network for the connections (established, or half-closed by us: see
//! [`stream`]) ([`lock`]) and puts them in repair mode through
//! stolen fds. [`Held`] keeps them so until the dump ends: on success with
//! the tree killed the sockets close silently in repair mode and the lock
//! stays for the restore to lift; otherwise (left running, or failure)
//! repair mode is left and the lock removed.
//!
//! Restore: each socket is made in the task that holds it (so in the
//! tree's network namespace): options that matter for bind, bind, then
//! listen, connect (UDP) or the repair-mode rebuild (TCP). The lock is
//! (re)applied in the namespace the tree is restored into before any socket
//! is made ([`lock_for_restore`]) and removed once the tree runs. Queued UDP datagrams are not kept
//! (CRIU does not either).

pub mod lock;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::sys::socket::SockaddrStorage;
use stasis_proto::criu::{FdTypes, FileEntry, InetSkEntry, IpOptsEntry, SkShutdown, TcpOptsEntry};
use tracing::{debug, info, warn};

use super::{FdCtx, FileTable, OpenCtx};
use crate::error::{Error, Result};
use crate::restore::plan::Plan;
use crate::sys::{fdobj, pidfd, sock, tcp};

pub use lock::Conn;
pub use stream::preload;

pub const TCP_ESTABLISHED: u32 = 1;
pub const TCP_FIN_WAIT1: u32 = 4;
pub const TCP_FIN_WAIT2: u32 = 5;
pub const TCP_CLOSE: u32 = 7;
pub const TCP_LISTEN: u32 = 10;

const IPV6_FREEBIND: i32 = 78;

/// A connection saved through repair mode: established, or half-closed by
/// us (our FIN queued or sent; the peer may still send).
pub fn connected(state: u32) -> bool {
    matches!(state, TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2)
}

/// Our FIN is in the sequence space (write_seq counts it).
pub fn fin_sent(state: u32) -> bool {
    matches!(state, TCP_FIN_WAIT1 | TCP_FIN_WAIT2)
}

fn state_name(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "unknown",
    }
}

/// An address as `inet_sk_entry` words: the network-order bytes, 4 at a
/// time, as the kernel's `__be32` values read on this machine.
pub fn words(ip: IpAddr) -> Vec<u32> {
    let b: Vec<u8> = match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    };
    b.chunks(4)
        .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
        .collect()
}

/// The address of `words` for a socket of `family`.
pub fn ip_of(family: u32, w: &[u32]) -> Option<IpAddr> {
    let b: Vec<u8> = w.iter().flat_map(|x| x.to_ne_bytes()).collect();
    match family as i32 {
        libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(b.get(..4)?).ok()?,
        ))),
        libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(b.get(..16)?).ok()?,
        ))),
        _ => None,
    }
}

fn to_sa(s: &SockaddrStorage) -> Option<(IpAddr, u16)> {
    if let Some(a) = s.as_sockaddr_in() {
        return Some((IpAddr::V4(a.ip()), a.port()));
    }
    if let Some(a) = s.as_sockaddr_in6() {
        return Some((IpAddr::V6(a.ip()), a.port()));
    }
    None
}

fn local_of(fd: BorrowedFd<'_>) -> io::Result<(IpAddr, u16)> {
    let s: SockaddrStorage = nix::sys::socket::getsockname(fd.as_raw_fd())?;
    to_sa(&s).ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

fn peer_of(fd: BorrowedFd<'_>) -> io::Result<Option<(IpAddr, u16)>> {
    match nix::sys::socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(s) => Ok(to_sa(&s)),
        Err(nix::errno::Errno::ENOTCONN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn show(a: (IpAddr, u16)) -> String {
    SocketAddr::from(a).to_string()
}

/// What an inet socket is, read through a stolen fd.
#[derive(Debug, Clone)]
struct Probe {
    family: i32,
    ty: i32,
    proto: i32,
    state: u32,
    local: (IpAddr, u16),
    peer: Option<(IpAddr, u16)>,
    tcp: Option<tcp::Info>,
}

impl Probe {
    fn read(fd: BorrowedFd<'_>, family: i32) -> io::Result<Probe> {
        let ty = sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE)?;
        let proto = sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)?;
        let local = local_of(fd)?;
        let peer = peer_of(fd)?;
        let tcp = if ty == libc::SOCK_STREAM && proto == libc::IPPROTO_TCP {
            Some(tcp::info(fd)?)
        } else {
            None
        };
        let state = match &tcp {
            Some(i) => i.state as u32,
            None if peer.is_some() => TCP_ESTABLISHED,
            None => TCP_CLOSE,
        };
        Ok(Probe {
            family,
            ty,
            proto,
            state,
            local,
            peer,
            tcp,
        })
    }

    fn what(&self) -> String {
        let kind = match (self.ty, self.proto) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => "TCP",
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => "UDP",
            (libc::SOCK_RAW, _) => "raw",
            (libc::SOCK_DGRAM, libc::IPPROTO_ICMP | libc::IPPROTO_ICMPV6) => "ICMP (ping)",
            (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => "UDP-Lite",
            (libc::SOCK_STREAM, libc::IPPROTO_MPTCP) => "MPTCP",
            (libc::SOCK_SEQPACKET | libc::SOCK_STREAM, libc::IPPROTO_SCTP) => "SCTP",
            _ => "inet",
        };
        let v = if self.family == libc::AF_INET6 {
            "6"
        } else {
            ""
        };
        let mut s = format!("{kind}{v} socket {}", show(self.local));
        if let Some(p) = self.peer {
            s += &format!(" -> {}", show(p));
        }
        if self.tcp.is_some() {
            s += &format!(" ({})", state_name(self.state));
        }
        s
    }

    fn is_tcp(&self) -> bool {
        self.tcp.is_some()
    }

    fn conn(&self) -> Option<Conn> {
        Some(Conn {
            local: self.local,
            peer: self.peer?,
        })
    }
}

/// Options of a dump that concern inet sockets.
#[derive(Debug, Clone, Copy, Default)]
pub struct InetOpts {
    pub tcp_established: bool,
    pub skip_in_flight: bool,
}

/// Established connections held in repair mode (and the network lock)
/// while the tree is dumped. See the module documentation.
#[derive(Debug, Default)]
pub struct Held {
    repaired: Vec<OwnedFd>,
    lock: Option<lock::Lock>,
    done: bool,
}

impl Held {
    /// The dump succeeded. `killed`: the tree was killed (the sockets,
    /// still in repair mode, close silently with our copies, and the lock
    /// stays until restore); else the connections go on as before.
    pub fn finish(mut self, killed: bool) -> Result<()> {
        self.done = true;
        if killed {
            let n = self.repaired.len();
            self.repaired.clear();
            // Dropping the lock leaves its table in place.
            if self.lock.take().is_some() {
                info!(
                    conns = n,
                    "connections saved; the network stays locked until restore"
                );
            }
            return Ok(());
        }
        self.release().map_err(Error::Other)
    }

    fn release(&mut self) -> std::result::Result<(), String> {
        let mut first = None;
        for fd in self.repaired.drain(..) {
            if let Err(e) = tcp::set_repair(fd.as_fd(), false) {
                first.get_or_insert(format!("leave TCP repair mode: {e}"));
            }
        }
        if let Some(l) = self.lock.take() {
            if let Err(e) = l.unlock() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.release() {
                warn!("undoing the network lock after a failed dump: {e}");
            }
        }
    }
}

/// Inet-socket state of one dump.
#[derive(Debug, Default)]
pub struct DumpState {
    pub opts: InetOpts,
    held: Held,
    /// Inode -> the probe taken in [`prepare`].
    probes: HashMap<u64, Probe>,
}

impl DumpState {
    pub fn new(opts: InetOpts) -> Self {
        DumpState {
            opts,
            ..Default::default()
        }
    }

    pub fn take_held(&mut self) -> Held {
        std::mem::take(&mut self.held)
    }
}

/// Look at every inet socket of the tree (`pids`, root first); refuse what
/// cannot be dumped, lock and repair the established connections.
pub fn prepare(t: &mut FileTable<'_>, pids: &[i32]) -> Result<()> {
    let opts = t.inet.opts;
    // Inode -> first (pid, fd) holding it.
    let mut socks: BTreeMap<u64, (i32, i32)> = BTreeMap::new();
    for &pid in pids {
        for s in t.fdscan.fds(pid) {
            let Some(ino) = s
                .link
                .as_deref()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            socks.entry(ino).or_insert((pid, s.fd));
        }
    }
    let mut conns = Vec::new();
    let mut listeners = Vec::new();
    let mut repair = Vec::new();
    for (&ino, &(pid, fd)) in &socks {
        let err = |why: String| Error::Fd { pid, fd, why };
        let p = pidfd::pidfd_open(pid).map_err(|e| Error::task(pid, "pidfd_open", e))?;
        let sk = pidfd::pidfd_getfd(&p, fd).map_err(|e| err(format!("pidfd_getfd: {e}")))?;
        let family = sock::getsockopt_int(sk.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
            .map_err(|e| err(format!("getsockopt(SO_DOMAIN): {e}")))?;
        if family != libc::AF_INET && family != libc::AF_INET6 {
            continue;
        }
        let pr = Probe::read(sk.as_fd(), family)
            .map_err(|e| err(format!("inet socket ino {ino}: {e}")))?;
        check(&pr, opts).map_err(err)?;
        if pr.is_tcp() && connected(pr.state) {
            conns.push(pr.conn().expect("a connection has a peer"));
            repair.push((ino, sk));
        } else if pr.is_tcp() && pr.state == TCP_LISTEN {
            listeners.push(pr.local);
        }
        t.inet.probes.insert(ino, pr);
    }
    if conns.is_empty() {
        return Ok(());
    }
    let first = repair[0].0 as u32;
    t.inet.held.lock =
        Some(lock::Lock::take(pids[0], first, &conns, &listeners).map_err(Error::Other)?);
    for (ino, sk) in repair {
        tcp::set_repair(sk.as_fd(), true).map_err(|e| {
            Error::Other(format!(
                "TCP socket ino {ino}: enter repair mode (needs CAP_NET_ADMIN): {e}"
            ))
        })?;
        t.inet.held.repaired.push(sk);
    }
    info!(
        conns = conns.len(),
        "established TCP connections in repair mode"
    );
    Ok(())
}

/// Whether a socket can be dumped; the error names it.
fn check(p: &Probe, o: InetOpts) -> std::result::Result<(), String> {
    let known = matches!(
        (p.ty, p.proto),
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) | (libc::SOCK_DGRAM, libc::IPPROTO_UDP)
    );
    if !known {
        return Err(format!("{} is not supported", p.what()));
    }
    let Some(i) = &p.tcp else {
        return Ok(());
    };
    match p.state {
        TCP_CLOSE => Ok(()),
        TCP_LISTEN if i.unacked > 0 && !o.skip_in_flight => Err(format!(
            "{} has {} connection(s) waiting to be accepted, which cannot be \
             put back in its queue; use --tcp-skip-in-flight to drop them",
            p.what(),
            i.unacked
        )),
        TCP_LISTEN => Ok(()),
        TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 if !o.tcp_established => Err(format!(
            "{} is an established connection: use --tcp-established to dump it",
            p.what()
        )),
        TCP_ESTABLISHED | TCP_FIN_WAIT1 | TCP_FIN_WAIT2 => Ok(()),
        2 | 3 => Err(format!("{} is still connecting", p.what())),
        _ => Err(format!(
            "{} is half-closed by its peer or closing, which is not supported",
            p.what()
        )),
    }
}

/// Dump one inet socket fd (`sk`: our copy of it).
pub fn dump_fd(
    t: &mut FileTable<'_>,
    cx: &FdCtx<'_>,
    sk: OwnedFd,
    family: i32,
) -> Result<FileEntry> {
    let ino = cx.st.ino();
    let pr = match t.inet.probes.get(&ino) {
        Some(p) => p.clone(),
        None => {
            let p = Probe::read(sk.as_fd(), family)
                .map_err(|e| cx.err(format!("inet socket ino {ino}: {e}")))?;
            check(&p, t.inet.opts).map_err(|w| cx.err(w))?;
            p
        }
    };
    let fd = sk.as_fd();
    let mut opts =
        super::unix::read_opts(fd).map_err(|e| cx.err(format!("socket options: {e}")))?;
    opts.so_bound_dev = bound_dev(fd).map_err(|e| cx.err(format!("SO_BINDTODEVICE: {e}")))?;
    if opts.so_bound_dev.is_some() {
        debug!(dev = ?opts.so_bound_dev, "bound to a device");
    }
    let v6only = if family == libc::AF_INET6 {
        Some(
            sock::getsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
                .map_err(|e| cx.err(format!("IPV6_V6ONLY: {e}")))?
                != 0,
        )
    } else {
        None
    };
    let ip_opts = read_ip_opts(fd, family).map_err(|e| cx.err(format!("IP options: {e}")))?;
    let tcp_opts = if pr.is_tcp() {
        Some(read_tcp_opts(fd).map_err(|e| cx.err(format!("TCP options: {e}")))?)
    } else {
        None
    };
    let (dst, dport) = match pr.peer {
        Some((a, p)) => (words(a), p as u32),
        None => (Vec::new(), 0),
    };
    let backlog = match (&pr.tcp, pr.state) {
        (Some(i), TCP_LISTEN) => i.sacked,
        _ => 0,
    };
    if pr.is_tcp() && connected(pr.state) {
        stream::dump(t.dir, fd, ino as u32, pr.state)
            .map_err(|e| cx.err(format!("{}: {e}", pr.what())))?;
    } else if !pr.is_tcp() {
        let q = sock::inq(fd).unwrap_or(0);
        if q > 0 {
            warn!(
                pid = cx.pid,
                fd = cx.fd,
                "{}: queued datagrams are not saved",
                pr.what()
            );
        }
    }
    let e = InetSkEntry {
        id: cx.id,
        ino: ino as u32,
        family: family as u32,
        r#type: pr.ty as u32,
        proto: pr.proto as u32,
        state: pr.state,
        src_port: pr.local.1 as u32,
        dst_port: dport,
        flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
        backlog,
        src_addr: words(pr.local.0),
        dst_addr: dst,
        fown: super::fown::read(fd, t.userns.as_ref())
            .map_err(|e| cx.err(format!("socket owner: {e}")))?,
        opts,
        v6only,
        ip_opts: Some(ip_opts),
        ifname: None,
        ns_id: None,
        shutdown: Some(SkShutdown::None as i32),
        tcp_opts,
    };
    debug!(pid = cx.pid, fd = cx.fd, "dumped {}", pr.what());
    Ok(FileEntry {
        r#type: FdTypes::Inetsk as i32,
        id: cx.id,
        isk: Some(Box::new(e)),
        ..Default::default()
    })
}

fn bound_dev(fd: BorrowedFd<'_>) -> io::Result<Option<String>> {
    let mut b = [0u8; 16];
    let n = sock::getsockopt_bytes(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, &mut b)?;
    let end = b[..n].iter().position(|&c| c == 0).unwrap_or(n);
    Ok((end > 0).then(|| String::from_utf8_lossy(&b[..end]).into_owned()))
}

fn read_ip_opts(fd: BorrowedFd<'_>, family: i32) -> io::Result<IpOptsEntry> {
    let g = |level, opt| sock::getsockopt_int(fd, level, opt);
    Ok(if family == libc::AF_INET6 {
        IpOptsEntry {
            freebind: Some(g(libc::IPPROTO_IPV6, IPV6_FREEBIND).unwrap_or(0) != 0),
            raw: None,
            pktinfo: Some(g(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)? != 0),
            tos: Some(g(libc::IPPROTO_IPV6, libc::IPV6_TCLASS)? as u32),
            ttl: Some(g(libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)? as u32),
        }
    } else {
        IpOptsEntry {
            freebind: Some(g(libc::IPPROTO_IP, libc::IP_FREEBIND)? != 0),
            raw: None,
            pktinfo: Some(g(libc::IPPROTO_IP, libc::IP_PKTINFO)? != 0),
            tos: Some(g(libc::IPPROTO_IP, libc::IP_TOS)? as u32),
            ttl: Some(g(libc::IPPROTO_IP, libc::IP_TTL)? as u32),
        }
    })
}

fn read_tcp_opts(fd: BorrowedFd<'_>) -> io::Result<TcpOptsEntry> {
    let g = |opt| sock::getsockopt_int(fd, libc::IPPROTO_TCP, opt);
    Ok(TcpOptsEntry {
        cork: Some(g(libc::TCP_CORK)? != 0),
        nodelay: Some(g(libc::TCP_NODELAY)? != 0),
        keepcnt: Some(g(libc::TCP_KEEPCNT)? as u32),
        keepidle: Some(g(libc::TCP_KEEPIDLE)? as u32),
        keepintvl: Some(g(libc::TCP_KEEPINTVL)? as u32),
    })
}

// ---------------------------------------------------------------- restore

/// Check, before anything is created, that every inet socket of the images
/// can be restored with the options given.
pub fn check_restore(plan: &Plan, tcp_established: bool, tcp_close: bool) -> Result<()> {
    let mut ids: Vec<&u32> = plan.files.keys().collect();
    ids.sort();
    for id in ids {
        let Some(e) = &plan.files[id].isk else {
            continue;
        };
        let what = || {
            let a = |w: &[u32], p| match ip_of(e.family, w) {
                Some(ip) => show((ip, p as u16)),
                None => format!("?:{p}"),
            };
            format!(
                "inet socket ino {} {} -> {} ({})",
                e.ino,
                a(&e.src_addr, e.src_port),
                a(&e.dst_addr, e.dst_port),
                state_name(e.state)
            )
        };
        let bad = |why: &str| Error::bad_image(super::FILES_IMG, format!("{}: {why}", what()));
        if e.family as i32 != libc::AF_INET && e.family as i32 != libc::AF_INET6 {
            return Err(bad("unknown family"));
        }
        match (e.r#type as i32, e.proto as i32) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => match e.state {
                TCP_CLOSE | TCP_LISTEN => {}
                s if connected(s) && (tcp_established || tcp_close) => {}
                s if connected(s) => {
                    return Err(Error::Other(format!(
                        "{}: restore with --tcp-established (or --tcp-close)",
                        what()
                    )))
                }
                _ => return Err(bad("state not supported")),
            },
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => {}
            _ => return Err(bad("socket type not supported")),
        }
        if ip_of(e.family, &e.src_addr).is_none() {
            return Err(bad("bad source address"));
        }
    }
    Ok(())
}

/// The inode naming the network lock of the images (see [`lock`]): the
/// smallest established TCP socket's.
fn lock_ino(files: &HashMap<u32, FileEntry>) -> Option<u32> {
    files
        .values()
        .filter_map(|f| f.isk.as_ref())
        .filter(|e| e.proto as i32 == libc::IPPROTO_TCP && connected(e.state))
        .map(|e| e.ino)
        .min()
}

/// Hold back the packets of the images' established connections in the
/// network namespace the tree is restored into, from before its sockets
/// exist until it runs: a connection whose peer is restored too (or comes
/// back later in the restore) must not be answered with a reset meanwhile.
/// In the dumper's namespace this is the dump's own lock (same table).
/// A namespace the tree owns is made here, ahead of the root, which joins
/// it (`joined`) instead of unsharing one. The caller removes the lock once
/// the tree runs; after a failed restore it stays, as the dump left it.
pub fn lock_for_restore(
    ns: &mut crate::ns::NsPlan,
    files: &HashMap<u32, FileEntry>,
    joined: &mut Vec<(crate::proc::NsKind, OwnedFd)>,
) -> Result<Option<lock::Lock>> {
    use crate::proc::NsKind;
    // With --tcp-close too: the dump's lock (same table) goes at the end.
    let Some(ino) = lock_ino(files) else {
        return Ok(None);
    };
    let conns: Vec<Conn> = files
        .values()
        .filter_map(|f| f.isk.as_deref())
        .filter(|e| e.proto as i32 == libc::IPPROTO_TCP && connected(e.state))
        .filter_map(|e| {
            Some(Conn {
                local: (ip_of(e.family, &e.src_addr)?, e.src_port as u16),
                peer: (ip_of(e.family, &e.dst_addr)?, e.dst_port as u16),
            })
        })
        .collect();
    let listeners: Vec<(std::net::IpAddr, u16)> = files
        .values()
        .filter_map(|f| f.isk.as_deref())
        .filter(|e| e.proto as i32 == libc::IPPROTO_TCP && e.state == TCP_LISTEN)
        .filter_map(|e| Some((ip_of(e.family, &e.src_addr)?, e.src_port as u16)))
        .collect();
    let file = if ns.owns(NsKind::Net) {
        // Locked before its links exist, so no packet reaches a socket
        // that is not rebuilt yet (a peer would get a reset).
        let mut lock = None;
        let f = crate::ns::net::fresh(ns, &mut |f| {
            let f = f
                .try_clone()
                .map_err(|e| Error::Other(format!("network namespace fd: {e}")))?;
            lock = Some(lock::Lock::take_in(f, ino, &conns, &listeners).map_err(Error::Other)?);
            Ok(())
        })?;
        ns.own.retain(|k| *k != NsKind::Net);
        joined.push((NsKind::Net, OwnedFd::from(f)));
        return Ok(lock);
    } else if let Some((_, fd)) = joined.iter().find(|(k, _)| *k == NsKind::Net) {
        std::fs::File::from(
            fd.try_clone()
                .map_err(|e| Error::Other(format!("network namespace fd: {e}")))?,
        )
    } else {
        let p = "/proc/thread-self/ns/net";
        std::fs::File::open(p).map_err(|e| Error::io(p, e))?
    };
    lock::Lock::take_in(file, ino, &conns, &listeners)
        .map(Some)
        .map_err(Error::Other)
}

/// `sk_reuse` for a socket on a port another restored socket also binds
/// (a listener and its accepted connections): see [`open`].
fn shares_port(files: &HashMap<u32, FileEntry>, e: &InetSkEntry) -> bool {
    files.values().filter_map(|f| f.isk.as_ref()).any(|o| {
        o.id != e.id
            && o.src_port == e.src_port
            && o.proto == e.proto
            && e.src_port != 0
            && (o.state == TCP_LISTEN || e.state == TCP_LISTEN)
    })
}

type R<T> = std::result::Result<T, String>;

fn sa(ip: IpAddr, port: u16) -> SockaddrStorage {
    match SocketAddr::new(ip, port) {
        SocketAddr::V4(a) => SockaddrStorage::from(a),
        SocketAddr::V6(a) => SockaddrStorage::from(a),
    }
}

/// Create one inet socket as it was (runs in the stub of the task that
/// makes it, in the tree's network namespace).
pub fn open(e: &InetSkEntry, cx: &OpenCtx<'_>) -> R<OwnedFd> {
    let what = format!("inet socket ino {}", e.ino);
    let fam = e.family as i32;
    let fd = sock::socket(fam, e.r#type as i32 | libc::SOCK_CLOEXEC, e.proto as i32)
        .map_err(|err| format!("{what}: socket: {err}"))?;
    let b = fd.as_fd();
    let tcp = e.proto as i32 == libc::IPPROTO_TCP;
    let local = ip_of(e.family, &e.src_addr).ok_or_else(|| format!("{what}: bad address"))?;
    let peer = ip_of(e.family, &e.dst_addr);
    let shared = shares_port(cx.files, e);
    let estab = tcp && connected(e.state);
    if estab && cx.tcp_close {
        // --tcp-close: a socket of the same kind that was never connected.
        info!(
            ino = e.ino,
            "restoring an established connection closed (--tcp-close)"
        );
        pre_bind(b, e).map_err(|err| format!("{what}: {err}"))?;
        set_common(b, e, false).map_err(|err| format!("{what}: {err}"))?;
        set_flags(b, e.flags).map_err(|err| format!("{what}: {err}"))?;
        return Ok(fd);
    }
    pre_bind(b, e).map_err(|err| format!("{what}: {err}"))?;
    if estab {
        let peer = peer.ok_or_else(|| format!("{what}: no peer address"))?;
        stream::restore(
            b,
            e,
            sa(local, e.src_port as u16),
            sa(peer, e.dst_port as u16),
        )
        .map_err(|err| format!("{what}: {err}"))?;
    } else {
        let unspec = local.is_unspecified();
        if e.src_port != 0 || !unspec {
            nix::sys::socket::bind(fd.as_raw_fd(), &sa(local, e.src_port as u16)).map_err(
                |err| format!("{what}: bind {}: {err}", show((local, e.src_port as u16))),
            )?;
        }
        if tcp && e.state == TCP_LISTEN {
            sock::listen(b, e.backlog as i32).map_err(|err| format!("{what}: listen: {err}"))?;
        }
        if !tcp && e.state == TCP_ESTABLISHED {
            let p = peer.ok_or_else(|| format!("{what}: no peer address"))?;
            nix::sys::socket::connect(fd.as_raw_fd(), &sa(p, e.dst_port as u16)).map_err(
                |err| format!("{what}: connect {}: {err}", show((p, e.dst_port as u16))),
            )?;
        }
    }
    // An established socket keeps SO_REUSEADDR on when it shares its port
    // with a listener that may be bound after it.
    set_common(b, e, estab && shared).map_err(|err| format!("{what}: {err}"))?;
    set_flags(b, e.flags).map_err(|err| format!("{what}: {err}"))?;
    Ok(fd)
}

/// What must be set before bind: the device, v6only, freebind, reuseport;
/// and SO_REUSEADDR, on for every bind (a connection of the old socket may
/// linger in TIME_WAIT, another restored socket may share the port) and
/// set as dumped afterwards.
fn pre_bind(b: BorrowedFd<'_>, e: &InetSkEntry) -> R<()> {
    sock::setsockopt_int(b, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        .map_err(|err| format!("SO_REUSEADDR: {err}"))?;
    if let Some(d) = e.opts.so_bound_dev.as_deref().filter(|d| !d.is_empty()) {
        sock::setsockopt_bytes(b, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, d.as_bytes())
            .map_err(|err| format!("SO_BINDTODEVICE {d}: {err}"))?;
    }
    if let Some(v) = e.v6only {
        sock::setsockopt_int(b, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v as i32)
            .map_err(|err| format!("IPV6_V6ONLY: {err}"))?;
    }
    if e.ip_opts.as_ref().and_then(|o| o.freebind) == Some(true) {
        let (l, o) = if e.family as i32 == libc::AF_INET6 {
            (libc::IPPROTO_IPV6, IPV6_FREEBIND)
        } else {
            (libc::IPPROTO_IP, libc::IP_FREEBIND)
        };
        sock::setsockopt_int(b, l, o, 1).map_err(|err| format!("IP_FREEBIND: {err}"))?;
    }
    if e.opts.so_reuseport == Some(true) {
        sock::setsockopt_int(b, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)
            .map_err(|err| format!("SO_REUSEPORT: {err}"))?;
    }
    Ok(())
}

/// Socket, IP and TCP options as dumped. `keep_reuse`: leave SO_REUSEADDR on.
fn set_common(b: BorrowedFd<'_>, e: &InetSkEntry, keep_reuse: bool) -> R<()> {
    super::unix::apply_opts(b, &e.opts)?;
    let reuse = e.opts.reuseaddr == Some(true) || keep_reuse;
    sock::setsockopt_int(b, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse as i32)
        .map_err(|err| format!("set SO_REUSEADDR: {err}"))?;
    if let Some(o) = &e.ip_opts {
        let v6 = e.family as i32 == libc::AF_INET6;
        let set = [
            (
                "pktinfo",
                if v6 {
                    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
                } else {
                    (libc::IPPROTO_IP, libc::IP_PKTINFO)
                },
                o.pktinfo.map(|v| v as u32),
            ),
            (
                "tos",
                if v6 {
                    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
                } else {
                    (libc::IPPROTO_IP, libc::IP_TOS)
                },
                o.tos,
            ),
            (
                "ttl",
                if v6 {
                    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS)
                } else {
                    (libc::IPPROTO_IP, libc::IP_TTL)
                },
                o.ttl,
            ),
        ];
        for (name, (l, opt), v) in set {
            let Some(v) = v else { continue };
            // Only where it differs from a new socket's (the default TTL
            // follows the namespace's sysctl).
            let cur =
                sock::getsockopt_int(b, l, opt).map_err(|err| format!("get {name}: {err}"))?;
            if cur as u32 != v {
                sock::setsockopt_int(b, l, opt, v as i32)
                    .map_err(|err| format!("set {name} {v}: {err}"))?;
            }
        }
    }
    if let Some(t) = &e.tcp_opts {
        let mut ints: Vec<(&str, i32, Option<u32>)> = vec![
            (
                "TCP_NODELAY",
                libc::TCP_NODELAY,
                t.nodelay.map(|v| v as u32),
            ),
            ("TCP_CORK", libc::TCP_CORK, t.cork.map(|v| v as u32)),
        ];
        // Older images kept keepalive values in sk_opts.
        ints.push((
            "TCP_KEEPCNT",
            libc::TCP_KEEPCNT,
            t.keepcnt.or(e.opts.tcp_keepcnt),
        ));
        ints.push((
            "TCP_KEEPIDLE",
            libc::TCP_KEEPIDLE,
            t.keepidle.or(e.opts.tcp_keepidle),
        ));
        ints.push((
            "TCP_KEEPINTVL",
            libc::TCP_KEEPINTVL,
            t.keepintvl.or(e.opts.tcp_keepintvl),
        ));
        for (name, opt, v) in ints {
            let Some(v) = v else { continue };
            let cur = sock::getsockopt_int(b, libc::IPPROTO_TCP, opt)
                .map_err(|err| format!("get {name}: {err}"))?;
            if cur as u32 != v {
                sock::setsockopt_int(b, libc::IPPROTO_TCP, opt, v as i32)
                    .map_err(|err| format!("set {name} {v}: {err}"))?;
            }
        }
    }
    Ok(())
}

fn set_flags(b: BorrowedFd<'_>, flags: u32) -> R<()> {
    fdobj::set_fl(b, flags as i32 & libc::O_NONBLOCK).map_err(|err| format!("set flags: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_words() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let w = words(v4);
        assert_eq!(w.len(), 1);
        // The kernel's __be32 as this machine reads it.
        assert_eq!(w[0], u32::from_ne_bytes([10, 1, 2, 3]));
        assert_eq!(ip_of(libc::AF_INET as u32, &w), Some(v4));
        let v6: IpAddr = "fd00::1:2".parse().unwrap();
        let w = words(v6);
        assert_eq!(w.len(), 4);
        assert_eq!(ip_of(libc::AF_INET6 as u32, &w), Some(v6));
        assert_eq!(ip_of(libc::AF_INET6 as u32, &w[..1]), None);
        assert_eq!(ip_of(libc::AF_UNIX as u32, &w), None);
    }

    fn probe(ty: i32, proto: i32, state: u32, unacked: u32) -> Probe {
        Probe {
            family: libc::AF_INET,
            ty,
            proto,
            state,
            local: ("10.0.0.1".parse().unwrap(), 80),
            peer: connected(state).then(|| ("10.0.0.2".parse().unwrap(), 4000)),
            tcp: (proto == libc::IPPROTO_TCP).then_some(tcp::Info {
                state: state as u8,
                unacked,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn refusals_name_the_socket() {
        let on = InetOpts {
            tcp_established: true,
            skip_in_flight: false,
        };
        let off = InetOpts::default();
        let est = probe(libc::SOCK_STREAM, libc::IPPROTO_TCP, TCP_ESTABLISHED, 0);
        let e = check(&est, off).unwrap_err();
        assert!(e.contains("10.0.0.1:80 -> 10.0.0.2:4000") && e.contains("--tcp-established"));
        assert!(check(&est, on).is_ok());
        let l = probe(libc::SOCK_STREAM, libc::IPPROTO_TCP, TCP_LISTEN, 2);
        assert!(check(&l, on).unwrap_err().contains("--tcp-skip-in-flight"));
        let skip = InetOpts {
            skip_in_flight: true,
            ..on
        };
        assert!(check(&l, skip).is_ok());
        for fw in [TCP_FIN_WAIT1, TCP_FIN_WAIT2] {
            let p = probe(libc::SOCK_STREAM, libc::IPPROTO_TCP, fw, 0);
            assert!(check(&p, off).unwrap_err().contains("--tcp-established"));
            assert!(check(&p, on).is_ok());
            assert!(connected(fw) && fin_sent(fw));
        }
        assert!(connected(TCP_ESTABLISHED) && !fin_sent(TCP_ESTABLISHED));
        let cw = probe(libc::SOCK_STREAM, libc::IPPROTO_TCP, 8, 0);
        assert!(check(&cw, on).unwrap_err().contains("CLOSE_WAIT"));
        let raw = probe(libc::SOCK_RAW, libc::IPPROTO_ICMP, TCP_CLOSE, 0);
        assert!(check(&raw, on).unwrap_err().contains("raw socket"));
        let udp = probe(libc::SOCK_DGRAM, libc::IPPROTO_UDP, TCP_CLOSE, 0);
        assert!(check(&udp, off).is_ok());
    }
}
