//! Open files: the fd table of each task (fdinfo-*.img) and the file objects
//! behind it (files.img).
//!
//! Every kind of file has one module that owns its dump and its restore; this
//! module recognises the kind of an fd and dispatches. An open file
//! description shared by several fds (dup, fork, SCM_RIGHTS) is found with
//! kcmp and stored once, so restore can recreate it once and share it again.

pub mod epoll;
pub mod eventfd;
pub mod fanotify;
pub mod fdscan;
pub mod fown;
pub mod inet;
pub mod inotify;
pub mod locks;
pub mod memfd;
pub mod memo;
pub mod pipe;
pub mod reg;
mod shared;
pub mod signalfd;
pub mod tables;
pub mod timerfd;
pub mod tty;
pub mod unix;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use stasis_proto::criu::{FdTypes, FdinfoEntry, FileEntry, RemapFilePathEntry};
use stasis_proto::image::magic;

use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc;

pub const FILES_IMG: &str = "files.img";
pub const REMAP_IMG: &str = "remap-fpath.img";

/// What an fd refers to, as far as dispatch is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular files, directories and device nodes opened by path.
    Reg,
    /// A terminal (pty slave, /dev/tty*, console).
    Tty,
    /// An epoll instance.
    Epoll,
    /// An inotify instance.
    Inotify,
    /// A fanotify group.
    Fanotify,
    /// An end of an anonymous pipe.
    Pipe,
    /// A FIFO opened by path.
    Fifo,
    Eventfd,
    Signalfd,
    Timerfd,
    Memfd,
    /// A socket (unix sockets are saved; other families are refused when
    /// the fd is dumped).
    Socket,
    /// Something this engine cannot save yet; the name is for the error.
    Unsupported(&'static str),
}

/// Recognise an fd from its link text and mode.
pub fn classify(link: &str, mode: u32, rdev_major: u32) -> Kind {
    let fmt = mode & libc::S_IFMT;
    if let Some(rest) = link.strip_prefix("anon_inode:") {
        return Kind::Unsupported(match rest.trim_matches(|c| c == '[' || c == ']') {
            "eventfd" => return Kind::Eventfd,
            "signalfd" => return Kind::Signalfd,
            "timerfd" => return Kind::Timerfd,
            "eventpoll" => return Kind::Epoll,
            "inotify" => return Kind::Inotify,
            "fanotify" => return Kind::Fanotify,
            "pidfd" => "pidfd",
            "io_uring" => "io_uring",
            "bpf-map" | "bpf-prog" => "bpf",
            "userfaultfd" => "userfaultfd",
            "perf_event" => "perf event",
            _ => "anonymous inode",
        });
    }
    if link.starts_with("pipe:") {
        return Kind::Pipe;
    }
    if link.starts_with("socket:") || fmt == libc::S_IFSOCK {
        return Kind::Socket;
    }
    if link.starts_with("/memfd:") {
        return Kind::Memfd;
    }
    match fmt {
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFCHR if is_tty_major(rdev_major) => Kind::Tty,
        libc::S_IFREG | libc::S_IFDIR | libc::S_IFCHR | libc::S_IFBLK | libc::S_IFLNK => Kind::Reg,
        _ => Kind::Unsupported("unknown file type"),
    }
}

/// Character-device majors of terminals: /dev/tty* and /dev/console (4, 5),
/// pty masters/slaves (2, 3 legacy; 128-143 unix98).
fn is_tty_major(major: u32) -> bool {
    matches!(major, 2..=5 | 128..=143)
}

/// One fd being dumped, for the module of its kind.
pub struct FdCtx<'a> {
    pub pid: i32,
    pub fd: i32,
    /// The files.img id chosen for this open file description.
    pub id: u32,
    /// The /proc/PID/fd/N link text.
    pub link: &'a str,
    /// stat of the file (through the /proc link).
    pub st: &'a std::fs::Metadata,
    pub info: &'a proc::Fdinfo,
    /// The target's fd already stolen (see [`gather`]), if it was.
    pub obj: Option<&'a std::os::fd::OwnedFd>,
}

impl FdCtx<'_> {
    /// A duplicate of the target's fd in our own table (same open file
    /// description: reading from it consumes the target's data, so only
    /// inspect, peek or tee).
    pub fn steal(&self) -> Result<std::os::fd::OwnedFd> {
        match self.obj {
            Some(o) => o
                .try_clone()
                .map_err(|e| self.err(format!("dup of {}: {e}", self.link))),
            None => shared::steal(self.pid, self.fd),
        }
    }

    pub fn err(&self, why: impl Into<String>) -> Error {
        Error::Fd {
            pid: self.pid,
            fd: self.fd,
            why: why.into(),
        }
    }
}

/// Options that change how files are dumped.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileOpts {
    /// Terminals belong to the caller's job and are re-bound on restore.
    pub shell_job: bool,
    /// Save the file locks the tree holds (else a held lock fails the dump).
    pub file_locks: bool,
    /// Unix sockets connected outside the tree are saved as external (and
    /// connected again on restore) instead of refused.
    pub ext_unix_sk: bool,
    /// Pty slaves whose master is outside the tree are saved as pty ends.
    pub orphan_pts: bool,
    /// Established TCP connections are saved (`--tcp-established`), else
    /// refused.
    pub tcp_established: bool,
    /// Connections waiting in a listener's accept queue are dropped
    /// (`--tcp-skip-in-flight`), else refused.
    pub tcp_skip_in_flight: bool,
}

/// Collects every file object of a dump.
/// The counter of `pages-<id>.img` ids (from 1), one for the whole dump;
/// clones share it.
#[derive(Clone, Debug)]
pub struct PagesIds(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Default for PagesIds {
    fn default() -> Self {
        PagesIds(std::sync::Arc::new(1.into()))
    }
}

impl PagesIds {
    pub fn next(&self) -> u32 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

pub struct FileTable<'a> {
    pub(crate) dir: &'a ImageDir,
    pub opts: FileOpts,
    entries: Vec<FileEntry>,
    remaps: Vec<RemapFilePathEntry>,
    next_id: u32,
    by_path: HashMap<(String, u32), u32>,
    open: shared::OpenIndex,
    /// `pages-<id>.img` ids: shared with the dumper, which takes one per
    /// task without this table's lock.
    pub pages_ids: PagesIds,
    pub(crate) pipes: pipe::Dumped,
    pub(crate) memfds: memfd::Dumped,
    pub(crate) locks: locks::LockTable,
    pub(crate) unix: unix::DumpState,
    pub(crate) inet: inet::DumpState,
    pub(crate) tty: tty::DumpState,
    pub(crate) fdscan: fdscan::FdScan,
    /// The tree's own user namespace, for file owners as it sees them.
    pub(crate) userns: Option<crate::ns::user::UserNs>,
    /// Fd flags come from remote calls (see [`tables`]).
    pub(crate) fast: Option<tables::FastFlags>,
}

impl<'a> FileTable<'a> {
    pub fn new(dir: &'a ImageDir, opts: FileOpts) -> Self {
        FileTable {
            dir,
            opts,
            entries: Vec::new(),
            remaps: Vec::new(),
            next_id: 1,
            by_path: HashMap::new(),
            open: shared::OpenIndex::default(),
            pages_ids: PagesIds::default(),
            pipes: pipe::Dumped::default(),
            memfds: memfd::Dumped::default(),
            locks: locks::LockTable::default(),
            unix: unix::DumpState::default(),
            inet: inet::DumpState::new(inet::InetOpts {
                tcp_established: opts.tcp_established,
                skip_in_flight: opts.tcp_skip_in_flight,
            }),
            tty: tty::DumpState::default(),
            fdscan: fdscan::FdScan::default(),
            userns: None,
            fast: None,
        }
    }

    /// Look at the tree's shared objects before any task is dumped (`pids`:
    /// its live processes, root first): unix sockets and their peers; inet
    /// sockets (established connections are locked and put in repair mode
    /// here).
    pub fn prepare_tree(&mut self, pids: &[i32], early: fdscan::Early) -> Result<()> {
        self.fdscan = fdscan::FdScan::scan_with(pids, early)?;
        unix::prepare(self, pids)?;
        inet::prepare(self, pids)?;
        tty::prepare(self, pids)
    }

    /// The established connections held in repair mode and the network
    /// lock, for the end of the dump (see [`inet::Held`]).
    pub fn take_inet_held(&mut self) -> inet::Held {
        self.inet.take_held()
    }

    pub fn new_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// A new `pages-<id>.img` id, unique in the dump.
    pub fn new_pages_id(&self) -> u32 {
        self.pages_ids.next()
    }

    pub(crate) fn push(&mut self, e: FileEntry) {
        self.entries.push(e);
    }

    pub(crate) fn push_remap(&mut self, r: RemapFilePathEntry) {
        self.remaps.push(r);
    }

    /// A file the task holds by path rather than by fd: its exe, a file
    /// mapping, its cwd or root. `source` is where its content can be read
    /// if it was deleted (e.g. /proc/PID/map_files/...).
    pub fn path_file(
        &mut self,
        pid: i32,
        path: &str,
        deleted: bool,
        flags: u32,
        source: PathBuf,
    ) -> Result<u32> {
        if deleted && path.starts_with("/memfd:") {
            return memfd::dump_path(self, pid, path, flags, &source);
        }
        let key = (path.to_string(), flags);
        if !deleted {
            if let Some(&id) = self.by_path.get(&key) {
                return Ok(id);
            }
        }
        let id = self.new_id();
        reg::dump_path(self, pid, id, path, deleted, flags, &source)?;
        if !deleted {
            self.by_path.insert(key, id);
        }
        Ok(id)
    }

    /// The open fds of `pid`, sorted, with their link text when it was
    /// scanned by [`prepare_tree`](Self::prepare_tree) (taken: once).
    pub fn take_fds(&mut self, pid: i32) -> Result<Vec<(i32, Option<String>)>> {
        match self.fdscan.take(pid) {
            Some(v) => Ok(v.into_iter().map(|s| (s.fd, s.link)).collect()),
            None => Ok(proc::read_fd_numbers(pid)?
                .into_iter()
                .map(|fd| (fd, None))
                .collect()),
        }
    }

    /// How many fds the tree holds (as scanned by [`prepare_tree`](Self::prepare_tree)).
    pub fn scanned_fds(&self) -> usize {
        self.fdscan.total()
    }

    /// Dump one fd, gathered by [`gather`] (without this table's lock),
    /// and return its fdinfo entry.
    pub fn dump_fd(&mut self, g: Gathered) -> Result<FdinfoEntry> {
        let Gathered {
            pid,
            fd,
            link,
            st,
            info,
            obj,
        } = g;
        // Fast tables put in the flags of remote calls when written.
        let fd_flags = tables::cloexec_flag(info.flags);
        let kind = classify(&link, st.mode(), libc::major(st.rdev()));
        // Inet sockets go to their own module; others to unix (which
        // refuses the families it does not know by name).
        let mut inet_sk = None;
        if kind == Kind::Socket {
            let sk = obj.try_clone().map_err(|e| Error::Fd {
                pid,
                fd,
                why: format!("dup of {link}: {e}"),
            })?;
            let fam = crate::sys::sock::getsockopt_int(
                std::os::fd::AsFd::as_fd(&sk),
                libc::SOL_SOCKET,
                libc::SO_DOMAIN,
            )
            .map_err(|e| Error::Fd {
                pid,
                fd,
                why: format!("getsockopt(SO_DOMAIN) on {link}: {e}"),
            })?;
            if fam == libc::AF_INET || fam == libc::AF_INET6 {
                inet_sk = Some((sk, fam));
            }
        }
        let ty = match kind {
            Kind::Reg => FdTypes::Reg,
            Kind::Epoll => FdTypes::Eventpoll,
            Kind::Inotify => FdTypes::Inotify,
            Kind::Fanotify => FdTypes::Fanotify,
            Kind::Tty if self.tty.is_pair(st.rdev()) => FdTypes::Tty,
            Kind::Tty if self.opts.orphan_pts && tty::is_slave(st.rdev()) => FdTypes::Tty,
            Kind::Tty if self.opts.shell_job => FdTypes::Reg,
            Kind::Pipe => FdTypes::Pipe,
            Kind::Fifo => FdTypes::Fifo,
            Kind::Eventfd => FdTypes::Eventfd,
            Kind::Signalfd => FdTypes::Signalfd,
            Kind::Timerfd => FdTypes::Timerfd,
            Kind::Memfd => FdTypes::Memfd,
            Kind::Socket if inet_sk.is_some() => FdTypes::Inetsk,
            Kind::Socket => FdTypes::Unixsk,
            Kind::Tty => {
                return Err(Error::Fd {
                    pid,
                    fd,
                    why: format!(
                        "terminal {link}: use --shell-job to dump a job attached to a terminal"
                    ),
                })
            }
            Kind::Unsupported(what) => {
                return Err(Error::Fd {
                    pid,
                    fd,
                    why: format!("{what} ({link}) is not supported yet"),
                })
            }
        };
        let fdinfo = |id: u32| FdinfoEntry {
            id,
            flags: fd_flags,
            r#type: ty as i32,
            fd: fd as u32,
            xattr_security_selinux: None,
        };
        // One open file description, many fds: reuse the first one's id.
        let (dev, ino) = (st.dev(), st.ino());
        let key = (dev, ino, info.pos, info.flags & !(libc::O_CLOEXEC as u32));
        let slot = match self.open.find(pid, fd, key) {
            Ok(id) => {
                locks::note(self, pid, fd, id, &info)?;
                return Ok(fdinfo(id));
            }
            Err(slot) => slot,
        };
        let id = self.new_id();
        let cx = FdCtx {
            pid,
            fd,
            id,
            link: &link,
            st: &st,
            info: &info,
            obj: Some(&obj),
        };
        let entry = match kind {
            Kind::Tty if ty == FdTypes::Tty => tty::dump_fd(self, &cx)?,
            Kind::Reg | Kind::Tty => reg::dump_fd(self, &cx)?,
            Kind::Epoll => epoll::dump_fd(self, &cx)?,
            Kind::Inotify => inotify::dump_fd(self, &cx)?,
            Kind::Fanotify => fanotify::dump_fd(self, &cx)?,
            Kind::Pipe => pipe::dump_fd(self, &cx)?,
            Kind::Fifo => pipe::dump_fifo(self, &cx)?,
            Kind::Eventfd => eventfd::dump_fd(&cx)?,
            Kind::Signalfd => signalfd::dump_fd(&cx)?,
            Kind::Timerfd => timerfd::dump_fd(&cx)?,
            Kind::Memfd => memfd::dump_fd(self, &cx)?,
            Kind::Socket => match inet_sk {
                Some((sk, fam)) => inet::dump_fd(self, &cx, sk, fam)?,
                None => unix::dump_fd(self, &cx)?,
            },
            Kind::Unsupported(_) => unreachable!("refused above"),
        };
        self.push(entry);
        self.open.insert(slot, pid, fd, id);
        locks::note(self, pid, fd, id, &info)?;
        Ok(fdinfo(id))
    }

    /// Write files.img (and remap-fpath.img when files were deleted).
    pub fn write(mut self) -> Result<()> {
        unix::finish_dump(&mut self)?;
        locks::write(&self)?;
        self.dir
            .write_all(FILES_IMG, common(magic::FILES), &self.entries)?;
        pipe::write(self.dir, self.pipes)?;
        memfd::write(self.dir, self.memfds)?;
        tty::write(self.dir, &self.tty)?;
        if !self.remaps.is_empty() {
            self.dir
                .write_all(REMAP_IMG, common(magic::REMAP_FPATH), &self.remaps)?;
        }
        Ok(())
    }
}

/// What dumping an fd needs from the kernel, read without the table's lock
/// (the fd table thread gathers while the main thread uses the table).
pub struct Gathered {
    pid: i32,
    fd: i32,
    link: String,
    st: std::fs::Metadata,
    info: proc::Fdinfo,
    /// The target's fd, stolen once for every module that looks at it.
    obj: std::os::fd::OwnedFd,
}

/// Read what [`FileTable::dump_fd`] needs of `fd` of `pid`: `link` is its
/// scanned link text, if it was. The stat is taken on the stolen fd, which
/// is the same file as through the /proc link, without a path walk.
///
/// `locked`: the files with locks, when the fd flags come from remote calls
/// (see [`tables`]): then a file, directory, pipe or socket without a lock
/// is not looked up in fdinfo; its position and status flags are read on
/// the stolen fd (the same open file description).
pub fn gather(
    pid: i32,
    fd: i32,
    link: Option<String>,
    locked: Option<&tables::Locked>,
) -> Result<Gathered> {
    let link = match link {
        Some(l) => l,
        None => proc::read_fd_link(pid, fd)?.to_string_lossy().into_owned(),
    };
    let obj = shared::steal(pid, fd)?;
    let f = std::fs::File::from(obj);
    let st = f.metadata().map_err(|e| Error::Fd {
        pid,
        fd,
        why: format!("stat {link}: {e}"),
    })?;
    let info = match locked {
        Some(l) if !l.contains(&(st.dev(), st.ino())) => fdinfo_of(&f, &st)
            .map_err(|e| Error::Fd {
                pid,
                fd,
                why: format!("fcntl/lseek on {link}: {e}"),
            })?
            .map_or_else(|| proc::read_fdinfo(pid, fd), Ok)?,
        _ => proc::read_fdinfo(pid, fd)?,
    };
    Ok(Gathered {
        pid,
        fd,
        link,
        st,
        info,
        obj: f.into(),
    })
}

/// What fdinfo would show of a file, directory, pipe or socket without a
/// lock, read on the open file description itself: `flags` (F_GETFL, the
/// same `f_flags`, without O_CLOEXEC, which is the fd's) and `pos` (lseek,
/// which only reads it for files and directories; 0 for pipes and sockets,
/// which have none, and for /dev/null). None for other kinds: devices
/// (whose lseek may do anything) and anonymous inodes (whose state is in
/// fdinfo).
fn fdinfo_of(f: &std::fs::File, st: &std::fs::Metadata) -> std::io::Result<Option<proc::Fdinfo>> {
    use std::os::fd::AsRawFd;
    let fmt = st.mode() & libc::S_IFMT;
    let pos = match fmt {
        libc::S_IFREG | libc::S_IFDIR => {
            nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekCur)?
        }
        libc::S_IFIFO | libc::S_IFSOCK => 0,
        // /dev/null: its lseek sets the position to 0 and reads and writes
        // never move it, so it is always 0.
        libc::S_IFCHR if st.rdev() == libc::makedev(1, 3) => 0,
        _ => return Ok(None),
    };
    let flags = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    Ok(Some(proc::Fdinfo {
        pos,
        flags: flags as u32,
        ino: st.ino(),
        ..Default::default()
    }))
}

/// File objects restore must create together, in one task, because one call
/// makes them all (both ends of a pipe, a socket pair). Most files are a
/// group of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    File(u32),
    /// Every end of one pipe (by pipe_id): one pipe2(2).
    Pipe(u32),
    /// Every open of one FIFO (by pipe_id), so its data is refilled once.
    Fifo(u32),
    /// Unix sockets linked as peers (pairs, a listener and its pending
    /// connections, a datagram server and its clients), by smallest id.
    Unix(u32),
    /// Both ends of one pseudo-terminal (by index): one open of /dev/ptmx.
    Pty(u32),
}

/// The group a file object belongs to.
pub fn group_of(f: &FileEntry, files: &HashMap<u32, FileEntry>) -> Group {
    if f.usk.is_some() {
        return Group::Unix(unix::group_key(files, f.id));
    }
    if let Some(t) = &f.tty {
        return Group::Pty(tty::group_key(t));
    }
    if let Some(p) = &f.pipe {
        return Group::Pipe(p.pipe_id);
    }
    if let Some(p) = &f.fifo {
        return Group::Fifo(p.pipe_id);
    }
    Group::File(f.id)
}

/// What creating file objects on restore may use. Built by the restorer and
/// read in the stubs (forked copies), so it holds only plain data.
pub struct OpenCtx<'a> {
    pub files: &'a HashMap<u32, FileEntry>,
    /// File id -> restorer fd holding the recreated content of a deleted file.
    pub ghost_fds: &'a HashMap<u32, i32>,
    /// The caller's terminal, for shell jobs.
    pub tty_fd: Option<i32>,
    pub images_dir: &'a std::path::Path,
    /// memfd inode id -> restorer fd of the recreated memfd.
    pub memfd_fds: &'a HashMap<u32, i32>,
    /// Inherited-fd key -> restorer fd standing in for that file.
    pub inherit_fds: &'a HashMap<String, i32>,
    /// Pty index -> restorer fd of the new master of an orphan slave.
    pub orphan_masters: &'a HashMap<u32, i32>,
    /// Established TCP connections are restored closed (`--tcp-close`).
    pub tcp_close: bool,
}

impl OpenCtx<'_> {
    /// A new descriptor of the inherited fd that replaces the file `key`.
    pub fn inherited(
        &self,
        key: &str,
    ) -> Option<std::result::Result<std::os::fd::OwnedFd, String>> {
        let fd = *self.inherit_fds.get(key)?;
        Some(
            crate::sys::fdctl::with_raw(fd, |b| b.try_clone_to_owned())
                .map_err(|e| format!("inherited fd for {key}: {e}")),
        )
    }
}

/// Create the file objects of group `g`: (file id, fd) for each member.
/// Runs in the restore stub of the task that owns the group.
pub fn create(
    g: Group,
    cx: &OpenCtx<'_>,
) -> std::result::Result<Vec<(u32, std::os::fd::OwnedFd)>, String> {
    match g {
        Group::File(id) => Ok(vec![(id, open_one(id, cx)?)]),
        Group::Pipe(pipe_id) => pipe::create_pipe(pipe_id, cx),
        Group::Fifo(pipe_id) => pipe::create_fifo(pipe_id, cx),
        Group::Unix(key) => unix::create(key, cx),
        Group::Pty(index) => tty::create(index, cx),
    }
}

/// Open one file object by itself (regular files, directories, devices).
pub fn open_one(id: u32, cx: &OpenCtx<'_>) -> std::result::Result<std::os::fd::OwnedFd, String> {
    let f = cx.files.get(&id).ok_or_else(|| format!("no file {id}"))?;
    if let Some(r) = &f.reg {
        if let Some(fd) = cx.inherited(r.name.trim_start_matches('/')) {
            return fd;
        }
    }
    if let Some(e) = &f.epfd {
        return epoll::open(e).map_err(|err| format!("epoll_create1: {err}"));
    }
    if let Some(e) = &f.ify {
        return inotify::open(e);
    }
    if let Some(e) = &f.ffy {
        return fanotify::open(e);
    }
    if let Some(e) = &f.efd {
        return eventfd::open(e);
    }
    if let Some(e) = &f.sgfd {
        return signalfd::open(e);
    }
    if let Some(e) = &f.tfd {
        return timerfd::open(e);
    }
    if let Some(e) = &f.memfd {
        return memfd::open(e, cx);
    }
    if let Some(e) = &f.isk {
        return inet::open(e, cx);
    }
    let e = f
        .reg
        .as_ref()
        .ok_or_else(|| format!("file {id}: not a regular file entry"))?;
    let ghost = cx.ghost_fds.get(&id).copied();
    reg::open(e, ghost, cx.tty_fd).map_err(|err| format!("open {}: {err}", e.name))
}

/// Work that needs a task's whole fd table in place (epoll targets, flock
/// and OFD locks). Runs in the task's restore stub right after the fd table
/// is installed.
pub fn after_fds(
    plan: &crate::restore::plan::Plan,
    idx: usize,
    _cx: &OpenCtx<'_>,
) -> std::result::Result<(), String> {
    epoll::after_fds(plan, idx)?;
    locks::after_fds(plan, idx)?;
    fown::after_fds(plan, idx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_links() {
        assert_eq!(classify("/etc/passwd", libc::S_IFREG | 0o644, 0), Kind::Reg);
        assert_eq!(classify("/tmp", libc::S_IFDIR | 0o755, 0), Kind::Reg);
        assert_eq!(classify("/dev/null", libc::S_IFCHR | 0o666, 1), Kind::Reg);
        assert_eq!(
            classify("/dev/pts/3", libc::S_IFCHR | 0o620, 136),
            Kind::Tty
        );
        assert_eq!(
            classify("pipe:[1234]", libc::S_IFIFO | 0o600, 0),
            Kind::Pipe
        );
        assert_eq!(classify("/tmp/f", libc::S_IFIFO | 0o600, 0), Kind::Fifo);
        assert_eq!(classify("anon_inode:[eventfd]", 0o600, 0), Kind::Eventfd);
        assert_eq!(classify("anon_inode:[timerfd]", 0o600, 0), Kind::Timerfd);
        assert_eq!(classify("anon_inode:[signalfd]", 0o600, 0), Kind::Signalfd);
        assert_eq!(
            classify("/memfd:x (deleted)", libc::S_IFREG | 0o777, 0),
            Kind::Memfd
        );
        assert_eq!(
            classify("socket:[99]", libc::S_IFSOCK | 0o777, 0),
            Kind::Socket
        );
    }
}
