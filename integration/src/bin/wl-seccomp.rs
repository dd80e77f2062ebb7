//! wl-seccomp STATEDIR: seccomp filters and strict mode (run as root).
//!
//! - `strict`: a child forked first that enters SECCOMP_MODE_STRICT and
//!   echoes bytes between two pipes (read/write are all it may do);
//! - the root installs F1 (getppid -> EPERM) and F2 (getsid -> EACCES,
//!   getppid -> ENOENT, with SECCOMP_FILTER_FLAG_LOG), then forks
//! - `child`: sets no_new_privs and adds F3 (sigaltstack -> E2BIG), a call
//!   the dumper and restorer make in every thread: it only works because
//!   they suspend the filters for themselves;
//! - then the root starts a `twin` thread, which inherits F1+F2.
//!
//! Verification: each filter still acts in each thread and process (and only
//! there), /proc says the same mode and filter counts; the strict child still
//! echoes and is still strict; and a TSYNC install of F4 (times -> EDOM) by
//! the root succeeds and reaches the twin, which needs the two threads to
//! share their filters again after a restore. Roles: `root`, `child`.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::Duration;

use stasis_integration::workload::{
    fork, gettid, proc_status_field, sleep_ns, wait_child, Ctx, Verdict,
};

const SECCOMP_SET_MODE_FILTER: u64 = 1;
const FLAG_TSYNC: u64 = 1;
const FLAG_LOG: u64 = 2;

/// The probed calls: getppid, getsid(0), getpgrp, times(NULL), sigaltstack.
const PROBES: usize = 5;
/// Errnos a thread sees before F4 (root, twin) / in the child. getppid is
/// denied by F1 and F2 alike: the newest filter's errno wins, so the order
/// of the chain shows.
const ROOT_WANT: [i32; PROBES] = [libc::ENOENT, libc::EACCES, 0, 0, 0];
const CHILD_WANT: [i32; PROBES] = [libc::ENOENT, libc::EACCES, 0, 0, libc::E2BIG];

/// A BPF program: `ERRNO(errno)` for each listed `(nr, errno)`, else ALLOW.
fn deny(rules: &[(i64, i32)]) -> Vec<libc::sock_filter> {
    let st = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let mut p = vec![st(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0)];
    for &(nr, errno) in rules {
        p.push(libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: nr as u32,
        });
        p.push(st(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | errno as u32,
        ));
    }
    p.push(st(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
    p
}

/// Install `deny(rules)`; returns seccomp()'s result or the error.
fn install(rules: &[(i64, i32)], flags: u64) -> Result<i64, String> {
    let prog = deny(rules);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points to `prog`, alive for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(format!(
            "seccomp(filter on {rules:?}): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(r)
}

/// The errno (0: success) of each probed call in the calling thread.
fn probe() -> [i32; PROBES] {
    let errno = |r: i64| {
        if r < 0 {
            std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
        } else {
            0
        }
    };
    let mut ss = std::mem::MaybeUninit::<libc::stack_t>::uninit();
    // SAFETY: argument-less calls, a null `times` buffer (allowed), and a
    // valid out-pointer for sigaltstack.
    unsafe {
        [
            errno(libc::syscall(libc::SYS_getppid)),
            errno(libc::syscall(libc::SYS_getsid, 0)),
            errno(libc::syscall(libc::SYS_getpgrp)),
            errno(libc::syscall(libc::SYS_times, 0usize)),
            errno(libc::syscall(
                libc::SYS_sigaltstack,
                0usize,
                ss.as_mut_ptr() as usize,
            )),
        ]
    }
}

/// A thread's `Seccomp` and `Seccomp_filters` lines.
fn status_of(tid: i32) -> (Option<String>, Option<String>) {
    let p = format!("/proc/self/task/{tid}/status");
    (
        proc_status_field(&p, "Seccomp"),
        proc_status_field(&p, "Seccomp_filters"),
    )
}

fn seccomp_lines(mode: u32, filters: u32) -> (Option<String>, Option<String>) {
    (Some(mode.to_string()), Some(filters.to_string()))
}

// The twin thread: probes on request (REQ bumped by the root, DONE echoes it).
static TWIN_TID: AtomicI32 = AtomicI32::new(0);
static REQ: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
static TWIN_SEEN: [AtomicI32; PROBES] = [const { AtomicI32::new(-1) }; PROBES];

fn twin() {
    TWIN_TID.store(gettid(), Ordering::SeqCst);
    loop {
        let req = REQ.load(Ordering::SeqCst);
        if req != DONE.load(Ordering::SeqCst) {
            for (slot, e) in TWIN_SEEN.iter().zip(probe()) {
                slot.store(e, Ordering::SeqCst);
            }
            DONE.store(req, Ordering::SeqCst);
        }
        sleep_ns(2_000_000);
    }
}

fn twin_probe() -> Result<[i32; PROBES], String> {
    let req = REQ.fetch_add(1, Ordering::SeqCst) + 1;
    for _ in 0..5000 {
        if DONE.load(Ordering::SeqCst) == req {
            return Ok(std::array::from_fn(|i| TWIN_SEEN[i].load(Ordering::SeqCst)));
        }
        sleep_ns(2_000_000);
    }
    Err("twin thread does not answer".into())
}

/// Echo one byte through the strict child.
fn ping(fds: &Pipes, b: u8) -> Result<(), String> {
    // SAFETY: one-byte buffers on our stack; descriptors we own.
    let w = unsafe { libc::write(fds.req_w, [b].as_ptr().cast(), 1) };
    if w != 1 {
        return Err(format!(
            "write to strict child: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut got = [0u8];
    // SAFETY: as above.
    let r = unsafe { libc::read(fds.resp_r, got.as_mut_ptr().cast(), 1) };
    if r != 1 || got[0] != b {
        return Err(format!("strict child echoed {r} byte(s) {got:?}, want {b}"));
    }
    Ok(())
}

struct Pipes {
    req_w: i32,
    resp_r: i32,
}

fn pipe() -> (i32, i32) {
    let mut p = [0; 2];
    // SAFETY: `p` is a valid two-int out-array.
    if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
        panic!("pipe: {}", std::io::Error::last_os_error());
    }
    (p[0], p[1])
}

/// The strict child: echo until 'x' or EOF, then exit (read, write and exit
/// are all strict mode allows).
fn strict_child(req_r: i32, resp_w: i32) -> ! {
    // SAFETY: raw syscalls only, on descriptors we own and a stack buffer.
    unsafe {
        if libc::prctl(libc::PR_SET_SECCOMP, 1, 0, 0, 0) != 0 {
            libc::syscall(libc::SYS_exit, 3);
        }
        let mut b = [0u8];
        loop {
            let n = libc::syscall(libc::SYS_read, req_r, b.as_mut_ptr(), 1);
            if n == -1 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n != 1 || b[0] == b'x' {
                libc::syscall(libc::SYS_exit, 0);
            }
            libc::syscall(libc::SYS_write, resp_w, b.as_ptr(), 1);
        }
    }
}

fn check_strict(v: &mut Verdict, pid: i32, fds: &Pipes, b: u8) {
    // The echo first: the child answers only once it is strict.
    v.result("strict child echo", ping(fds, b));
    v.eq(
        "strict child's Seccomp line",
        proc_status_field(&format!("/proc/{pid}/status"), "Seccomp"),
        Some("1".to_string()),
    );
}

fn main() {
    let mut ctx = Ctx::from_args("wl-seccomp STATEDIR");
    let (req_r, req_w) = pipe();
    let (resp_r, resp_w) = pipe();
    let strict = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
    if strict == 0 {
        strict_child(req_r, resp_w);
    }
    // SAFETY: closing the strict child's ends, unused here.
    unsafe {
        libc::close(req_r);
        libc::close(resp_w);
    }
    let fds = Pipes { req_w, resp_r };

    let setup = |ctx: &Ctx, r: Result<i64, String>| {
        if let Err(e) = r {
            ctx.setup_failed("root", &e);
        }
    };
    setup(&ctx, install(&[(libc::SYS_getppid, libc::EPERM)], 0));
    setup(
        &ctx,
        install(
            &[
                (libc::SYS_getsid, libc::EACCES),
                (libc::SYS_getppid, libc::ENOENT),
            ],
            FLAG_LOG,
        ),
    );

    let child = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
    if child == 0 {
        // SAFETY: integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            ctx.setup_failed("child", "PR_SET_NO_NEW_PRIVS");
        }
        if let Err(e) = install(&[(libc::SYS_sigaltstack, libc::E2BIG)], 0) {
            ctx.setup_failed("child", &e);
        }
        let verify = |v: &mut Verdict| {
            v.eq("child's probes (errnos)", probe(), CHILD_WANT);
            v.eq("child's /proc", status_of(gettid()), seccomp_lines(2, 3));
        };
        let mut pre = Verdict::new();
        verify(&mut pre);
        if !pre.is_ok() {
            ctx.setup_failed("child", &format!("before checkpoint: {}", pre.line()));
        }
        ctx.write_ready("child");
        ctx.wait_for_check(|| {});
        let mut v = Verdict::new();
        verify(&mut v);
        ctx.finish("child", v);
    }

    std::thread::spawn(twin);
    while TWIN_TID.load(Ordering::SeqCst) == 0 {
        sleep_ns(1_000_000);
    }
    let twin_tid = TWIN_TID.load(Ordering::SeqCst);
    let verify = |v: &mut Verdict, want: [i32; PROBES], filters: u32| {
        v.eq("root's probes (errnos)", probe(), want);
        match twin_probe() {
            Ok(p) => v.eq("twin's probes (errnos)", p, want),
            Err(e) => v.fail(e),
        }
        v.eq(
            "root's /proc",
            status_of(gettid()),
            seccomp_lines(2, filters),
        );
        v.eq(
            "twin's /proc",
            status_of(twin_tid),
            seccomp_lines(2, filters),
        );
    };
    let mut pre = Verdict::new();
    verify(&mut pre, ROOT_WANT, 2);
    check_strict(&mut pre, strict, &fds, b'a');
    if let Err(e) = ctx.wait_ready_of(&["child"], Duration::from_secs(20)) {
        pre.fail(e);
    }
    if !pre.is_ok() {
        ctx.setup_failed("root", &format!("before checkpoint: {}", pre.line()));
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});

    let mut v = Verdict::new();
    verify(&mut v, ROOT_WANT, 2);
    check_strict(&mut v, strict, &fds, b'b');
    // Only threads sharing their filter objects can take a TSYNC filter.
    match install(&[(libc::SYS_times, libc::EDOM)], FLAG_TSYNC) {
        Ok(0) => {
            let mut want = ROOT_WANT;
            want[3] = libc::EDOM;
            verify(&mut v, want, 3);
        }
        Ok(tid) => v.fail(format!(
            "TSYNC install: thread {tid} does not share the filters"
        )),
        Err(e) => v.fail(format!("TSYNC install: {e}")),
    }
    // SAFETY: a one-byte buffer; our pipe end.
    unsafe { libc::write(fds.req_w, b"x".as_ptr().cast(), 1) };
    v.result("strict child", wait_child(strict, Duration::from_secs(20)));
    v.result("child", wait_child(child, Duration::from_secs(20)));
    ctx.finish("root", v);
}
