//! wl-small STATEDIR: a tiny process (well under 10 MiB RSS) for latency
//! benchmarks and quick tests.
//!
//! Keeps a small array on the heap and a counter; waits for `check` in 2 ms
//! sleeps and verifies the array and that the counter kept counting.
//! Role: `root`. With the argument `netlink` it also holds a netlink socket
//! at fd 42, a kind of file the engine refuses (for the error tests).

use stasis_integration::workload::{splitmix64, Ctx, Verdict};

fn main() {
    let mut ctx = Ctx::from_args("wl-small STATEDIR");
    let data: Vec<u64> = (0..4096).map(splitmix64).collect();
    if std::env::args().nth(2).as_deref() == Some("netlink") {
        // SAFETY: plain socket/dup2 calls on fds we own.
        let ok = unsafe {
            let s = libc::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE);
            s >= 0 && libc::dup2(s, 42) == 42
        };
        if !ok {
            ctx.setup_failed("root", "netlink socket");
        }
    }
    ctx.write_ready("root");
    let ticks_at_ready = ctx.ticks;
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    if let Some(i) = (0..data.len()).find(|&i| data[i] != splitmix64(i as u64)) {
        v.fail(format!("word {i}: {:#x}", data[i]));
    }
    v.check(ctx.ticks > ticks_at_ready, || {
        "the wait loop never ran".into()
    });
    ctx.finish("root", v);
}
