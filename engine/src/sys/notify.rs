//! Event-notification files and file locks: epoll, inotify, fanotify, file
//! handles (`open_by_handle_at`), flock and fcntl locks.
//!
//! Restore rebuilds these objects in the restore stubs (plain Rust in a
//! forked copy of the restorer), so everything here acts on the caller's
//! own fds.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{cvt, cvt_retry};

/// `ioctl(inotify_fd, INOTIFY_IOC_SETNEXTWD, wd)` = `_IOW('I', 0, __s32)`.
/// Needs CONFIG_CHECKPOINT_RESTORE.
pub const INOTIFY_IOC_SETNEXTWD: u64 = 0x4004_4900;

/// `MAX_HANDLE_SZ` of the kernel.
pub const MAX_HANDLE_SZ: usize = 128;

fn new_fd(r: libc::c_long) -> io::Result<OwnedFd> {
    let fd = cvt(r)?;
    // SAFETY: the kernel just returned this new fd; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// `epoll_create1(flags)`.
pub fn epoll_create1(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer argument.
    new_fd(unsafe { libc::epoll_create1(flags) } as libc::c_long)
}

/// `epoll_ctl(epfd, EPOLL_CTL_ADD, fd, {events, data})`.
pub fn epoll_add(epfd: RawFd, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the duration of the call;
    // the kernel only reads it for EPOLL_CTL_ADD.
    cvt(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } as libc::c_long)
        .map(drop)
}

/// `inotify_init1(flags)`.
pub fn inotify_init1(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer argument.
    new_fd(unsafe { libc::inotify_init1(flags) } as libc::c_long)
}

/// `inotify_add_watch(fd, path, mask)`: the watch descriptor.
pub fn inotify_add_watch(fd: RawFd, path: &Path, mask: u32) -> io::Result<i32> {
    let p = cpath(path)?;
    // SAFETY: `p` is a valid NUL-terminated string alive for the call.
    let wd = cvt(unsafe { libc::inotify_add_watch(fd, p.as_ptr(), mask) } as libc::c_long)?;
    Ok(wd as i32)
}

/// `inotify_rm_watch(fd, wd)`.
pub fn inotify_rm_watch(fd: RawFd, wd: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::inotify_rm_watch(fd, wd) } as libc::c_long).map(drop)
}

/// Make `wd` the next watch descriptor the inotify instance hands out.
pub fn inotify_set_next_wd(fd: RawFd, wd: i32) -> io::Result<()> {
    // SAFETY: INOTIFY_IOC_SETNEXTWD takes its argument by value, not as a
    // pointer; the kernel dereferences nothing of ours.
    cvt(unsafe { libc::ioctl(fd, INOTIFY_IOC_SETNEXTWD as _, wd as libc::c_ulong) } as libc::c_long)
        .map(drop)
}

/// Non-blocking read of whatever is queued on `fd` (an inotify or
/// fanotify instance opened with O_NONBLOCK), thrown away. Returns the
/// number of bytes discarded.
pub fn drain(fd: RawFd) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        // SAFETY: `buf` is a valid writable buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(total),
                Some(libc::EINTR) => continue,
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Ok(total);
        }
        total += n as usize;
    }
}

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct FileHandleBuf {
    handle_bytes: u32,
    handle_type: i32,
    f_handle: [u8; MAX_HANDLE_SZ],
}

/// `open_by_handle_at(mount_fd, {bytes, type, handle}, flags)`. Needs
/// CAP_DAC_READ_SEARCH; `mount_fd` is any fd on the handle's filesystem.
pub fn open_by_handle_at(
    mount_fd: BorrowedFd<'_>,
    handle_type: i32,
    handle: &[u8],
    flags: i32,
) -> io::Result<OwnedFd> {
    if handle.len() > MAX_HANDLE_SZ {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut h = FileHandleBuf {
        handle_bytes: handle.len() as u32,
        handle_type,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    h.f_handle[..handle.len()].copy_from_slice(handle);
    // SAFETY: `h` is a valid struct file_handle whose handle_bytes does not
    // exceed its buffer; the kernel only reads it.
    new_fd(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd() as libc::c_long,
            &h as *const FileHandleBuf,
            (flags | libc::O_CLOEXEC) as libc::c_long,
        )
    })
}

/// `name_to_handle_at(AT_FDCWD, path, ...)`: (handle type, handle bytes,
/// mount id) of `path` (symlinks followed).
pub fn name_to_handle_at(path: &Path) -> io::Result<(i32, Vec<u8>, i32)> {
    let p = cpath(path)?;
    let mut h = FileHandleBuf {
        handle_bytes: MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; MAX_HANDLE_SZ],
    };
    let mut mnt: libc::c_int = 0;
    // SAFETY: `p` is NUL-terminated, `h` has room for MAX_HANDLE_SZ bytes
    // as announced in handle_bytes, `mnt` is a valid out-pointer.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD as libc::c_long,
            p.as_ptr(),
            &mut h as *mut FileHandleBuf,
            &mut mnt as *mut libc::c_int,
            libc::AT_SYMLINK_FOLLOW as libc::c_long,
        )
    })?;
    let n = (h.handle_bytes as usize).min(MAX_HANDLE_SZ);
    Ok((h.handle_type, h.f_handle[..n].to_vec(), mnt))
}

/// `fanotify_init(flags, event_f_flags)`. Needs CAP_SYS_ADMIN.
pub fn fanotify_init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    new_fd(unsafe { libc::syscall(libc::SYS_fanotify_init, flags, event_f_flags) })
}

/// `fanotify_mark(fd, flags, mask, AT_FDCWD, path)`.
pub fn fanotify_mark(fd: RawFd, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: `p` is a valid NUL-terminated string alive for the call; the
    // rest are integers.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_fanotify_mark,
            fd as libc::c_long,
            flags as libc::c_long,
            mask,
            libc::AT_FDCWD as libc::c_long,
            p.as_ptr(),
        )
    })
    .map(drop)
}

/// `flock(fd, op)` (LOCK_SH / LOCK_EX / LOCK_UN, optionally | LOCK_NB).
pub fn flock(fd: RawFd, op: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt_retry(|| unsafe { libc::flock(fd, op) } as libc::c_long).map(drop)
}

/// A `struct flock` for F_SETLK-style calls (whence SEEK_SET).
pub fn flock_struct(l_type: i16, start: i64, len: i64, pid: i32) -> libc::flock {
    libc::flock {
        l_type,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: pid,
    }
}

/// `fcntl(fd, cmd, &flock)` for F_SETLK, F_SETLKW, F_GETLK and their OFD
/// forms. For the GET commands `fl` is updated in place.
pub fn fcntl_lock(fd: RawFd, cmd: i32, fl: &mut libc::flock) -> io::Result<()> {
    // SAFETY: `fl` is a valid, exclusively borrowed struct flock for the
    // duration of the call.
    cvt_retry(|| unsafe { libc::fcntl(fd, cmd, fl as *mut libc::flock) } as libc::c_long).map(drop)
}

/// `fcntl(fd, F_SETFL, flags)`: the file status flags (O_NONBLOCK, O_APPEND,
/// O_ASYNC, O_DIRECT, O_NOATIME).
pub fn set_status_flags(fd: RawFd, flags: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } as libc::c_long).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::require_root;
    use std::os::fd::AsFd;

    #[test]
    fn epoll_and_inotify_basics() {
        let ep = epoll_create1(libc::EPOLL_CLOEXEC).unwrap();
        let inner = epoll_create1(libc::EPOLL_CLOEXEC).unwrap();
        epoll_add(ep.as_raw_fd(), inner.as_raw_fd(), libc::EPOLLIN as u32, 7).unwrap();
        let e = epoll_add(ep.as_raw_fd(), inner.as_raw_fd(), libc::EPOLLIN as u32, 7).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));

        let dir = std::env::temp_dir();
        let ino = inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC).unwrap();
        let fd = ino.as_raw_fd();
        inotify_set_next_wd(fd, 5).unwrap();
        let wd = inotify_add_watch(fd, &dir, libc::IN_CREATE).unwrap();
        assert_eq!(wd, 5);
        inotify_rm_watch(fd, wd).unwrap();
        assert!(drain(fd).unwrap() > 0, "IN_IGNORED expected");
        assert_eq!(drain(fd).unwrap(), 0);
    }

    #[test]
    fn handles_round_trip() {
        require_root!();
        let dir = std::env::temp_dir();
        let (ty, h, _) = match name_to_handle_at(&dir) {
            Ok(x) => x,
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return,
            Err(e) => panic!("name_to_handle_at: {e}"),
        };
        let m = std::fs::File::open(&dir).unwrap();
        let fd = open_by_handle_at(m.as_fd(), ty, &h, libc::O_PATH).unwrap();
        let a = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        let b = std::fs::metadata(&dir).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((a.dev(), a.ino()), (b.dev(), b.ino()));
    }

    #[test]
    fn ofd_and_flock() {
        let p = std::env::temp_dir().join(format!("stasis-lock-{}", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        let g = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB).unwrap();
        let e = flock(g.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EWOULDBLOCK));
        let mut l = flock_struct(libc::F_WRLCK as i16, 0, 10, 0);
        fcntl_lock(f.as_raw_fd(), libc::F_OFD_SETLK, &mut l).unwrap();
        let mut l = flock_struct(libc::F_WRLCK as i16, 5, 1, 0);
        let e = fcntl_lock(g.as_raw_fd(), libc::F_OFD_SETLK, &mut l).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        let _ = std::fs::remove_file(&p);
    }
}
