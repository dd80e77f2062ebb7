//! fanotify groups: saved with their init flags and every inode or mount
//! mark, as CRIU stores them in files.img (`fanotify_file_entry` with its
//! `mark` list).
//!
//! Inode marks are found again through their file handle, like inotify
//! watches ([`super::inotify::open_handle`]); mount marks through the mount
//! id (same mount namespace), falling back to the mount point saved at dump.
//! Filesystem marks (FAN_MARK_FILESYSTEM) have no place in CRIU's image and
//! are refused. Queued events are not saved (as in CRIU).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use stasis_proto::criu::{
    FanotifyFileEntry, FanotifyInodeMarkEntry, FanotifyMarkEntry, FanotifyMountMarkEntry, FdTypes,
    FileEntry, FownEntry, MarkType,
};
use tracing::debug;

use super::inotify::{fh_bytes, fh_entry, handle_path, open_handle};
use super::{FdCtx, FileTable};
use crate::error::Result;
use crate::proc::{self, FanotifyTarget, FdinfoKind};
use crate::sys::notify;

const FAN_MARK_ADD: u32 = libc::FAN_MARK_ADD;
const FAN_MARK_MOUNT: u32 = libc::FAN_MARK_MOUNT;
const FAN_MARK_IGNORED_MASK: u32 = libc::FAN_MARK_IGNORED_MASK;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = libc::FAN_MARK_IGNORED_SURV_MODIFY;
const FAN_MARK_EVICTABLE: u32 = libc::FAN_MARK_EVICTABLE;
const FAN_MARK_IGNORE: u32 = libc::FAN_MARK_IGNORE;

/// Mount point of mount `mnt_id` in the mount namespace of `pid`.
fn mount_point(pid: i32, mnt_id: u32) -> Option<String> {
    proc::read_mountinfo(pid)
        .ok()?
        .into_iter()
        .find(|m| m.mount_id == mnt_id)
        .map(|m| m.mount_point)
}

pub fn dump_fd(_t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    let FdinfoKind::Fanotify(info) = &cx.info.kind else {
        return Err(cx.err(format!(
            "fanotify with unexpected fdinfo ({:?})",
            cx.info.kind
        )));
    };
    let mut marks = Vec::with_capacity(info.marks.len());
    for m in &info.marks {
        let mut e = FanotifyMarkEntry {
            id: cx.id,
            r#type: MarkType::Inode as i32,
            mflags: m.mflags,
            mask: m.mask,
            ignored_mask: m.ignored_mask,
            s_dev: 0,
            ie: None,
            me: None,
        };
        match &m.target {
            FanotifyTarget::Inode { ino, sdev, fhandle } => {
                let fh = fhandle.as_ref().ok_or_else(|| {
                    cx.err(format!(
                        "fanotify mark on inode {ino:#x}: its filesystem gives no file handle"
                    ))
                })?;
                let obj = open_handle(*sdev, fh.handle_type, &fh.bytes).map_err(|e| {
                    cx.err(format!(
                        "fanotify mark on inode {ino:#x}: cannot reopen the marked object: {e}"
                    ))
                })?;
                let mut f_handle = fh_entry(fh);
                f_handle.path = handle_path(&obj);
                e.s_dev = *sdev;
                e.ie = Some(FanotifyInodeMarkEntry {
                    i_ino: *ino,
                    f_handle,
                });
            }
            FanotifyTarget::Mount { mnt_id } => {
                let path = mount_point(cx.pid, *mnt_id).ok_or_else(|| {
                    cx.err(format!("fanotify mark on mount {mnt_id}: no such mount"))
                })?;
                e.r#type = MarkType::Mount as i32;
                e.me = Some(FanotifyMountMarkEntry {
                    mnt_id: *mnt_id,
                    path: Some(path),
                });
            }
            FanotifyTarget::Filesystem { sdev } => {
                let (a, b) = proc::kernel_dev_split(*sdev);
                return Err(cx.err(format!(
                    "fanotify filesystem mark on {a}:{b}: not supported (no CRIU image form)"
                )));
            }
        }
        marks.push(e);
    }
    debug!(pid = cx.pid, fd = cx.fd, marks = marks.len(), "fanotify");
    Ok(FileEntry {
        r#type: FdTypes::Fanotify as i32,
        id: cx.id,
        ffy: Some(Box::new(FanotifyFileEntry {
            id: cx.id,
            flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
            fown: FownEntry::default(),
            faflags: info.flags,
            evflags: info.event_flags,
            mark: marks,
        })),
        ..Default::default()
    })
}

/// Add one saved mark (event mask, then ignore mask) on `path`.
fn add_mark(fd: i32, m: &FanotifyMarkEntry, kind: u32, path: &Path) -> std::io::Result<()> {
    let evictable = m.mflags & FAN_MARK_EVICTABLE;
    if m.mask != 0 {
        notify::fanotify_mark(fd, FAN_MARK_ADD | kind | evictable, m.mask as u64, path)?;
    }
    if m.ignored_mask != 0 {
        let how = if m.mflags & FAN_MARK_IGNORE != 0 {
            FAN_MARK_IGNORE
        } else {
            FAN_MARK_IGNORED_MASK
        };
        let flags =
            FAN_MARK_ADD | kind | evictable | how | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY);
        notify::fanotify_mark(fd, flags, m.ignored_mask as u64, path)?;
    }
    Ok(())
}

/// Recreate a fanotify group with its marks. Needs CAP_SYS_ADMIN.
pub fn open(e: &FanotifyFileEntry) -> std::result::Result<OwnedFd, String> {
    let g = notify::fanotify_init(e.faflags, e.evflags)
        .map_err(|err| format!("fanotify_init({:#x}, {:#x}): {err}", e.faflags, e.evflags))?;
    let fd = g.as_raw_fd();
    for m in &e.mark {
        if m.r#type == MarkType::Mount as i32 {
            let me =
                m.me.as_ref()
                    .ok_or("fanotify mount mark without its mount")?;
            let path = mount_point(std::process::id() as i32, me.mnt_id)
                .or_else(|| me.path.clone())
                .ok_or_else(|| format!("fanotify mark on mount {}: no such mount", me.mnt_id))?;
            add_mark(fd, m, FAN_MARK_MOUNT, Path::new(&path))
                .map_err(|err| format!("fanotify mark on mount {path}: {err}"))?;
        } else {
            let ie =
                m.ie.as_ref()
                    .ok_or("fanotify inode mark without its inode")?;
            let what = || format!("fanotify mark on inode {:#x}", ie.i_ino);
            let bytes = fh_bytes(&ie.f_handle)?;
            let target = open_handle(m.s_dev, ie.f_handle.r#type as i32, &bytes)
                .map_err(|err| format!("{}: {err}", what()))?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
            add_mark(fd, m, 0, &path).map_err(|err| format!("{}: {err}", what()))?;
        }
    }
    let want_nb = e.flags as i32 & libc::O_NONBLOCK != 0;
    if want_nb != (e.faflags & libc::FAN_NONBLOCK != 0) {
        let fl = if want_nb { libc::O_NONBLOCK } else { 0 };
        notify::set_status_flags(fd, fl).map_err(|err| format!("fanotify flags: {err}"))?;
    }
    Ok(g)
}
