//! `/proc/PID/pagemap`: which pages are populated, and PAGEMAP_SCAN.
//!
//! PAGEMAP_SCAN (Linux 6.7+) walks a range in the kernel and returns runs of
//! pages sharing categories, so sparse address spaces cost nothing per
//! absent page. With `PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC` over a
//! uffd-WP_ASYNC registered range it also re-arms write protection, which is
//! the dirty-tracking path on kernels without soft-dirty (KERNEL-NOTES §5).
//! Debian 12 headers lack all of this, hence the local definitions.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `_IOWR('f', 16, struct pm_scan_arg)`.
pub const PAGEMAP_SCAN: u64 = 0xC060_6610;

/// Page categories (`PAGE_IS_*`).
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;
pub const PAGE_IS_HUGE: u64 = 1 << 6;
pub const PAGE_IS_SOFT_DIRTY: u64 = 1 << 7;

/// Write-protect the pages that match (uffd WP_ASYNC tracking).
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// Fail with EPERM unless the range is registered for uffd WP_ASYNC.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct pm_scan_arg` (96 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PmScanArg {
    pub size: u64,
    pub flags: u64,
    pub start: u64,
    pub end: u64,
    pub walk_end: u64,
    pub vec: u64,
    pub vec_len: u64,
    pub max_pages: u64,
    pub category_inverted: u64,
    pub category_mask: u64,
    pub category_anyof_mask: u64,
    pub return_mask: u64,
}

/// `struct page_region` (24 bytes): `[start, end)` with `categories`
/// (masked by the scan's `return_mask`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// Filters of a scan beyond the range; see the kernel's pagemap docs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanParams {
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Categories that must be *clear* rather than set.
    pub category_inverted: u64,
    /// Categories that must all match.
    pub category_mask: u64,
    /// At least one of these must match (0: no such filter).
    pub category_anyof_mask: u64,
    /// Categories to report in [`PageRegion::categories`] (non-zero).
    pub return_mask: u64,
    /// Stop after this many matching pages (0: no limit).
    pub max_pages: u64,
}

/// Regions fetched per ioctl; the kernel stops early and sets `walk_end`
/// when the vector is full.
const BATCH: usize = 4096;

/// PAGEMAP_SCAN over `[start, end)` of the pagemap `pagemap` (opened from
/// `/proc/PID/pagemap`), appending matching regions to `out`. Loops on
/// `walk_end` until the range is done; returns the final `walk_end`.
pub fn scan(
    pagemap: &File,
    start: u64,
    end: u64,
    category_mask: u64,
    return_mask: u64,
    flags: u64,
    out: &mut Vec<PageRegion>,
) -> io::Result<u64> {
    let params = ScanParams {
        flags,
        category_mask,
        return_mask,
        ..Default::default()
    };
    scan_with(pagemap, start, end, &params, out)
}

/// [`scan`] with every filter of the ioctl available. With
/// `params.max_pages` set the scan may end before `end`: the return value
/// tells where.
pub fn scan_with(
    pagemap: &File,
    start: u64,
    end: u64,
    params: &ScanParams,
    out: &mut Vec<PageRegion>,
) -> io::Result<u64> {
    let mut pos = start;
    let mut pages_left = params.max_pages;
    while pos < end {
        out.reserve(BATCH);
        let old_len = out.len();
        let spare = out.capacity() - old_len;
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: params.flags,
            start: pos,
            end,
            walk_end: 0,
            vec: out.as_mut_ptr().wrapping_add(old_len) as u64,
            vec_len: spare as u64,
            max_pages: pages_left,
            category_inverted: params.category_inverted,
            category_mask: params.category_mask,
            category_anyof_mask: params.category_anyof_mask,
            return_mask: params.return_mask,
        };
        let n = loop {
            // SAFETY: `arg` is a valid pm_scan_arg; `vec` points at the
            // `spare` uninitialised PageRegion slots after `out`'s length,
            // which the kernel fills (at most vec_len of them).
            let r = unsafe {
                libc::ioctl(
                    pagemap.as_raw_fd(),
                    PAGEMAP_SCAN as libc::c_ulong,
                    &mut arg as *mut PmScanArg,
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let n = n.min(spare);
        // SAFETY: the kernel initialised the first `n` spare slots, and a
        // PageRegion is plain integers.
        unsafe { out.set_len(old_len + n) };
        let fresh = &out[old_len..];
        let last_end = fresh.last().map_or(pos, |r| r.end);
        let got: u64 = fresh.iter().map(|r| (r.end - r.start) / page_size()).sum();
        // A run cut by a full vector continues in the next call: merge it.
        if n > 0 && old_len > 0 {
            let (a, b) = (out[old_len - 1], out[old_len]);
            if a.end == b.start && a.categories == b.categories {
                out[old_len - 1].end = b.end;
                out.remove(old_len);
            }
        }
        // The kernel's walk_end is stale when the walk finished after an
        // internal bounce-buffer flush (512 regions): it then still points
        // at that flush. Only an early stop (our vector full, or max_pages
        // reached) leaves it meaningful, and never below the last region.
        let resume_at = arg.walk_end.max(last_end);
        if params.max_pages != 0 {
            pages_left = pages_left.saturating_sub(got);
            if pages_left == 0 {
                return Ok(resume_at.min(end));
            }
        }
        if n < spare {
            return Ok(end);
        }
        if resume_at <= pos {
            // No progress: never spin.
            return Ok(pos);
        }
        pos = resume_at;
    }
    Ok(pos)
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if r > 0 {
        r as u64
    } else {
        4096
    }
}

// Bits of a `/proc/PID/pagemap` entry.
/// Page present in RAM.
pub const PM_PRESENT: u64 = 1 << 63;
/// Page swapped out.
pub const PM_SWAPPED: u64 = 1 << 62;
/// File page or shared anonymous page.
pub const PM_FILE_SHARED: u64 = 1 << 61;
/// Page is guard region (MADV_GUARD_INSTALL, 6.15+).
pub const PM_GUARD_REGION: u64 = 1 << 58;
/// uffd write-protected.
pub const PM_UFFD_WP: u64 = 1 << 57;
/// Page mapped exclusively (only by this process).
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// Soft-dirty (not on this kernel: no CONFIG_MEM_SOFT_DIRTY).
pub const PM_SOFT_DIRTY: u64 = 1 << 55;
/// PFN (bits 0–54) when present and readable by root; swap entry otherwise.
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// Whether a pagemap entry is present in RAM.
pub fn is_present(e: u64) -> bool {
    e & PM_PRESENT != 0
}

/// Whether a pagemap entry is swapped out.
pub fn is_swapped(e: u64) -> bool {
    e & PM_SWAPPED != 0
}

/// Whether a pagemap entry is a file page or shared anonymous page.
pub fn is_file_or_shared(e: u64) -> bool {
    e & PM_FILE_SHARED != 0
}

/// Whether a pagemap entry's page is mapped only by this process.
pub fn is_exclusive(e: u64) -> bool {
    e & PM_MMAP_EXCLUSIVE != 0
}

/// The PFN of a present page (0 if hidden from unprivileged readers).
pub fn pfn(e: u64) -> u64 {
    e & PM_PFN_MASK
}

/// Bytes per pread when reading entries (2 MiB measured best here).
const READ_CHUNK: usize = 2 << 20;

/// Appends the 8-byte pagemap entries of `n_pages` pages starting at
/// `start_addr` (page aligned) to `out`, with large preads.
pub fn read_pagemap(
    pagemap: &File,
    start_addr: u64,
    n_pages: usize,
    out: &mut Vec<u64>,
) -> io::Result<()> {
    let ps = page_size();
    if start_addr & (ps - 1) != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    out.reserve(n_pages);
    let mut done = 0usize;
    while done < n_pages {
        let want = (n_pages - done).min(READ_CHUNK / 8);
        let off = (start_addr / ps + done as u64) * 8;
        let base = out.len();
        let r = loop {
            // SAFETY: the destination is `want` u64 slots of `out`'s spare
            // capacity (reserved above), which pread may write; any bytes
            // are a valid u64.
            let r = unsafe {
                libc::pread64(
                    pagemap.as_raw_fd(),
                    out.as_mut_ptr().add(base).cast::<libc::c_void>(),
                    want * 8,
                    off as libc::off64_t,
                )
            };
            if r >= 0 {
                break r as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let got = r / 8;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("pagemap ended at page {done} of {n_pages}"),
            ));
        }
        // SAFETY: pread initialised `got` full entries (partial trailing
        // bytes are ignored and re-read at the next offset).
        unsafe { out.set_len(base + got) };
        done += got;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::require_root;

    #[test]
    fn struct_sizes() {
        assert_eq!(std::mem::size_of::<PmScanArg>(), 96);
        assert_eq!(std::mem::size_of::<PageRegion>(), 24);
        // _IOWR('f', 16, 96 bytes)
        let iowr = (3u64 << 30) | (96 << 16) | ((b'f' as u64) << 8) | 16;
        assert_eq!(iowr, PAGEMAP_SCAN);
    }

    #[test]
    fn entry_bits() {
        let e = PM_PRESENT | PM_MMAP_EXCLUSIVE | 0x1234;
        assert!(is_present(e) && is_exclusive(e));
        assert!(!is_swapped(e) && !is_file_or_shared(e));
        assert_eq!(pfn(e), 0x1234);
    }

    /// An anonymous private mapping of `pages` pages, unmapped on drop.
    struct Anon {
        addr: *mut u8,
        len: usize,
    }

    impl Anon {
        fn new(pages: usize) -> Anon {
            let len = pages * page_size() as usize;
            // SAFETY: a fresh anonymous mapping; the result is checked.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            assert_ne!(addr, libc::MAP_FAILED);
            // SAFETY: advice on our own fresh mapping; THP would populate
            // whole 2 MiB blocks and spoil the expected page sets.
            unsafe { libc::madvise(addr, len, libc::MADV_NOHUGEPAGE) };
            Anon {
                addr: addr.cast(),
                len,
            }
        }

        fn touch(&self, page: usize) {
            // SAFETY: `page` is inside the mapping, which is writable.
            unsafe { self.addr.add(page * page_size() as usize).write_volatile(1) };
        }
    }

    impl Drop for Anon {
        fn drop(&mut self) {
            // SAFETY: unmapping exactly the mapping we created.
            unsafe { libc::munmap(self.addr.cast(), self.len) };
        }
    }

    #[test]
    fn scan_finds_touched_pages() {
        require_root!();
        let ps = page_size();
        let m = Anon::new(16);
        for p in [0, 1, 5] {
            m.touch(p);
        }
        let base = m.addr as u64;
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let mut out = Vec::new();
        let end = base + 16 * ps;
        let walk_end = scan(
            &pagemap,
            base,
            end,
            PAGE_IS_PRESENT,
            PAGE_IS_PRESENT,
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(walk_end, end);
        assert_eq!(
            out,
            vec![
                PageRegion {
                    start: base,
                    end: base + 2 * ps,
                    categories: PAGE_IS_PRESENT
                },
                PageRegion {
                    start: base + 5 * ps,
                    end: base + 6 * ps,
                    categories: PAGE_IS_PRESENT
                },
            ]
        );

        let mut entries = Vec::new();
        read_pagemap(&pagemap, base, 16, &mut entries).unwrap();
        let present: Vec<usize> = (0..16).filter(|&i| is_present(entries[i])).collect();
        assert_eq!(present, vec![0, 1, 5]);
        assert!(is_exclusive(entries[0]));
        assert_ne!(pfn(entries[0]), 0); // root sees PFNs

        // max_pages stops the walk early and reports where.
        let mut out = Vec::new();
        let params = ScanParams {
            category_mask: PAGE_IS_PRESENT,
            return_mask: PAGE_IS_PRESENT,
            max_pages: 1,
            ..Default::default()
        };
        let we = scan_with(&pagemap, base, end, &params, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].end - out[0].start, ps);
        assert!(we < end);
    }

    #[test]
    fn scan_batches_many_regions() {
        require_root!();
        let ps = page_size();
        // Every other page of 10000: 5000 regions, more than one batch.
        let m = Anon::new(10_000);
        for p in (0..10_000).step_by(2) {
            m.touch(p);
        }
        let base = m.addr as u64;
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let mut out = Vec::new();
        scan(
            &pagemap,
            base,
            base + 10_000 * ps,
            PAGE_IS_PRESENT,
            PAGE_IS_PRESENT,
            0,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 5000);
        assert!(out
            .iter()
            .enumerate()
            .all(|(i, r)| r.start == base + 2 * i as u64 * ps && r.end == r.start + ps));
    }
}
