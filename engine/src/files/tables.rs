//! Fd tables dumped on a thread of their own.
//!
//! Dumping an fd table is /proc reads, pidfd_getfd and kcmp: no ptrace, so
//! it needs no tracer thread. The dumper's own thread spends much of each
//! task waiting for it to run injected syscalls; the fd tables (most of a
//! many-fd tree's CPU time) are dumped meanwhile on the other core. Both
//! threads share the [`FileTable`] behind a mutex, taken per fd once its
//! /proc entries are read and it is stolen, so file mappings, cwd and exe
//! of the task being dumped are not held up.
//!
//! With this thread, the fd flags (FD_CLOEXEC) come from a remote
//! fcntl(F_GETFD) per fd in each task's batch of remote calls (the main
//! thread's), not from /proc/PID/fdinfo: a /proc path walk and a seq file
//! are ~10 µs an fd, the most of a many-fd table. The rest of what fdinfo
//! tells (position, status flags) is read on the stolen fd (see
//! [`super::gather`]); fdinfo is still read for the kinds whose state only
//! it shows (eventfd, epoll, ...), for devices, and for files some lock is
//! held on (`/proc/locks`, read once here). Each table is then written by
//! whichever thread finishes its part last ([`deliver`], [`finish`]).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use stasis_proto::criu::FdinfoEntry;
use stasis_proto::image::magic;
use tracing::debug;

use super::FileTable;
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc;

/// Lock `files` (a panicked holder already failed the dump).
pub fn lock<'m, 'a>(files: &'m Mutex<FileTable<'a>>) -> MutexGuard<'m, FileTable<'a>> {
    files.lock().unwrap_or_else(|e| e.into_inner())
}

/// Dump the fd table of each task of `tasks` (pid, files id) into
/// `fdinfo-<files id>.img`, in order. Stops early, successfully, once
/// `stop` is set (the dump failed elsewhere).
pub fn dump_tables(
    files: &Mutex<FileTable<'_>>,
    tasks: &[(i32, u32)],
    stop: &AtomicBool,
) -> Result<()> {
    // Read after the tree was seized: it takes no lock from now on.
    let locked = lock(files).fast.is_some().then(locked_inodes).flatten();
    for &(pid, files_id) in tasks {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        crate::error::check_interrupt()?;
        let fds = lock(files).take_fds(pid)?;
        let mut entries = Vec::with_capacity(fds.len());
        for (fd, link) in fds {
            // The kernel is asked without the lock: the main thread needs
            // the table meanwhile (file mappings, cwd, exe, pages ids).
            let g = super::gather(pid, fd, link, locked.as_ref())?;
            entries.push(lock(files).dump_fd(g)?);
        }
        finish(files, pid, files_id, entries)?;
    }
    Ok(())
}

/// The (device, inode) of every file with a lock, from `/proc/locks`; None
/// if a line is not understood (every fdinfo is read then). Only in the
/// initial pid namespace: elsewhere the kernel leaves out the flock locks
/// whose taker has exited, though another process may hold them now.
fn locked_inodes() -> Option<Locked> {
    // PROC_PID_INIT_INO: the initial pid namespace's inode, fixed.
    const INIT_PID_NS: u64 = 0xEFFF_FFFC;
    let ns = std::fs::metadata("/proc/self/ns/pid").ok()?;
    if std::os::unix::fs::MetadataExt::ino(&ns) != INIT_PID_NS {
        return None;
    }
    let text = std::fs::read_to_string("/proc/locks")
        .map_err(|e| debug!("/proc/locks: {e}"))
        .ok()?;
    let mut set = HashSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let l = proc::parse_locks(line)
            .map_err(|e| debug!("/proc/locks: {e}"))
            .ok()?
            .pop()?;
        // `<none>`: no device to match: every fdinfo is read.
        let (maj, min) = l.dev?;
        set.insert((libc::makedev(maj, min), l.ino));
    }
    Some(set)
}

/// (st_dev, st_ino) of files with locks.
pub(crate) type Locked = HashSet<(u64, u64)>;

/// Fd flags from remote calls (see the module docs), per task.
#[derive(Default)]
pub(crate) struct FastFlags {
    /// The fds of each task, as scanned.
    fds: HashMap<i32, Vec<i32>>,
    /// Flags delivered by the main thread for tables not gathered yet;
    /// None: read them from fdinfo (the task's remote calls are not
    /// batched: it ignores SIGTRAP).
    got: HashMap<i32, Option<HashMap<i32, u32>>>,
    /// Tables gathered before their flags came: (files id, entries).
    parked: HashMap<i32, (u32, Vec<FdinfoEntry>)>,
}

impl FileTable<'_> {
    /// Take fd flags from remote calls (see the module docs): call once the
    /// tree is scanned ([`prepare_tree`](Self::prepare_tree)).
    pub fn fast_fd_flags(&mut self) {
        let fds = self
            .fdscan
            .pids()
            .map(|pid| (pid, self.fdscan.fds(pid).iter().map(|s| s.fd).collect()))
            .collect();
        self.fast = Some(FastFlags {
            fds,
            ..Default::default()
        });
    }

    /// The fds whose flags the main thread is to read for `pid`'s table, if
    /// fd flags come from remote calls.
    pub fn fd_flags_wanted(&self, pid: i32) -> Option<&[i32]> {
        self.fast.as_ref()?.fds.get(&pid).map(Vec::as_slice)
    }
}

/// The main thread's part for `pid`: its fd flags (fd, FD_CLOEXEC or 0),
/// or None to read them from fdinfo. Writes the table if it is gathered.
pub fn deliver(
    files: &Mutex<FileTable<'_>>,
    pid: i32,
    flags: Option<HashMap<i32, u32>>,
) -> Result<()> {
    let mut t = lock(files);
    let dir = t.dir;
    let Some(fast) = t.fast.as_mut() else {
        return Ok(());
    };
    match fast.parked.remove(&pid) {
        Some((files_id, entries)) => {
            drop(t);
            let flags = resolve(pid, &entries, flags)?;
            write_table(dir, pid, files_id, entries, Some(&flags))
        }
        None => {
            fast.got.insert(pid, flags);
            Ok(())
        }
    }
}

/// The table thread's part for `pid`: write its table, or park it until
/// its flags are delivered.
fn finish(
    files: &Mutex<FileTable<'_>>,
    pid: i32,
    files_id: u32,
    entries: Vec<FdinfoEntry>,
) -> Result<()> {
    let mut t = lock(files);
    let dir = t.dir;
    let Some(fast) = t.fast.as_mut() else {
        drop(t);
        return write_table(dir, pid, files_id, entries, None);
    };
    // Not scanned, so no flags will come (cannot happen: every live task
    // is): fdinfo's.
    let got = match fast.fds.contains_key(&pid) {
        true => fast.got.remove(&pid),
        false => Some(None),
    };
    match got {
        Some(flags) => {
            drop(t);
            let flags = resolve(pid, &entries, flags)?;
            write_table(dir, pid, files_id, entries, Some(&flags))
        }
        None => {
            fast.parked.insert(pid, (files_id, entries));
            Ok(())
        }
    }
}

/// Every table written (each task's flags were delivered): a table still
/// parked would be missing from the images.
pub fn all_written(files: &Mutex<FileTable<'_>>) -> Result<()> {
    match lock(files)
        .fast
        .as_ref()
        .and_then(|f| f.parked.keys().min())
    {
        Some(pid) => Err(Error::task(
            *pid,
            "fd table",
            std::io::Error::other("its fd flags were never read"),
        )),
        None => Ok(()),
    }
}

/// The delivered flags, or (None) those fdinfo shows for each entry.
fn resolve(
    pid: i32,
    entries: &[FdinfoEntry],
    flags: Option<HashMap<i32, u32>>,
) -> Result<HashMap<i32, u32>> {
    if let Some(f) = flags {
        return Ok(f);
    }
    entries
        .iter()
        .map(|e| {
            let fd = e.fd as i32;
            Ok((fd, cloexec_flag(proc::read_fdinfo(pid, fd)?.flags)))
        })
        .collect()
}

/// FD_CLOEXEC when open flags (as fdinfo shows them) have O_CLOEXEC.
pub fn cloexec_flag(open_flags: u32) -> u32 {
    if open_flags & libc::O_CLOEXEC as u32 != 0 {
        libc::FD_CLOEXEC as u32
    } else {
        0
    }
}

/// Write `fdinfo-<files_id>.img`, with the fd flags of `flags` when given
/// (else those the entries have: from fdinfo).
fn write_table(
    dir: &ImageDir,
    pid: i32,
    files_id: u32,
    mut entries: Vec<FdinfoEntry>,
    flags: Option<&HashMap<i32, u32>>,
) -> Result<()> {
    if let Some(flags) = flags {
        for e in &mut entries {
            let fd = e.fd as i32;
            e.flags = match flags.get(&fd) {
                Some(&f) => f,
                // Not scanned (cannot happen: the tree is frozen).
                None => cloexec_flag(proc::read_fdinfo(pid, fd)?.flags),
            };
        }
    }
    dir.write_all(
        &format!("fdinfo-{files_id}.img"),
        common(magic::FDINFO),
        &entries,
    )
}
