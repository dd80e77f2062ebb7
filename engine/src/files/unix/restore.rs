//! Restoring unix sockets. All sockets of one component are made together
//! in one task (see [`super::component`]), in this order:
//!
//! 1. create: `socketpair` for two sockets connected to each other (stream
//!    and seqpacket always, datagram when neither is bound), `socket`
//!    otherwise; a stream socket whose peer is gone is one end of a pair
//!    whose other end is closed once its queue is refilled;
//! 2. bind (a stale socket file at the path is removed first) and listen;
//! 3. refill the queues of unpaired datagram sockets from a temporary
//!    socket, before they connect (a connected socket only takes data from
//!    its peer);
//! 4. connect datagram sockets to their peers' addresses;
//! 5. connect the clients of pending connections to their listener, in
//!    accept order, and re-send the data they had sent; connect sockets
//!    whose peer is outside the tree to its address;
//! 6. refill the queues of pairs, each from the other end;
//! 7. options, file flags and shutdown state; unlink names that were
//!    deleted.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use nix::sys::socket::{socket, socketpair, AddressFamily, SockFlag, SockType, UnixAddr};
use stasis_proto::criu::{SkPacketEntry, UnixSkEntry};
use stasis_proto::image::magic;

use super::diag::{TCP_ESTABLISHED, TCP_LISTEN};
use super::dump::shutdown;
use super::{
    apply_opts, big_sndbuf, component, entry, is_real, send_packets, show_name, SK_QUEUES_IMG,
    USK_EMBRYO, USK_EXTERN,
};
use crate::error::{Error, Result};
use crate::files::{OpenCtx, FILES_IMG};
use crate::images::{common, ImageDir};
use crate::restore::plan::Plan;
use crate::sys::sock;

type R<T> = std::result::Result<T, String>;

fn sock_type(t: u32) -> Option<SockType> {
    match t as i32 {
        libc::SOCK_STREAM => Some(SockType::Stream),
        libc::SOCK_DGRAM => Some(SockType::Datagram),
        libc::SOCK_SEQPACKET => Some(SockType::SeqPacket),
        _ => None,
    }
}

fn is_stream(e: &UnixSkEntry) -> bool {
    e.r#type != libc::SOCK_DGRAM as u32
}

/// Check, before anything is created, that every unix socket can be
/// restored: known types, held by a task, peers present, external peers
/// allowed and reachable.
pub fn check_restore(plan: &Plan, ext_ok: bool) -> Result<()> {
    let files = &plan.files;
    let held: HashSet<u32> = plan
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter().map(|f| f.id))
        .collect();
    let by_ino: HashMap<u32, &UnixSkEntry> = files
        .values()
        .filter_map(entry)
        .filter(|e| e.ino != 0)
        .map(|e| (e.ino, e))
        .collect();
    let mut ids: Vec<u32> = files.keys().copied().collect();
    ids.sort();
    for id in ids {
        let Some(e) = files.get(&id).and_then(entry) else {
            continue;
        };
        if sock_type(e.r#type).is_none() {
            return Err(Error::bad_image(
                FILES_IMG,
                format!("unix socket ino {}: unknown type {}", e.ino, e.r#type),
            ));
        }
        if !is_real(e) {
            continue;
        }
        if !held.contains(&e.id) {
            return Err(Error::bad_image(
                FILES_IMG,
                format!(
                    "unix socket ino {} (file {}) is held by no task; sockets only \
                     in flight in other sockets' queues are not supported",
                    e.ino, e.id
                ),
            ));
        }
        if e.peer == 0 {
            continue;
        }
        let Some(p) = by_ino.get(&e.peer) else {
            return Err(Error::bad_image(
                FILES_IMG,
                format!(
                    "unix socket ino {} is connected to ino {}, which is not in the image",
                    e.ino, e.peer
                ),
            ));
        };
        if p.uflags & USK_EXTERN != 0 {
            if !ext_ok {
                return Err(Error::Other(format!(
                    "unix socket ino {} (file {}) is connected to socket ino {} outside \
                     the dumped tree: restore with --ext-unix-sk to connect it again",
                    e.ino, e.id, p.ino
                )));
            }
            if p.name.is_empty() {
                return Err(Error::Other(format!(
                    "unix socket ino {} (file {}) was connected to socket ino {} outside \
                     the dumped tree, which has no address to connect to again",
                    e.ino, e.id, p.ino
                )));
            }
        }
    }
    Ok(())
}

/// Queued packets of the sockets `ids`, by receiving file id.
/// sk-queues.img of the current restore, read once by the restorer before
/// it forks ([`preload_queues`]) rather than by every stub that creates
/// sockets (each read the whole image).
type Queues = HashMap<u32, Vec<Vec<u8>>>;
static QUEUES: RwLock<Option<(PathBuf, Queues)>> = RwLock::new(None);

/// Reads the queued packets of the images in `dir` for [`create`].
pub fn preload_queues(dir: &Path) -> R<()> {
    let all = read_queues(dir, None)?;
    *QUEUES.write().unwrap_or_else(|e| e.into_inner()) = Some((dir.to_path_buf(), all));
    Ok(())
}

/// The packets of `ids` from [`preload_queues`], if it read `dir`.
fn preloaded(dir: &Path, ids: &HashSet<u32>) -> Option<Queues> {
    let g = QUEUES.read().unwrap_or_else(|e| e.into_inner());
    let (d, all) = g.as_ref()?;
    (d == dir).then(|| {
        ids.iter()
            .filter_map(|id| all.get(id).map(|v| (*id, v.clone())))
            .collect()
    })
}

fn read_queues(dir: &Path, ids: Option<&HashSet<u32>>) -> R<Queues> {
    let mut out: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
    if !dir.join(SK_QUEUES_IMG).exists() {
        return Ok(out);
    }
    let d = ImageDir::open(dir).map_err(|e| e.to_string())?;
    let mut r = d
        .reader(SK_QUEUES_IMG, common(magic::SK_QUEUES))
        .map_err(|e| e.to_string())?;
    while let Some(p) = r.read_entry::<SkPacketEntry>().map_err(|e| e.to_string())? {
        if ids.is_none_or(|ids| ids.contains(&p.id_for)) {
            let b = r
                .read_payload(p.length as usize)
                .map_err(|e| e.to_string())?;
            out.entry(p.id_for).or_default().push(b);
        } else {
            r.skip_payload(p.length as u64).map_err(|e| e.to_string())?;
        }
    }
    Ok(out)
}

/// The path of a path name (trailing NULs dropped) and its directory for
/// relative names.
fn path_of(e: &UnixSkEntry) -> (PathBuf, Option<PathBuf>) {
    let end = e.name.iter().position(|&b| b == 0).unwrap_or(e.name.len());
    let p = PathBuf::from(OsStr::from_bytes(&e.name[..end]));
    let dir = e
        .name_dir
        .as_ref()
        .filter(|_| p.is_relative())
        .map(PathBuf::from);
    (p, dir)
}

/// The address other sockets reach `e` at.
fn addr_to(e: &UnixSkEntry, bound: &HashMap<u32, UnixAddr>) -> R<UnixAddr> {
    if let Some(a) = bound.get(&e.id) {
        return Ok(*a);
    }
    if e.name.is_empty() {
        return Err(format!("socket ino {} has no address to connect to", e.ino));
    }
    if e.name[0] == 0 {
        return UnixAddr::new_abstract(&e.name[1..]).map_err(|x| format!("address: {x}"));
    }
    let (p, dir) = path_of(e);
    let full = match dir {
        Some(d) => d.join(p),
        None => p,
    };
    UnixAddr::new(&full).map_err(|x| format!("address {}: {x}", full.display()))
}

/// Bind `fd` to the name of `e`; returns the address it can be reached at.
fn bind_one(fd: &OwnedFd, e: &UnixSkEntry, unlink: &mut Vec<PathBuf>) -> R<UnixAddr> {
    let bind = |a: &UnixAddr| nix::sys::socket::bind(fd.as_raw_fd(), a);
    if e.name[0] == 0 {
        let a = UnixAddr::new_abstract(&e.name[1..]).map_err(|x| format!("address: {x}"))?;
        bind(&a).map_err(|x| format!("bind to {}: {x}", show_name(&e.name)))?;
        return Ok(a);
    }
    let (rel, dir) = path_of(e);
    let mut full = match &dir {
        Some(d) => d.join(&rel),
        None => rel.clone(),
    };
    let deleted = e.deleted == Some(true);
    let mut in_dir = dir.is_some();
    match std::fs::symlink_metadata(&full) {
        Ok(m) if deleted => {
            // The name was unlinked in the dump; what is there now is not
            // ours: bind next to it and unlink once connected.
            let _ = m;
            let base = full.parent().unwrap_or(Path::new("/")).to_path_buf();
            full = base.join(format!(".stasis-usk-{}-{}", e.ino, std::process::id()));
            let _ = std::fs::remove_file(&full);
            in_dir = false;
        }
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(&full)
                .map_err(|x| format!("remove stale socket file {}: {x}", full.display()))?;
        }
        Ok(_) => {
            return Err(format!(
                "cannot bind to {}: a file that is not a socket is there",
                full.display()
            ))
        }
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => {}
        Err(x) => return Err(format!("stat {}: {x}", full.display())),
    }
    if in_dir {
        // Bind the relative name from its directory so getsockname() gives
        // back exactly what it gave.
        let d = dir.unwrap();
        let back = std::fs::File::open(".").map_err(|x| format!("open cwd: {x}"))?;
        std::env::set_current_dir(&d).map_err(|x| format!("chdir {}: {x}", d.display()))?;
        let r = UnixAddr::new(&rel)
            .map_err(|x| format!("address: {x}"))
            .and_then(|a| bind(&a).map_err(|x| format!("bind to {}: {x}", full.display())));
        nix::unistd::fchdir(back.as_raw_fd()).map_err(|x| format!("fchdir back: {x}"))?;
        r?;
    } else {
        let a = UnixAddr::new(&full).map_err(|x| format!("address {}: {x}", full.display()))?;
        bind(&a).map_err(|x| format!("bind to {}: {x}", full.display()))?;
    }
    if let Some(fp) = &e.file_perms {
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(fp.mode & 0o7777))
            .map_err(|x| format!("chmod {}: {x}", full.display()))?;
        std::os::unix::fs::lchown(&full, Some(fp.uid), Some(fp.gid))
            .map_err(|x| format!("chown {}: {x}", full.display()))?;
    }
    if deleted {
        unlink.push(full.clone());
    }
    UnixAddr::new(&full).map_err(|x| format!("address {}: {x}", full.display()))
}

fn new_socket(ty: SockType) -> R<OwnedFd> {
    socket(AddressFamily::Unix, ty, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))
}

fn new_pair(ty: SockType) -> R<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, ty, None, SockFlag::SOCK_CLOEXEC)
        .map_err(|e| format!("socketpair: {e}"))
}

/// Create every socket of the component whose smallest file id is `key`.
/// Returns the sockets tasks hold, by file id.
pub fn create(key: u32, cx: &OpenCtx<'_>) -> R<Vec<(u32, OwnedFd)>> {
    let ids = component(cx.files, key);
    let ents: Vec<&UnixSkEntry> = ids
        .iter()
        .filter_map(|id| cx.files.get(id).and_then(entry))
        .collect();
    let by_ino: HashMap<u32, &UnixSkEntry> = ents
        .iter()
        .filter(|e| e.ino != 0)
        .map(|e| (e.ino, *e))
        .collect();
    let real: Vec<&UnixSkEntry> = ents.iter().copied().filter(|e| is_real(e)).collect();
    let idset: HashSet<u32> = ids.iter().copied().collect();
    let mut queues = match preloaded(cx.images_dir, &idset) {
        Some(q) => q,
        None => read_queues(cx.images_dir, Some(&idset))?,
    };
    let mut q = |id: u32| queues.remove(&id).unwrap_or_default();
    let what = |e: &UnixSkEntry| format!("unix socket ino {} ({})", e.ino, show_name(&e.name));

    // 1. Create.
    let mut fds: HashMap<u32, OwnedFd> = HashMap::new();
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let mut halves: Vec<(u32, OwnedFd)> = Vec::new();
    for e in &real {
        if fds.contains_key(&e.id) {
            continue;
        }
        let ty = sock_type(e.r#type).ok_or_else(|| format!("{}: bad type", what(e)))?;
        let mate = by_ino.get(&e.peer).copied().filter(|p| {
            is_real(p)
                && p.id != e.id
                && p.peer == e.ino
                && p.r#type == e.r#type
                && !fds.contains_key(&p.id)
                && (is_stream(e) || e.name.is_empty() && p.name.is_empty())
        });
        if let Some(p) = mate {
            let (a, b) = new_pair(ty)?;
            fds.insert(e.id, a);
            fds.insert(p.id, b);
            pairs.push((e.id, p.id));
        } else if is_stream(e) && e.state == TCP_ESTABLISHED as u32 && e.peer == 0 {
            let (a, b) = new_pair(ty)?;
            fds.insert(e.id, a);
            halves.push((e.id, b));
        } else {
            fds.insert(e.id, new_socket(ty)?);
        }
    }
    let paired: HashSet<u32> = pairs
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .chain(halves.iter().map(|h| h.0))
        .collect();
    let single: Vec<&UnixSkEntry> = real
        .iter()
        .copied()
        .filter(|e| !paired.contains(&e.id))
        .collect();

    // 2. Bind and listen. Connected stream sockets keep no name of their
    // own (an accepted socket shows its listener's).
    let mut bound: HashMap<u32, UnixAddr> = HashMap::new();
    let mut unlink: Vec<PathBuf> = Vec::new();
    for e in &single {
        let fd = &fds[&e.id];
        let connected_stream = is_stream(e) && e.state == TCP_ESTABLISHED as u32;
        if !e.name.is_empty() && !connected_stream {
            let a = bind_one(fd, e, &mut unlink).map_err(|x| format!("{}: {x}", what(e)))?;
            bound.insert(e.id, a);
        }
        if e.state == TCP_LISTEN as u32 {
            sock::listen(fd.as_fd(), e.backlog as i32)
                .map_err(|x| format!("{}: listen: {x}", what(e)))?;
        }
    }

    // 3. Queues of unpaired datagram sockets, sent to their address.
    for e in single.iter().filter(|e| !is_stream(e)) {
        let data = q(e.id);
        if data.is_empty() {
            continue;
        }
        let to = bound.get(&e.id).ok_or_else(|| {
            format!(
                "{}: {} queued datagrams but no address to send them to",
                what(e),
                data.len()
            )
        })?;
        let tmp = new_socket(SockType::Datagram)?;
        big_sndbuf(tmp.as_fd())?;
        send_packets(tmp.as_fd(), e.r#type, &data, Some(to))
            .map_err(|x| format!("{}: refill its queue: {x}", what(e)))?;
    }

    // 4. Datagram connections.
    for e in single.iter().filter(|e| !is_stream(e)) {
        let fd = &fds[&e.id];
        if e.peer != 0 {
            let p = by_ino
                .get(&e.peer)
                .ok_or_else(|| format!("{}: peer ino {} not in the image", what(e), e.peer))?;
            let a = addr_to(p, &bound).map_err(|x| format!("{}: {x}", what(e)))?;
            nix::sys::socket::connect(fd.as_raw_fd(), &a)
                .map_err(|x| format!("{}: connect to {}: {x}", what(e), show_name(&p.name)))?;
        }
        // ESTABLISHED without a peer: either others connected to it (the
        // kernel marks both ends) or its peer was closed since; both come
        // back as an unconnected socket.
    }

    // 5. Stream connections made by connect(): pending connections (in
    // accept order, with the data they carry; one whose client was closed
    // is made by a temporary socket) and peers outside the tree.
    let listening: HashSet<u32> = ents
        .iter()
        .filter(|e| e.state == TCP_LISTEN as u32 && e.ino != 0)
        .map(|e| e.ino)
        .collect();
    let embryos = ents.iter().copied().filter(|e| e.uflags & USK_EMBRYO != 0);
    let embryo_of: HashMap<u32, &UnixSkEntry> = embryos
        .clone()
        .filter(|m| !listening.contains(&m.peer))
        .map(|m| (m.peer, m))
        .collect();
    // (accept-order key, client socket or None for a closed client, embryo)
    type Pending<'e> = ((u32, u32), Option<&'e UnixSkEntry>, Option<&'e UnixSkEntry>);
    let mut pending: Vec<Pending<'_>> = single
        .iter()
        .copied()
        .filter(|e| is_stream(e) && e.state == TCP_ESTABLISHED as u32 && e.peer != 0)
        .map(|c| {
            let m = embryo_of.get(&c.ino).copied();
            ((m.map(|m| m.id).unwrap_or(u32::MAX), c.id), Some(c), m)
        })
        .collect();
    pending.extend(
        embryos
            .filter(|m| listening.contains(&m.peer))
            .map(|m| ((m.id, 0), None, Some(m))),
    );
    pending.sort_by_key(|p| p.0);
    for (_, c, m) in pending {
        let (peer, ty) = match (c, m) {
            (Some(c), _) => (c.peer, c.r#type),
            (None, Some(m)) => (m.peer, m.r#type),
            (None, None) => continue,
        };
        let who = c.map(what).unwrap_or_else(|| "pending connection".into());
        let l = by_ino
            .get(&peer)
            .ok_or_else(|| format!("{who}: peer ino {peer} not in the image"))?;
        let a = addr_to(l, &bound).map_err(|x| format!("{who}: {x}"))?;
        let tmp;
        let fd = match c {
            Some(c) => &fds[&c.id],
            None => {
                tmp = new_socket(sock_type(ty).ok_or("bad socket type")?)?;
                &tmp
            }
        };
        nix::sys::socket::connect(fd.as_raw_fd(), &a)
            .map_err(|x| format!("{who}: connect to {}: {x}", show_name(&l.name)))?;
        if let Some(m) = m {
            let data = q(m.id);
            if !data.is_empty() {
                big_sndbuf(fd.as_fd())?;
                send_packets(fd.as_fd(), ty, &data, None)
                    .map_err(|x| format!("{who}: re-send pending data: {x}"))?;
            }
        }
    }

    // 6. Queues of pairs, each written by the other end.
    for &(a, b) in &pairs {
        for (to, from) in [(a, b), (b, a)] {
            let data = q(to);
            if data.is_empty() {
                continue;
            }
            let sender = &fds[&from];
            big_sndbuf(sender.as_fd())?;
            let e = cx.files.get(&to).and_then(entry).unwrap();
            send_packets(sender.as_fd(), e.r#type, &data, None)
                .map_err(|x| format!("{}: refill its queue: {x}", what(e)))?;
        }
    }
    for (id, other) in halves {
        let e = cx.files.get(&id).and_then(entry).unwrap();
        let data = q(id);
        if !data.is_empty() {
            big_sndbuf(other.as_fd())?;
            send_packets(other.as_fd(), e.r#type, &data, None)
                .map_err(|x| format!("{}: refill its queue: {x}", what(e)))?;
        }
        drop(other); // the peer is gone: EOF after the data
    }

    // 7. Options, flags, shutdown; deleted names go away again.
    for e in &real {
        let fd = &fds[&e.id];
        apply_opts(fd.as_fd(), &e.opts).map_err(|x| format!("{}: {x}", what(e)))?;
        let fl = nix::fcntl::OFlag::from_bits_truncate(e.flags as i32)
            & (nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_APPEND);
        nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl))
            .map_err(|x| format!("{}: F_SETFL: {x}", what(e)))?;
        let bits = e.shutdown.unwrap_or(0) as u8;
        if !(e.peer == 0 && e.state == TCP_ESTABLISHED as u32 && is_stream(e)) {
            shutdown(fd.as_fd(), bits).map_err(|x| format!("{}: {x}", what(e)))?;
        }
    }
    for p in unlink {
        let _ = std::fs::remove_file(p);
    }
    let mut out: Vec<(u32, OwnedFd)> = fds.into_iter().collect();
    out.sort_by_key(|x| x.0);
    Ok(out)
}
