//! Fd tables dumped on a thread of their own.
//!
//! Dumping an fd table is /proc reads, pidfd_getfd and kcmp: no ptrace, so
//! it needs no tracer thread. The dumper's own thread spends much of each
//! task waiting for it to run injected syscalls; the fd tables (most of a
//! many-fd tree's CPU time) are dumped meanwhile on the other core. Both
//! threads share the [`FileTable`] behind a mutex, taken per fd once its
//! /proc entries are read and it is stolen, so file mappings, cwd and exe
//! of the task being dumped are not held up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use stasis_proto::image::magic;

use super::FileTable;
use crate::error::Result;
use crate::images::common;

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
            let g = super::gather(pid, fd, link)?;
            entries.push(lock(files).dump_fd(g)?);
        }
        let dir = lock(files).dir;
        dir.write_all(
            &format!("fdinfo-{files_id}.img"),
            common(magic::FDINFO),
            &entries,
        )?;
    }
    Ok(())
}
