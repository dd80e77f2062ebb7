//! A mapping of a file into our own address space, used to copy page images
//! with a single kernel copy (process_vm_readv/writev straight into or out
//! of the file's page cache).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A shared mapping of a whole file, unmapped on drop.
pub struct FileMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes
// through &self/&mut self, so the usual borrow rules prevent data races.
unsafe impl Send for FileMap {}
// SAFETY: shared references only hand out shared slices.
unsafe impl Sync for FileMap {}

impl FileMap {
    /// Map `len` bytes of `file` (which must be at least that long).
    pub fn new(file: &File, len: usize, writable: bool) -> io::Result<FileMap> {
        if len == 0 {
            return Ok(FileMap {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len: 0,
            });
        }
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping chosen by the kernel; it overlaps
        // nothing we own and lives until Drop unmaps it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(FileMap {
            ptr: p as *mut u8,
            len,
        })
    }

    /// Fault in (allocate) the pages of `[off, off+len)` ahead of a copy, in
    /// one kernel loop instead of one fault per page.
    pub fn populate_write(&self, off: usize, len: usize) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        assert!(off + len <= self.len);
        // SAFETY: the range lies inside our mapping; MADV_POPULATE_WRITE
        // only faults pages in, it changes no contents.
        let r = unsafe {
            libc::madvise(
                self.ptr.add(off) as *mut libc::c_void,
                len,
                23, /* MADV_POPULATE_WRITE */
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is our live mapping.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len is our live, writable mapping, borrowed
        // uniquely through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: we own this mapping and nothing borrows it any more.
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
        }
    }
}

/// A page-aligned anonymous buffer, populated up front, unmapped on drop.
///
/// Copy buffers must be page-aligned: the kernel's user copies (`rep movsb`)
/// run at a fraction of their speed on this AMD EPYC when source and
/// destination disagree on alignment, and a heap buffer starts 16 bytes
/// into a page (dump of 256 MiB: 3.3x the process_vm_readv time measured).
pub struct AnonBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes
// through &self/&mut self, so the usual borrow rules prevent data races.
unsafe impl Send for AnonBuf {}
// SAFETY: shared references only hand out shared slices.
unsafe impl Sync for AnonBuf {}

impl AnonBuf {
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn new(len: usize) -> io::Result<AnonBuf> {
        let len = len.max(1);
        // SAFETY: a fresh private anonymous mapping chosen by the kernel; it
        // overlaps nothing we own and lives until Drop unmaps it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(AnonBuf {
            ptr: p as *mut u8,
            len,
        })
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len is our live, writable mapping, borrowed
        // uniquely through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AnonBuf {
    fn drop(&mut self) {
        // SAFETY: we own this mapping and nothing borrows it any more.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// MADV_POPULATE_WRITE over a slice of any mapping we own (page-aligned
/// interior is populated; the kernel rounds the start down).
pub fn populate_slice(s: &mut [u8]) -> io::Result<()> {
    if s.is_empty() {
        return Ok(());
    }
    let page = 4096usize;
    let start = s.as_mut_ptr() as usize & !(page - 1);
    let end = (s.as_mut_ptr() as usize + s.len()).div_ceil(page) * page;
    // SAFETY: [start, end) covers only pages that hold part of `s`, which is
    // mapped memory we own; populating changes no contents.
    let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, 23) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// MADV_COLLAPSE: back the 2 MiB-aligned interior of our own anonymous
/// mapping [start, end) with huge pages now (contents unchanged).
pub fn collapse(start: u64, end: u64) -> io::Result<()> {
    const HUGE: u64 = 2 << 20;
    let (lo, hi) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
    if hi <= lo {
        return Ok(());
    }
    // SAFETY: the range lies inside a mapping of ours; collapsing only
    // changes how it is backed, never what it holds.
    let r = unsafe { libc::madvise(lo as *mut libc::c_void, (hi - lo) as usize, 25) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
