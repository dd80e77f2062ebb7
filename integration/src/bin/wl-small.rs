//! wl-small STATEDIR: a tiny process (well under 10 MiB RSS) for latency
//! benchmarks and quick tests.
//!
//! Keeps a small array on the heap and a counter; waits for `check` in 2 ms
//! sleeps and verifies the array and that the counter kept counting.
//! Role: `root`. With the argument `netlink` it also holds a netlink socket
//! at fd 42, a kind of file the engine refuses (for the error tests).
//! With `sysv`, it keeps a SysV shm segment of the host's IPC namespace
//! attached (removed at once, so it goes away with the process): refused
//! at dump (for the error tests).
//! With `vfork MS exec|exit`, once ready it vforks a child that sleeps MS
//! milliseconds and then execs `/bin/true` (or `_exit`s): the root sits in
//! vfork meanwhile, where no signal or ptrace interrupt stops it.

use stasis_integration::workload::{splitmix64, Ctx, Footprint, Verdict};

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
    if std::env::args().nth(2).as_deref() == Some("sysv") {
        // SAFETY: SysV calls on a private segment we create; the attachment
        // stays until exit.
        let ok = unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, 4096, 0o600);
            id >= 0
                && libc::shmat(id, std::ptr::null(), 0) as isize != -1
                && libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) == 0
        };
        if !ok {
            ctx.setup_failed("root", "sysv shm");
        }
    }
    // Without extra arguments nothing maps, opens or starts anything after
    // this: the restored process must have what it has now.
    let plain = std::env::args().nth(2).is_none();
    let footprint = plain.then(Footprint::now);
    ctx.write_ready("root");
    let ticks_at_ready = ctx.ticks;
    let mut v = Verdict::new();
    if std::env::args().nth(2).as_deref() == Some("vfork") {
        let ms: u64 = std::env::args()
            .nth(3)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1000);
        let exec = std::env::args().nth(4).as_deref() != Some("exit");
        v.result("vfork", vfork_sleeping(ms, exec));
    }
    ctx.wait_for_check(|| {});
    if let Some(i) = (0..data.len()).find(|&i| data[i] != splitmix64(i as u64)) {
        v.fail(format!("word {i}: {:#x}", data[i]));
    }
    v.check(ctx.ticks > ticks_at_ready, || {
        "the wait loop never ran".into()
    });
    if let Some(f) = footprint {
        f.check(&mut v);
    }
    ctx.finish("root", v);
}

/// What the vfork child does, set before the vfork (it shares our memory).
static VFORK_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static VFORK_EXEC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

extern "C" fn vfork_child(_: *mut libc::c_void) -> libc::c_int {
    let ms = VFORK_MS.load(std::sync::atomic::Ordering::Relaxed);
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: only syscalls on data of our own (no allocation, no locks), as
    // a vfork child sharing its parent's memory must.
    unsafe {
        libc::nanosleep(&ts, std::ptr::null_mut());
        if VFORK_EXEC.load(std::sync::atomic::Ordering::Relaxed) {
            let path = c"/bin/true".as_ptr();
            let argv = [path, std::ptr::null()];
            let envp: [*const libc::c_char; 1] = [std::ptr::null()];
            libc::execve(path, argv.as_ptr(), envp.as_ptr());
        }
        libc::_exit(0)
    }
}

/// clone(CLONE_VM | CLONE_VFORK) a child that sleeps `ms` then execs or
/// exits; returns once it did and was reaped with status 0.
fn vfork_sleeping(ms: u64, exec: bool) -> Result<(), String> {
    VFORK_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
    VFORK_EXEC.store(exec, std::sync::atomic::Ordering::Relaxed);
    let mut stack = vec![0u8; 256 * 1024];
    let t0 = std::time::Instant::now();
    // SAFETY: the child runs `vfork_child` on its own stack (the top of
    // `stack`, 16-byte aligned), which outlives it: we are suspended until
    // it execs or exits.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len()) as usize & !15;
        libc::clone(
            vfork_child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::null_mut(),
        )
    };
    if pid < 0 {
        return Err(format!("clone: {}", std::io::Error::last_os_error()));
    }
    let took = t0.elapsed();
    let mut status = 0;
    // SAFETY: plain waitpid on our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(format!(
            "waitpid {pid}: {}",
            std::io::Error::last_os_error()
        ));
    }
    if status != 0 {
        return Err(format!("vfork child {pid}: status {status:#x}"));
    }
    if took < std::time::Duration::from_millis(ms) {
        return Err(format!(
            "vfork returned after {took:?}, before the child's {ms} ms"
        ));
    }
    Ok(())
}
