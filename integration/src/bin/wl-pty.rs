//! wl-pty STATEDIR: a pseudo-terminal pair held inside the tree.
//!
//! The root holds the master (fd 10); the `child` role is a session leader
//! with the slave (fd 20) as its controlling terminal. The slave is in raw
//! mode with VINTR = ^G and VMIN = 1; the window is 33x101 (7x9 pixels).
//!
//! At check: the child's terminal is still its controlling terminal
//! (TIOCGSID gives its pid, /dev/tty opens), termios and window
//! size are as set up, on both sides; the slave is still exclusive
//! (TIOCEXCL); the master keeps its owner (the root) and signal (SIGUSR1); data flows both ways (the child writes
//! "ping" into the slave, the root reads it from the master and answers
//! "pong", which the child must read).

use std::ffi::CStr;
use std::time::Duration;

use stasis_integration::fdutil::*;
use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

const WAIT: Duration = Duration::from_secs(10);
const WS: (u16, u16, u16, u16) = (33, 101, 7, 9);
const VINTR_CHAR: u8 = 0x07;
const F_SETSIG: i32 = 10;
const F_GETSIG: i32 = 11;
const F_SETOWN_EX: i32 = 15;
const F_GETOWN_EX: i32 = 16;
const F_OWNER_PID: i32 = 1;

fn get_int(fd: i32, req: libc::Ioctl) -> R<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the request writes one int.
    if unsafe { libc::ioctl(fd, req, &mut v) } != 0 {
        return Err(format!("ioctl {req:#x} on {fd}: {}", errno()));
    }
    Ok(v)
}

fn winsize(fd: i32) -> R<(u16, u16, u16, u16)> {
    // SAFETY: TIOCGWINSZ writes one winsize.
    unsafe {
        let mut w: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut w) != 0 {
            return Err(format!("TIOCGWINSZ on {fd}: {}", errno()));
        }
        Ok((w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel))
    }
}

fn termios(fd: i32) -> R<libc::termios> {
    // SAFETY: tcgetattr writes one termios.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return Err(format!("tcgetattr {fd}: {}", errno()));
        }
        Ok(t)
    }
}

fn setup_master() -> R<String> {
    // SAFETY: plain libc pty calls on the descriptor we just opened.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        if m < 0 {
            return Err(format!("posix_openpt: {}", errno()));
        }
        move_fd(m, 10, false)?;
        if libc::grantpt(10) != 0 || libc::unlockpt(10) != 0 {
            return Err(format!("grantpt/unlockpt: {}", errno()));
        }
        let name = libc::ptsname(10);
        if name.is_null() {
            return Err(format!("ptsname: {}", errno()));
        }
        let name = CStr::from_ptr(name).to_string_lossy().into_owned();
        let w = libc::winsize {
            ws_row: WS.0,
            ws_col: WS.1,
            ws_xpixel: WS.2,
            ws_ypixel: WS.3,
        };
        if libc::ioctl(10, libc::TIOCSWINSZ, &w) != 0 {
            return Err(format!("TIOCSWINSZ: {}", errno()));
        }
        let o = [F_OWNER_PID, std::process::id() as i32];
        if libc::fcntl(10, F_SETOWN_EX, o.as_ptr()) != 0
            || libc::fcntl(10, F_SETSIG, libc::SIGUSR1) != 0
        {
            return Err(format!("F_SETOWN_EX/F_SETSIG: {}", errno()));
        }
        Ok(name)
    }
}

fn setup_child(name: &str) -> R<()> {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: plain libc calls; `c` is a valid path.
    unsafe {
        if libc::setsid() < 0 {
            return Err(format!("setsid: {}", errno()));
        }
        let s = libc::open(c.as_ptr(), libc::O_RDWR);
        if s < 0 {
            return Err(format!("open {name}: {}", errno()));
        }
        move_fd(s, 20, false)?;
        if libc::ioctl(20, libc::TIOCSCTTY, 0) != 0 {
            return Err(format!("TIOCSCTTY: {}", errno()));
        }
        let mut t = termios(20)?;
        libc::cfmakeraw(&mut t);
        t.c_cc[libc::VINTR] = VINTR_CHAR;
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        if libc::tcsetattr(20, libc::TCSANOW, &t) != 0 {
            return Err(format!("tcsetattr: {}", errno()));
        }
        if libc::ioctl(20, libc::TIOCEXCL) != 0 {
            return Err(format!("TIOCEXCL: {}", errno()));
        }
    }
    Ok(())
}

fn check_child() -> Verdict {
    let mut v = Verdict::new();
    let pid = std::process::id() as i32;
    let mut sid: libc::pid_t = 0;
    // SAFETY: TIOCGSID writes one pid_t.
    let r = unsafe { libc::ioctl(20, libc::TIOCGSID, &mut sid) };
    v.eq(
        "TIOCGSID on the slave (is it our controlling terminal?)",
        (r, sid),
        (0, pid),
    );
    // /dev/tty opens the controlling terminal (ENXIO without one).
    let c = c"/dev/tty";
    // SAFETY: `c` is a valid path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        v.fail(format!("open /dev/tty: {}", errno()));
    } else {
        close(fd);
    }
    match termios(20) {
        Ok(t) => {
            v.eq(
                "ICANON|ECHO|ISIG",
                t.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG),
                0,
            );
            v.eq("OPOST", t.c_oflag & libc::OPOST, 0);
            v.eq("VINTR", t.c_cc[libc::VINTR], VINTR_CHAR);
            v.eq("VMIN", t.c_cc[libc::VMIN], 1);
        }
        Err(e) => v.fail(e),
    }
    v.eq("slave window size", winsize(20), Ok(WS));
    v.eq("slave TIOCGEXCL", get_int(20, libc::TIOCGEXCL), Ok(1));
    v.result("write ping", write_all(20, b"ping"));
    match read_exact_timeout(20, 4, WAIT) {
        Ok(b) => v.eq("answer", b.as_slice(), b"pong".as_slice()),
        Err(e) => v.fail(e),
    }
    v
}

fn check_root() -> Verdict {
    let mut v = Verdict::new();
    match fstat(10) {
        Ok(st) => v.eq(
            "fd 10 is a pty master",
            (libc::major(st.st_rdev), libc::minor(st.st_rdev)),
            (5, 2),
        ),
        Err(e) => v.fail(e),
    }
    v.eq("master window size", winsize(10), Ok(WS));
    v.eq("master TIOCGEXCL", get_int(10, libc::TIOCGEXCL), Ok(0));
    let mut o = [0i32; 2];
    // SAFETY: F_GETOWN_EX writes one f_owner_ex (two ints).
    let r = unsafe { libc::fcntl(10, F_GETOWN_EX, o.as_mut_ptr()) };
    v.eq(
        "master owner",
        (r, o),
        (0, [F_OWNER_PID, std::process::id() as i32]),
    );
    // SAFETY: integer-only fcntl.
    v.eq(
        "master signal",
        unsafe { libc::fcntl(10, F_GETSIG) },
        libc::SIGUSR1,
    );
    match read_exact_timeout(10, 4, WAIT) {
        Ok(b) => v.eq("from the child", b.as_slice(), b"ping".as_slice()),
        Err(e) => v.fail(e),
    }
    v.result("write pong", write_all(10, b"pong"));
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-pty STATEDIR");
    let name = match setup_master() {
        Ok(n) => n,
        Err(e) => ctx.setup_failed("root", &e),
    };
    let child = match fork() {
        Ok(0) => {
            if let Err(e) = setup_child(&name) {
                ctx.setup_failed("child", &e);
            }
            close(10);
            ctx.write_ready("child");
            ctx.wait_for_check(|| {});
            let v = check_child();
            ctx.finish("child", v);
        }
        Ok(pid) => pid,
        Err(e) => ctx.setup_failed("root", &format!("fork: {e}")),
    };
    if let Err(e) = ctx.wait_ready_of(&["child"], WAIT) {
        ctx.setup_failed("root", &e);
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = check_root();
    v.result("child", wait_child(child, Duration::from_secs(20)));
    ctx.finish("root", v);
}
