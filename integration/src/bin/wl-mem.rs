//! wl-mem STATEDIR: memory of all kinds, in a parent and a forked child.
//!
//! State set up before `ready`:
//! - BIG: 64 MiB private anonymous memory; page 0 is a header recording
//!   addresses (the region's own, the other regions', the stack array's, the
//!   heap values', brk); every other page holds a position-dependent pattern,
//!   except: munmap'd holes (must stay unmapped), MADV_DONTNEED'd pages (must
//!   read as zero), never-touched pages (zero) and, in the child only, pages
//!   rewritten after fork (copy-on-write: each process sees its own).
//! - RO: 1 MiB with a pattern, then `PROT_READ`.
//! - NONE: 64 KiB `PROT_NONE`.
//! - SPARSE: 1 GiB `MAP_NORESERVE`, three pages touched.
//! - SHARED: 2 MiB `MAP_SHARED|MAP_ANONYMOUS`: the parent writes the first
//!   half and the child the second half after fork; each checks the other's.
//!   After `check`, a handshake through the region itself: the parent stores
//!   A, the child waits for A and stores B, the parent waits for B.
//! - a stack array and heap values (a large `Vec`, a small `Box`).
//!
//! Roles: `root` (parent) and `child`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stasis_integration::workload::{fork, splitmix64, wait_child, write_atomic, Ctx, Verdict};

const PAGE: usize = 4096;
const BIG_LEN: usize = 64 << 20;
const BIG_PAGES: usize = BIG_LEN / PAGE;
const RO_LEN: usize = 1 << 20;
const NONE_LEN: usize = 64 << 10;
const SPARSE_LEN: usize = 1 << 30;
const SHARED_LEN: usize = 2 << 20;

/// Pages of BIG munmap'd after filling.
const HOLES: &[(usize, usize)] = &[(300, 304), (5000, 5001), (16000, 16008)];
/// Pages of BIG dropped with MADV_DONTNEED after filling.
const DONTNEED: &[(usize, usize)] = &[(1000, 1016), (9000, 9001)];
/// Pages of BIG never written.
const UNTOUCHED: (usize, usize) = (12000, 12100);
/// Pages of BIG the child rewrites after fork.
const CHILD_COW: (usize, usize) = (2000, 2008);
/// Pages of SPARSE that are touched.
const SPARSE_TOUCHED: &[usize] = &[0, 77_777, SPARSE_LEN / PAGE - 1];

const SEED_BIG: u64 = 0x6d65_6d00_0000_0000;
const SEED_CHILD: u64 = 0x6368_696c_6400_0000;
const SEED_RO: u64 = 0x726f_0000_0000_0000;
const SEED_SPARSE: u64 = 0x7370_6172_7365_0000;
const SEED_SH_PARENT: u64 = 0x7368_7061_7200_0000;
const SEED_SH_CHILD: u64 = 0x7368_6368_6c00_0000;
const SEED_STACK: u64 = 0x7374_6163_6b00_0000;
const SEED_HEAP: u64 = 0x6865_6170_0000_0000;
const SEED_BOX: u64 = 0x626f_7800_0000_0000;

const MAGIC: u64 = 0x5354_4153_4953_4d45;
const VALUE_A: u64 = 0xA11C_E000_0000_0001;
const VALUE_B: u64 = 0xB0B0_0000_0000_0002;

// Header words in BIG page 0.
const H_MAGIC: usize = 0;
const H_BIG: usize = 1;
const H_RO: usize = 2;
const H_NONE: usize = 3;
const H_SPARSE: usize = 4;
const H_SHARED: usize = 5;
const H_STACK: usize = 6;
const H_HEAP: usize = 7;
const H_BOX: usize = 8;
const H_BRK: usize = 9;
const H_PID: usize = 10;

const STACK_WORDS: usize = 1024;
const HEAP_WORDS: usize = 1 << 20;
const BOX_WORDS: usize = 64;

fn pat(seed: u64, idx: usize) -> u64 {
    splitmix64(seed ^ idx as u64)
}

fn in_ranges(p: usize, ranges: &[(usize, usize)]) -> bool {
    ranges.iter().any(|&(a, b)| p >= a && p < b)
}

fn mmap(len: usize, prot: i32, flags: i32) -> Result<*mut u8, String> {
    // SAFETY: an anonymous mapping at a kernel-chosen address; no existing
    // memory is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
    if p == libc::MAP_FAILED {
        Err(format!(
            "mmap {len} bytes: {}",
            std::io::Error::last_os_error()
        ))
    } else {
        Ok(p.cast())
    }
}

/// The 512 words of page `page` of a region starting at `base`.
///
/// # Safety
/// The page must be mapped and readable for the life of the slice.
unsafe fn page_words<'a>(base: *mut u8, page: usize) -> &'a mut [u64] {
    // SAFETY: guaranteed by the caller; pages are 8-byte aligned.
    unsafe { std::slice::from_raw_parts_mut(base.add(page * PAGE).cast::<u64>(), PAGE / 8) }
}

/// Current program break.
fn brk_now() -> u64 {
    // SAFETY: sbrk(0) only queries the break.
    unsafe { libc::sbrk(0) as u64 }
}

/// Whether `[addr, addr+len)` is entirely unmapped (mincore says ENOMEM for
/// every page).
fn unmapped(addr: usize, len: usize) -> bool {
    (0..len / PAGE).all(|i| {
        let mut v = 0u8;
        // SAFETY: mincore only writes one byte to `v` for a one-page range.
        let r = unsafe { libc::mincore((addr + i * PAGE) as *mut _, PAGE, &mut v) };
        r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM)
    })
}

/// Checks that `[start, end)` is covered by VMAs with permissions `perms`
/// (e.g. `rw-p`), allowing neighbouring VMAs to have merged.
fn maps_cover(start: usize, end: usize, perms: &str) -> Result<(), String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let mut at = start;
    for line in maps.lines() {
        let mut it = line.split_whitespace();
        let (Some(range), Some(p)) = (it.next(), it.next()) else {
            continue;
        };
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        if a <= at && at < b {
            if p != perms {
                return Err(format!("{at:#x} is in a {p} VMA, want {perms}"));
            }
            at = b;
            if at >= end {
                return Ok(());
            }
        }
    }
    Err(format!("{at:#x} (in {start:#x}-{end:#x}) is not mapped"))
}

struct Regions {
    big: *mut u8,
    ro: *mut u8,
    none: *mut u8,
    sparse: *mut u8,
    shared: *mut u8,
}

fn setup() -> Result<Regions, String> {
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let private = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    let big = mmap(BIG_LEN, rw, private)?;
    for page in 1..BIG_PAGES {
        if page >= UNTOUCHED.0 && page < UNTOUCHED.1 {
            continue;
        }
        // SAFETY: BIG is mapped read-write and nothing is unmapped yet.
        let w = unsafe { page_words(big, page) };
        for (i, x) in w.iter_mut().enumerate() {
            *x = pat(SEED_BIG, page * 512 + i);
        }
    }
    for &(a, b) in HOLES {
        // SAFETY: the range lies inside BIG, which nothing else references.
        if unsafe { libc::munmap(big.add(a * PAGE).cast(), (b - a) * PAGE) } != 0 {
            return Err(format!("munmap: {}", std::io::Error::last_os_error()));
        }
    }
    for &(a, b) in DONTNEED {
        // SAFETY: the range lies inside BIG; dropping the pages is the point.
        if unsafe {
            libc::madvise(
                big.add(a * PAGE).cast(),
                (b - a) * PAGE,
                libc::MADV_DONTNEED,
            )
        } != 0
        {
            return Err(format!("madvise: {}", std::io::Error::last_os_error()));
        }
    }

    let ro = mmap(RO_LEN, rw, private)?;
    for page in 0..RO_LEN / PAGE {
        // SAFETY: RO is still mapped read-write.
        let w = unsafe { page_words(ro, page) };
        for (i, x) in w.iter_mut().enumerate() {
            *x = pat(SEED_RO, page * 512 + i);
        }
    }
    // SAFETY: RO is our own mapping; no reference to it outlives this call
    // as mutable.
    if unsafe { libc::mprotect(ro.cast(), RO_LEN, libc::PROT_READ) } != 0 {
        return Err(format!("mprotect: {}", std::io::Error::last_os_error()));
    }

    let none = mmap(NONE_LEN, libc::PROT_NONE, private)?;

    let sparse = mmap(SPARSE_LEN, rw, private | libc::MAP_NORESERVE)?;
    for &page in SPARSE_TOUCHED {
        // SAFETY: SPARSE is mapped read-write.
        let w = unsafe { page_words(sparse, page) };
        for (i, x) in w.iter_mut().enumerate() {
            *x = pat(SEED_SPARSE, page * 512 + i);
        }
    }

    let shared = mmap(SHARED_LEN, rw, libc::MAP_SHARED | libc::MAP_ANONYMOUS)?;
    Ok(Regions {
        big,
        ro,
        none,
        sparse,
        shared,
    })
}

/// The handshake words: the last page of SHARED.
fn slot(r: &Regions, i: usize) -> &'static AtomicU64 {
    // SAFETY: SHARED stays mapped for the life of the process and the last
    // page is only accessed through atomics.
    unsafe { &*(r.shared.add(SHARED_LEN - PAGE + i * 8).cast::<AtomicU64>()) }
}

const SHARED_HALF_PAGES: usize = SHARED_LEN / PAGE / 2;

fn fill_shared_half(r: &Regions, second: bool, seed: u64) {
    let first = if second { SHARED_HALF_PAGES } else { 0 };
    // The last page (handshake) is excluded.
    let last = if second {
        SHARED_LEN / PAGE - 1
    } else {
        SHARED_HALF_PAGES
    };
    for page in first..last {
        // SAFETY: SHARED is mapped read-write; each half is written by one
        // process only.
        let w = unsafe { page_words(r.shared, page) };
        for (i, x) in w.iter_mut().enumerate() {
            *x = pat(seed, page * 512 + i);
        }
    }
}

fn check_shared_half(v: &mut Verdict, r: &Regions, second: bool, seed: u64, who: &str) {
    let first = if second { SHARED_HALF_PAGES } else { 0 };
    let last = if second {
        SHARED_LEN / PAGE - 1
    } else {
        SHARED_HALF_PAGES
    };
    for page in first..last {
        // SAFETY: SHARED is mapped; reads only.
        let w = unsafe { page_words(r.shared, page) };
        if let Some(i) = (0..512).find(|&i| w[i] != pat(seed, page * 512 + i)) {
            v.fail(format!(
                "shared page {page} word {i} ({who}'s half): {:#x}",
                w[i]
            ));
            return;
        }
    }
}

/// Verifies BIG as seen by the parent (`child == false`) or the child.
fn check_big(v: &mut Verdict, r: &Regions, child: bool) {
    let mut bad = 0;
    for page in 1..BIG_PAGES {
        if in_ranges(page, HOLES) {
            continue;
        }
        // SAFETY: every page outside HOLES is mapped (checked by maps_cover
        // separately; a missing page would fault, which also fails the test).
        let w = unsafe { page_words(r.big, page) };
        let zero = in_ranges(page, DONTNEED) || in_ranges(page, &[UNTOUCHED]);
        let cow = child && in_ranges(page, &[CHILD_COW]);
        for (i, &x) in w.iter().enumerate() {
            let want = if zero {
                0
            } else if cow {
                pat(SEED_CHILD, page * 512 + i)
            } else {
                pat(SEED_BIG, page * 512 + i)
            };
            if x != want {
                if bad < 4 {
                    v.fail(format!(
                        "big page {page} word {i}: {x:#x}, want {want:#x}{}",
                        if zero { " (zero page)" } else { "" }
                    ));
                }
                bad += 1;
                break;
            }
        }
    }
    if bad > 4 {
        v.fail(format!("big: {bad} bad pages in all"));
    }
    for &(a, b) in HOLES {
        let addr = r.big as usize + a * PAGE;
        v.check(unmapped(addr, (b - a) * PAGE), || {
            format!("hole pages {a}..{b} at {addr:#x} are mapped")
        });
    }
    // The mapped parts of BIG are rw-p.
    let mut start = 0;
    for &(a, b) in HOLES {
        let s = r.big as usize + start * PAGE;
        v.result("big maps", maps_cover(s, r.big as usize + a * PAGE, "rw-p"));
        start = b;
    }
    v.result(
        "big maps",
        maps_cover(
            r.big as usize + start * PAGE,
            r.big as usize + BIG_LEN,
            "rw-p",
        ),
    );
}

fn check_common(
    v: &mut Verdict,
    r: &Regions,
    stack: &[u64; STACK_WORDS],
    heap: &[u64],
    boxed: &[u64; BOX_WORDS],
) {
    // SAFETY: BIG page 0 is mapped; reads only.
    let h = unsafe { page_words(r.big, 0) };
    v.eq("header magic", h[H_MAGIC], MAGIC);
    v.eq("BIG address", h[H_BIG], r.big as u64);
    v.eq("RO address", h[H_RO], r.ro as u64);
    v.eq("NONE address", h[H_NONE], r.none as u64);
    v.eq("SPARSE address", h[H_SPARSE], r.sparse as u64);
    v.eq("SHARED address", h[H_SHARED], r.shared as u64);
    v.eq("stack array address", h[H_STACK], stack.as_ptr() as u64);
    v.eq("heap vec address", h[H_HEAP], heap.as_ptr() as u64);
    v.eq("box address", h[H_BOX], boxed.as_ptr() as u64);

    for page in 0..RO_LEN / PAGE {
        // SAFETY: RO is mapped readable; reads only.
        let w = unsafe { page_words(r.ro, page) };
        if let Some(i) = (0..512).find(|&i| w[i] != pat(SEED_RO, page * 512 + i)) {
            v.fail(format!("ro page {page} word {i}: {:#x}", w[i]));
            break;
        }
    }
    v.result(
        "ro maps",
        maps_cover(r.ro as usize, r.ro as usize + RO_LEN, "r--p"),
    );
    v.result(
        "none maps",
        maps_cover(r.none as usize, r.none as usize + NONE_LEN, "---p"),
    );
    v.result(
        "shared maps",
        maps_cover(r.shared as usize, r.shared as usize + SHARED_LEN, "rw-s"),
    );
    v.result(
        "sparse maps",
        maps_cover(r.sparse as usize, r.sparse as usize + SPARSE_LEN, "rw-p"),
    );
    for page in (0..SPARSE_LEN / PAGE)
        .step_by(61)
        .chain(SPARSE_TOUCHED.iter().copied())
    {
        // SAFETY: SPARSE is mapped read-write (MAP_NORESERVE); reading an
        // untouched page maps the zero page.
        let w = unsafe { page_words(r.sparse, page) };
        let touched = SPARSE_TOUCHED.contains(&page);
        if let Some(i) = (0..512).find(|&i| {
            w[i] != if touched {
                pat(SEED_SPARSE, page * 512 + i)
            } else {
                0
            }
        }) {
            v.fail(format!("sparse page {page} word {i}: {:#x}", w[i]));
            break;
        }
    }
    if let Some(i) = (0..STACK_WORDS).find(|&i| stack[i] != pat(SEED_STACK, i)) {
        v.fail(format!("stack array word {i}: {:#x}", stack[i]));
    }
    v.eq("heap vec length", heap.len(), HEAP_WORDS);
    if let Some(i) = (0..heap.len()).find(|&i| heap[i] != pat(SEED_HEAP, i)) {
        v.fail(format!("heap vec word {i}: {:#x}", heap[i]));
    }
    if let Some(i) = (0..BOX_WORDS).find(|&i| boxed[i] != pat(SEED_BOX, i)) {
        v.fail(format!("box word {i}: {:#x}", boxed[i]));
    }
}

fn wait_value(a: &AtomicU64, want: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while a.load(Ordering::SeqCst) != want {
        if Instant::now() > deadline {
            return false;
        }
        stasis_integration::workload::sleep_ns(1_000_000);
    }
    true
}

fn main() {
    let mut ctx = Ctx::from_args("wl-mem STATEDIR");
    let r = setup().unwrap_or_else(|e| ctx.setup_failed("root", &e));

    let mut stack = [0u64; STACK_WORDS];
    for (i, x) in stack.iter_mut().enumerate() {
        *x = pat(SEED_STACK, i);
    }
    let stack = black_box(stack);
    let heap: Vec<u64> = (0..HEAP_WORDS).map(|i| pat(SEED_HEAP, i)).collect();
    let mut boxed = Box::new([0u64; BOX_WORDS]);
    for (i, x) in boxed.iter_mut().enumerate() {
        *x = pat(SEED_BOX, i);
    }

    // Header in BIG page 0.
    {
        // SAFETY: BIG page 0 is mapped read-write.
        let h = unsafe { page_words(r.big, 0) };
        h[H_MAGIC] = MAGIC;
        h[H_BIG] = r.big as u64;
        h[H_RO] = r.ro as u64;
        h[H_NONE] = r.none as u64;
        h[H_SPARSE] = r.sparse as u64;
        h[H_SHARED] = r.shared as u64;
        h[H_STACK] = stack.as_ptr() as u64;
        h[H_HEAP] = heap.as_ptr() as u64;
        h[H_BOX] = boxed.as_ptr() as u64;
    }
    let mut info = String::new();
    for (name, a) in [
        ("big", r.big as usize),
        ("ro", r.ro as usize),
        ("none", r.none as usize),
        ("sparse", r.sparse as usize),
        ("shared", r.shared as usize),
    ] {
        let _ = writeln!(info, "{name} {a:#x}");
    }
    let _ = write_atomic(&ctx.path("info"), &info);

    let child = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
    if child == 0 {
        // Child: private copy-on-write pages, second half of SHARED.
        for page in CHILD_COW.0..CHILD_COW.1 {
            // SAFETY: BIG is mapped read-write in the child too.
            let w = unsafe { page_words(r.big, page) };
            for (i, x) in w.iter_mut().enumerate() {
                *x = pat(SEED_CHILD, page * 512 + i);
            }
        }
        fill_shared_half(&r, true, SEED_SH_CHILD);
        ctx.write_ready("child");
        ctx.wait_for_check(|| {});
        let mut v = Verdict::new();
        check_common(&mut v, &r, &stack, &heap, &boxed);
        check_big(&mut v, &r, true);
        check_shared_half(&mut v, &r, false, SEED_SH_PARENT, "parent");
        check_shared_half(&mut v, &r, true, SEED_SH_CHILD, "child");
        if wait_value(slot(&r, 0), VALUE_A, Duration::from_secs(10)) {
            slot(&r, 1).store(VALUE_B, Ordering::SeqCst);
        } else {
            v.fail(format!(
                "did not see the parent's value A in shared memory (slot is {:#x})",
                slot(&r, 0).load(Ordering::SeqCst)
            ));
        }
        ctx.finish("child", v);
    }

    fill_shared_half(&r, false, SEED_SH_PARENT);
    if let Err(e) = ctx.wait_ready_of(&["child"], Duration::from_secs(20)) {
        ctx.setup_failed("root", &e);
    }
    {
        let mut v = Verdict::new();
        check_shared_half(&mut v, &r, true, SEED_SH_CHILD, "child");
        if !v.is_ok() {
            ctx.setup_failed("root", &format!("before checkpoint: {}", v.line()));
        }
    }
    // No allocation from here to the brk check: the loop does not allocate.
    let pid = std::process::id() as u64;
    // SAFETY: BIG page 0 is mapped read-write.
    unsafe { page_words(r.big, 0)[H_PID] = pid };
    ctx.write_ready("root");
    let brk = brk_now();
    // SAFETY: BIG page 0 is mapped read-write.
    unsafe { page_words(r.big, 0)[H_BRK] = brk };
    ctx.wait_for_check(|| {});
    let brk_after = brk_now();

    let mut v = Verdict::new();
    // SAFETY: BIG page 0 is mapped; reads only.
    let h = unsafe { page_words(r.big, 0) };
    v.eq("program break", brk_after, h[H_BRK]);
    v.eq("pid", std::process::id() as u64, h[H_PID]);
    check_common(&mut v, &r, &stack, &heap, &boxed);
    check_big(&mut v, &r, false);
    check_shared_half(&mut v, &r, true, SEED_SH_CHILD, "child");
    check_shared_half(&mut v, &r, false, SEED_SH_PARENT, "parent");
    slot(&r, 0).store(VALUE_A, Ordering::SeqCst);
    if !wait_value(slot(&r, 1), VALUE_B, Duration::from_secs(10)) {
        v.fail(format!(
            "did not see the child's value B in shared memory (slot is {:#x})",
            slot(&r, 1).load(Ordering::SeqCst)
        ));
    }
    v.result("child", wait_child(child, Duration::from_secs(20)));
    ctx.finish("root", v);
}
