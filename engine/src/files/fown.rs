//! The owner of an open file and the signal it sends (F_SETOWN_EX,
//! F_SETSIG, O_ASYNC: signal-driven I/O).
//!
//! Dump: `fown_entry` {uid, euid, signum, pid_type, pid} of the kinds that
//! carry one (regular files, pipes, unix sockets, terminals), read with F_GETOWN_EX,
//! F_GETOWNER_UIDS and F_GETSIG on a stolen duplicate (the owner belongs to
//! the open file description). `pid_type` is the F_OWNER_* type, as CRIU
//! stores it. O_ASYNC stays in the entry's `flags`.
//!
//! Restore: once a task's fd table is in place, the signal and owner are set
//! again (pids are kept, so the owner is the same number) and O_ASYNC is
//! switched on with F_SETFL, since open(2) ignores it. The owner's
//! credentials are those of the restorer (root), not the saved uid/euid.
//! Owners that are threads other than a leader, or processes outside the
//! tree, are not set back (they do not exist when the fd table is built).

use std::os::fd::{AsFd, BorrowedFd};

use stasis_proto::criu::{FileEntry, FownEntry};

use super::FdCtx;
use crate::error::Result;
use crate::sys::{fdctl, fdobj};

/// The owner and signal of the open file behind `fd`.
/// `userns`: the tree's own user namespace, in which the owner's uids are
/// saved.
pub fn read(
    fd: BorrowedFd<'_>,
    userns: Option<&crate::ns::user::UserNs>,
) -> std::io::Result<FownEntry> {
    let (ty, pid) = fdctl::get_owner(fd)?;
    let sig = fdctl::get_sig(fd)?;
    let mut e = FownEntry {
        signum: sig.max(0) as u32,
        ..Default::default()
    };
    if pid != 0 {
        let (uid, euid) = fdctl::get_owner_uids(fd)?;
        // As the tree sees them, in a user namespace of its own.
        e.uid = crate::ns::user::owner_to_tree(userns, uid, 0).0;
        e.euid = crate::ns::user::owner_to_tree(userns, euid, 0).0;
        e.pid_type = ty as u32;
        e.pid = pid as u32;
    }
    Ok(e)
}

/// The owner and signal of the fd being dumped.
pub fn of(cx: &FdCtx<'_>, userns: Option<&crate::ns::user::UserNs>) -> Result<FownEntry> {
    let r = match cx.obj {
        Some(o) => read(o.as_fd(), userns),
        None => read(cx.steal()?.as_fd(), userns),
    };
    r.map_err(|e| cx.err(format!("owner of {}: {e}", cx.link)))
}

/// The saved owner and status flags of a file entry, for the kinds that
/// have them.
fn saved<'a>(
    f: &'a FileEntry,
    files: &'a std::collections::HashMap<u32, FileEntry>,
) -> Option<(&'a FownEntry, u32)> {
    if let Some(e) = &f.reg {
        return Some((&e.fown, e.flags));
    }
    if let Some(e) = &f.pipe {
        return Some((&e.fown, e.flags));
    }
    if let Some(e) = &f.usk {
        return Some((&e.fown, e.flags));
    }
    if let Some(e) = &f.isk {
        return Some((&e.fown, e.flags));
    }
    if let Some(e) = &f.tty {
        return Some((&e.fown, e.flags));
    }
    if let Some(e) = &f.fifo {
        let r = files.get(&e.regf_id?)?.reg.as_ref()?;
        return Some((&r.fown, r.flags));
    }
    None
}

/// F_SETOWN_EX with the saved owner. A process of the tree may not be
/// forked yet (a sibling): wait for it a little. An owner that is not a
/// process of the tree (gone with the old tree, or a thread, created only
/// later by the restorer) is left unset.
fn set_owner(
    plan: &crate::restore::plan::Plan,
    b: BorrowedFd<'_>,
    own: &FownEntry,
) -> std::io::Result<()> {
    let pid = own.pid as i32;
    let ours = plan.tasks.iter().any(|t| t.pid == pid && t.alive());
    let mut tries = 0;
    loop {
        match fdctl::set_owner(b, own.pid_type as i32, pid) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                if !ours {
                    return Ok(());
                }
                if tries >= 200 {
                    return Err(e);
                }
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Set owners, signals and O_ASYNC on the fds of task `idx` (its fd table is
/// installed).
pub fn after_fds(plan: &crate::restore::plan::Plan, idx: usize) -> std::result::Result<(), String> {
    for fi in &plan.tasks[idx].fds {
        let Some(f) = plan.files.get(&fi.id) else {
            continue;
        };
        let Some((own, flags)) = saved(f, &plan.files) else {
            continue;
        };
        let fd = fi.fd as i32;
        let async_on = flags & libc::O_ASYNC as u32 != 0;
        if own.pid == 0 && own.signum == 0 && !async_on {
            continue;
        }
        fdctl::with_raw(fd, |b| -> std::result::Result<(), String> {
            if own.signum != 0 {
                fdctl::set_sig(b, own.signum as i32)
                    .map_err(|e| format!("fd {fd}: F_SETSIG {}: {e}", own.signum))?;
            }
            if own.pid != 0 {
                set_owner(plan, b, own).map_err(|e| {
                    format!("fd {fd}: F_SETOWN_EX {} {}: {e}", own.pid_type, own.pid)
                })?;
            }
            if async_on {
                let fl = fdobj::get_fl(b).map_err(|e| format!("fd {fd}: F_GETFL: {e}"))?;
                // F_SETFL calls the file's fasync hook only on a change.
                fdobj::set_fl(b, fl & !libc::O_ASYNC)
                    .and_then(|_| fdobj::set_fl(b, fl | libc::O_ASYNC))
                    .map_err(|e| format!("fd {fd}: set O_ASYNC: {e}"))?;
            }
            Ok(())
        })?;
    }
    Ok(())
}
