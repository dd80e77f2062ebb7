//! membw [SIZE_MIB] [ROUNDS]: single-core memcpy bandwidth, for bench.sh.
//!
//! Copies a pre-faulted buffer of SIZE MiB (default 256) into another
//! pre-faulted one ROUNDS times (default 8) and prints the best round as
//! `memcpy_gbps X.XX` (GB/s, 1 GB = 1e9 bytes, bytes copied per second).

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let rounds: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(8);
    let len = mib << 20;
    let src: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let mut dst = vec![1u8; len];
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    assert_eq!(dst[len - 1], src[len - 1]);
    let gbps = len as f64 / best / 1e9;
    println!("memcpy_gbps {gbps:.2}");
    eprintln!(
        "membw: {mib} MiB x {rounds} rounds, best {:.1} ms",
        best * 1e3
    );
}
