//! Pipes and FIFOs.
//!
//! Dump: each end is a `pipe_entry` (or a `fifo_entry` plus a
//! `reg_file_entry` holding the FIFO's path) in files.img; `pipe_id` is the
//! pipe's inode, shared by both ends. The bytes queued in a pipe are saved
//! once per pipe, without consuming them: they are duplicated with tee(2)
//! from a read end (the target's, stolen; or a new one opened through
//! `/proc/PID/fd/N` when the tree holds only the write end) into a private
//! pipe of the same capacity, and read from there. They go to
//! `pipes-data.img` (`fifo-data.img` for FIFOs) as a `pipe_data_entry`
//! {pipe_id, bytes, size = F_GETPIPE_SZ} followed by the bytes.
//!
//! Restore: every end of one pipe is one [`Group::Pipe`](super::Group), made
//! by one pipe2(2) in the task that is the common ancestor of all holders.
//! The capacity is set back (F_SETPIPE_SZ), the data is written into the
//! write end, then each end gets its status flags; extra open file
//! descriptions of the same pipe are reopened through `/proc/self/fd`. An end
//! the tree does not hold is closed, as it was. A FIFO is reopened by path
//! without blocking: O_RDWR first (which never waits for a peer), refill,
//! then each end with its real flags through `/proc/self/fd`.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use stasis_proto::criu::{FdTypes, FifoEntry, FileEntry, PipeDataEntry, PipeEntry, RegFileEntry};
use stasis_proto::image::magic;

use super::{FdCtx, FileTable, OpenCtx};
use crate::error::{Error, Result};
use crate::images::{common, ImageDir, Writer};
use crate::sys::fdobj;

pub const PIPES_DATA_IMG: &str = "pipes-data.img";
pub const FIFO_DATA_IMG: &str = "fifo-data.img";

/// Status flags F_SETFL can change on a pipe end.
const SETFL_MASK: i32 = libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC | libc::O_NOATIME;

/// Dump-side state: which pipes had their data saved, and the open data images.
#[derive(Default)]
pub struct Dumped {
    done: HashSet<(bool, u32)>,
    pipes: Option<Writer>,
    fifos: Option<Writer>,
}

/// Read exactly `n` bytes from a (nonblocking) pipe we own.
fn read_exact(fd: BorrowedFd<'_>, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match nix::unistd::read(fd.as_raw_fd(), &mut buf[got..]) {
            Ok(0) => return Err(std::io::Error::from_raw_os_error(libc::EPIPE)),
            Ok(k) => got += k,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf)
}

/// The queued bytes and the capacity of the pipe behind `cx`, left in place.
fn peek(cx: &FdCtx<'_>) -> Result<(Vec<u8>, u32)> {
    let acc = cx.info.flags as i32 & libc::O_ACCMODE;
    let rd: OwnedFd = if acc == libc::O_WRONLY {
        // Only a write end here: open a read end of the same pipe. It never
        // blocks (O_NONBLOCK) and the pipe is unchanged once it is closed.
        let p = format!("/proc/{}/fd/{}", cx.pid, cx.fd);
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_nonblock()
            .open(&p)
            .map_err(|e| cx.err(format!("open a read end of {}: {e}", cx.link)))?
            .into()
    } else {
        cx.steal()?
    };
    let cap = fdobj::pipe_size(rd.as_fd())
        .map_err(|e| cx.err(format!("F_GETPIPE_SZ on {}: {e}", cx.link)))?;
    let n =
        fdobj::fionread(rd.as_fd()).map_err(|e| cx.err(format!("FIONREAD on {}: {e}", cx.link)))?;
    if n == 0 {
        return Ok((Vec::new(), cap as u32));
    }
    let (pr, pw) = fdobj::pipe2(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .map_err(|e| cx.err(format!("pipe2: {e}")))?;
    // Same capacity, same number of slots: one tee takes every buffer.
    let have = fdobj::pipe_size(pw.as_fd()).unwrap_or(0);
    if have < cap {
        fdobj::set_pipe_size(pw.as_fd(), cap)
            .map_err(|e| cx.err(format!("grow a private pipe to {cap} bytes: {e}")))?;
    }
    let got = fdobj::tee(rd.as_fd(), pw.as_fd(), n, libc::SPLICE_F_NONBLOCK)
        .map_err(|e| cx.err(format!("tee from {}: {e}", cx.link)))?;
    if got != n {
        return Err(cx.err(format!(
            "tee from {} copied {got} of {n} queued bytes",
            cx.link
        )));
    }
    drop(pw);
    let data = read_exact(pr.as_fd(), n)
        .map_err(|e| cx.err(format!("read the copy of {}: {e}", cx.link)))?;
    Ok((data, cap as u32))
}

/// Save the queued data of a pipe or FIFO once.
fn dump_data(t: &mut FileTable<'_>, cx: &FdCtx<'_>, fifo: bool, pipe_id: u32) -> Result<()> {
    if !t.pipes.done.insert((fifo, pipe_id)) {
        return Ok(());
    }
    let (data, cap) = peek(cx)?;
    let (name, m) = if fifo {
        (FIFO_DATA_IMG, magic::FIFO_DATA)
    } else {
        (PIPES_DATA_IMG, magic::PIPES_DATA)
    };
    let dir = t.dir;
    let slot = if fifo {
        &mut t.pipes.fifos
    } else {
        &mut t.pipes.pipes
    };
    if slot.is_none() {
        *slot = Some(dir.writer(name, common(m))?);
    }
    let w = slot.as_mut().unwrap();
    let e = PipeDataEntry {
        pipe_id,
        bytes: data.len() as u32,
        size: Some(cap),
    };
    dir.put(w, name, &e)?;
    w.write_payload(&data)
        .map_err(|e| Error::io(dir.file(name), e))?;
    Ok(())
}

/// Finish the data images (called from `FileTable::write`).
pub fn write(dir: &ImageDir, d: Dumped) -> Result<()> {
    if let Some(w) = d.pipes {
        dir.finish(w, PIPES_DATA_IMG)?;
    }
    if let Some(w) = d.fifos {
        dir.finish(w, FIFO_DATA_IMG)?;
    }
    Ok(())
}

/// An end of an anonymous pipe.
pub fn dump_fd(t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    let pipe_id = cx.st.ino() as u32;
    dump_data(t, cx, false, pipe_id)?;
    Ok(FileEntry {
        r#type: FdTypes::Pipe as i32,
        id: cx.id,
        pipe: Some(Box::new(PipeEntry {
            id: cx.id,
            pipe_id,
            flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
            fown: super::fown::of(cx, t.userns.as_ref())?,
        })),
        ..Default::default()
    })
}

/// An open FIFO: its path goes in a reg_file_entry of its own.
pub fn dump_fifo(t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    let pipe_id = cx.st.ino() as u32;
    let regf_id = t.new_id();
    let rcx = FdCtx {
        id: regf_id,
        pid: cx.pid,
        fd: cx.fd,
        link: cx.link,
        st: cx.st,
        info: cx.info,
        obj: cx.obj,
    };
    let reg = super::reg::dump_fd(t, &rcx)?;
    t.push(reg);
    dump_data(t, cx, true, pipe_id)?;
    Ok(FileEntry {
        r#type: FdTypes::Fifo as i32,
        id: cx.id,
        fifo: Some(Box::new(FifoEntry {
            id: cx.id,
            pipe_id,
            regf_id: Some(regf_id),
        })),
        ..Default::default()
    })
}

// ---------------------------------------------------------------- restore

struct Data {
    bytes: Vec<u8>,
    size: Option<u32>,
}

type DataMap = std::result::Result<HashMap<u32, Data>, String>;

static PIPES: OnceLock<DataMap> = OnceLock::new();
static FIFOS: OnceLock<DataMap> = OnceLock::new();

fn load(dir: &Path, name: &str, m: u32) -> DataMap {
    let mut out = HashMap::new();
    if !dir.join(name).exists() {
        return Ok(out);
    }
    let d = ImageDir::open(dir).map_err(|e| e.to_string())?;
    let mut r = d.reader(name, common(m)).map_err(|e| e.to_string())?;
    while let Some(e) = r.read_entry::<PipeDataEntry>().map_err(|e| e.to_string())? {
        let bytes = r
            .read_payload(e.bytes as usize)
            .map_err(|e| e.to_string())?;
        out.insert(
            e.pipe_id,
            Data {
                bytes,
                size: e.size,
            },
        );
    }
    Ok(out)
}

/// The saved data of pipe `pipe_id`, read once per process (a stub forked
/// after the first read inherits it).
fn data_of(
    cx: &OpenCtx<'_>,
    fifo: bool,
    pipe_id: u32,
) -> std::result::Result<Option<&'static Data>, String> {
    let map = if fifo {
        FIFOS.get_or_init(|| load(cx.images_dir, FIFO_DATA_IMG, magic::FIFO_DATA))
    } else {
        PIPES.get_or_init(|| load(cx.images_dir, PIPES_DATA_IMG, magic::PIPES_DATA))
    };
    match map {
        Ok(m) => Ok(m.get(&pipe_id)),
        Err(e) => Err(e.clone()),
    }
}

/// Set the capacity and queue the saved bytes through `w` (nonblocking).
fn refill(w: BorrowedFd<'_>, d: Option<&Data>, what: &str) -> std::result::Result<(), String> {
    let Some(d) = d else {
        return Ok(());
    };
    let cur = fdobj::pipe_size(w).map_err(|e| format!("{what}: F_GETPIPE_SZ: {e}"))?;
    if let Some(size) = d.size.filter(|&s| s as usize != cur && s != 0) {
        if let Err(e) = fdobj::set_pipe_size(w, size as usize) {
            // Above fs.pipe-max-size without CAP_SYS_RESOURCE: keep the
            // default unless the data does not fit.
            if d.bytes.len() > cur {
                return Err(format!(
                    "{what}: cannot set the capacity to {size} bytes for {} queued bytes: {e}",
                    d.bytes.len()
                ));
            }
        }
    }
    let mut off = 0;
    while off < d.bytes.len() {
        match nix::unistd::write(w, &d.bytes[off..]) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                return Err(format!(
                    "{what}: refill {} bytes (wrote {off}): {e}",
                    d.bytes.len()
                ))
            }
        }
    }
    Ok(())
}

fn reopen(fd: i32, flags: u32) -> std::io::Result<OwnedFd> {
    let p = format!("/proc/self/fd/{fd}");
    super::reg::open_flags(Path::new(&p), flags as i32, 0)
}

/// Create pipe `pipe_id` with every end the dump saw: (file id, fd) each.
pub fn create_pipe(
    pipe_id: u32,
    cx: &OpenCtx<'_>,
) -> std::result::Result<Vec<(u32, OwnedFd)>, String> {
    fn end(f: &FileEntry) -> Option<(u32, &PipeEntry)> {
        f.pipe.as_deref().map(|p| (f.id, p))
    }
    let mut ends: Vec<(u32, &PipeEntry)> = match super::memo::get(cx.files) {
        Some(ix) => ix
            .pipe_ends
            .get(&pipe_id)
            .into_iter()
            .flatten()
            .filter_map(|id| cx.files.get(id))
            .filter_map(end)
            .filter(|(_, p)| p.pipe_id == pipe_id)
            .collect(),
        None => cx
            .files
            .values()
            .filter_map(end)
            .filter(|(_, p)| p.pipe_id == pipe_id)
            .collect(),
    };
    ends.sort_by_key(|e| e.0);
    let what = format!("pipe:[{pipe_id}]");
    // An inherited fd stands in for every end of this pipe (CRIU's
    // --inherit-fd): its data and the other end are the caller's.
    if !cx.inherit_fds.is_empty() && cx.inherit_fds.contains_key(&what) {
        return ends
            .iter()
            .map(|(id, _)| {
                cx.inherited(&what)
                    .unwrap_or_else(|| Err(what.clone()))
                    .map(|fd| (*id, fd))
            })
            .collect();
    }
    let direct = ends
        .iter()
        .any(|(_, p)| p.flags as i32 & libc::O_DIRECT != 0);
    let mut fl = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if direct {
        fl |= libc::O_DIRECT;
    }
    let (r, w) = fdobj::pipe2(fl).map_err(|e| format!("{what}: pipe2: {e}"))?;
    refill(w.as_fd(), data_of(cx, false, pipe_id)?, &what)?;
    let (mut r, mut w) = (Some(r), Some(w));
    let mut out = Vec::with_capacity(ends.len());
    let mut extra = Vec::new();
    for (id, p) in &ends {
        let acc = p.flags as i32 & libc::O_ACCMODE;
        let slot = match acc {
            libc::O_RDONLY => &mut r,
            libc::O_WRONLY => &mut w,
            _ => &mut None,
        };
        // The first end of each direction is the pipe2 one; others are
        // separate open file descriptions of the same pipe.
        let fd = match slot.take() {
            Some(fd) => fd,
            None => {
                extra.push((*id, p.flags));
                continue;
            }
        };
        fdobj::set_fl(fd.as_fd(), p.flags as i32 & SETFL_MASK)
            .map_err(|e| format!("{what}: set flags {:#o}: {e}", p.flags))?;
        out.push((*id, fd));
    }
    for (id, flags) in extra {
        let src = out
            .iter()
            .map(|(_, fd)| fd.as_raw_fd())
            .chain(r.as_ref().map(|f| f.as_raw_fd()))
            .chain(w.as_ref().map(|f| f.as_raw_fd()))
            .next()
            .ok_or_else(|| format!("{what}: no end to reopen"))?;
        let fd = reopen(src, flags).map_err(|e| format!("{what}: reopen an end: {e}"))?;
        out.push((id, fd));
    }
    Ok(out)
}

/// Open every end of FIFO `pipe_id` by path and refill its data.
pub fn create_fifo(
    pipe_id: u32,
    cx: &OpenCtx<'_>,
) -> std::result::Result<Vec<(u32, OwnedFd)>, String> {
    let mut ends: Vec<(u32, &RegFileEntry)> = Vec::new();
    for f in cx.files.values() {
        let Some(fe) = f.fifo.as_ref().filter(|fe| fe.pipe_id == pipe_id) else {
            continue;
        };
        let rid = fe
            .regf_id
            .ok_or_else(|| format!("fifo {}: no path entry", f.id))?;
        let reg = cx
            .files
            .get(&rid)
            .and_then(|r| r.reg.as_ref())
            .ok_or_else(|| format!("fifo {}: no path entry {rid}", f.id))?;
        ends.push((f.id, reg));
    }
    ends.sort_by_key(|e| e.0);
    let mut holders: HashMap<&str, OwnedFd> = HashMap::new();
    let mut filled = false;
    let mut out = Vec::with_capacity(ends.len());
    for (id, reg) in ends {
        let name = reg.name.as_str();
        if !holders.contains_key(name) {
            // O_RDWR on a FIFO never waits for a peer.
            let h: OwnedFd = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags_nonblock()
                .open(name)
                .map_err(|e| format!("open fifo {name}: {e}"))?
                .into();
            let st = nix::sys::stat::fstat(h.as_raw_fd())
                .map_err(|e| format!("stat fifo {name}: {e}"))?;
            if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
                return Err(format!("{name} is not a fifo any more"));
            }
            if !filled {
                refill(h.as_fd(), data_of(cx, true, pipe_id)?, name)?;
                filled = true;
            }
            holders.insert(name, h);
        }
        let fd = reopen(holders[name].as_raw_fd(), reg.flags)
            .map_err(|e| format!("open fifo {name} with flags {:#o}: {e}", reg.flags))?;
        out.push((id, fd));
    }
    Ok(out)
}

/// Opening without ever waiting for a peer or taking a terminal.
trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
    }
}
