//! userfaultfd: constants, structs and thin ioctl wrappers.
//!
//! Used for dirty tracking (WP_ASYNC + PAGEMAP_SCAN, KERNEL-NOTES §5) and
//! lazy restore (MISSING mode, §6). The uffd may belong to another process's
//! mm (created there by injection, stolen with `pidfd_getfd`): every address
//! below is then an address in *that* mm, while `src` buffers of
//! [`copy`] are read from ours.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// API version for [`api`].
pub const UFFD_API: u64 = 0xAA;

/// `userfaultfd(2)` flag: only user-mode faults (do not use for restore:
/// kernel-mode faults, e.g. write(2) from a missing page, must be served).
pub const UFFD_USER_MODE_ONLY: i32 = 1;

// ioctl numbers.
pub const UFFDIO_API: u64 = 0xC018_AA3F;
pub const UFFDIO_REGISTER: u64 = 0xC020_AA00;
pub const UFFDIO_UNREGISTER: u64 = 0x8010_AA01;
pub const UFFDIO_WAKE: u64 = 0x8010_AA02;
pub const UFFDIO_COPY: u64 = 0xC028_AA03;
pub const UFFDIO_ZEROPAGE: u64 = 0xC020_AA04;
pub const UFFDIO_WRITEPROTECT: u64 = 0xC018_AA06;

// Features (UFFD_FEATURE_*).
pub const UFFD_FEATURE_PAGEFAULT_FLAG_WP: u64 = 1 << 0;
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
pub const UFFD_FEATURE_MISSING_HUGETLBFS: u64 = 1 << 4;
pub const UFFD_FEATURE_MISSING_SHMEM: u64 = 1 << 5;
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;
pub const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
pub const UFFD_FEATURE_MINOR_HUGETLBFS: u64 = 1 << 9;
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
pub const UFFD_FEATURE_EXACT_ADDRESS: u64 = 1 << 11;
pub const UFFD_FEATURE_WP_HUGETLBFS_SHMEM: u64 = 1 << 12;
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
pub const UFFD_FEATURE_POISON: u64 = 1 << 14;
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

// Modes.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;
pub const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;
pub const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;
pub const UFFDIO_WRITEPROTECT_MODE_DONTWAKE: u64 = 1 << 1;

/// `struct uffdio_api`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffdio_writeprotect`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct UffdioWriteprotect {
    pub range: UffdioRange,
    pub mode: u64,
}

/// `userfaultfd(flags)` in this process (`O_CLOEXEC`, `O_NONBLOCK`,
/// [`UFFD_USER_MODE_ONLY`]). Needs root or CAP_SYS_PTRACE here
/// (`vm.unprivileged_userfaultfd=0`).
pub fn userfaultfd(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer argument.
    let fd = super::cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, flags as libc::c_long) })?;
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Issues a uffd ioctl on `arg`.
///
/// # Safety
/// `T` must be the struct the kernel expects for `req`, and every pointer
/// inside it valid for what the kernel does with it.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, req: u64, arg: &mut T) -> io::Result<()> {
    // SAFETY: upheld by the caller; `arg` is a live, exclusive reference.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::c_ulong, arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `UFFDIO_API` handshake requesting `features`; returns what the kernel
/// granted (features and the bitmask of supported ioctls). Must be the
/// first ioctl on a new uffd, and only once.
pub fn api(uffd: impl AsFd, features: u64) -> io::Result<UffdioApi> {
    let mut a = UffdioApi {
        api: UFFD_API,
        features,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a uffdio_api; it holds no pointers.
    unsafe { ioctl(uffd.as_fd(), UFFDIO_API, &mut a)? };
    Ok(a)
}

/// `UFFDIO_REGISTER` of `[start, start+len)` (page aligned) with `mode`;
/// returns the ioctls available on the range.
pub fn register(uffd: impl AsFd, start: u64, len: u64, mode: u64) -> io::Result<u64> {
    let mut r = UffdioRegister {
        range: UffdioRange { start, len },
        mode,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes a uffdio_register; the range is an
    // address in the uffd's mm, checked by the kernel, not dereferenced here.
    unsafe { ioctl(uffd.as_fd(), UFFDIO_REGISTER, &mut r)? };
    Ok(r.ioctls)
}

/// `UFFDIO_UNREGISTER` of a range.
pub fn unregister(uffd: impl AsFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRange { start, len };
    // SAFETY: UFFDIO_UNREGISTER takes a uffdio_range.
    unsafe { ioctl(uffd.as_fd(), UFFDIO_UNREGISTER, &mut r) }
}

/// `UFFDIO_WAKE`: wakes threads faulting in the range.
pub fn wake(uffd: impl AsFd, start: u64, len: u64) -> io::Result<()> {
    let mut r = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE takes a uffdio_range.
    unsafe { ioctl(uffd.as_fd(), UFFDIO_WAKE, &mut r) }
}

/// `UFFDIO_COPY` of `src` (our memory) to `dst` in the uffd's mm, filling
/// missing pages. Returns bytes copied, which may be short (EAGAIN with
/// progress, e.g. when the mm changed); an error means nothing was copied.
/// EEXIST: a destination page was already populated.
pub fn copy(uffd: impl AsFd, dst: u64, src: &[u8], mode: u64) -> io::Result<u64> {
    let mut c = UffdioCopy {
        dst,
        src: src.as_ptr() as u64,
        len: src.len() as u64,
        mode,
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY reads `len` bytes from `src`, which is a live
    // slice of that length; dst lives in the uffd's mm and only receives
    // pages that were missing there.
    match unsafe { ioctl(uffd.as_fd(), UFFDIO_COPY, &mut c) } {
        Ok(()) => Ok(c.copy as u64),
        Err(_) if c.copy > 0 => Ok(c.copy as u64),
        Err(e) => Err(e),
    }
}

/// `UFFDIO_ZEROPAGE`: maps zero pages over missing pages of the range.
/// Returns bytes zero-filled (short counts as in [`copy`]).
pub fn zeropage(uffd: impl AsFd, start: u64, len: u64, mode: u64) -> io::Result<u64> {
    let mut z = UffdioZeropage {
        range: UffdioRange { start, len },
        mode,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE takes a uffdio_zeropage; no pointers of ours.
    match unsafe { ioctl(uffd.as_fd(), UFFDIO_ZEROPAGE, &mut z) } {
        Ok(()) => Ok(z.zeropage as u64),
        Err(_) if z.zeropage > 0 => Ok(z.zeropage as u64),
        Err(e) => Err(e),
    }
}

/// `UFFDIO_WRITEPROTECT`: sets (`mode` has WP) or clears write protection.
pub fn writeprotect(uffd: impl AsFd, start: u64, len: u64, mode: u64) -> io::Result<()> {
    let mut w = UffdioWriteprotect {
        range: UffdioRange { start, len },
        mode,
    };
    // SAFETY: UFFDIO_WRITEPROTECT takes a uffdio_writeprotect.
    unsafe { ioctl(uffd.as_fd(), UFFDIO_WRITEPROTECT, &mut w) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::require_root;

    #[test]
    fn struct_sizes_match_ioctl_numbers() {
        let size = |req: u64| (req >> 16) & 0x3fff;
        assert_eq!(size(UFFDIO_API), std::mem::size_of::<UffdioApi>() as u64);
        assert_eq!(
            size(UFFDIO_REGISTER),
            std::mem::size_of::<UffdioRegister>() as u64
        );
        assert_eq!(
            size(UFFDIO_UNREGISTER),
            std::mem::size_of::<UffdioRange>() as u64
        );
        assert_eq!(size(UFFDIO_COPY), std::mem::size_of::<UffdioCopy>() as u64);
        assert_eq!(
            size(UFFDIO_ZEROPAGE),
            std::mem::size_of::<UffdioZeropage>() as u64
        );
        assert_eq!(
            size(UFFDIO_WRITEPROTECT),
            std::mem::size_of::<UffdioWriteprotect>() as u64
        );
    }

    #[test]
    fn api_register_copy_zeropage() {
        require_root!();
        let uffd = userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK).unwrap();
        let want = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
        let a = api(&uffd, want).unwrap();
        assert_eq!(a.api, UFFD_API);
        assert_eq!(a.features & want, want, "features {:#x}", a.features);
        assert_ne!(a.ioctls, 0);

        // MISSING-mode fill of our own fresh mapping on a second uffd.
        let uffd = userfaultfd(libc::O_CLOEXEC | libc::O_NONBLOCK).unwrap();
        api(&uffd, 0).unwrap();
        let ps = crate::sys::pagemap::page_size() as usize;
        // SAFETY: a fresh anonymous mapping, checked below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * ps,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let base = addr as u64;
        let ioctls = register(&uffd, base, 2 * ps as u64, UFFDIO_REGISTER_MODE_MISSING).unwrap();
        assert_ne!(ioctls & (1 << 3), 0, "UFFDIO_COPY available: {ioctls:#x}");
        let src = vec![0xabu8; ps];
        assert_eq!(copy(&uffd, base, &src, 0).unwrap(), ps as u64);
        assert_eq!(
            copy(&uffd, base, &src, 0).unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert_eq!(
            zeropage(&uffd, base + ps as u64, ps as u64, 0).unwrap(),
            ps as u64
        );
        unregister(&uffd, base, 2 * ps as u64).unwrap();
        // SAFETY: both pages are populated now, so reads cannot block.
        let (a, b) = unsafe { (*(addr as *const u8), *(addr as *const u8).add(ps)) };
        assert_eq!((a, b), (0xab, 0));
        // SAFETY: unmapping the mapping created above.
        unsafe { libc::munmap(addr, 2 * ps) };
    }
}
