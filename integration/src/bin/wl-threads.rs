//! wl-threads STATEDIR: four threads with their own TLS, signal masks, names
//! and counters.
//!
//! Each worker thread `i` sets a `thread_local!` value, a pthread key value,
//! its own `pthread_sigmask`, its name (`wl-thr-i`), then loops: a burst of
//! counter increments (in user space) and a 1 ms nanosleep (in the kernel).
//! The main thread blocks its own set of signals and polls for `check`.
//!
//! After `check`: each thread verifies its own TLS values, TID, sigmask (via
//! `pthread_sigmask`) and reports; the main thread verifies each thread's
//! `SigBlk` in `/proc/self/task/TID/status`, its name, the task count, and that
//! every counter advances after the check. Role: `root`.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use stasis_integration::workload::{
    gettid, parse_hex, proc_status_field, sigbit, sigset_of, sleep_ns, thread_sigmask_bits, Ctx,
    Verdict,
};

const N: usize = 4;

thread_local! {
    static TLS: Cell<u64> = const { Cell::new(0) };
}

static COUNTERS: [AtomicU64; N] = [const { AtomicU64::new(0) }; N];
static TIDS: [AtomicI32; N] = [const { AtomicI32::new(0) }; N];
static SETUP_DONE: [AtomicBool; N] = [const { AtomicBool::new(false) }; N];
static CHECK: AtomicBool = AtomicBool::new(false);
static STOP: AtomicBool = AtomicBool::new(false);
static KEY: OnceLock<libc::pthread_key_t> = OnceLock::new();

fn tls_value(i: usize) -> u64 {
    0x7715_0000_0000_0000 | ((i as u64 + 1) * 0x1111)
}

fn key_value(i: usize) -> usize {
    0x4b45_5900 + i
}

/// The signals thread `i` blocks.
fn thread_sigs(i: usize) -> Vec<i32> {
    let rt = libc::SIGRTMIN();
    let mut v = vec![rt + 3 + i as i32];
    match i {
        0 => v.push(libc::SIGUSR1),
        1 => v.push(libc::SIGUSR2),
        2 => v.extend([libc::SIGHUP, libc::SIGWINCH]),
        _ => v.extend([libc::SIGUSR1, libc::SIGUSR2, libc::SIGPROF]),
    }
    v
}

fn main_sigs() -> Vec<i32> {
    vec![libc::SIGALRM, libc::SIGRTMIN() + 10]
}

fn mask_of(sigs: &[i32]) -> u64 {
    sigs.iter().fold(0, |m, &s| m | sigbit(s))
}

fn set_mask(sigs: &[i32]) {
    let set = sigset_of(sigs);
    // SAFETY: `set` is a valid sigset; the old mask is not requested.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
}

fn worker(i: usize) -> Result<(), String> {
    let name = std::ffi::CString::new(format!("wl-thr-{i}")).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
    TLS.with(|t| t.set(tls_value(i)));
    let key = *KEY.get().expect("key created before threads");
    // SAFETY: `key` is a live pthread key; the value is an opaque integer.
    unsafe { libc::pthread_setspecific(key, key_value(i) as *const libc::c_void) };
    set_mask(&thread_sigs(i));
    let tid = gettid();
    TIDS[i].store(tid, Ordering::SeqCst);
    SETUP_DONE[i].store(true, Ordering::SeqCst);

    let c = &COUNTERS[i];
    while !CHECK.load(Ordering::SeqCst) {
        for _ in 0..10_000 {
            c.fetch_add(1, Ordering::Relaxed);
        }
        sleep_ns(1_000_000);
    }

    let mut v = Verdict::new();
    v.eq("TLS value", TLS.with(|t| t.get()), tls_value(i));
    // SAFETY: `key` is a live pthread key.
    let kv = unsafe { libc::pthread_getspecific(key) } as usize;
    v.eq("pthread key value", kv, key_value(i));
    v.eq("tid", gettid(), tid);
    v.eq(
        "sigmask (pthread_sigmask)",
        format!("{:#x}", thread_sigmask_bits()),
        format!("{:#x}", mask_of(&thread_sigs(i))),
    );
    // Keep counting until the main thread has seen the counter move.
    while !STOP.load(Ordering::SeqCst) {
        for _ in 0..10_000 {
            c.fetch_add(1, Ordering::Relaxed);
        }
        sleep_ns(1_000_000);
    }
    if v.is_ok() {
        Ok(())
    } else {
        Err(v.line().trim_start_matches("fail: ").to_string())
    }
}

fn main() {
    let mut ctx = Ctx::from_args("wl-threads STATEDIR");
    let mut key: libc::pthread_key_t = 0;
    // SAFETY: `key` is a valid out-pointer; no destructor.
    if unsafe { libc::pthread_key_create(&mut key, None) } != 0 {
        ctx.setup_failed("root", "pthread_key_create");
    }
    KEY.set(key).expect("set once");
    set_mask(&main_sigs());
    let handles: Vec<_> = (0..N)
        .map(|i| {
            std::thread::Builder::new()
                .name(format!("wl-thr-{i}"))
                .spawn(move || worker(i))
                .unwrap_or_else(|e| ctx.setup_failed("root", &format!("spawn: {e}")))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !SETUP_DONE.iter().all(|d| d.load(Ordering::SeqCst)) {
        if Instant::now() > deadline {
            ctx.setup_failed("root", "threads did not start");
        }
        sleep_ns(1_000_000);
    }
    let main_tid = gettid();
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    CHECK.store(true, Ordering::SeqCst);

    let mut v = Verdict::new();
    v.eq("main tid", gettid(), main_tid);
    v.eq("pid", gettid() as u32, std::process::id());
    v.eq(
        "main sigmask",
        format!("{:#x}", thread_sigmask_bits()),
        format!("{:#x}", mask_of(&main_sigs())),
    );
    let tasks = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    v.eq("number of tasks", tasks, N + 1);
    for (i, tid) in TIDS.iter().enumerate() {
        let tid = tid.load(Ordering::SeqCst);
        let status = format!("/proc/self/task/{tid}/status");
        match proc_status_field(&status, "SigBlk").and_then(|s| parse_hex(&s)) {
            Some(m) => v.eq(
                &format!("thread {i} SigBlk"),
                format!("{m:#x}"),
                format!("{:#x}", mask_of(&thread_sigs(i))),
            ),
            None => v.fail(format!("thread {i}: cannot read {status}")),
        }
        let comm =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        v.eq(
            &format!("thread {i} name"),
            comm.trim().to_string(),
            format!("wl-thr-{i}"),
        );
    }
    // Every counter must advance after the check.
    let before: Vec<u64> = COUNTERS.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stuck: Vec<usize> = (0..N).collect();
    while !stuck.is_empty() && Instant::now() < deadline {
        sleep_ns(10_000_000);
        stuck.retain(|&i| COUNTERS[i].load(Ordering::SeqCst) == before[i]);
    }
    for i in stuck {
        v.fail(format!("thread {i}: counter stuck at {}", before[i]));
    }
    STOP.store(true, Ordering::SeqCst);
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(r) => v.result(&format!("thread {i}"), r),
            Err(_) => v.fail(format!("thread {i} panicked")),
        }
    }
    ctx.finish("root", v);
}
