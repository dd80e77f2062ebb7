//! wl-timers STATEDIR: POSIX timers and interval timers keep running.
//!
//! Set up before `ready` (raw syscalls, so the ids are the kernel's):
//! - a timer created and deleted again, so the ids start with a hole;
//! - T1: CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+1 with value 0xc0ffee,
//!   every 25 ms;
//! - T2: CLOCK_REALTIME, SIGEV_NONE, one shot in 1000 s;
//! - T3: CLOCK_MONOTONIC, SIGEV_THREAD_ID to the main thread, SIGRTMIN+3
//!   with value 0xbeef, every 40 ms;
//! - T4: CLOCK_BOOTTIME, SIGEV_SIGNAL SIGRTMIN+4, never armed;
//! - ITIMER_REAL every 30 ms (SIGALRM).
//!
//! Verification: `/proc/self/timers` is unchanged (ids, signals, values,
//! notification targets, clocks; our own pid as /proc names it may change
//! in a pid namespace); the deleted id is still unused; T2 has
//! between 900 and 1000 s left and no period, T4 is disarmed, T1/T3 and
//! ITIMER_REAL keep their periods; then within 3 s T1, T3 and ITIMER_REAL
//! must each fire at least 3 more times, T1 and T3 with SI_TIMER, their own
//! timer id and their value. Role: `root`.

use std::fs;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use stasis_integration::workload::{gettid, sleep_ns, Ctx, Verdict};

const V1: u64 = 0xc0ffee;
const V3: u64 = 0xbeef;
const MS: u64 = 1_000_000;

/// Per signal: deliveries, last si_code, last timer id, last value.
struct Rec {
    count: AtomicU64,
    code: AtomicI64,
    id: AtomicI64,
    value: AtomicU64,
}

static R1: Rec = Rec::new();
static R3: Rec = Rec::new();
static ALRM: AtomicU64 = AtomicU64::new(0);

impl Rec {
    const fn new() -> Rec {
        Rec {
            count: AtomicU64::new(0),
            code: AtomicI64::new(0),
            id: AtomicI64::new(-1),
            value: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> (u64, i64, i64, u64) {
        (
            self.count.load(Ordering::SeqCst),
            self.code.load(Ordering::SeqCst),
            self.id.load(Ordering::SeqCst),
            self.value.load(Ordering::SeqCst),
        )
    }
}

extern "C" fn on_timer(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let r = if sig == libc::SIGRTMIN() + 1 {
        &R1
    } else {
        &R3
    };
    // SAFETY: the kernel passes a valid siginfo to SA_SIGINFO handlers;
    // for SI_TIMER the timer id is the int at byte 16 and the value the
    // word at byte 24.
    unsafe {
        let p = info as *const u8;
        r.code.store((*info).si_code as i64, Ordering::SeqCst);
        r.id.store(
            std::ptr::read_unaligned(p.add(16) as *const i32) as i64,
            Ordering::SeqCst,
        );
        r.value.store(
            std::ptr::read_unaligned(p.add(24) as *const u64),
            Ordering::SeqCst,
        );
    }
    r.count.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn on_alarm(_: libc::c_int) {
    ALRM.fetch_add(1, Ordering::SeqCst);
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn handle(sig: i32, f: usize, siginfo: bool) -> Result<(), String> {
    // SAFETY: an all-zero sigaction is valid to fill in.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = f;
    sa.sa_flags = libc::SA_RESTART | if siginfo { libc::SA_SIGINFO } else { 0 };
    // SAFETY: `sa` is initialised; the handlers only touch atomics.
    if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaction {sig}: {}", errno()));
    }
    Ok(())
}

/// timer_create(2) with a raw sigevent; returns the kernel timer id.
fn create(clock: i32, notify: i32, signo: i32, value: u64, tid: i32) -> Result<i32, String> {
    let mut sev = [0u8; 64];
    sev[0..8].copy_from_slice(&value.to_ne_bytes());
    sev[8..12].copy_from_slice(&signo.to_ne_bytes());
    sev[12..16].copy_from_slice(&notify.to_ne_bytes());
    sev[16..20].copy_from_slice(&tid.to_ne_bytes());
    let mut id: i32 = -1;
    // SAFETY: `sev` is a 64-byte struct sigevent, `id` a valid out-pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_create,
            clock,
            sev.as_ptr(),
            &mut id as *mut i32,
        )
    };
    if r != 0 {
        return Err(format!("timer_create: {}", errno()));
    }
    Ok(id)
}

/// (interval, value) of a POSIX timer in ns; Err(errno) on failure.
fn gettime(id: i32) -> Result<(u64, u64), i32> {
    let mut ts = [0i64; 4];
    // SAFETY: `ts` is a valid struct itimerspec.
    let r = unsafe { libc::syscall(libc::SYS_timer_gettime, id, ts.as_mut_ptr()) };
    if r != 0 {
        return Err(errno().raw_os_error().unwrap_or(0));
    }
    Ok((
        ts[0] as u64 * 1_000_000_000 + ts[1] as u64,
        ts[2] as u64 * 1_000_000_000 + ts[3] as u64,
    ))
}

fn settime(id: i32, interval_ns: u64, value_ns: u64) -> Result<(), String> {
    let ts = [
        (interval_ns / 1_000_000_000) as i64,
        (interval_ns % 1_000_000_000) as i64,
        (value_ns / 1_000_000_000) as i64,
        (value_ns % 1_000_000_000) as i64,
    ];
    // SAFETY: `ts` is a valid struct itimerspec; no old value is asked for.
    let r = unsafe {
        libc::syscall(
            libc::SYS_timer_settime,
            id,
            0,
            ts.as_ptr(),
            std::ptr::null_mut::<u8>(),
        )
    };
    if r != 0 {
        return Err(format!("timer_settime {id}: {}", errno()));
    }
    Ok(())
}

fn itimer_real() -> (u64, u64) {
    let mut v = [0i64; 4];
    // SAFETY: `v` is a valid struct itimerval.
    unsafe { libc::syscall(libc::SYS_getitimer, libc::ITIMER_REAL, v.as_mut_ptr()) };
    (
        (v[0] * 1_000_000 + v[1]) as u64,
        (v[2] * 1_000_000 + v[3]) as u64,
    )
}

struct Ids {
    gone: i32,
    t1: i32,
    t2: i32,
    t3: i32,
    t4: i32,
}

fn setup() -> Result<Ids, String> {
    let rt1 = libc::SIGRTMIN() + 1;
    let rt3 = libc::SIGRTMIN() + 3;
    handle(rt1, on_timer as extern "C" fn(_, _, _) as usize, true)?;
    handle(rt3, on_timer as extern "C" fn(_, _, _) as usize, true)?;
    handle(libc::SIGALRM, on_alarm as extern "C" fn(_) as usize, false)?;
    let gone = create(libc::CLOCK_MONOTONIC, libc::SIGEV_NONE, 0, 0, 0)?;
    // SAFETY: deleting the timer we just created.
    if unsafe { libc::syscall(libc::SYS_timer_delete, gone) } != 0 {
        return Err(format!("timer_delete: {}", errno()));
    }
    let ids = Ids {
        gone,
        t1: create(libc::CLOCK_MONOTONIC, libc::SIGEV_SIGNAL, rt1, V1, 0)?,
        t2: create(libc::CLOCK_REALTIME, libc::SIGEV_NONE, 0, 0, 0)?,
        t3: create(
            libc::CLOCK_MONOTONIC,
            libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID,
            rt3,
            V3,
            gettid(),
        )?,
        t4: create(libc::CLOCK_BOOTTIME, libc::SIGEV_SIGNAL, rt1 + 3, 0x44, 0)?,
    };
    settime(ids.t1, 25 * MS, 25 * MS)?;
    settime(ids.t2, 0, 1000 * 1000 * MS)?;
    settime(ids.t3, 40 * MS, 40 * MS)?;
    let it = [0i64, 30_000, 0, 30_000];
    // SAFETY: `it` is a valid struct itimerval; no old value is asked for.
    if unsafe {
        libc::syscall(
            libc::SYS_setitimer,
            libc::ITIMER_REAL,
            it.as_ptr(),
            std::ptr::null_mut::<u8>(),
        )
    } != 0
    {
        return Err(format!("setitimer: {}", errno()));
    }
    Ok(ids)
}

/// `/proc/self/timers` with our own pid (as that /proc sees it, i.e. the
/// host's when we are pid 1 of a namespace without a /proc of its own: a
/// new one after restore) written `SELF`, so targets still compare.
fn proc_timers() -> String {
    let s = fs::read_to_string("/proc/self/timers").unwrap_or_default();
    let Some(me) = fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().map(String::from))
    else {
        return s;
    };
    s.replace(&format!("pid.{me}\n"), "pid.SELF\n")
        .replace(&format!("tid.{me}\n"), "tid.SELF\n")
}

fn verify(ids: &Ids, timers_before: &str) -> Verdict {
    let mut v = Verdict::new();
    let now = proc_timers();
    v.eq("/proc/self/timers", now.as_str(), timers_before);
    v.eq(
        "deleted timer id still unused",
        gettime(ids.gone),
        Err(libc::EINVAL),
    );
    match gettime(ids.t2) {
        Ok((i, left)) => {
            v.eq("T2 period", i, 0);
            v.check(left > 900 * 1000 * MS && left <= 1000 * 1000 * MS, || {
                format!("T2 has {left} ns left, want 900..1000 s")
            });
        }
        Err(e) => v.fail(format!("timer_gettime T2: errno {e}")),
    }
    v.eq("T4 (never armed)", gettime(ids.t4), Ok((0, 0)));
    v.eq("T1 period", gettime(ids.t1).map(|x| x.0), Ok(25 * MS));
    v.eq("T3 period", gettime(ids.t3).map(|x| x.0), Ok(40 * MS));
    v.eq("ITIMER_REAL period (us)", itimer_real().0, 30_000);
    let (c1, c3, ca) = (
        R1.snapshot().0,
        R3.snapshot().0,
        ALRM.load(Ordering::SeqCst),
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline
        && (R1.snapshot().0 < c1 + 3
            || R3.snapshot().0 < c3 + 3
            || ALRM.load(Ordering::SeqCst) < ca + 3)
    {
        sleep_ns(5 * MS);
    }
    let (n1, code1, id1, val1) = R1.snapshot();
    let (n3, code3, id3, val3) = R3.snapshot();
    let na = ALRM.load(Ordering::SeqCst);
    v.check(n1 >= c1 + 3, || {
        format!("T1 fired {} times in 3 s", n1 - c1)
    });
    v.check(n3 >= c3 + 3, || {
        format!("T3 fired {} times in 3 s", n3 - c3)
    });
    v.check(na >= ca + 3, || {
        format!("ITIMER_REAL fired {} times in 3 s", na - ca)
    });
    v.eq(
        "T1 signal (code, id, value)",
        (code1, id1, val1),
        (libc::SI_TIMER as i64, ids.t1 as i64, V1),
    );
    v.eq(
        "T3 signal (code, id, value)",
        (code3, id3, val3),
        (libc::SI_TIMER as i64, ids.t3 as i64, V3),
    );
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-timers STATEDIR");
    let ids = setup().unwrap_or_else(|e| ctx.setup_failed("root", &e));
    if [ids.t1, ids.t2, ids.t3, ids.t4] != [ids.gone + 1, ids.gone + 2, ids.gone + 3, ids.gone + 4]
    {
        ctx.setup_failed("root", "timer ids are not consecutive");
    }
    let before = proc_timers();
    // Let every timer fire before the dump.
    let t0 = Instant::now();
    while (R1.snapshot().0 < 2 || R3.snapshot().0 < 2 || ALRM.load(Ordering::SeqCst) < 2)
        && t0.elapsed() < Duration::from_secs(5)
    {
        sleep_ns(5 * MS);
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let v = verify(&ids, &before);
    ctx.finish("root", v);
}
