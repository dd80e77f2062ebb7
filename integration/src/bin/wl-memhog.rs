//! wl-memhog STATEDIR SIZE_MIB: SIZE MiB of touched anonymous memory, for
//! benchmarks and the killed-dump test.
//!
//! Fills the memory with a cheap position-dependent pattern (every word is
//! written, so no page is the zero page), writes `ready`, then sleeps in 2 ms
//! steps until `check`, and verifies the whole pattern. Role: `root`.

use stasis_integration::workload::{Ctx, Verdict};

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
    // SAFETY: the mapping is `len` bytes, 8-byte aligned, and only used here.
    let mem = unsafe { std::slice::from_raw_parts_mut(p.cast::<u64>(), len / 8) };
    for (i, x) in mem.iter_mut().enumerate() {
        *x = word(i);
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    if let Some(i) = (0..mem.len()).find(|&i| mem[i] != word(i)) {
        v.fail(format!("word {i} (byte {:#x}): {:#x}", i * 8, mem[i]));
    }
    ctx.finish("root", v);
}
