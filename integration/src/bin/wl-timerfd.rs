//! wl-timerfd STATEDIR: timerfds armed, expired, periodic and absolute.
//!
//! - fd 10: CLOCK_MONOTONIC, every 10 ms, O_NONBLOCK, never read before the
//!   check: at least 30 expirations are unread when `ready` is written. The
//!   first read must give at least 30 and no more than the periods elapsed
//!   while the process existed; then it must keep firing (readable again
//!   within 500 ms);
//! - fd 11: CLOCK_BOOTTIME, fired once after 1 ms, period 1 hour: read gives
//!   exactly 1, then EAGAIN; still armed with the 1 hour period and a little
//!   less than 1 hour left;
//! - fd 12: CLOCK_REALTIME one-shot, expired: read gives exactly 1, then it
//!   is disarmed;
//! - fd 13: CLOCK_MONOTONIC, TFD_TIMER_ABSTIME one-shot 1.5 s after set-up:
//!   fdinfo still says `settime flags: 01`; it never fires before its
//!   deadline, and fires when its time left says (within 20..250 ms);
//! - fd 14: CLOCK_MONOTONIC, never armed, blocking: not readable, 0 left.
//!
//! fdinfo clock ids and F_GETFL flags are checked too. Role: `root`.

use stasis_integration::fdutil::*;
use stasis_integration::workload::{sleep_ns, Ctx, Verdict};

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;

fn now(clock: i32) -> u64 {
    // SAFETY: an all-zero timespec is valid.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `t` is a valid out-pointer.
    unsafe { libc::clock_gettime(clock, &mut t) };
    t.tv_sec as u64 * SEC + t.tv_nsec as u64
}

fn ts(ns: u64) -> libc::timespec {
    libc::timespec {
        tv_sec: (ns / SEC) as libc::time_t,
        tv_nsec: (ns % SEC) as libc::c_long,
    }
}

fn timer_at(clock: i32, flags: i32, target: i32) -> R<()> {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::timerfd_create(clock, flags) };
    if fd < 0 {
        return Err(format!("timerfd_create: {}", errno()));
    }
    move_fd(fd, target, flags & libc::TFD_CLOEXEC != 0)
}

fn arm(fd: i32, flags: i32, value: u64, interval: u64) -> R<()> {
    let spec = libc::itimerspec {
        it_value: ts(value),
        it_interval: ts(interval),
    };
    // SAFETY: `spec` is a valid itimerspec; no old value is requested.
    if unsafe { libc::timerfd_settime(fd, flags, &spec, std::ptr::null_mut()) } != 0 {
        return Err(format!("timerfd_settime fd {fd}: {}", errno()));
    }
    Ok(())
}

/// (time left, period) in ns.
fn gettime(fd: i32) -> R<(u64, u64)> {
    // SAFETY: an all-zero itimerspec is valid.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: `cur` is a valid out-pointer.
    if unsafe { libc::timerfd_gettime(fd, &mut cur) } != 0 {
        return Err(format!("timerfd_gettime fd {fd}: {}", errno()));
    }
    let n = |t: libc::timespec| t.tv_sec as u64 * SEC + t.tv_nsec as u64;
    Ok((n(cur.it_value), n(cur.it_interval)))
}

fn read_ticks(fd: i32) -> Result<u64, i32> {
    let mut b = [0u8; 8];
    match read_once(fd, &mut b)? {
        8 => Ok(u64::from_ne_bytes(b)),
        _ => Err(libc::EIO),
    }
}

struct State {
    /// CLOCK_MONOTONIC when fd 10 was armed.
    t10: u64,
    /// Absolute CLOCK_MONOTONIC deadline of fd 13.
    d13: u64,
}

fn setup() -> R<State> {
    timer_at(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK, 10)?;
    let t10 = now(libc::CLOCK_MONOTONIC);
    arm(10, 0, 10 * MS, 10 * MS)?;
    timer_at(libc::CLOCK_BOOTTIME, libc::TFD_NONBLOCK, 11)?;
    arm(11, 0, MS, 3600 * SEC)?;
    timer_at(libc::CLOCK_REALTIME, libc::TFD_NONBLOCK, 12)?;
    arm(12, 0, MS, 0)?;
    timer_at(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK, 13)?;
    let d13 = now(libc::CLOCK_MONOTONIC) + 1500 * MS;
    arm(13, libc::TFD_TIMER_ABSTIME, d13, 0)?;
    timer_at(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC, 14)?;
    // Let fd 10 pile up expirations.
    sleep_ns(320 * MS);
    Ok(State { t10, d13 })
}

fn clock_in_fdinfo(fd: i32) -> Option<String> {
    fdinfo_field(fd, "clockid")
}

fn check(st: &State) -> Verdict {
    let mut v = Verdict::new();
    for (fd, clock) in [
        (10, libc::CLOCK_MONOTONIC),
        (11, libc::CLOCK_BOOTTIME),
        (12, libc::CLOCK_REALTIME),
        (13, libc::CLOCK_MONOTONIC),
        (14, libc::CLOCK_MONOTONIC),
    ] {
        v.eq(
            &format!("fd {fd} clockid"),
            clock_in_fdinfo(fd),
            Some(clock.to_string()),
        );
        let want = if fd == 14 {
            libc::O_RDWR
        } else {
            libc::O_RDWR | libc::O_NONBLOCK
        };
        match status_flags(fd) {
            Ok(f) => v.eq(&format!("fd {fd} flags"), f, want),
            Err(e) => v.fail(e),
        }
    }
    v.eq("fd 14 FD_CLOEXEC", getfd(14).ok(), Some(libc::FD_CLOEXEC));

    // fd 10: unread ticks kept, and it keeps firing.
    let elapsed = now(libc::CLOCK_MONOTONIC) - st.t10;
    match read_ticks(10) {
        Ok(n) => {
            let most = elapsed / (10 * MS) + 1;
            v.check((30..=most).contains(&n), || {
                format!("fd 10: read {n} ticks, want 30..={most}")
            });
        }
        Err(e) => v.fail(format!("fd 10 read: errno {e}")),
    }
    match gettime(10) {
        Ok((left, period)) => {
            v.eq("fd 10 period", period, 10 * MS);
            v.check(left > 0 && left <= 10 * MS, || {
                format!("fd 10: {left} ns left")
            });
        }
        Err(e) => v.fail(e),
    }
    v.eq(
        "fd 10 fires again",
        poll_one(10, libc::POLLIN, 500),
        Ok(true),
    );
    match read_ticks(10) {
        Ok(n) => v.check(n >= 1, || format!("fd 10 second read: {n}")),
        Err(e) => v.fail(format!("fd 10 second read: errno {e}")),
    }

    // fd 11: one unread tick, still armed for an hour.
    v.eq("fd 11 read", read_ticks(11), Ok(1));
    v.eq("fd 11 second read", read_ticks(11), Err(libc::EAGAIN));
    match gettime(11) {
        Ok((left, period)) => {
            v.eq("fd 11 period", period, 3600 * SEC);
            v.check(left > 3500 * SEC && left <= 3600 * SEC, || {
                format!("fd 11: {left} ns left, want just under an hour")
            });
        }
        Err(e) => v.fail(e),
    }

    // fd 12: expired one-shot.
    v.eq("fd 12 read", read_ticks(12), Ok(1));
    v.eq("fd 12 after read", gettime(12), Ok((0, 0)));

    // fd 13: absolute one-shot.
    v.eq(
        "fd 13 settime flags",
        fdinfo_field(13, "settime flags"),
        Some("01".to_string()),
    );
    match gettime(13) {
        Ok((0, _)) => {
            // Already fired: never before its deadline.
            v.eq("fd 13 read", read_ticks(13), Ok(1));
            let t = now(libc::CLOCK_MONOTONIC);
            v.check(t >= st.d13, || "fd 13 fired before its deadline".into());
        }
        Ok((left, period)) => {
            v.eq("fd 13 period", period, 0);
            v.check(left <= 1500 * MS, || format!("fd 13: {left} ns left"));
            let t0 = now(libc::CLOCK_MONOTONIC);
            let ready = poll_one(13, libc::POLLIN, (left / MS) as i32 + 1000);
            let t1 = now(libc::CLOCK_MONOTONIC);
            v.eq("fd 13 fired", ready, Ok(true));
            let late = t1 as i128 - (t0 + left) as i128;
            v.check(
                (-20 * MS as i128..=250 * MS as i128).contains(&late),
                || format!("fd 13 fired {} ms off its time left", late / MS as i128),
            );
            v.check(t1 >= st.d13, || "fd 13 fired before its deadline".into());
            v.eq("fd 13 read", read_ticks(13), Ok(1));
        }
        Err(e) => v.fail(e),
    }

    // fd 14: never armed.
    v.eq("fd 14 time", gettime(14), Ok((0, 0)));
    v.eq("fd 14 readable", poll_one(14, libc::POLLIN, 0), Ok(false));
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-timerfd STATEDIR");
    let st = match setup() {
        Ok(s) => s,
        Err(e) => ctx.setup_failed("root", &e),
    };
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let v = check(&st);
    ctx.finish("root", v);
}
