//! epoll instances: saved with every registered target (fd number, event
//! mask, user data), as CRIU stores them in files.img (`eventpoll_file_entry`
//! with its `tfd` list).
//!
//! Dump reads the `tfd:` lines of the epoll's fdinfo and checks with
//! kcmp(KCMP_EPOLL_TFD) that the file registered under each fd number is
//! still the one at that number in the dumped task (an fd may have been
//! closed, or closed and reused, after registration). A target that moved to
//! another fd number of the task is recorded under that number.
//!
//! Restore creates an empty instance with the group's other files; the
//! targets are added with `EPOLL_CTL_ADD` once the whole fd table of the
//! task that was dumped with it is in place ([`after_fds`]), so nested epolls
//! and targets of every kind are simply fds by then. The epoll file is shared
//! by every holder, so registering it once is enough.

use std::os::fd::OwnedFd;

use stasis_proto::criu::{EventpollFileEntry, EventpollTfdEntry, FdTypes, FileEntry, FownEntry};
use tracing::{debug, warn};

use super::{FdCtx, FileTable};
use crate::error::Result;
use crate::proc::{self, EpollTarget, FdinfoKind};
use crate::restore::plan::Plan;
use crate::sys::{kcmp, notify};

/// The fd of `pid` that holds the file registered as the `toff`-th target
/// numbered `t.tfd` in epoll `epfd` of the same task.
fn locate_target(pid: i32, epfd: i32, t: &EpollTarget, toff: u32) -> Result<Option<i32>> {
    let same = |fd: i32| kcmp::kcmp_epoll_tfd(pid, fd, pid, epfd, t.tfd, toff).unwrap_or(false);
    if same(t.tfd) {
        return Ok(Some(t.tfd));
    }
    for fd in proc::read_fd_numbers(pid)? {
        if fd != t.tfd && same(fd) {
            return Ok(Some(fd));
        }
    }
    Ok(None)
}

pub fn dump_fd(_t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    let targets: &[EpollTarget] = match &cx.info.kind {
        FdinfoKind::Epoll(v) => v,
        // An epoll with no target has no tfd line.
        FdinfoKind::Plain => &[],
        other => return Err(cx.err(format!("epoll with unexpected fdinfo ({other:?})"))),
    };
    let mut tfds = Vec::with_capacity(targets.len());
    for (i, t) in targets.iter().enumerate() {
        // Registrations under the same fd number are told apart by their
        // rank among the lines with that number (the kernel's order).
        let toff = targets[..i].iter().filter(|x| x.tfd == t.tfd).count() as u32;
        let fd = locate_target(cx.pid, cx.fd, t, toff)?.ok_or_else(|| {
            cx.err(format!(
                "epoll target fd {} (inode {:#x}) is no longer open in this process: \
                 the watched file cannot be found",
                t.tfd, t.ino
            ))
        })?;
        if fd != t.tfd {
            warn!(
                pid = cx.pid,
                epfd = cx.fd,
                "epoll target registered as fd {} now lives at fd {fd}",
                t.tfd
            );
        }
        // Two registrations of one file that now both resolve to one fd
        // cannot be recreated (the kernel keys them by file and fd).
        if tfds.iter().any(|e: &EventpollTfdEntry| e.tfd == fd as u32) {
            return Err(cx.err(format!(
                "two epoll registrations of one file both resolve to fd {fd}"
            )));
        }
        tfds.push(EventpollTfdEntry {
            id: cx.id,
            tfd: fd as u32,
            events: t.events,
            data: t.data,
            dev: Some(t.sdev),
            inode: Some(t.ino),
            pos: Some(t.pos.max(0) as u64),
        });
    }
    debug!(pid = cx.pid, fd = cx.fd, targets = tfds.len(), "epoll");
    Ok(FileEntry {
        r#type: FdTypes::Eventpoll as i32,
        id: cx.id,
        epfd: Some(Box::new(EventpollFileEntry {
            id: cx.id,
            flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
            fown: FownEntry::default(),
            tfd: tfds,
        })),
        ..Default::default()
    })
}

/// A new, empty epoll instance (close-on-exec until it is put in place).
pub fn open(e: &EventpollFileEntry) -> std::io::Result<OwnedFd> {
    let fd = notify::epoll_create1(libc::EPOLL_CLOEXEC)?;
    let fl = e.flags as i32 & libc::O_NONBLOCK;
    if fl != 0 {
        notify::set_status_flags(std::os::fd::AsRawFd::as_raw_fd(&fd), fl)?;
    }
    Ok(fd)
}

/// Register the targets of every epoll that task `idx` restores: those whose
/// first holder (in tree order, the task the dump took it from) is `idx`.
/// Runs in the task's stub once its fd table is complete.
pub fn after_fds(plan: &Plan, idx: usize) -> std::result::Result<(), String> {
    let t = &plan.tasks[idx];
    let mut done = Vec::new();
    for fi in &t.fds {
        let Some(ep) = plan.files.get(&fi.id).and_then(|f| f.epfd.as_ref()) else {
            continue;
        };
        if done.contains(&fi.id) || first_holder(plan, fi.id) != Some(idx) {
            continue;
        }
        done.push(fi.id);
        for tfd in &ep.tfd {
            notify::epoll_add(fi.fd as i32, tfd.tfd as i32, tfd.events, tfd.data).map_err(|e| {
                format!(
                    "epoll fd {}: add target fd {} (events {:#x}): {e}",
                    fi.fd, tfd.tfd, tfd.events
                )
            })?;
        }
    }
    Ok(())
}

/// Index of the first live task (tree order) holding file `id`.
fn first_holder(plan: &Plan, id: u32) -> Option<usize> {
    plan.tasks
        .iter()
        .position(|t| t.alive() && t.fds.iter().any(|f| f.id == id))
}

/// Every target fd of every epoll must be in the fd table of the task that
/// registers it: checked while planning, before anything is created.
pub fn check_plan(plan: &Plan) -> std::result::Result<(), String> {
    for (id, f) in &plan.files {
        let Some(ep) = f.epfd.as_ref() else { continue };
        let Some(i) = first_holder(plan, *id) else {
            continue;
        };
        let t = &plan.tasks[i];
        for tfd in &ep.tfd {
            if !t.fds.iter().any(|x| x.fd == tfd.tfd) {
                return Err(format!(
                    "pid {}: epoll file {id} watches fd {} which is not in its fd table",
                    t.pid, tfd.tfd
                ));
            }
        }
    }
    Ok(())
}
