//! wl-signalfd STATEDIR: signalfds with blocked signals pending.
//!
//! SIGUSR1, SIGUSR2 and signal 40 (real-time) are blocked. Pending before
//! the dump: SIGUSR1 (kill, process-wide), 40 (sigqueue with value 0x1234,
//! process-wide) and SIGUSR2 (tgkill, this thread).
//! - fd 10: signalfd for {SIGUSR1, 40}, O_NONBLOCK;
//! - fd 11: signalfd for {SIGUSR2}, blocking, FD_CLOEXEC.
//!
//! Verification: the masks in fdinfo; the flags; sigpending holds the three
//! signals; fd 10 reads SIGUSR1 (SI_USER from our pid) then 40 (SI_QUEUE,
//! value 0x1234) then EAGAIN (SIGUSR2 is not its business); fd 11 is
//! readable and reads SIGUSR2 (SI_TKILL); nothing is pending afterwards.
//! Role: `root`.

use stasis_integration::fdutil::*;
use stasis_integration::workload::{gettid, sigbit, sigset_bits, sigset_of, Ctx, Verdict};

const RT: i32 = 40;
const VALUE: i32 = 0x1234;

fn signalfd_at(sigs: &[i32], flags: i32, target: i32) -> R<()> {
    let set = sigset_of(sigs);
    // SAFETY: `set` is a valid sigset_t.
    let fd = unsafe { libc::signalfd(-1, &set, flags) };
    if fd < 0 {
        return Err(format!("signalfd: {}", errno()));
    }
    move_fd(fd, target, flags & libc::SFD_CLOEXEC != 0)
}

fn setup() -> R<()> {
    let set = sigset_of(&[libc::SIGUSR1, libc::SIGUSR2, RT]);
    // SAFETY: blocking signals in this single-threaded process.
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    signalfd_at(&[libc::SIGUSR1, RT], libc::SFD_NONBLOCK, 10)?;
    signalfd_at(&[libc::SIGUSR2], libc::SFD_CLOEXEC, 11)?;
    let pid = std::process::id() as i32;
    // SAFETY: signals to ourselves; all three are blocked.
    unsafe {
        if libc::kill(pid, libc::SIGUSR1) != 0 {
            return Err(format!("kill: {}", errno()));
        }
        let val = libc::sigval {
            sival_ptr: VALUE as usize as *mut libc::c_void,
        };
        if libc::sigqueue(pid, RT, val) != 0 {
            return Err(format!("sigqueue: {}", errno()));
        }
        if libc::syscall(libc::SYS_tgkill, pid, gettid(), libc::SIGUSR2) != 0 {
            return Err(format!("tgkill: {}", errno()));
        }
    }
    Ok(())
}

fn pending() -> u64 {
    let mut set = sigset_of(&[]);
    // SAFETY: `set` is a valid out-pointer.
    unsafe { libc::sigpending(&mut set) };
    sigset_bits(&set)
}

/// (signo, code, pid, int) of one signalfd_siginfo, or Err(errno).
fn read_info(fd: i32) -> Result<(u32, i32, u32, i32), i32> {
    let mut b = [0u8; 128];
    let n = read_once(fd, &mut b)?;
    if n != 128 {
        return Err(libc::EIO);
    }
    let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    // struct signalfd_siginfo: signo 0, errno 4, code 8, pid 12, uid 16,
    // fd 20, tid 24, band 28, overrun 32, trapno 36, status 40, int 44.
    Ok((u32_at(0), u32_at(8) as i32, u32_at(12), u32_at(44) as i32))
}

fn mask_in_fdinfo(fd: i32) -> Option<u64> {
    u64::from_str_radix(&fdinfo_field(fd, "sigmask")?, 16).ok()
}

fn check() -> Verdict {
    let mut v = Verdict::new();
    let pid = std::process::id();
    v.eq(
        "fd 10 sigmask",
        mask_in_fdinfo(10),
        Some(sigbit(libc::SIGUSR1) | sigbit(RT)),
    );
    v.eq(
        "fd 11 sigmask",
        mask_in_fdinfo(11),
        Some(sigbit(libc::SIGUSR2)),
    );
    match status_flags(10) {
        Ok(f) => v.eq("fd 10 flags", f, libc::O_RDWR | libc::O_NONBLOCK),
        Err(e) => v.fail(e),
    }
    match status_flags(11) {
        Ok(f) => v.eq("fd 11 flags", f, libc::O_RDWR),
        Err(e) => v.fail(e),
    }
    v.eq("fd 11 FD_CLOEXEC", getfd(11).ok(), Some(libc::FD_CLOEXEC));
    let want = sigbit(libc::SIGUSR1) | sigbit(libc::SIGUSR2) | sigbit(RT);
    v.eq("pending before reading", pending() & want, want);
    v.eq(
        "fd 10 first",
        read_info(10),
        Ok((libc::SIGUSR1 as u32, libc::SI_USER, pid, 0)),
    );
    v.eq(
        "fd 10 second",
        read_info(10),
        Ok((RT as u32, libc::SI_QUEUE, pid, VALUE)),
    );
    v.eq("fd 10 third", read_info(10), Err(libc::EAGAIN));
    v.eq("fd 11 readable", poll_one(11, libc::POLLIN, 0), Ok(true));
    v.eq(
        "fd 11",
        read_info(11),
        Ok((libc::SIGUSR2 as u32, libc::SI_TKILL, pid, 0)),
    );
    v.eq("pending after reading", pending() & want, 0);
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-signalfd STATEDIR");
    if let Err(e) = setup() {
        ctx.setup_failed("root", &e);
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let v = check();
    ctx.finish("root", v);
}
