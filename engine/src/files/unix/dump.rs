//! Dumping unix sockets: sock_diag says what each socket is connected to;
//! the stolen fd gives options and (peeked) queued data.
//!
//! Pending connections with data: the kernel offers no way to read the
//! queue of a connection nobody accepted yet. Before any task is dumped,
//! [`prepare`] accepts such connections on the listener (from the dumper,
//! through its stolen fd), keeps their data, and puts an equivalent pending
//! connection back in the same order: the client task gets a new socket
//! (made by a remote `socket()`), the dumper connects it to the listener
//! and re-sends the data, copies the old client's options, flags and
//! shutdown state, and remote `dup3()`s it over every fd of the old one.
//! The tree sees the same thing as before, whether it is killed or left
//! running, and whether the dump succeeds or not.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::sys::socket::UnixAddr;
use stasis_proto::criu::{
    FdTypes, FileEntry, FilePermsEntry, SkPacketEntry, SkShutdown, UnixSkEntry,
};
use stasis_proto::image::magic;
use tracing::{debug, info, warn};

use super::diag::{self, SkDiag, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
use super::{
    apply_opts, big_sndbuf, peek_queue, read_opts, send_packets, show_name, SK_QUEUES_IMG,
    USK_EMBRYO, USK_EXTERN,
};
use crate::error::{Error, Result};
use crate::files::fdscan::FdScan;
use crate::files::{FdCtx, FileTable};
use crate::images::common;
use crate::proc;
use crate::sys::{pidfd, sock};
use crate::task::remote::Remote;

/// A pending connection's server end, taken out of the kernel by
/// [`prepare`].
#[derive(Debug)]
struct Embryo {
    /// Inode it had once accepted (for the image only).
    ino: u32,
    packets: Vec<Vec<u8>>,
}

/// Unix-socket state of one dump.
#[derive(Debug, Default)]
pub struct DumpState {
    diag: HashMap<u32, SkDiag>,
    /// Socket inode -> (pid, fd) of every fd of the tree holding it.
    held: HashMap<u32, Vec<(i32, i32)>>,
    /// Client inode -> listener inode, for pending connections.
    icon_of: HashMap<u32, u32>,
    /// Pending connections whose data [`prepare`] saved, by client inode.
    inflight: HashMap<u32, Embryo>,
    /// Pending connections whose client is closed, by listener inode, in
    /// accept order.
    orphans: HashMap<u32, Vec<Embryo>>,
    /// (receiving socket's file id, bytes) in queue order.
    packets: Vec<(u32, Vec<u8>)>,
    /// Inode -> file id of every socket dumped.
    dumped: HashMap<u32, u32>,
    listeners: Vec<u32>,
    externals: BTreeSet<u32>,
}

impl DumpState {
    fn refresh(&mut self, fds: &FdScan, pids: &[i32]) -> Result<()> {
        self.held = scan(fds, pids);
        if self.held.is_empty() {
            return Ok(());
        }
        let ns = format!("/proc/{}/ns/net", pids[0]);
        self.diag = diag::dump_all(Some(&ns))
            .map_err(|e| Error::Other(format!("sock_diag dump of unix sockets: {e}")))?;
        self.icon_of.clear();
        for d in self.diag.values() {
            if d.state == TCP_LISTEN {
                for &c in d.icons.iter().filter(|&&c| c != 0) {
                    self.icon_of.insert(c, d.ino);
                }
            }
        }
        Ok(())
    }
}

/// Every socket inode held by an fd of `pids`.
fn scan(fds: &FdScan, pids: &[i32]) -> HashMap<u32, Vec<(i32, i32)>> {
    let mut held: HashMap<u32, Vec<(i32, i32)>> = HashMap::new();
    for &pid in pids {
        for s in fds.fds(pid) {
            let Some(l) = &s.link else {
                continue;
            };
            if let Some(n) = l
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse::<u32>().ok())
            {
                held.entry(n).or_default().push((pid, s.fd));
            }
        }
    }
    held
}

/// Look at every unix socket of the tree (`pids`, live processes) before
/// any of them is dumped; move the data of pending connections out of the
/// kernel (see the module documentation).
pub fn prepare(t: &mut FileTable<'_>, pids: &[i32]) -> Result<()> {
    let st = &mut t.unix;
    st.refresh(&t.fdscan, pids)?;
    if st.held.is_empty() {
        return Ok(());
    }
    let mut listeners: Vec<(u32, i32, i32)> = st
        .held
        .iter()
        .filter(|(ino, _)| {
            st.diag
                .get(ino)
                .is_some_and(|d| d.state == TCP_LISTEN && !d.icons.is_empty())
        })
        .map(|(&ino, h)| (ino, h[0].0, h[0].1))
        .collect();
    listeners.sort();
    let mut moved = false;
    for (lino, lp, lfd) in listeners {
        let d = st.diag[&lino].clone();
        let err = |why: String| Error::Fd {
            pid: lp,
            fd: lfd,
            why: format!(
                "listening unix socket {} (ino {lino}): {why}",
                show_name(d.name.as_deref().unwrap_or_default())
            ),
        };
        // Pending connections must be taken out when one may carry data:
        // its client sent some, or is closed (and cannot tell).
        let data = d
            .icons
            .iter()
            .any(|&c| c == 0 || st.diag.get(&c).is_some_and(|x| x.wqlen > 0));
        if !data {
            continue;
        }
        for c in d.icons.iter().filter(|&&c| c != 0) {
            match st.held.get(c) {
                None => {
                    return Err(err(format!(
                        "its pending connections must be saved (they may carry data) \
                         and the one from socket ino {c} is outside the dumped tree"
                    )))
                }
                Some(h) if h.iter().any(|x| x.0 != h[0].0) => {
                    return Err(err(format!(
                        "the client of a pending connection (ino {c}) is held by several processes"
                    )))
                }
                Some(_) => {}
            }
        }
        move_pending(st, lino, lp, lfd, &d).map_err(err)?;
        moved = true;
    }
    if moved {
        // Fd tables changed: look at them again.
        t.fdscan = FdScan::scan(pids)?;
        t.unix.refresh(&t.fdscan, pids)?;
    }
    Ok(())
}

fn steal(pid: i32, fd: i32) -> std::result::Result<OwnedFd, String> {
    let p = pidfd::pidfd_open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
    pidfd::pidfd_getfd(&p, fd).map_err(|e| format!("pidfd_getfd({pid}, {fd}): {e}"))
}

fn ino_of(fd: &OwnedFd) -> std::result::Result<u32, String> {
    nix::sys::stat::fstat(fd.as_raw_fd())
        .map(|s| s.st_ino as u32)
        .map_err(|e| format!("fstat: {e}"))
}

/// Accept every pending connection of listener `lino`, keep its data, and
/// put an equivalent one back, in order.
fn move_pending(
    st: &mut DumpState,
    lino: u32,
    lp: i32,
    lfd: i32,
    d: &SkDiag,
) -> std::result::Result<(), String> {
    let lsk = steal(lp, lfd)?;
    // Where to connect from here: the socket file through our own fd (any
    // mount namespace, any path length), or the abstract name.
    let mut keep: Option<OwnedFd> = None;
    let addr = if d.has_path() {
        let f = sock::unix_file(lsk.as_fd()).map_err(|e| format!("open its socket file: {e}"))?;
        let a = UnixAddr::new(format!("/proc/self/fd/{}", f.as_raw_fd()).as_str())
            .map_err(|e| format!("address: {e}"))?;
        keep = Some(f);
        a
    } else {
        let n = d.name.as_deref().unwrap_or_default();
        UnixAddr::new_abstract(n.get(1..).unwrap_or_default())
            .map_err(|e| format!("address: {e}"))?
    };
    let mut taken = Vec::with_capacity(d.icons.len());
    for &c in &d.icons {
        if !sock::readable(lsk.as_fd(), 0).unwrap_or(false) {
            return Err(format!("pending connection from ino {c} vanished"));
        }
        let e = sock::accept(lsk.as_fd()).map_err(|e| format!("accept: {e}"))?;
        let eino = ino_of(&e)?;
        // Shut down for reading when the client shut down or is gone.
        let shut = c == 0 || st.diag.get(&c).is_some_and(|x| x.shutdown & 2 != 0);
        let q = peek_queue(e.as_fd(), d.ty, shut)?;
        taken.push((c, e, eino, q));
    }
    for (c, e, eino, q) in taken {
        let bytes: usize = q.iter().map(|p| p.len()).sum();
        if c == 0 {
            // The client is closed: a socket of ours sends the data and
            // closes, which leaves the same thing pending.
            let tmp = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Unix,
                if d.ty as i32 == libc::SOCK_SEQPACKET {
                    nix::sys::socket::SockType::SeqPacket
                } else {
                    nix::sys::socket::SockType::Stream
                },
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
            .map_err(|e| format!("socket: {e}"))?;
            big_sndbuf(tmp.as_fd())?;
            nix::sys::socket::connect(tmp.as_raw_fd(), &addr)
                .map_err(|e| format!("connect in place of a closed client: {e}"))?;
            send_packets(tmp.as_fd(), d.ty as u32, &q, None)?;
            info!(
                listener = lino,
                bytes, "pending unix connection of a closed client saved and put back"
            );
            st.orphans.entry(lino).or_default().push(Embryo {
                ino: eino,
                packets: q,
            });
            drop(tmp);
            drop(e);
            continue;
        }
        let new = replace_client(st, c, &addr, &q, d.ty)?;
        info!(
            listener = lino,
            old_client = c,
            new_client = new,
            bytes,
            "pending unix connection saved and put back"
        );
        st.inflight.insert(
            new,
            Embryo {
                ino: eino,
                packets: q,
            },
        );
        drop(e);
    }
    drop(keep);
    Ok(())
}

/// Give the task holding client `c` a new socket connected to `addr` with
/// the data `q` pending, in place of `c`. Returns the new inode.
fn replace_client(
    st: &DumpState,
    c: u32,
    addr: &UnixAddr,
    q: &[Vec<u8>],
    ty: u8,
) -> std::result::Result<u32, String> {
    let h = &st.held[&c];
    let cp = h[0].0;
    let old = steal(cp, h[0].1)?;
    let opts = read_opts(old.as_fd()).map_err(|e| format!("options of ino {c}: {e}"))?;
    let fl = nix::fcntl::fcntl(old.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| format!("F_GETFL: {e}"))?;
    let shut = st.diag.get(&c).map(|x| x.shutdown).unwrap_or(0);
    let maps = proc::read_maps(cp).map_err(|e| e.to_string())?;
    let vdso = maps
        .iter()
        .find(|m| m.path.as_deref() == Some("[vdso]"))
        .map(|m| (m.start, m.end));
    let mut r = Remote::new(cp, vdso).map_err(|e| e.to_string())?;
    let k = r
        .call(
            cp,
            "socket",
            libc::SYS_socket,
            [
                libc::AF_UNIX as u64,
                (ty as i32 | libc::SOCK_CLOEXEC) as u64,
                0,
                0,
                0,
                0,
            ],
        )
        .map_err(|e| e.to_string())?;
    let res = (|| -> std::result::Result<u32, String> {
        let kf = steal(cp, k as i32)?;
        big_sndbuf(kf.as_fd())?;
        nix::sys::socket::connect(kf.as_raw_fd(), addr)
            .map_err(|e| format!("connect a new client: {e}"))?;
        send_packets(kf.as_fd(), ty as u32, q, None)?;
        apply_opts(kf.as_fd(), &opts)?;
        nix::fcntl::fcntl(
            kf.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::from_bits_truncate(fl)),
        )
        .map_err(|e| format!("F_SETFL: {e}"))?;
        shutdown(kf.as_fd(), shut)?;
        for &(_, fd) in h {
            let cloexec = proc::read_fdinfo(cp, fd)
                .map(|i| i.flags & libc::O_CLOEXEC as u32 != 0)
                .map_err(|e| e.to_string())?;
            r.call(
                cp,
                "dup3",
                libc::SYS_dup3,
                [
                    k,
                    fd as u64,
                    if cloexec { libc::O_CLOEXEC as u64 } else { 0 },
                    0,
                    0,
                    0,
                ],
            )
            .map_err(|e| e.to_string())?;
        }
        ino_of(&kf)
    })();
    let closed = r.call(cp, "close", libc::SYS_close, [k, 0, 0, 0, 0, 0]);
    let fin = r.finish();
    let ino = res?;
    closed.map_err(|e| e.to_string())?;
    fin.map_err(|e| e.to_string())?;
    drop(old);
    Ok(ino)
}

/// Apply unix_diag shutdown bits (RCV 1, SEND 2) to a socket.
pub(crate) fn shutdown(
    fd: std::os::fd::BorrowedFd<'_>,
    bits: u8,
) -> std::result::Result<(), String> {
    use nix::sys::socket::Shutdown;
    let how = match bits & 3 {
        0 => return Ok(()),
        1 => Shutdown::Read,
        2 => Shutdown::Write,
        _ => Shutdown::Both,
    };
    nix::sys::socket::shutdown(fd.as_raw_fd(), how).map_err(|e| format!("shutdown: {e}"))
}

fn family_name(f: i32) -> String {
    match f {
        libc::AF_INET => "inet".into(),
        libc::AF_INET6 => "inet6".into(),
        libc::AF_NETLINK => "netlink".into(),
        libc::AF_PACKET => "packet".into(),
        other => format!("family {other}"),
    }
}

/// An fd that refers to a socket.
pub fn dump_fd(t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    let sk = cx.steal()?;
    let fam = sock::getsockopt_int(sk.as_fd(), libc::SOL_SOCKET, libc::SO_DOMAIN)
        .map_err(|e| cx.err(format!("getsockopt(SO_DOMAIN) on {}: {e}", cx.link)))?;
    if fam != libc::AF_UNIX {
        return Err(cx.err(format!(
            "{} socket ({}) is not supported yet",
            family_name(fam),
            cx.link
        )));
    }
    let ext_ok = t.opts.ext_unix_sk;
    let st = &mut t.unix;
    let ino = cx.st.ino() as u32;
    let d = st
        .diag
        .get(&ino)
        .cloned()
        .ok_or_else(|| cx.err(format!("unix socket ino {ino} is unknown to sock_diag")))?;
    let ty = d.ty as i32;
    if ![libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET].contains(&ty) {
        return Err(cx.err(format!(
            "unix socket ino {ino} of type {ty} is not supported"
        )));
    }
    if ![TCP_LISTEN, TCP_ESTABLISHED, TCP_CLOSE].contains(&d.state) {
        return Err(cx.err(format!(
            "unix socket ino {ino} in state {} is not supported",
            d.state
        )));
    }
    let opts = read_opts(sk.as_fd()).map_err(|e| cx.err(format!("socket options: {e}")))?;
    let mut e = UnixSkEntry {
        id: cx.id,
        ino,
        r#type: d.ty as u32,
        state: d.state as u32,
        flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
        uflags: 0,
        backlog: if d.state == TCP_LISTEN { d.wqlen } else { 0 },
        peer: d.peer,
        fown: super::super::fown::read(sk.as_fd(), t.userns.as_ref())
            .map_err(|e| cx.err(format!("socket owner: {e}")))?,
        opts,
        name: d.name.clone().unwrap_or_default(),
        shutdown: Some(shutdown_enum(d.shutdown) as i32),
        file_perms: None,
        name_dir: None,
        deleted: None,
        ns_id: None,
        mnt_id: None,
    };
    if d.has_path() {
        resolve_path(&sk, &mut e, cx);
    }
    let stream = ty != libc::SOCK_DGRAM;
    let mut keep_queue = true;
    let refuse = |what: String| {
        cx.err(format!(
            "unix socket ino {ino} {what} outside the dumped tree; \
             use --ext-unix-sk to dump it as external"
        ))
    };
    if d.peer != 0 && !st.held.contains_key(&d.peer) {
        if !ext_ok {
            return Err(refuse(format!("is connected to socket ino {}", d.peer)));
        }
        let pname = st.diag.get(&d.peer).and_then(|p| p.name.clone());
        warn!(
            pid = cx.pid,
            fd = cx.fd,
            ino,
            peer = d.peer,
            peer_name = %show_name(pname.as_deref().unwrap_or_default()),
            "unix socket connected outside the tree: dumped as external"
        );
        if stream {
            // Data the outside peer sent cannot be queued again by anyone
            // but that peer.
            keep_queue = false;
        }
        st.externals.insert(d.peer);
    } else if d.peer == 0 && d.state == TCP_ESTABLISHED && stream {
        if let Some(&lino) = st.icon_of.get(&ino) {
            // The client end of a pending connection.
            e.peer = lino;
            if !st.held.contains_key(&lino) {
                if !ext_ok {
                    return Err(refuse(format!(
                        "has a pending connection to listening socket ino {lino}"
                    )));
                }
                if d.wqlen > 0 {
                    warn!(
                        pid = cx.pid,
                        fd = cx.fd,
                        ino,
                        "data sent on a pending connection to an outside listener is lost"
                    );
                }
                st.externals.insert(lino);
            }
        } else {
            debug!(
                pid = cx.pid,
                fd = cx.fd,
                ino,
                "connected unix socket whose peer is gone"
            );
        }
    }
    if d.state != TCP_LISTEN && keep_queue {
        // SIOCINQ first: every byte it counts must be in what we peek
        // (streams and seqpackets count the whole queue).
        let inq = sock::inq(sk.as_fd()).unwrap_or(0).max(0) as usize;
        let q = peek_queue(sk.as_fd(), d.ty, d.shutdown & 1 != 0)
            .map_err(|w| cx.err(format!("unix socket ino {ino}: {w}")))?;
        let got: usize = q.iter().map(|p| p.len()).sum();
        if ty != libc::SOCK_DGRAM && got < inq {
            return Err(cx.err(format!(
                "unix socket ino {ino}: read {got} queued bytes but {inq} are queued"
            )));
        }
        st.packets.extend(q.into_iter().map(|p| (cx.id, p)));
    }
    st.dumped.insert(ino, cx.id);
    if d.state == TCP_LISTEN {
        st.listeners.push(ino);
    }
    Ok(FileEntry {
        r#type: FdTypes::Unixsk as i32,
        id: cx.id,
        usk: Some(Box::new(e)),
        ..Default::default()
    })
}

fn shutdown_enum(bits: u8) -> SkShutdown {
    match bits & 3 {
        0 => SkShutdown::None,
        1 => SkShutdown::Read,
        2 => SkShutdown::Write,
        _ => SkShutdown::Both,
    }
}

/// Permissions, owner, deleted state and directory of a path name, from the
/// socket file itself (SIOCUNIXFILE).
fn resolve_path(sk: &OwnedFd, e: &mut UnixSkEntry, cx: &FdCtx<'_>) {
    let f = match sock::unix_file(sk.as_fd()) {
        Ok(f) => f,
        Err(err) => {
            warn!(
                pid = cx.pid,
                fd = cx.fd,
                "socket file of {}: {err}",
                show_name(&e.name)
            );
            e.deleted = Some(true);
            return;
        }
    };
    let me = format!("/proc/self/fd/{}", f.as_raw_fd());
    if let Ok(m) = std::fs::metadata(&me) {
        e.file_perms = Some(FilePermsEntry {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
        });
    }
    let Ok(link) = std::fs::read_link(&me) else {
        return;
    };
    let link = link.to_string_lossy().into_owned();
    let (path, deleted) = match link.strip_suffix(" (deleted)") {
        Some(p) => (p.to_string(), true),
        None => (link, false),
    };
    if deleted {
        e.deleted = Some(true);
    }
    let name = show_name(&e.name);
    if !name.starts_with('/') {
        if let Some(dir) = path.strip_suffix(&format!("/{name}")) {
            e.name_dir = Some(if dir.is_empty() {
                "/".into()
            } else {
                dir.into()
            });
        }
    }
}

/// Add the entries of pending connections and external peers, and write
/// sk-queues.img. Called once, when files.img is written.
pub fn finish_dump(t: &mut FileTable<'_>) -> Result<()> {
    let mut st = std::mem::take(&mut t.unix);
    let mut packets = std::mem::take(&mut st.packets);
    for &lino in &st.listeners {
        let ld = &st.diag[&lino];
        let mut orphans = st.orphans.remove(&lino).unwrap_or_default().into_iter();
        for c in &ld.icons {
            let (emb, peer, mirrored) = if *c == 0 {
                // A closed client: the entry's peer is the listener.
                let Some(o) = orphans.next() else {
                    continue;
                };
                (Some(o), lino, 3)
            } else {
                if !st.dumped.contains_key(c) {
                    continue;
                }
                // The server end sees the client's shutdown mirrored.
                let cd = st.diag.get(c).cloned().unwrap_or_default();
                let m = ((cd.shutdown & 1) << 1) | ((cd.shutdown & 2) >> 1);
                (st.inflight.remove(c), *c, m)
            };
            let id = t.new_id();
            t.push(FileEntry {
                r#type: FdTypes::Unixsk as i32,
                id,
                usk: Some(Box::new(UnixSkEntry {
                    id,
                    ino: emb.as_ref().map(|e| e.ino).unwrap_or(0),
                    r#type: ld.ty as u32,
                    state: TCP_ESTABLISHED as u32,
                    uflags: USK_EMBRYO,
                    peer,
                    name: ld.name.clone().unwrap_or_default(),
                    shutdown: Some(shutdown_enum(mirrored) as i32),
                    ..Default::default()
                })),
                ..Default::default()
            });
            if let Some(emb) = emb {
                packets.extend(emb.packets.into_iter().map(|p| (id, p)));
            }
        }
    }
    for &x in &st.externals {
        let d = st.diag.get(&x).cloned().unwrap_or_default();
        let id = t.new_id();
        t.push(FileEntry {
            r#type: FdTypes::Unixsk as i32,
            id,
            usk: Some(Box::new(UnixSkEntry {
                id,
                ino: x,
                r#type: d.ty as u32,
                state: d.state as u32,
                uflags: USK_EXTERN,
                backlog: if d.state == TCP_LISTEN { d.wqlen } else { 0 },
                name: d.name.unwrap_or_default(),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    if packets.is_empty() {
        return Ok(());
    }
    let mut w = t.dir.writer(SK_QUEUES_IMG, common(magic::SK_QUEUES))?;
    for (id, p) in &packets {
        t.dir.put(
            &mut w,
            SK_QUEUES_IMG,
            &SkPacketEntry {
                id_for: *id,
                length: p.len() as u32,
                scm: Vec::new(),
            },
        )?;
        w.write_payload(p)
            .map_err(|e| Error::io(t.dir.file(SK_QUEUES_IMG), e))?;
    }
    t.dir.finish(w, SK_QUEUES_IMG)
}
