//! wl-filemap STATEDIR: shared and private mappings of a file.
//!
//! `STATEDIR/filemap.dat` (4 MiB) starts with pattern A. Mapped three times,
//! with the file descriptors closed afterwards:
//! - SHARED: `MAP_SHARED`, read-write, whole file. Pages `SHARED_W` are
//!   rewritten through it with pattern B: the file itself must show B there.
//! - PRIVATE: `MAP_PRIVATE`, read-write, whole file. Pages `PRIVATE_W` are
//!   rewritten through it with pattern C: only this mapping shows C; the file
//!   and SHARED keep A there. Pages of PRIVATE never written follow the file
//!   (so they show B in `SHARED_W`).
//! - WINDOW: `MAP_SHARED`, read-only, 1 MiB at file offset 1 MiB.
//!
//! Verification reads the mappings and the file (`pread`), and checks in
//! `/proc/self/maps` that each mapping still maps this file (inode, offset,
//! permissions). Nothing is written. Role: `root`.

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};

use stasis_integration::workload::{splitmix64, Ctx, Verdict};

const PAGE: usize = 4096;
const FILE_LEN: usize = 4 << 20;
const PAGES: usize = FILE_LEN / PAGE;
const WINDOW_OFF: usize = 1 << 20;
const WINDOW_LEN: usize = 1 << 20;
/// Pages written through SHARED (pattern B).
const SHARED_W: (usize, usize) = (10, 20);
/// Pages written through PRIVATE (pattern C).
const PRIVATE_W: (usize, usize) = (300, 310);
/// Also written through PRIVATE: a page inside WINDOW (the window must not see it).
const PRIVATE_W2: usize = 260;

const SEED_A: u64 = 0x6669_6c65_4100_0000;
const SEED_B: u64 = 0x6669_6c65_4200_0000;
const SEED_C: u64 = 0x6669_6c65_4300_0000;

fn word(seed: u64, page: usize, i: usize) -> u64 {
    splitmix64(seed ^ (page * 512 + i) as u64)
}

fn page_bytes(seed: u64, page: usize) -> Vec<u8> {
    (0..512)
        .flat_map(|i| word(seed, page, i).to_le_bytes())
        .collect()
}

fn in_range(p: usize, r: (usize, usize)) -> bool {
    p >= r.0 && p < r.1
}

/// What the file itself should hold at `page`.
fn file_seed(page: usize) -> u64 {
    if in_range(page, SHARED_W) {
        SEED_B
    } else {
        SEED_A
    }
}

/// What PRIVATE should show at `page`.
fn private_seed(page: usize) -> u64 {
    if in_range(page, PRIVATE_W) || page == PRIVATE_W2 {
        SEED_C
    } else {
        file_seed(page)
    }
}

fn map(fd: i32, len: usize, off: usize, prot: i32, flags: i32) -> Result<*mut u8, String> {
    // SAFETY: a new mapping at a kernel-chosen address of an open file.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            flags,
            fd,
            off as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        Err(format!("mmap: {}", std::io::Error::last_os_error()))
    } else {
        Ok(p.cast())
    }
}

/// The words of page `page` of a mapping at `base`.
///
/// # Safety
/// The page must be mapped for the life of the slice.
unsafe fn words<'a>(base: *mut u8, page: usize) -> &'a mut [u64] {
    // SAFETY: guaranteed by the caller.
    unsafe { std::slice::from_raw_parts_mut(base.add(page * PAGE).cast::<u64>(), 512) }
}

/// Checks that `[addr, addr+len)` is one or more VMAs of `perms` mapping
/// inode `ino` at file offset `off` onwards.
fn check_maps(addr: usize, len: usize, perms: &str, ino: u64, off: usize) -> Result<(), String> {
    let maps = fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let mut at = addr;
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let Some((a, b)) = f[0].split_once('-') else {
            continue;
        };
        let a = usize::from_str_radix(a, 16).unwrap_or(0);
        let b = usize::from_str_radix(b, 16).unwrap_or(0);
        if !(a <= at && at < b) {
            continue;
        }
        let pgoff = usize::from_str_radix(f[2], 16).unwrap_or(usize::MAX);
        let vino: u64 = f[4].parse().unwrap_or(0);
        let want_off = off + (a - addr);
        if a < addr {
            return Err(format!("{line}: starts before {addr:#x}"));
        }
        if f[1] != perms || vino != ino || pgoff != want_off {
            return Err(format!(
                "{line}: want perms {perms} inode {ino} offset {want_off:#x}"
            ));
        }
        at = b;
        if at >= addr + len {
            return Ok(());
        }
    }
    Err(format!("{at:#x} is not mapped"))
}

fn main() {
    let mut ctx = Ctx::from_args("wl-filemap STATEDIR");
    let path = ctx.path("filemap.dat");
    let setup = || -> Result<(*mut u8, *mut u8, *mut u8, u64), String> {
        let data: Vec<u8> = (0..PAGES).flat_map(|p| page_bytes(SEED_A, p)).collect();
        fs::write(&path, &data).map_err(|e| format!("write {}: {e}", path.display()))?;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| e.to_string())?;
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let shared = map(fd, FILE_LEN, 0, rw, libc::MAP_SHARED)?;
        let private = map(fd, FILE_LEN, 0, rw, libc::MAP_PRIVATE)?;
        let window = map(
            fd,
            WINDOW_LEN,
            WINDOW_OFF,
            libc::PROT_READ,
            libc::MAP_SHARED,
        )?;
        let ino = f.metadata().map_err(|e| e.to_string())?.ino();
        drop(f);
        for page in SHARED_W.0..SHARED_W.1 {
            // SAFETY: SHARED is mapped read-write over the whole file.
            let w = unsafe { words(shared, page) };
            for (i, x) in w.iter_mut().enumerate() {
                *x = word(SEED_B, page, i);
            }
        }
        for page in (PRIVATE_W.0..PRIVATE_W.1).chain([PRIVATE_W2]) {
            // SAFETY: PRIVATE is mapped read-write over the whole file.
            let w = unsafe { words(private, page) };
            for (i, x) in w.iter_mut().enumerate() {
                *x = word(SEED_C, page, i);
            }
        }
        // Make sure the shared writes reached the page cache of the file
        // (they do at once; msync makes it visible on disk as well).
        // SAFETY: SHARED is a valid mapping of FILE_LEN bytes.
        unsafe { libc::msync(shared.cast(), FILE_LEN, libc::MS_SYNC) };
        Ok((shared, private, window, ino))
    };
    let (shared, private, window, ino) = setup().unwrap_or_else(|e| ctx.setup_failed("root", &e));
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});

    let mut v = Verdict::new();
    let mut bad = 0;
    let file = fs::File::open(&path);
    v.result(
        "open data file for reading",
        file.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    );
    let mut buf = vec![0u8; PAGE];
    for page in 0..PAGES {
        if bad > 6 {
            v.fail("too many bad pages, stopped");
            break;
        }
        // SAFETY: all three mappings are still mapped (a missing one faults).
        let (s, p) = unsafe { (words(shared, page), words(private, page)) };
        let (fs_, ps) = (file_seed(page), private_seed(page));
        if let Some(i) = (0..512).find(|&i| s[i] != word(fs_, page, i)) {
            v.fail(format!("shared mapping page {page} word {i}: {:#x}", s[i]));
            bad += 1;
        }
        if let Some(i) = (0..512).find(|&i| p[i] != word(ps, page, i)) {
            v.fail(format!("private mapping page {page} word {i}: {:#x}", p[i]));
            bad += 1;
        }
        if let Ok(f) = &file {
            match f.read_exact_at(&mut buf, (page * PAGE) as u64) {
                Ok(()) if buf == page_bytes(fs_, page) => {}
                Ok(()) => {
                    v.fail(format!(
                        "file page {page} differs from {}",
                        if fs_ == SEED_B {
                            "the shared writes"
                        } else {
                            "the original"
                        }
                    ));
                    bad += 1;
                }
                Err(e) => {
                    v.fail(format!("pread page {page}: {e}"));
                    bad += 1;
                }
            }
        }
    }
    for wp in 0..WINDOW_LEN / PAGE {
        let page = WINDOW_OFF / PAGE + wp;
        // SAFETY: WINDOW is mapped readable.
        let w = unsafe { words(window, wp) };
        if let Some(i) = (0..512).find(|&i| w[i] != word(file_seed(page), page, i)) {
            v.fail(format!(
                "window page {wp} (file page {page}) word {i}: {:#x}",
                w[i]
            ));
            break;
        }
    }
    match fs::metadata(&path) {
        Ok(m) => {
            v.eq("file size", m.len(), FILE_LEN as u64);
            v.eq("file inode", m.ino(), ino);
        }
        Err(e) => v.fail(format!("stat data file: {e}")),
    }
    v.result(
        "shared mapping",
        check_maps(shared as usize, FILE_LEN, "rw-s", ino, 0),
    );
    v.result(
        "private mapping",
        check_maps(private as usize, FILE_LEN, "rw-p", ino, 0),
    );
    v.result(
        "window mapping",
        check_maps(window as usize, WINDOW_LEN, "r--s", ino, WINDOW_OFF),
    );
    ctx.finish("root", v);
}
