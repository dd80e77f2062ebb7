//! wl-memhog STATEDIR SIZE_MIB [thp] [threads]: SIZE MiB of touched anonymous memory,
//! for benchmarks and the killed-dump test.
//!
//! Fills the memory with a cheap position-dependent pattern (every word is
//! written, so no page is the zero page), writes `ready`, then sleeps in 2 ms
//! steps until `check`, and verifies the whole pattern. Role: `root`.
//! With `thp` the memory is madvised MADV_HUGEPAGE first, and must still be
//! after the restore (its huge pages may come back later: khugepaged).
//! With `threads`, two more threads sleep in 2 ms steps until `check` and
//! are joined then (a thread killed by a stray signal takes the process).
//! Its mappings, fds and thread count must be as at `ready` (Footprint),
//! except with `nofootprint`.

use stasis_integration::workload::{Ctx, Footprint, Verdict};

fn word(i: usize) -> u64 {
    (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x6d65_6d68_6f67
}

fn main() {
    let mut ctx = Ctx::from_args("wl-memhog STATEDIR SIZE_MIB");
    let mib: usize = match ctx.args.first().map(|s| s.parse()) {
        Some(Ok(n)) if n > 0 => n,
        _ => {
            eprintln!("usage: wl-memhog STATEDIR SIZE_MIB");
            std::process::exit(2);
        }
    };
    let thp = ctx.args.iter().skip(1).any(|a| a == "thp");
    let threads = ctx.args.iter().skip(1).any(|a| a == "threads");
    let footprint_checked = !ctx.args.iter().skip(1).any(|a| a == "nofootprint");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sleepers: Vec<_> = (0..if threads { 2 } else { 0 })
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        })
        .collect();
    let len = mib << 20;
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ctx.setup_failed(
            "root",
            &format!("mmap {mib} MiB: {}", std::io::Error::last_os_error()),
        );
    }
    // SAFETY: advice on the mapping just made.
    if thp && unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) } != 0 {
        ctx.setup_failed(
            "root",
            &format!("madvise: {}", std::io::Error::last_os_error()),
        );
    }
    // SAFETY: the mapping is `len` bytes, 8-byte aligned, and only used here.
    let mem = unsafe { std::slice::from_raw_parts_mut(p.cast::<u64>(), len / 8) };
    for (i, x) in mem.iter_mut().enumerate() {
        *x = word(i);
    }
    let footprint = Footprint::now();
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    // No fd, mapping or thread of the dumper's left (it may have had this
    // process write its own pages: engine/src/mem/selfwrite.rs).
    if footprint_checked {
        footprint.check(&mut v);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for (k, t) in sleepers.into_iter().enumerate() {
        v.check(t.join().is_ok(), || format!("sleeper thread {k} panicked"));
    }
    if thp {
        v.check(madvised_huge(p as usize) == Some(true), || {
            "MADV_HUGEPAGE lost".into()
        });
    }
    if let Some(i) = (0..mem.len()).find(|&i| mem[i] != word(i)) {
        v.fail(format!("word {i} (byte {:#x}): {:#x}", i * 8, mem[i]));
    }
    ctx.finish("root", v);
}

/// Whether the mapping starting at `addr` is madvised MADV_HUGEPAGE (VmFlags
/// "hg" in /proc/self/smaps); None if it is not there.
fn madvised_huge(addr: usize) -> Option<bool> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let head = format!("{addr:x}-");
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
    lines.next()?;
    let flags = lines.find_map(|l| l.strip_prefix("VmFlags:"))?;
    Some(flags.split_whitespace().any(|f| f == "hg"))
}
