//! signalfd: the set of signals it accepts (fdinfo `sigmask`) and its flags,
//! as CRIU's `signalfd_entry`. Pending signals themselves belong to the task
//! and come back with it; the new signalfd reads them again.

use std::os::fd::OwnedFd;

use stasis_proto::criu::{FdTypes, FileEntry, FownEntry, SignalfdEntry};

use super::FdCtx;
use crate::error::Result;
use crate::proc::FdinfoKind;
use crate::sys::fdobj;

pub fn dump_fd(cx: &FdCtx<'_>) -> Result<FileEntry> {
    let FdinfoKind::Signalfd { sigmask } = cx.info.kind else {
        return Err(cx.err("signalfd without sigmask in its fdinfo"));
    };
    Ok(FileEntry {
        r#type: FdTypes::Signalfd as i32,
        id: cx.id,
        sgfd: Some(Box::new(SignalfdEntry {
            id: cx.id,
            flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
            fown: FownEntry::default(),
            sigmask,
        })),
        ..Default::default()
    })
}

pub fn open(e: &SignalfdEntry) -> std::result::Result<OwnedFd, String> {
    let mut fl = libc::SFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        fl |= libc::SFD_NONBLOCK;
    }
    let fd = fdobj::signalfd(e.sigmask, fl)
        .map_err(|err| format!("signalfd (mask {:#x}): {err}", e.sigmask))?;
    if e.flags & libc::O_ASYNC as u32 != 0 {
        let cur = fdobj::get_fl(std::os::fd::AsFd::as_fd(&fd)).unwrap_or(0);
        fdobj::set_fl(std::os::fd::AsFd::as_fd(&fd), cur | libc::O_ASYNC)
            .map_err(|err| format!("signalfd: set O_ASYNC: {err}"))?;
    }
    Ok(fd)
}
