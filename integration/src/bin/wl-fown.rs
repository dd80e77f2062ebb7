//! wl-fown STATEDIR: the owner and signal of open files (signal-driven I/O).
//!
//! - pipe fds 10 (read end) / 11 (write end): fd 10 owned by the process
//!   (F_OWNER_PID), F_SETSIG SIGRTMIN+2, O_ASYNC|O_NONBLOCK;
//! - fd 12, a regular file `STATEDIR/file`: owned by the main thread
//!   (F_OWNER_TID), F_SETSIG SIGUSR2, no O_ASYNC;
//! - unix socket pair fds 13 / 14: fd 13 owned by the process, default
//!   signal (F_GETSIG 0, so SIGIO), O_ASYNC;
//! - fd 15, a pipe read end without owner or signal.
//!
//! At check: every owner, signal and O_ASYNC flag is as set up; then a byte
//! written into fd 11 must raise SIGRTMIN+2 with si_fd 10, and a byte sent
//! on fd 14 must raise SIGIO.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use stasis_integration::fdutil::*;
use stasis_integration::workload::{gettid, Ctx, Verdict};

static RT_COUNT: AtomicU32 = AtomicU32::new(0);
static RT_FD: AtomicI32 = AtomicI32::new(-1);
static IO_COUNT: AtomicU32 = AtomicU32::new(0);

const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_OWNER_TID: i32 = 0;
const F_OWNER_PID: i32 = 1;

#[repr(C)]
#[derive(Default, Debug, PartialEq, Clone, Copy)]
struct Owner {
    ty: i32,
    pid: i32,
}

fn rt_sig() -> i32 {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_rt(_sig: i32, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    // si_fd of the SIGPOLL layout: after si_signo, si_errno, si_code, a pad
    // int and the long si_band, at byte 24 on x86_64.
    // SAFETY: the kernel passes a valid siginfo_t (128 bytes).
    let fd = unsafe { *((info as *const u8).add(24) as *const i32) };
    RT_FD.store(fd, Ordering::SeqCst);
    RT_COUNT.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_io(_sig: i32) {
    IO_COUNT.fetch_add(1, Ordering::SeqCst);
}

fn handle(sig: i32, f: usize, siginfo: bool) -> R<()> {
    // SAFETY: installing a handler that only touches atomics.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = f;
        sa.sa_flags = libc::SA_RESTART | if siginfo { libc::SA_SIGINFO } else { 0 };
        if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction({sig}): {}", errno()));
        }
    }
    Ok(())
}

fn fcntl_int(fd: i32, cmd: i32, arg: i32) -> R<i32> {
    // SAFETY: integer-only fcntl.
    let r = unsafe { libc::fcntl(fd, cmd, arg) };
    if r < 0 {
        return Err(format!("fcntl({fd}, {cmd}): {}", errno()));
    }
    Ok(r)
}

fn set_owner(fd: i32, ty: i32, pid: i32) -> R<()> {
    let o = Owner { ty, pid };
    // SAFETY: F_SETOWN_EX reads one f_owner_ex.
    if unsafe { libc::fcntl(fd, F_SETOWN_EX, &o as *const Owner) } != 0 {
        return Err(format!("F_SETOWN_EX on {fd}: {}", errno()));
    }
    Ok(())
}

fn get_owner(fd: i32) -> R<Owner> {
    let mut o = Owner::default();
    // SAFETY: F_GETOWN_EX writes one f_owner_ex.
    if unsafe { libc::fcntl(fd, F_GETOWN_EX, &mut o as *mut Owner) } != 0 {
        return Err(format!("F_GETOWN_EX on {fd}: {}", errno()));
    }
    Ok(o)
}

fn setup(ctx: &Ctx) -> R<()> {
    handle(rt_sig(), on_rt as *const () as usize, true)?;
    handle(libc::SIGIO, on_io as *const () as usize, false)?;
    let pid = std::process::id() as i32;
    pipe_at(10, 11, 0)?;
    fcntl_int(10, F_SETSIG, rt_sig())?;
    set_owner(10, F_OWNER_PID, pid)?;
    setfl(10, libc::O_ASYNC | libc::O_NONBLOCK)?;

    let path = ctx.path("file");
    std::fs::write(&path, b"fown").map_err(|e| format!("write {}: {e}", path.display()))?;
    let f = std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    move_fd(std::os::fd::IntoRawFd::into_raw_fd(f), 12, false)?;
    fcntl_int(12, F_SETSIG, libc::SIGUSR2)?;
    set_owner(12, F_OWNER_TID, gettid())?;

    let mut sv = [-1i32; 2];
    // SAFETY: `sv` has room for two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) } != 0 {
        return Err(format!("socketpair: {}", errno()));
    }
    move_fd(sv[0], 30, false)?;
    move_fd(sv[1], 31, false)?;
    move_fd(30, 13, false)?;
    move_fd(31, 14, false)?;
    set_owner(13, F_OWNER_PID, pid)?;
    setfl(13, libc::O_ASYNC | libc::O_NONBLOCK)?;

    pipe_at(15, 16, libc::O_NONBLOCK)?;
    close(16);
    Ok(())
}

fn wait_count(c: &AtomicU32, min: u32) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.load(Ordering::SeqCst) < min && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    c.load(Ordering::SeqCst)
}

fn check() -> Verdict {
    let mut v = Verdict::new();
    let pid = std::process::id() as i32;
    v.eq(
        "fd 10 owner",
        get_owner(10),
        Ok(Owner {
            ty: F_OWNER_PID,
            pid,
        }),
    );
    v.eq("fd 10 signal", fcntl_int(10, F_GETSIG, 0), Ok(rt_sig()));
    v.eq(
        "fd 10 flags",
        status_flags(10),
        Ok(libc::O_RDONLY | libc::O_ASYNC | libc::O_NONBLOCK),
    );
    v.eq(
        "fd 12 owner",
        get_owner(12),
        Ok(Owner {
            ty: F_OWNER_TID,
            pid: gettid(),
        }),
    );
    v.eq(
        "fd 12 signal",
        fcntl_int(12, F_GETSIG, 0),
        Ok(libc::SIGUSR2),
    );
    v.eq("fd 12 flags", status_flags(12), Ok(libc::O_RDONLY));
    v.eq(
        "fd 13 owner",
        get_owner(13),
        Ok(Owner {
            ty: F_OWNER_PID,
            pid,
        }),
    );
    v.eq("fd 13 signal", fcntl_int(13, F_GETSIG, 0), Ok(0));
    v.eq(
        "fd 13 flags",
        status_flags(13),
        Ok(libc::O_RDWR | libc::O_ASYNC | libc::O_NONBLOCK),
    );
    v.eq("fd 15 owner", get_owner(15), Ok(Owner::default()));
    v.eq("fd 15 signal", fcntl_int(15, F_GETSIG, 0), Ok(0));
    v.eq(
        "fd 15 flags",
        status_flags(15),
        Ok(libc::O_RDONLY | libc::O_NONBLOCK),
    );

    // Signal-driven I/O still works.
    let rt0 = RT_COUNT.load(Ordering::SeqCst);
    v.result("write fd 11", write_all(11, b"x"));
    v.check(wait_count(&RT_COUNT, rt0 + 1) > rt0, || {
        "no SIGRTMIN+2 after the pipe became readable".into()
    });
    v.eq("si_fd of the pipe signal", RT_FD.load(Ordering::SeqCst), 10);
    let mut b = [0u8; 1];
    v.eq("read fd 10", read_once(10, &mut b), Ok(1));
    let io0 = IO_COUNT.load(Ordering::SeqCst);
    v.result("write fd 14", write_all(14, b"y"));
    v.check(wait_count(&IO_COUNT, io0 + 1) > io0, || {
        "no SIGIO after the socket became readable".into()
    });
    v.eq("read fd 13", read_once(13, &mut b), Ok(1));
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-fown STATEDIR");
    if let Err(e) = setup(&ctx) {
        ctx.setup_failed("root", &e);
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let v = check();
    ctx.finish("root", v);
}
