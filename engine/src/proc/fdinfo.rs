//! `/proc/PID/fdinfo/N`, `/proc/locks`, and the list of a task's fds.
//!
//! # Model
//!
//! [`Fdinfo`] holds the four lines every file has (`pos`, `flags`, `mnt_id`,
//! `ino`), the `lock:` lines (any file type may carry them), the lines this
//! parser does not know (kept verbatim, in order, in `unknown`: io_uring,
//! bpf, drm, tun, … ) and a [`FdinfoKind`] chosen from the type-specific lines
//! (KERNEL-NOTES §9).
//!
//! The kind is inferred from the text alone, so an epoll or inotify file
//! **without any watch** has no type-specific line and comes out as
//! [`FdinfoKind::Plain`]: decide the file type from the `/proc/PID/fd/N`
//! link (see [`read_fd_link`]: `anon_inode:[eventpoll]`, `anon_inode:inotify`,
//! …) and use the kind only for the details. Fanotify always has its header
//! line, so it is always recognised.

use std::path::PathBuf;

use super::util::{
    dec, hex_u32, hex_u64, kv_pairs, oct_u32, pid_path, read_parse, read_parse_single,
};
use super::ProcError;

const FILE: &str = "fdinfo";
const LOCKS: &str = "locks";

/// A parsed fdinfo file. See the module documentation for the model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fdinfo {
    /// File position (`pos:`); signed in the kernel.
    pub pos: i64,
    /// Open flags (`flags:`, octal), including `O_CLOEXEC` (02000000).
    pub flags: u32,
    /// Mount id (`mnt_id:`), matching `/proc/PID/mountinfo`.
    pub mnt_id: u32,
    /// Inode number (`ino:`).
    pub ino: u64,
    pub kind: FdinfoKind,
    /// `lock:` lines, in file order.
    pub locks: Vec<FileLock>,
    /// Lines not understood by this parser, verbatim.
    pub unknown: Vec<String>,
}

/// The type-specific part of an fdinfo file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum FdinfoKind {
    /// No type-specific line: regular files, pipes, sockets, memfds, and also
    /// epoll/inotify instances with no watch (see the module docs).
    #[default]
    Plain,
    Eventfd(EventfdInfo),
    Signalfd {
        /// Blocked-signal mask of the signalfd (bit `n-1` = signal `n`).
        sigmask: u64,
    },
    /// One entry per `tfd:` line.
    Epoll(Vec<EpollTarget>),
    /// One entry per `inotify wd:` line.
    Inotify(Vec<InotifyWatch>),
    Fanotify(FanotifyInfo),
    Timerfd(TimerfdInfo),
    Pidfd(PidfdInfo),
}

/// `eventfd-count:` (hex), `eventfd-id:`, `eventfd-semaphore:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventfdInfo {
    pub count: u64,
    pub id: Option<u32>,
    pub semaphore: bool,
}

/// One `tfd:` line of an epoll fdinfo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpollTarget {
    /// The target fd number **in the owner's table at registration time**.
    pub tfd: i32,
    /// `EPOLL*` event mask.
    pub events: u32,
    /// `epoll_data` as registered.
    pub data: u64,
    /// The target file's position.
    pub pos: i64,
    /// The target file's inode.
    pub ino: u64,
    /// The target's device in kernel encoding; see [`super::kernel_dev_split`].
    pub sdev: u32,
}

/// A file handle as printed by fdinfo (`fhandle-bytes`, `fhandle-type`,
/// `f_handle`), usable with `open_by_handle_at`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileHandle {
    pub handle_type: i32,
    /// `f_handle` bytes; its length is `fhandle-bytes`.
    pub bytes: Vec<u8>,
}

/// One `inotify wd:` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InotifyWatch {
    pub wd: i32,
    pub ino: u64,
    /// Kernel-encoded device; see [`super::kernel_dev_split`].
    pub sdev: u32,
    pub mask: u32,
    pub ignored_mask: u32,
    /// Absent when the filesystem cannot encode a handle.
    pub fhandle: Option<FileHandle>,
}

/// The `fanotify flags:… event-flags:…` header and the marks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FanotifyInfo {
    /// `fanotify_init` flags.
    pub flags: u32,
    /// `fanotify_init` event_f_flags.
    pub event_flags: u32,
    pub marks: Vec<FanotifyMark>,
}

/// What a fanotify mark is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanotifyTarget {
    Inode {
        ino: u64,
        sdev: u32,
        fhandle: Option<FileHandle>,
    },
    /// FAN_MARK_MOUNT; `mnt_id` (printed in hex by the kernel).
    Mount { mnt_id: u32 },
    /// FAN_MARK_FILESYSTEM; kernel-encoded device.
    Filesystem { sdev: u32 },
}

/// One fanotify mark line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanotifyMark {
    pub target: FanotifyTarget,
    pub mflags: u32,
    pub mask: u32,
    pub ignored_mask: u32,
}

/// timerfd state. `it_value` is the time *remaining* when fdinfo was read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerfdInfo {
    pub clockid: i32,
    pub ticks: u64,
    /// `settime flags` (octal): TFD_TIMER_ABSTIME, TFD_TIMER_CANCEL_ON_SET.
    pub settime_flags: u32,
    /// (seconds, nanoseconds)
    pub it_value: (u64, u64),
    /// (seconds, nanoseconds)
    pub it_interval: (u64, u64),
}

/// pidfd: `Pid:` (-1 once the process is reaped, 0 if outside our pid ns)
/// and `NSpid:` (one per pid-ns level, outermost first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidfdInfo {
    pub pid: i32,
    pub ns_pid: Vec<i32>,
}

/// Lock class (second column of a lock line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockClass {
    Posix,
    Flock,
    /// Open file description lock (F_OFD_SETLK).
    Ofd,
    /// Mandatory-locking access placeholder (old kernels).
    Access,
    Lease,
    Deleg,
    Unknown,
}

/// Lock mode column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Advisory,
    Mandatory,
    /// Lease being broken.
    Breaking,
    /// Active lease.
    Active,
    /// Lease breaker.
    Breaker,
    /// `*NOINODE*`
    NoInode,
    Unknown,
}

/// Lock type column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockType {
    Read,
    Write,
    Unlock,
}

/// One lock line, as in fdinfo (`lock:\t1: FLOCK  ADVISORY  WRITE 1234
/// 08:01:1234 0 EOF`) and `/proc/locks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLock {
    /// The ordinal in the first column.
    pub id: u32,
    /// `->`: this request is blocked waiting for lock `id` (`/proc/locks` only).
    pub blocked: bool,
    pub class: LockClass,
    pub mode: LockMode,
    pub lock_type: LockType,
    /// Owner pid; -1 for OFD locks and some leases.
    pub pid: i32,
    /// (major, minor) of the device, `None` when printed as `<none>`.
    pub dev: Option<(u32, u32)>,
    pub ino: u64,
    pub start: u64,
    /// Inclusive end; `None` for `EOF`.
    pub end: Option<u64>,
}

/// Parse a lock line without any `lock:` prefix: `1: POSIX  ADVISORY  WRITE
/// 5593 fe:00:10011038 5 14`. Returns the reason on failure.
fn parse_lock(s: &str) -> Result<FileLock, &'static str> {
    let mut t = s.split_ascii_whitespace();
    let id = t
        .next()
        .and_then(|x| x.strip_suffix(':'))
        .and_then(dec)
        .ok_or("bad lock id")?;
    let mut class = t.next().ok_or("too few fields")?;
    let blocked = class == "->";
    if blocked {
        class = t.next().ok_or("too few fields")?;
    }
    let class = match class {
        "POSIX" => LockClass::Posix,
        "FLOCK" => LockClass::Flock,
        "OFDLCK" => LockClass::Ofd,
        "ACCESS" => LockClass::Access,
        "LEASE" => LockClass::Lease,
        "DELEG" => LockClass::Deleg,
        "UNKNOWN" => LockClass::Unknown,
        _ => return Err("bad lock class"),
    };
    let mode = match t.next().ok_or("too few fields")? {
        "ADVISORY" => LockMode::Advisory,
        "MANDATORY" => LockMode::Mandatory,
        "BREAKING" => LockMode::Breaking,
        "ACTIVE" => LockMode::Active,
        "BREAKER" => LockMode::Breaker,
        "*NOINODE*" => LockMode::NoInode,
        "UNKNOWN" => LockMode::Unknown,
        _ => return Err("bad lock mode"),
    };
    let lock_type = match t.next().ok_or("too few fields")? {
        "READ" => LockType::Read,
        "WRITE" => LockType::Write,
        "UNLCK" => LockType::Unlock,
        _ => return Err("bad lock type"),
    };
    let pid = t.next().and_then(dec).ok_or("bad lock pid")?;
    let devino = t.next().ok_or("too few fields")?;
    let (dev, ino) = if let Some(ino) = devino.strip_prefix("<none>:") {
        (None, dec(ino).ok_or("bad lock inode")?)
    } else {
        let mut p = devino.splitn(3, ':');
        let maj = p.next().and_then(hex_u32).ok_or("bad lock device")?;
        let min = p.next().and_then(hex_u32).ok_or("bad lock device")?;
        let ino = p.next().and_then(dec).ok_or("bad lock inode")?;
        (Some((maj, min)), ino)
    };
    let start = t.next().and_then(dec).ok_or("bad lock range")?;
    let end = match t.next().ok_or("too few fields")? {
        "EOF" => None,
        e => Some(dec(e).ok_or("bad lock range")?),
    };
    if t.next().is_some() {
        return Err("trailing fields");
    }
    Ok(FileLock {
        id,
        blocked,
        class,
        mode,
        lock_type,
        pid,
        dev,
        ino,
        start,
        end,
    })
}

/// Parse `/proc/locks`.
pub fn parse_locks(text: &str) -> Result<Vec<FileLock>, ProcError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_lock(line).map_err(|r| ProcError::bad_line(LOCKS, i + 1, line, r))?);
    }
    Ok(out)
}

/// Read and parse `/proc/locks`.
pub fn read_locks() -> Result<Vec<FileLock>, ProcError> {
    read_parse(PathBuf::from("/proc/locks"), parse_locks)
}

fn parse_fhandle(
    bytes: Option<&str>,
    ty: Option<&str>,
    hex: Option<&str>,
) -> Result<Option<FileHandle>, &'static str> {
    match (bytes, ty, hex) {
        (None, None, None) => Ok(None),
        (Some(n), Some(ty), Some(hex)) => {
            let n = hex_u32(n).ok_or("bad fhandle")? as usize;
            let handle_type = i32::from_str_radix(ty, 16).map_err(|_| "bad fhandle")?;
            if hex.len() != 2 * n || !hex.is_ascii() {
                return Err("bad fhandle");
            }
            let bytes = (0..n)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| "bad fhandle")?;
            Ok(Some(FileHandle { handle_type, bytes }))
        }
        _ => Err("bad fhandle"),
    }
}

/// Fields of an `inotify`/`fanotify` mark line or a `tfd:` line.
#[derive(Default)]
struct MarkFields<'a> {
    wd: Option<&'a str>,
    ino: Option<&'a str>,
    sdev: Option<&'a str>,
    mnt_id: Option<&'a str>,
    mflags: Option<&'a str>,
    mask: Option<&'a str>,
    ignored_mask: Option<&'a str>,
    fh_bytes: Option<&'a str>,
    fh_type: Option<&'a str>,
    f_handle: Option<&'a str>,
    flags: Option<&'a str>,
    event_flags: Option<&'a str>,
}

fn mark_fields(s: &str) -> Result<MarkFields<'_>, &'static str> {
    let mut f = MarkFields::default();
    for kv in kv_pairs(s) {
        let (k, v) = kv.ok_or("bad key:value")?;
        let slot = match k {
            "wd" => &mut f.wd,
            "ino" => &mut f.ino,
            "sdev" => &mut f.sdev,
            "mnt_id" => &mut f.mnt_id,
            "mflags" => &mut f.mflags,
            "mask" => &mut f.mask,
            "ignored_mask" => &mut f.ignored_mask,
            "fhandle-bytes" => &mut f.fh_bytes,
            "fhandle-type" => &mut f.fh_type,
            "f_handle" => &mut f.f_handle,
            "flags" => &mut f.flags,
            "event-flags" => &mut f.event_flags,
            _ => continue,
        };
        *slot = Some(v);
    }
    Ok(f)
}

fn hex32(v: Option<&str>) -> Result<u32, &'static str> {
    v.and_then(hex_u32).ok_or("bad or missing hex field")
}

fn parse_inotify(s: &str) -> Result<InotifyWatch, &'static str> {
    let f = mark_fields(s)?;
    Ok(InotifyWatch {
        // wd is printed with %x.
        wd: f
            .wd
            .and_then(|w| i32::from_str_radix(w, 16).ok())
            .ok_or("bad wd")?,
        ino: f.ino.and_then(hex_u64).ok_or("bad ino")?,
        sdev: hex32(f.sdev)?,
        mask: hex32(f.mask)?,
        ignored_mask: hex32(f.ignored_mask)?,
        fhandle: parse_fhandle(f.fh_bytes, f.fh_type, f.f_handle)?,
    })
}

enum FanLine {
    Header(u32, u32),
    Mark(FanotifyMark),
}

fn parse_fanotify(s: &str) -> Result<FanLine, &'static str> {
    let f = mark_fields(s)?;
    if f.flags.is_some() || f.event_flags.is_some() {
        return Ok(FanLine::Header(hex32(f.flags)?, hex32(f.event_flags)?));
    }
    let target = if let Some(ino) = f.ino {
        FanotifyTarget::Inode {
            ino: hex_u64(ino).ok_or("bad ino")?,
            sdev: hex32(f.sdev)?,
            fhandle: parse_fhandle(f.fh_bytes, f.fh_type, f.f_handle)?,
        }
    } else if let Some(m) = f.mnt_id {
        FanotifyTarget::Mount {
            mnt_id: hex_u32(m).ok_or("bad mnt_id")?,
        }
    } else if let Some(d) = f.sdev {
        FanotifyTarget::Filesystem {
            sdev: hex_u32(d).ok_or("bad sdev")?,
        }
    } else {
        return Err("unknown fanotify mark");
    };
    Ok(FanLine::Mark(FanotifyMark {
        target,
        mflags: hex32(f.mflags)?,
        mask: hex32(f.mask)?,
        ignored_mask: hex32(f.ignored_mask)?,
    }))
}

fn parse_tfd(s: &str) -> Result<EpollTarget, &'static str> {
    let mut t = EpollTarget::default();
    let mut seen = 0u8;
    for kv in kv_pairs(s) {
        let (k, v) = kv.ok_or("bad key:value")?;
        let ok = match k {
            "tfd" => dec(v).map(|x| t.tfd = x),
            "events" => hex_u32(v).map(|x| t.events = x),
            "data" => hex_u64(v).map(|x| t.data = x),
            "pos" => dec(v).map(|x| t.pos = x),
            "ino" => hex_u64(v).map(|x| t.ino = x),
            "sdev" => hex_u32(v).map(|x| t.sdev = x),
            _ => continue,
        };
        ok.ok_or("bad tfd field")?;
        seen += 1;
    }
    // tfd, events and data are mandatory; pos/ino/sdev came later (3.18+).
    if seen < 3 {
        return Err("missing tfd field");
    }
    Ok(t)
}

/// `(123, 456)`
fn parse_pair(v: &str) -> Option<(u64, u64)> {
    let inner = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = inner.split_once(',')?;
    Some((dec(a.trim())?, dec(b.trim())?))
}

const CONFLICT: &str = "conflicting fdinfo kinds";

/// Set `kind` to `want()` if it is still Plain; return it for the caller to
/// match on the kind it expects (a mismatch means conflicting lines).
fn ensure_kind(kind: &mut FdinfoKind, want: fn() -> FdinfoKind) -> &mut FdinfoKind {
    if matches!(kind, FdinfoKind::Plain) {
        *kind = want();
    }
    kind
}

/// Parse the text of `/proc/PID/fdinfo/N`.
pub fn parse_fdinfo(text: &str) -> Result<Fdinfo, ProcError> {
    let mut fi = Fdinfo::default();
    let mut seen = 0u8;
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let r = parse_fdinfo_line(&mut fi, &mut seen, line);
        r.map_err(|reason| ProcError::bad_line(FILE, i + 1, line, reason))?;
    }
    for (bit, what) in [(1, "pos"), (2, "flags"), (4, "mnt_id"), (8, "ino")] {
        if seen & bit == 0 {
            return Err(ProcError::missing(FILE, what));
        }
    }
    Ok(fi)
}

fn parse_fdinfo_line(fi: &mut Fdinfo, seen: &mut u8, line: &str) -> Result<(), &'static str> {
    use FdinfoKind as K;
    if let Some(rest) = line.strip_prefix("inotify ") {
        let w = parse_inotify(rest)?;
        let K::Inotify(v) = ensure_kind(&mut fi.kind, || K::Inotify(Vec::new())) else {
            return Err(CONFLICT);
        };
        v.push(w);
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix("fanotify ") {
        let l = parse_fanotify(rest)?;
        let K::Fanotify(info) = ensure_kind(&mut fi.kind, || K::Fanotify(Default::default()))
        else {
            return Err(CONFLICT);
        };
        match l {
            FanLine::Header(flags, event_flags) => {
                info.flags = flags;
                info.event_flags = event_flags;
            }
            FanLine::Mark(m) => info.marks.push(m),
        }
        return Ok(());
    }
    let Some((key, v)) = line.split_once(':') else {
        fi.unknown.push(line.to_owned());
        return Ok(());
    };
    let t = v.trim();
    match key {
        "pos" => {
            fi.pos = dec(t).ok_or("bad pos")?;
            *seen |= 1;
        }
        "flags" => {
            fi.flags = oct_u32(t).ok_or("bad flags")?;
            *seen |= 2;
        }
        "mnt_id" => {
            fi.mnt_id = dec(t).ok_or("bad mnt_id")?;
            *seen |= 4;
        }
        "ino" => {
            fi.ino = dec(t).ok_or("bad ino")?;
            *seen |= 8;
        }
        "lock" => fi.locks.push(parse_lock(t)?),
        "tfd" => {
            let tgt = parse_tfd(line)?;
            let K::Epoll(v) = ensure_kind(&mut fi.kind, || K::Epoll(Vec::new())) else {
                return Err(CONFLICT);
            };
            v.push(tgt);
        }
        "eventfd-count" | "eventfd-id" | "eventfd-semaphore" => {
            let K::Eventfd(e) = ensure_kind(&mut fi.kind, || K::Eventfd(Default::default())) else {
                return Err(CONFLICT);
            };
            match key {
                "eventfd-count" => e.count = hex_u64(t).ok_or("bad eventfd-count")?,
                "eventfd-id" => e.id = Some(dec(t).ok_or("bad eventfd-id")?),
                _ => e.semaphore = dec::<u8>(t).ok_or("bad eventfd-semaphore")? != 0,
            }
        }
        "sigmask" => {
            let K::Signalfd { sigmask } = ensure_kind(&mut fi.kind, || K::Signalfd { sigmask: 0 })
            else {
                return Err(CONFLICT);
            };
            *sigmask = hex_u64(t).ok_or("bad sigmask")?;
        }
        "clockid" | "ticks" | "settime flags" | "it_value" | "it_interval" => {
            let K::Timerfd(tf) = ensure_kind(&mut fi.kind, || K::Timerfd(Default::default()))
            else {
                return Err(CONFLICT);
            };
            match key {
                "clockid" => tf.clockid = dec(t).ok_or("bad clockid")?,
                "ticks" => tf.ticks = dec(t).ok_or("bad ticks")?,
                "settime flags" => tf.settime_flags = oct_u32(t).ok_or("bad settime flags")?,
                "it_value" => tf.it_value = parse_pair(t).ok_or("bad it_value")?,
                _ => tf.it_interval = parse_pair(t).ok_or("bad it_interval")?,
            }
        }
        "Pid" | "NSpid" => {
            let K::Pidfd(p) = ensure_kind(&mut fi.kind, || K::Pidfd(Default::default())) else {
                return Err(CONFLICT);
            };
            if key == "Pid" {
                p.pid = dec(t).ok_or("bad Pid")?;
            } else {
                let ns: Option<Vec<i32>> = t.split_ascii_whitespace().map(dec).collect();
                p.ns_pid = ns.ok_or("bad NSpid")?;
            }
        }
        _ => fi.unknown.push(line.to_owned()),
    }
    Ok(())
}

/// Read and parse `/proc/<pid>/fdinfo/<fd>`.
pub fn read_fdinfo(pid: i32, fd: i32) -> Result<Fdinfo, ProcError> {
    read_parse_single(pid_path(pid, &format!("fdinfo/{fd}")), parse_fdinfo)
}

/// The target of the `/proc/<pid>/fd/<fd>` link, e.g. `/usr/bin/cat`,
/// `pipe:[9191]`, `socket:[123]`, `anon_inode:[eventfd]`,
/// `anon_inode:[eventpoll]`, `anon_inode:inotify`, `anon_inode:[timerfd]`,
/// `anon_inode:[signalfd]`, `anon_inode:[fanotify]`, `anon_inode:[pidfd]`,
/// `/memfd:name (deleted)`.
pub fn read_fd_link(pid: i32, fd: i32) -> Result<PathBuf, ProcError> {
    let p = pid_path(pid, &format!("fd/{fd}"));
    std::fs::read_link(&p).map_err(|e| ProcError::io(p, e))
}

/// The open fd numbers of a task, sorted.
pub fn read_fd_numbers(pid: i32) -> Result<Vec<i32>, ProcError> {
    FdDir::open(pid)?.numbers()
}

/// A task's `/proc/PID/fd`, open: its fds are listed and their links read
/// relative to it, which spares the kernel a walk of `/proc/PID/fd` (and
/// its permission checks) for every fd.
pub struct FdDir {
    path: PathBuf,
    dir: nix::dir::Dir,
}

impl FdDir {
    pub fn open(pid: i32) -> Result<FdDir, ProcError> {
        use nix::fcntl::OFlag;
        let path = pid_path(pid, "fd");
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let dir = nix::dir::Dir::open(&path, flags, nix::sys::stat::Mode::empty())
            .map_err(|e| ProcError::io(&path, e.into()))?;
        Ok(FdDir { path, dir })
    }

    /// The open fd numbers, sorted.
    pub fn numbers(&mut self) -> Result<Vec<i32>, ProcError> {
        let mut out = Vec::new();
        for ent in self.dir.iter() {
            let ent = ent.map_err(|e| ProcError::io(&self.path, e.into()))?;
            if let Some(n) = ent.file_name().to_str().ok().and_then(dec::<i32>) {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// What fd `fd` is: `/proc/PID/fd/<fd>`'s link.
    pub fn link(&self, fd: i32) -> Result<PathBuf, ProcError> {
        use std::os::fd::AsRawFd;
        nix::fcntl::readlinkat(Some(self.dir.as_raw_fd()), fd.to_string().as_str())
            .map(PathBuf::from)
            .map_err(|e| ProcError::io(self.path.join(fd.to_string()), e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured on the 6.18 test VM from a Python process (see the module docs
    // of each kind for the formats).
    const EVENTFD: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1039\n\
        eventfd-count:               15\neventfd-id: 1\neventfd-semaphore: 0\n";
    const EVENTFD_SEM: &str = "pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t1039\n\
        eventfd-count:                0\neventfd-id: 2\neventfd-semaphore: 1\n";
    const SIGNALFD: &str =
        "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1039\nsigmask:\t0000000000004200\n";
    const EPOLL: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1039\n\
        tfd:        3 events: 80000019 data:                3  pos:0 ino:40f sdev:10\n\
        tfd:        7 events:       19 data:                7  pos:0 ino:26ff sdev:f\n";
    const INOTIFY: &str = "pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t1039\n\
        inotify wd:2 ino:3c4a7 sdev:fe00000 mask:2 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n\
        inotify wd:1 ino:98c19c sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:9cc19800ef1c520c\n";
    const FANOTIFY: &str = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1039\n\
        fanotify flags:0 event-flags:8000\n\
        fanotify ino:98c1f7 sdev:fe00000 mflags:0 mask:20 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:f7c198003f158009\n";
    const TIMERFD: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1039\n\
        clockid: 1\nticks: 0\nsettime flags: 00\nit_value: (99, 999952817)\nit_interval: (1, 500000000)\n";
    const PIDFD: &str =
        "pos:\t0\nflags:\t02000002\nmnt_id:\t4\nino:\t5594\nPid:\t5593\nNSpid:\t5593\n";
    const MEMFD: &str = "pos:\t0\nflags:\t02100002\nmnt_id:\t0\nino:\t1025\n";
    const FLOCK: &str = "pos:\t0\nflags:\t02100002\nmnt_id:\t27\nino:\t10011037\n\
        lock:\t1: FLOCK  ADVISORY  WRITE 5593 fe:00:10011037 0 EOF\n";
    const POSIX: &str = "pos:\t100\nflags:\t02100002\nmnt_id:\t27\nino:\t10011038\n\
        lock:\t1: POSIX  ADVISORY  WRITE 5593 fe:00:10011038 5 14\n";

    #[test]
    fn fd_dir_lists_and_reads_own_fds() {
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut d = FdDir::open(std::process::id() as i32).unwrap();
        let fds = d.numbers().unwrap();
        assert!(fds.contains(&fd) && fds.is_sorted());
        let want = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert_eq!(d.link(fd).unwrap(), want);
        let e = d.link(100_000).unwrap_err().to_string();
        assert!(e.contains("/fd/100000"), "{e}");
    }

    #[test]
    fn common_fields() {
        let f = parse_fdinfo(POSIX).unwrap();
        assert_eq!(
            (f.pos, f.flags, f.mnt_id, f.ino),
            (100, 0o2100002, 27, 10011038)
        );
        assert_eq!(f.flags & libc::O_CLOEXEC as u32, libc::O_CLOEXEC as u32);
        let m = parse_fdinfo(MEMFD).unwrap();
        assert_eq!(m.kind, FdinfoKind::Plain);
        assert_eq!(m.mnt_id, 0);
        assert!(m.locks.is_empty() && m.unknown.is_empty());
    }

    #[test]
    fn eventfd() {
        let f = parse_fdinfo(EVENTFD).unwrap();
        assert_eq!(
            f.kind,
            FdinfoKind::Eventfd(EventfdInfo {
                count: 0x15,
                id: Some(1),
                semaphore: false
            })
        );
        let f = parse_fdinfo(EVENTFD_SEM).unwrap();
        assert_eq!(f.flags, 0o4002);
        assert_eq!(
            f.kind,
            FdinfoKind::Eventfd(EventfdInfo {
                count: 0,
                id: Some(2),
                semaphore: true
            })
        );
    }

    #[test]
    fn signalfd() {
        let f = parse_fdinfo(SIGNALFD).unwrap();
        // SIGUSR1 (10) and SIGTERM (15).
        assert_eq!(
            f.kind,
            FdinfoKind::Signalfd {
                sigmask: (1 << 9) | (1 << 14)
            }
        );
    }

    #[test]
    fn epoll() {
        let f = parse_fdinfo(EPOLL).unwrap();
        let FdinfoKind::Epoll(t) = f.kind else {
            panic!("{:?}", f.kind)
        };
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0],
            EpollTarget {
                tfd: 3,
                events: 0x80000019,
                data: 3,
                pos: 0,
                ino: 0x40f,
                sdev: 0x10
            }
        );
        assert_eq!(t[1].tfd, 7);
        assert_eq!(t[1].events, 0x19);
        assert_eq!(super::super::kernel_dev_split(t[1].sdev), (0, 15));
        // Old-style line without pos/ino/sdev.
        let f = parse_fdinfo(&format!(
            "{MEMFD}tfd:        5 events:       1 data: ffffffffffffffff\n"
        ))
        .unwrap();
        let FdinfoKind::Epoll(t) = f.kind else {
            panic!()
        };
        assert_eq!((t[0].tfd, t[0].data), (5, u64::MAX));
    }

    #[test]
    fn inotify() {
        let f = parse_fdinfo(INOTIFY).unwrap();
        let FdinfoKind::Inotify(w) = f.kind else {
            panic!()
        };
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].wd, 2);
        assert_eq!(w[0].ino, 0x3c4a7);
        assert_eq!(super::super::kernel_dev_split(w[0].sdev), (254, 0));
        assert_eq!(w[0].mask, 2);
        assert_eq!(w[1].mask, 0x300);
        let h = w[0].fhandle.as_ref().unwrap();
        assert_eq!(h.handle_type, 1);
        assert_eq!(h.bytes, [0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0]);
        // Without a file handle (filesystem cannot export), trailing space.
        let f = parse_fdinfo(&format!(
            "{MEMFD}inotify wd:1a ino:5 sdev:f mask:fff ignored_mask:0 \n"
        ))
        .unwrap();
        let FdinfoKind::Inotify(w) = f.kind else {
            panic!()
        };
        assert_eq!(w[0].wd, 0x1a);
        assert_eq!(w[0].fhandle, None);
    }

    #[test]
    fn fanotify() {
        let f = parse_fdinfo(FANOTIFY).unwrap();
        let FdinfoKind::Fanotify(info) = f.kind else {
            panic!()
        };
        assert_eq!((info.flags, info.event_flags), (0, 0x8000));
        assert_eq!(info.marks.len(), 1);
        let m = &info.marks[0];
        assert_eq!((m.mflags, m.mask, m.ignored_mask), (0, 0x20, 0));
        let FanotifyTarget::Inode { ino, sdev, fhandle } = &m.target else {
            panic!()
        };
        assert_eq!((*ino, *sdev), (0x98c1f7, 0xfe00000));
        assert_eq!(fhandle.as_ref().unwrap().bytes.len(), 8);
        // Mount and filesystem marks; a header-only instance.
        let f = parse_fdinfo(&format!(
            "{MEMFD}fanotify flags:10 event-flags:0\nfanotify mnt_id:1b mflags:0 mask:8 ignored_mask:0\n\
             fanotify sdev:fe00000 mflags:1 mask:2 ignored_mask:0\n"
        ))
        .unwrap();
        let FdinfoKind::Fanotify(info) = f.kind else {
            panic!()
        };
        assert_eq!(info.flags, 0x10);
        assert_eq!(info.marks[0].target, FanotifyTarget::Mount { mnt_id: 0x1b });
        assert_eq!(
            info.marks[1].target,
            FanotifyTarget::Filesystem { sdev: 0xfe00000 }
        );
        assert_eq!(info.marks[1].mflags, 1);
        let f = parse_fdinfo(&format!("{MEMFD}fanotify flags:0 event-flags:0\n")).unwrap();
        assert!(matches!(f.kind, FdinfoKind::Fanotify(ref i) if i.marks.is_empty()));
    }

    #[test]
    fn timerfd() {
        let f = parse_fdinfo(TIMERFD).unwrap();
        assert_eq!(
            f.kind,
            FdinfoKind::Timerfd(TimerfdInfo {
                clockid: 1,
                ticks: 0,
                settime_flags: 0,
                it_value: (99, 999952817),
                it_interval: (1, 500000000)
            })
        );
        let f = parse_fdinfo(&TIMERFD.replace("settime flags: 00", "settime flags: 03")).unwrap();
        assert!(matches!(f.kind, FdinfoKind::Timerfd(t) if t.settime_flags == 3));
    }

    #[test]
    fn pidfd() {
        let f = parse_fdinfo(PIDFD).unwrap();
        assert_eq!(
            f.kind,
            FdinfoKind::Pidfd(PidfdInfo {
                pid: 5593,
                ns_pid: vec![5593]
            })
        );
        let f = parse_fdinfo(&PIDFD.replace("Pid:\t5593\nNSpid:\t5593", "Pid:\t-1")).unwrap();
        assert_eq!(
            f.kind,
            FdinfoKind::Pidfd(PidfdInfo {
                pid: -1,
                ns_pid: vec![]
            })
        );
        let f = parse_fdinfo(&PIDFD.replace("NSpid:\t5593", "NSpid:\t5593\t7\t1")).unwrap();
        assert!(matches!(f.kind, FdinfoKind::Pidfd(ref p) if p.ns_pid == [5593, 7, 1]));
    }

    #[test]
    fn locks() {
        let f = parse_fdinfo(FLOCK).unwrap();
        assert_eq!(
            f.locks,
            [FileLock {
                id: 1,
                blocked: false,
                class: LockClass::Flock,
                mode: LockMode::Advisory,
                lock_type: LockType::Write,
                pid: 5593,
                dev: Some((0xfe, 0)),
                ino: 10011037,
                start: 0,
                end: None
            }]
        );
        let f = parse_fdinfo(POSIX).unwrap();
        assert_eq!(f.locks[0].class, LockClass::Posix);
        assert_eq!((f.locks[0].start, f.locks[0].end), (5, Some(14)));
        assert_eq!(f.kind, FdinfoKind::Plain);

        // /proc/locks, with an OFD lock, a lease, a blocked waiter and <none>.
        let l = parse_locks(
            "1: POSIX  ADVISORY  WRITE 5593 fe:00:10011038 5 14\n\
             2: FLOCK  ADVISORY  WRITE 5593 fe:00:10011037 0 EOF\n\
             3: OFDLCK ADVISORY  READ  -1 08:01:42 0 99\n\
             3: -> OFDLCK ADVISORY  WRITE -1 08:01:42 0 EOF\n\
             4: LEASE  ACTIVE    READ  77 103:02:9 0 EOF\n\
             5: POSIX  *NOINODE* UNLCK 1 <none>:0 0 EOF\n",
        )
        .unwrap();
        assert_eq!(l.len(), 6);
        assert_eq!(l[2].class, LockClass::Ofd);
        assert_eq!((l[2].pid, l[2].lock_type), (-1, LockType::Read));
        assert!(l[3].blocked && l[3].id == 3);
        assert_eq!(
            (l[4].class, l[4].mode, l[4].dev),
            (LockClass::Lease, LockMode::Active, Some((0x103, 2)))
        );
        assert_eq!(
            (l[5].mode, l[5].dev, l[5].lock_type),
            (LockMode::NoInode, None, LockType::Unlock)
        );
        let e = parse_locks("1: POSIX  ADVISORY  WRITE 1 fe:00:1 0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "locks: bad line 1: \"1: POSIX  ADVISORY  WRITE 1 fe:00:1 0\" (too few fields)"
        );
    }

    #[test]
    fn unknown_lines_kept() {
        let f = parse_fdinfo(&format!(
            "{MEMFD}iff:\ttap0\nmap_type:\t1\nsome line without colon\n"
        ))
        .unwrap();
        assert_eq!(f.kind, FdinfoKind::Plain);
        assert_eq!(
            f.unknown,
            ["iff:\ttap0", "map_type:\t1", "some line without colon"]
        );
    }

    #[test]
    fn errors() {
        let e = parse_fdinfo("pos:\t0\nflags:\t0\nmnt_id:\t1\n").unwrap_err();
        assert_eq!(e.to_string(), "fdinfo: missing ino");
        let e = parse_fdinfo("pos:\t0\nflags:\t09\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "fdinfo: bad line 2: \"flags:\\t09\" (bad flags)"
        );
        let e = parse_fdinfo(&format!("{EVENTFD}sigmask:\t0\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "fdinfo: bad line 8: \"sigmask:\\t0\" (conflicting fdinfo kinds)"
        );
        let e = parse_fdinfo(&format!("{MEMFD}tfd: 3 events: zz data: 1\n")).unwrap_err();
        assert!(e.to_string().ends_with("(bad tfd field)"), "{e}");
        let e = parse_fdinfo(&INOTIFY.replace("f_handle:a7c4030000000000", "f_handle:a7c4"))
            .unwrap_err();
        assert!(
            matches!(
                e,
                ProcError::BadLine {
                    line: 5,
                    reason: "bad fhandle",
                    ..
                }
            ),
            "{e}"
        );
        let e = parse_fdinfo(&TIMERFD.replace("(99, 999952817)", "99")).unwrap_err();
        assert!(e.to_string().ends_with("(bad it_value)"), "{e}");
    }

    #[test]
    fn live_self() {
        use std::os::fd::AsRawFd;
        let pid = std::process::id() as i32;
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let fd = f.as_raw_fd();
        let info = read_fdinfo(pid, fd).unwrap();
        assert_eq!(info.kind, FdinfoKind::Plain);
        assert_eq!(info.flags & libc::O_CLOEXEC as u32, libc::O_CLOEXEC as u32);
        assert_eq!(info.pos, 0);
        assert!(read_fd_numbers(pid).unwrap().contains(&fd));
        assert_eq!(
            read_fd_link(pid, fd).unwrap(),
            PathBuf::from(format!("/proc/{pid}/status"))
        );
        assert!(read_fdinfo(pid, 1 << 30).unwrap_err().is_gone());
        read_locks().unwrap();
    }
}
