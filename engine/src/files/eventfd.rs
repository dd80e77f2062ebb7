//! eventfd: counter and flags.
//!
//! The counter comes from fdinfo (`eventfd-count`); the eventfd is never
//! read, since a read would consume the target's count. The image is CRIU's
//! `eventfd_file_entry` {id, flags, fown, counter}. CRIU does not keep the
//! semaphore mode (`eventfd-semaphore: 1` in fdinfo, not a file flag); we
//! keep it as `EFD_SEMAPHORE` (bit 0) in `flags`: an eventfd is always
//! O_RDWR, so that bit (O_WRONLY) is otherwise never set, and CRIU's restore
//! (F_SETFL) ignores access-mode bits.

use std::os::fd::{AsFd, OwnedFd};

use stasis_proto::criu::{EventfdFileEntry, FdTypes, FileEntry, FownEntry};

use super::FdCtx;
use crate::error::Result;
use crate::proc::FdinfoKind;
use crate::sys::fdobj;

/// Where the semaphore mode is kept in `eventfd_file_entry.flags`.
pub const EFD_SEMAPHORE_FLAG: u32 = libc::EFD_SEMAPHORE as u32;

pub fn dump_fd(cx: &FdCtx<'_>) -> Result<FileEntry> {
    let FdinfoKind::Eventfd(e) = &cx.info.kind else {
        return Err(cx.err("eventfd without eventfd-count in its fdinfo"));
    };
    let mut flags = cx.info.flags & !(libc::O_CLOEXEC as u32);
    if e.semaphore {
        flags |= EFD_SEMAPHORE_FLAG;
    }
    Ok(FileEntry {
        r#type: FdTypes::Eventfd as i32,
        id: cx.id,
        efd: Some(Box::new(EventfdFileEntry {
            id: cx.id,
            flags,
            fown: FownEntry::default(),
            counter: e.count,
        })),
        ..Default::default()
    })
}

pub fn open(e: &EventfdFileEntry) -> std::result::Result<OwnedFd, String> {
    let mut fl = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK;
    if e.flags & EFD_SEMAPHORE_FLAG != 0 {
        fl |= libc::EFD_SEMAPHORE;
    }
    let fd = fdobj::eventfd(fl).map_err(|err| format!("eventfd: {err}"))?;
    if e.counter != 0 {
        nix::unistd::write(&fd, &e.counter.to_ne_bytes())
            .map_err(|err| format!("eventfd: set the counter to {}: {err}", e.counter))?;
    }
    let keep = libc::O_NONBLOCK | libc::O_ASYNC;
    fdobj::set_fl(fd.as_fd(), e.flags as i32 & keep)
        .map_err(|err| format!("eventfd: set flags {:#o}: {err}", e.flags))?;
    Ok(fd)
}
