//! Open files: the fd table of each task (fdinfo-*.img) and the file objects
//! behind it (files.img).
//!
//! Every kind of file has one module that owns its dump and its restore; this
//! module recognises the kind of an fd and dispatches. An open file
//! description shared by several fds (dup, fork, SCM_RIGHTS) is found with
//! kcmp and stored once, so restore can recreate it once and share it again.

pub mod reg;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use stasis_proto::criu::{FdTypes, FdinfoEntry, FileEntry, RemapFilePathEntry};
use stasis_proto::image::magic;

use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc;
use crate::sys::kcmp;

pub const FILES_IMG: &str = "files.img";
pub const REMAP_IMG: &str = "remap-fpath.img";

/// What an fd refers to, as far as dispatch is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Regular files, directories and device nodes opened by path.
    Reg,
    /// A terminal (pty slave, /dev/tty*, console).
    Tty,
    /// Something this engine cannot save yet; the name is for the error.
    Unsupported(&'static str),
}

/// Recognise an fd from its link text and mode.
pub fn classify(link: &str, mode: u32, rdev_major: u32) -> Kind {
    let fmt = mode & libc::S_IFMT;
    if let Some(rest) = link.strip_prefix("anon_inode:") {
        return Kind::Unsupported(match rest.trim_matches(|c| c == '[' || c == ']') {
            "eventfd" => "eventfd",
            "eventpoll" => "epoll",
            "inotify" => "inotify",
            "fanotify" => "fanotify",
            "signalfd" => "signalfd",
            "timerfd" => "timerfd",
            "pidfd" => "pidfd",
            "io_uring" => "io_uring",
            "bpf-map" | "bpf-prog" => "bpf",
            "userfaultfd" => "userfaultfd",
            "perf_event" => "perf event",
            _ => "anonymous inode",
        });
    }
    if link.starts_with("pipe:") {
        return Kind::Unsupported("pipe");
    }
    if link.starts_with("socket:") || fmt == libc::S_IFSOCK {
        return Kind::Unsupported("socket");
    }
    if link.starts_with("/memfd:") {
        return Kind::Unsupported("memfd");
    }
    match fmt {
        libc::S_IFIFO => Kind::Unsupported("fifo"),
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

#[derive(Debug)]
struct Open {
    pid: i32,
    fd: i32,
    dev: u64,
    ino: u64,
    id: u32,
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
}

impl FdCtx<'_> {
    /// A duplicate of the target's fd in our own table (same open file
    /// description: reading from it consumes the target's data, so only
    /// inspect, peek or tee).
    pub fn steal(&self) -> Result<std::os::fd::OwnedFd> {
        let pidfd = crate::sys::pidfd::pidfd_open(self.pid)
            .map_err(|e| Error::task(self.pid, "pidfd_open", e))?;
        crate::sys::pidfd::pidfd_getfd(&pidfd, self.fd).map_err(|e| Error::Fd {
            pid: self.pid,
            fd: self.fd,
            why: format!("pidfd_getfd: {e}"),
        })
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
}

/// Collects every file object of a dump.
pub struct FileTable<'a> {
    pub(crate) dir: &'a ImageDir,
    pub opts: FileOpts,
    entries: Vec<FileEntry>,
    remaps: Vec<RemapFilePathEntry>,
    next_id: u32,
    by_path: HashMap<(String, u32), u32>,
    open: Vec<Open>,
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
            open: Vec::new(),
        }
    }

    pub fn new_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
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

    /// Dump one fd of `pid` and return its fdinfo entry.
    pub fn dump_fd(&mut self, pid: i32, fd: i32) -> Result<FdinfoEntry> {
        let link = proc::read_fd_link(pid, fd)?;
        let link = link.to_string_lossy().into_owned();
        let fdpath = PathBuf::from(format!("/proc/{pid}/fd/{fd}"));
        let st = std::fs::metadata(&fdpath).map_err(|e| Error::Fd {
            pid,
            fd,
            why: format!("stat {link}: {e}"),
        })?;
        let info = proc::read_fdinfo(pid, fd)?;
        let fd_flags = if info.flags & libc::O_CLOEXEC as u32 != 0 {
            libc::FD_CLOEXEC as u32
        } else {
            0
        };
        let kind = classify(&link, st.mode(), libc::major(st.rdev()));
        let ty = match kind {
            Kind::Reg => FdTypes::Reg,
            Kind::Tty if self.opts.shell_job => FdTypes::Reg,
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
        for o in self.open.iter().filter(|o| o.dev == dev && o.ino == ino) {
            if kcmp::kcmp_file(pid, fd, o.pid, o.fd).unwrap_or(false) {
                return Ok(fdinfo(o.id));
            }
        }
        let id = self.new_id();
        let cx = FdCtx {
            pid,
            fd,
            id,
            link: &link,
            st: &st,
            info: &info,
        };
        let entry = match kind {
            Kind::Reg | Kind::Tty => reg::dump_fd(self, &cx)?,
            Kind::Unsupported(_) => unreachable!("refused above"),
        };
        self.push(entry);
        self.open.push(Open {
            pid,
            fd,
            dev,
            ino,
            id,
        });
        Ok(fdinfo(id))
    }

    /// Write files.img (and remap-fpath.img when files were deleted).
    pub fn write(self) -> Result<()> {
        self.dir
            .write_all(FILES_IMG, common(magic::FILES), &self.entries)?;
        if !self.remaps.is_empty() {
            self.dir
                .write_all(REMAP_IMG, common(magic::REMAP_FPATH), &self.remaps)?;
        }
        Ok(())
    }
}

/// File objects restore must create together, in one task, because one call
/// makes them all (both ends of a pipe, a socket pair). Most files are a
/// group of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    File(u32),
}

/// The group a file object belongs to.
pub fn group_of(f: &FileEntry) -> Group {
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
}

/// Create the file objects of group `g`: (file id, fd) for each member.
/// Runs in the restore stub of the task that owns the group.
pub fn create(
    g: Group,
    cx: &OpenCtx<'_>,
) -> std::result::Result<Vec<(u32, std::os::fd::OwnedFd)>, String> {
    match g {
        Group::File(id) => Ok(vec![(id, open_one(id, cx)?)]),
    }
}

/// Open one file object by itself (regular files, directories, devices).
pub fn open_one(id: u32, cx: &OpenCtx<'_>) -> std::result::Result<std::os::fd::OwnedFd, String> {
    let f = cx.files.get(&id).ok_or_else(|| format!("no file {id}"))?;
    let e = f
        .reg
        .as_ref()
        .ok_or_else(|| format!("file {id}: not a regular file entry"))?;
    let ghost = cx.ghost_fds.get(&id).copied();
    reg::open(e, ghost, cx.tty_fd).map_err(|err| format!("open {}: {err}", e.name))
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
            Kind::Unsupported("pipe")
        );
        assert_eq!(
            classify("anon_inode:[eventfd]", 0o600, 0),
            Kind::Unsupported("eventfd")
        );
        assert_eq!(
            classify("socket:[99]", libc::S_IFSOCK | 0o777, 0),
            Kind::Unsupported("socket")
        );
    }
}
