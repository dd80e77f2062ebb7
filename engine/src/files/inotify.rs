//! inotify instances: saved with every watch (wd, mask, ignored mask, and
//! the watched inode as a file handle), as CRIU stores them in files.img
//! (`inotify_file_entry` with its `wd` list).
//!
//! The watched object is found again by its file handle (fdinfo prints it):
//! `open_by_handle_at` with an fd on a mount of the same filesystem gives an
//! O_PATH fd, and `/proc/self/fd/N` of that fd is the path the watch is added
//! on. Watches are added in wd order after `INOTIFY_IOC_SETNEXTWD`, so every
//! wd comes back equal; a kernel without the ioctl gets the older scheme of
//! adding and removing watches until the counter reaches the wanted wd.
//! Events queued at dump time are not saved (as in CRIU).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use stasis_proto::criu::{
    FdTypes, FhEntry, FileEntry, FownEntry, InotifyFileEntry, InotifyWdEntry,
};
use tracing::debug;

use super::{FdCtx, FileTable};
use crate::error::Result;
use crate::proc::{self, FdinfoKind, FileHandle, InotifyWatch};
use crate::sys::notify;

/// CRIU's `fh_entry` holds the handle as at least 16 u64 words.
const FH_WORDS: usize = 16;

/// Pack handle bytes into the image's u64 words (native byte order, zero
/// padded to 16 words, as CRIU does).
pub fn fh_entry(h: &FileHandle) -> FhEntry {
    let mut words = vec![0u64; FH_WORDS.max(h.bytes.len().div_ceil(8))];
    for (i, b) in h.bytes.iter().enumerate() {
        words[i / 8] |= (*b as u64) << (8 * (i % 8));
    }
    FhEntry {
        bytes: h.bytes.len() as u32,
        r#type: h.handle_type as u32,
        handle: words,
        path: None,
        mnt_id: None,
    }
}

/// The handle bytes of an image `fh_entry`.
pub fn fh_bytes(f: &FhEntry) -> std::result::Result<Vec<u8>, String> {
    let n = f.bytes as usize;
    if n > notify::MAX_HANDLE_SZ || n > f.handle.len() * 8 {
        return Err(format!("file handle of {n} bytes is malformed"));
    }
    Ok((0..n)
        .map(|i| (f.handle[i / 8] >> (8 * (i % 8))) as u8)
        .collect())
}

/// Mount points (in our mount namespace) of the filesystem with kernel
/// device number `sdev` (major << 20 | minor).
fn mounts_of(sdev: u32) -> std::result::Result<Vec<PathBuf>, String> {
    let (maj, min) = proc::kernel_dev_split(sdev);
    let mi = proc::read_mountinfo(std::process::id() as i32).map_err(|e| e.to_string())?;
    Ok(mi
        .into_iter()
        .filter(|m| m.major == maj && m.minor == min)
        .map(|m| PathBuf::from(m.mount_point))
        .collect())
}

/// Reopen the object of a file handle (O_PATH) through any mount of its
/// filesystem. Needs CAP_DAC_READ_SEARCH.
pub fn open_handle(
    sdev: u32,
    handle_type: i32,
    bytes: &[u8],
) -> std::result::Result<OwnedFd, String> {
    let (maj, min) = proc::kernel_dev_split(sdev);
    let mounts = mounts_of(sdev)?;
    if mounts.is_empty() {
        return Err(format!("no mount of device {maj}:{min}"));
    }
    let mut last = None;
    for m in &mounts {
        let Ok(mfd) = std::fs::File::open(m) else {
            continue;
        };
        match notify::open_by_handle_at(mfd.as_fd(), handle_type, bytes, libc::O_PATH) {
            Ok(fd) => return Ok(fd),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.raw_os_error() == Some(libc::ESTALE) => {
            format!("the inode on {maj}:{min} no longer exists")
        }
        Some(e) => format!("open_by_handle_at on {maj}:{min}: {e}"),
        None => format!("cannot open any mount of {maj}:{min}"),
    })
}

/// The path of an object reopened by its handle, for `fh_entry.path`:
/// CRIU's restore opens watched objects by that path (it fails with
/// "Unable to open (null)" without it). None for deleted objects.
pub fn handle_path(fd: &OwnedFd) -> Option<String> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
    let s = link.to_str()?;
    (s.starts_with('/') && !s.ends_with(" (deleted)")).then(|| s.to_string())
}

fn wd_entry(id: u32, w: &InotifyWatch, fh: &FileHandle) -> InotifyWdEntry {
    InotifyWdEntry {
        id,
        i_ino: w.ino,
        mask: w.mask,
        ignored_mask: w.ignored_mask,
        s_dev: w.sdev,
        wd: w.wd as u32,
        f_handle: fh_entry(fh),
    }
}

pub fn dump_fd(_t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    let watches: &[InotifyWatch] = match &cx.info.kind {
        FdinfoKind::Inotify(v) => v,
        FdinfoKind::Plain => &[],
        other => return Err(cx.err(format!("inotify with unexpected fdinfo ({other:?})"))),
    };
    let mut wds = Vec::with_capacity(watches.len());
    for w in watches {
        let fh = w.fhandle.as_ref().ok_or_else(|| {
            cx.err(format!(
                "inotify watch {} on inode {:#x}: its filesystem gives no file handle",
                w.wd, w.ino
            ))
        })?;
        // The handle must lead back to the inode, or restore could not add
        // the watch: check now (a watched file may have been deleted).
        let obj = open_handle(w.sdev, fh.handle_type, &fh.bytes).map_err(|e| {
            cx.err(format!(
                "inotify watch {} on inode {:#x}: cannot reopen the watched object: {e}",
                w.wd, w.ino
            ))
        })?;
        let mut wd = wd_entry(cx.id, w, fh);
        wd.f_handle.path = handle_path(&obj);
        wds.push(wd);
    }
    debug!(pid = cx.pid, fd = cx.fd, watches = wds.len(), "inotify");
    Ok(FileEntry {
        r#type: FdTypes::Inotify as i32,
        id: cx.id,
        ify: Some(Box::new(InotifyFileEntry {
            id: cx.id,
            flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
            fown: FownEntry::default(),
            wd: wds,
        })),
        ..Default::default()
    })
}

/// Add watch `want` on `path`, making the kernel hand out exactly that wd.
fn add_watch_as(fd: i32, path: &Path, mask: u32, want: i32) -> std::result::Result<(), String> {
    let ioctl_ok = match notify::inotify_set_next_wd(fd, want) {
        Ok(()) => true,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => false,
        Err(e) => return Err(format!("INOTIFY_IOC_SETNEXTWD {want}: {e}")),
    };
    loop {
        let wd = notify::inotify_add_watch(fd, path, mask)
            .map_err(|e| format!("inotify_add_watch (wd {want}): {e}"))?;
        if wd == want {
            return Ok(());
        }
        // Without the ioctl wds come in increasing order: burn the ones
        // below the wanted number (their IN_IGNORED events are drained).
        if ioctl_ok || wd > want {
            let _ = notify::inotify_rm_watch(fd, wd);
            return Err(format!("the kernel gave wd {wd} instead of {want}"));
        }
        notify::inotify_rm_watch(fd, wd).map_err(|e| format!("inotify_rm_watch {wd}: {e}"))?;
    }
}

/// Recreate an inotify instance with every watch at its wd.
pub fn open(e: &InotifyFileEntry) -> std::result::Result<OwnedFd, String> {
    let ino = notify::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC)
        .map_err(|e| format!("inotify_init1: {e}"))?;
    let fd = ino.as_raw_fd();
    let mut wds: Vec<&InotifyWdEntry> = e.wd.iter().collect();
    wds.sort_by_key(|w| w.wd);
    for w in wds {
        let bytes = fh_bytes(&w.f_handle)?;
        let what = || format!("inotify watch {} on inode {:#x}", w.wd, w.i_ino);
        let target = open_handle(w.s_dev, w.f_handle.r#type as i32, &bytes)
            .map_err(|err| format!("{}: {err}", what()))?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
        add_watch_as(fd, &path, w.mask, w.wd as i32).map_err(|err| format!("{}: {err}", what()))?;
    }
    // Nothing may be queued but what adding the watches caused.
    notify::drain(fd).map_err(|err| format!("drain inotify: {err}"))?;
    if e.flags as i32 & libc::O_NONBLOCK == 0 {
        notify::set_status_flags(fd, 0).map_err(|err| format!("inotify flags: {err}"))?;
    }
    Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_words_round_trip() {
        let h = FileHandle {
            handle_type: 1,
            bytes: vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0, 0x11, 0x22],
        };
        let e = fh_entry(&h);
        assert_eq!(e.handle.len(), 16);
        assert_eq!(e.handle[0], 0x03c4a7);
        assert_eq!(e.handle[1], 0x2211);
        assert_eq!(e.bytes, 10);
        assert_eq!(fh_bytes(&e).unwrap(), h.bytes);
        let mut bad = e.clone();
        bad.bytes = 200;
        assert!(fh_bytes(&bad).is_err());
    }

    #[test]
    fn handle_path_names_live_objects_only() {
        let dir = std::env::temp_dir().join(format!("stasis-hp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x");
        std::fs::write(&f, b"x").unwrap();
        let fd: OwnedFd = std::fs::File::open(&f).unwrap().into();
        assert_eq!(handle_path(&fd).as_deref(), f.to_str());
        std::fs::remove_file(&f).unwrap();
        assert_eq!(handle_path(&fd), None);
        std::fs::remove_dir(&dir).unwrap();
    }
}
