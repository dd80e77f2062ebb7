//! wl-signals STATEDIR [trap-ignored]: signal handlers, masks, pending signals, altstack.
//!
//! Set up before `ready`:
//! - SIGUSR1: SA_SIGINFO|SA_ONSTACK|SA_RESTART, sa_mask {HUP, TERM}; blocked,
//!   sent with `kill(getpid())` (pending for the process);
//! - SIGUSR2: SA_SIGINFO, sa_mask {INT}; blocked, sent with `tgkill` (pending
//!   for the thread);
//! - SIGRTMIN+2: SA_SIGINFO|SA_ONSTACK, sa_mask {QUIT}; blocked, queued twice
//!   with `sigqueue` values 4242 then 4343;
//! - SIGQUIT: SA_SIGINFO|SA_RESETHAND|SA_NODEFER (never sent); SIGINT ignored;
//!   SIGTERM default;
//! - SIGTRAP: SA_SIGINFO, sa_mask {USR2}, and blocked (the dump's remote
//!   calls trap with forced SIGTRAPs, which must neither reach the handler
//!   nor unblock it); with `trap-ignored`, SIGTRAP is ignored instead (the
//!   dump must then not trap at all: a forced SIGTRAP resets an ignored one);
//! - a 256 KiB sigaltstack.
//!
//! After `check`: every sigaction (handler, flags, mask, restorer) equals the
//! one recorded before; the blocked mask, process and thread pending sets
//! (`sigpending`, `ShdPnd`, `SigPnd`) and the altstack are right. Then SIGUSR2
//! is unblocked alone, then SIGUSR1 and SIGRTMIN+2: each handler must run the
//! right number of times, with the right `si_code`, `si_pid`, `si_value` (RT
//! values in order), its `sa_mask` in effect, and on the altstack exactly when
//! SA_ONSTACK is set. Role: `root`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use stasis_integration::workload::{
    gettid, parse_hex, proc_status_field, sigbit, sigset_bits, sigset_of, thread_sigmask_bits, Ctx,
    Verdict,
};

const ALT_LEN: usize = 256 << 10;
const MAX_REC: usize = 16;
const RT_VALUES: [usize; 2] = [4242, 4343];
/// `trap-ignored`: SIGTRAP is ignored rather than handled and blocked.
static TRAP_IGNORED: AtomicBool = AtomicBool::new(false);

struct Rec {
    signo: AtomicU64,
    code: AtomicU64,
    value: AtomicU64,
    pid: AtomicU64,
    sp: AtomicU64,
    onstack: AtomicU64,
    mask: AtomicU64,
}

static RECS: [Rec; MAX_REC] = [const {
    Rec {
        signo: AtomicU64::new(0),
        code: AtomicU64::new(0),
        value: AtomicU64::new(0),
        pid: AtomicU64::new(0),
        sp: AtomicU64::new(0),
        onstack: AtomicU64::new(0),
        mask: AtomicU64::new(0),
    }
}; MAX_REC];
static NREC: AtomicUsize = AtomicUsize::new(0);

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, _uc: *mut libc::c_void) {
    let local = 0u8;
    let n = NREC.fetch_add(1, Ordering::SeqCst);
    if n >= MAX_REC {
        return;
    }
    let r = &RECS[n];
    r.signo.store(sig as u64, Ordering::SeqCst);
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; the
    // union members read match what kill, tgkill and sigqueue fill in.
    unsafe {
        r.code
            .store((*info).si_code as i64 as u64, Ordering::SeqCst);
        r.pid.store((*info).si_pid() as u64, Ordering::SeqCst);
        r.value
            .store((*info).si_value().sival_ptr as u64, Ordering::SeqCst);
    }
    r.sp.store(&local as *const u8 as u64, Ordering::SeqCst);
    let mut ss = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: querying only; `ss` is a valid out-pointer.
    unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) };
    r.onstack.store(
        u64::from(ss.ss_flags & libc::SS_ONSTACK != 0),
        Ordering::SeqCst,
    );
    let mut cur = sigset_of(&[]);
    // SAFETY: querying the mask only (rt_sigprocmask is async-signal-safe).
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) };
    r.mask.store(sigset_bits(&cur), Ordering::SeqCst);
}

struct Act {
    sig: i32,
    name: &'static str,
    handler: Option<usize>,
    flags: i32,
    mask: Vec<i32>,
}

fn acts() -> Vec<Act> {
    let h = Some(handler as extern "C" fn(_, _, _) as usize);
    vec![
        Act {
            sig: libc::SIGUSR1,
            name: "SIGUSR1",
            handler: h,
            flags: libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART,
            mask: vec![libc::SIGHUP, libc::SIGTERM],
        },
        Act {
            sig: libc::SIGUSR2,
            name: "SIGUSR2",
            handler: h,
            flags: libc::SA_SIGINFO,
            mask: vec![libc::SIGINT],
        },
        Act {
            sig: libc::SIGRTMIN() + 2,
            name: "SIGRTMIN+2",
            handler: h,
            flags: libc::SA_SIGINFO | libc::SA_ONSTACK,
            mask: vec![libc::SIGQUIT],
        },
        Act {
            sig: libc::SIGQUIT,
            name: "SIGQUIT",
            handler: h,
            flags: libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER,
            mask: vec![],
        },
        Act {
            sig: libc::SIGINT,
            name: "SIGINT",
            handler: Some(libc::SIG_IGN),
            flags: 0,
            mask: vec![],
        },
        Act {
            sig: libc::SIGTERM,
            name: "SIGTERM",
            handler: None,
            flags: 0,
            mask: vec![],
        },
        if TRAP_IGNORED.load(Ordering::Relaxed) {
            Act {
                sig: libc::SIGTRAP,
                name: "SIGTRAP",
                handler: Some(libc::SIG_IGN),
                flags: 0,
                mask: vec![],
            }
        } else {
            Act {
                sig: libc::SIGTRAP,
                name: "SIGTRAP",
                handler: h,
                flags: libc::SA_SIGINFO,
                mask: vec![libc::SIGUSR2],
            }
        },
    ]
}

/// What the kernel reports for a signal's disposition.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
struct Disp {
    handler: usize,
    flags: i32,
    mask: u64,
    restorer: usize,
}

fn query(sig: i32) -> Disp {
    // SAFETY: an all-zero sigaction is a valid out-value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null `act` only queries.
    unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    Disp {
        handler: old.sa_sigaction,
        flags: old.sa_flags,
        mask: sigset_bits(&old.sa_mask),
        restorer: old.sa_restorer.map_or(0, |f| f as usize),
    }
}

fn setup() -> Result<(Vec<Disp>, usize), String> {
    let rt2 = libc::SIGRTMIN() + 2;
    let mut block = vec![libc::SIGUSR1, libc::SIGUSR2, rt2];
    if !TRAP_IGNORED.load(Ordering::Relaxed) {
        block.push(libc::SIGTRAP);
    }
    let block = sigset_of(&block);
    // SAFETY: `block` is a valid sigset.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &block, std::ptr::null_mut()) };

    // SAFETY: a fresh anonymous mapping.
    let alt = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ALT_LEN,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if alt == libc::MAP_FAILED {
        return Err("mmap altstack".into());
    }
    let ss = libc::stack_t {
        ss_sp: alt,
        ss_flags: 0,
        ss_size: ALT_LEN,
    };
    // SAFETY: `ss` describes a mapping that lives until exit.
    if unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) } != 0 {
        return Err(format!("sigaltstack: {}", std::io::Error::last_os_error()));
    }

    let mut recorded = Vec::new();
    for a in acts() {
        // SAFETY: an all-zero sigaction is valid to fill in.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = a.handler.unwrap_or(libc::SIG_DFL);
        sa.sa_flags = a.flags;
        sa.sa_mask = sigset_of(&a.mask);
        // SAFETY: `sa` is fully initialised; the handler is async-signal-safe.
        if unsafe { libc::sigaction(a.sig, &sa, std::ptr::null_mut()) } != 0 {
            return Err(format!(
                "sigaction {}: {}",
                a.name,
                std::io::Error::last_os_error()
            ));
        }
        recorded.push(query(a.sig));
    }

    // SAFETY: signals to ourselves; all three are blocked.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGUSR1);
        libc::syscall(libc::SYS_tgkill, libc::getpid(), gettid(), libc::SIGUSR2);
        for v in RT_VALUES {
            let val = libc::sigval {
                sival_ptr: v as *mut libc::c_void,
            };
            if libc::sigqueue(libc::getpid(), rt2, val) != 0 {
                return Err(format!("sigqueue: {}", std::io::Error::last_os_error()));
            }
        }
    }
    Ok((recorded, alt as usize))
}

fn pending_bits() -> u64 {
    let mut set = sigset_of(&[]);
    // SAFETY: `set` is a valid out-pointer.
    unsafe { libc::sigpending(&mut set) };
    sigset_bits(&set)
}

fn unblock(sigs: &[i32]) {
    let set = sigset_of(sigs);
    // SAFETY: `set` is a valid sigset; handlers run during this call.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

fn main() {
    let mut ctx = Ctx::from_args("wl-signals STATEDIR [trap-ignored]");
    TRAP_IGNORED.store(
        ctx.args.iter().any(|a| a == "trap-ignored"),
        Ordering::Relaxed,
    );
    let rt2 = libc::SIGRTMIN() + 2;
    let (recorded, alt) = setup().unwrap_or_else(|e| ctx.setup_failed("root", &e));
    let mask_before = thread_sigmask_bits();
    let pid = std::process::id();
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});

    let mut v = Verdict::new();
    v.eq("handlers run before check", NREC.load(Ordering::SeqCst), 0);
    let all = acts();
    for (a, want) in all.iter().zip(&recorded) {
        let got = query(a.sig);
        v.eq(&format!("{} disposition", a.name), got, *want);
        v.eq(
            &format!("{} handler", a.name),
            got.handler,
            a.handler.unwrap_or(libc::SIG_DFL),
        );
        v.eq(
            &format!("{} sa_mask", a.name),
            format!("{:#x}", got.mask),
            format!("{:#x}", a.mask.iter().fold(0, |m, &s| m | sigbit(s))),
        );
        v.check(got.flags & a.flags == a.flags, || {
            format!("{} flags {:#x} lack {:#x}", a.name, got.flags, a.flags)
        });
    }
    let blocked = sigbit(libc::SIGUSR1) | sigbit(libc::SIGUSR2) | sigbit(rt2);
    v.eq(
        "blocked mask",
        format!("{:#x}", thread_sigmask_bits()),
        format!("{mask_before:#x}"),
    );
    v.check(mask_before & blocked == blocked, || {
        format!("mask {mask_before:#x} lacks {blocked:#x}")
    });
    v.eq(
        "sigpending",
        format!("{:#x}", pending_bits()),
        format!("{blocked:#x}"),
    );
    let shd = proc_status_field("/proc/self/status", "ShdPnd").and_then(|s| parse_hex(&s));
    v.eq(
        "ShdPnd (process-wide pending)",
        shd.map(|m| format!("{m:#x}")),
        Some(format!("{:#x}", sigbit(libc::SIGUSR1) | sigbit(rt2))),
    );
    let thr = proc_status_field(&format!("/proc/self/task/{}/status", gettid()), "SigPnd")
        .and_then(|s| parse_hex(&s));
    v.eq(
        "SigPnd (thread pending)",
        thr.map(|m| format!("{m:#x}")),
        Some(format!("{:#x}", sigbit(libc::SIGUSR2))),
    );
    let mut ss = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: querying only.
    unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) };
    v.eq("altstack address", ss.ss_sp as usize, alt);
    v.eq("altstack size", ss.ss_size, ALT_LEN);
    v.eq("altstack flags", ss.ss_flags, 0);

    // Deliver: first the thread-directed SIGUSR2 alone, then the rest.
    unblock(&[libc::SIGUSR2]);
    let after_usr2 = NREC.load(Ordering::SeqCst);
    unblock(&[libc::SIGUSR1, rt2]);
    let n = NREC.load(Ordering::SeqCst);
    v.eq("SIGUSR2 deliveries when unblocked alone", after_usr2, 1);
    v.eq("handler runs in all", n, 4);
    let on_alt = |sp: u64| (alt as u64..(alt + ALT_LEN) as u64).contains(&sp);
    let mut rt_seen = Vec::new();
    let mut counts = [0usize; 3];
    for r in RECS.iter().take(n.min(MAX_REC)) {
        let sig = r.signo.load(Ordering::SeqCst) as i32;
        let code = r.code.load(Ordering::SeqCst) as i64 as i32;
        let spid = r.pid.load(Ordering::SeqCst) as u32;
        let sp = r.sp.load(Ordering::SeqCst);
        let onstack = r.onstack.load(Ordering::SeqCst) == 1;
        let mask = r.mask.load(Ordering::SeqCst);
        let (idx, name, want_code, want_alt, want_mask) = if sig == libc::SIGUSR1 {
            (
                0,
                "SIGUSR1",
                libc::SI_USER,
                true,
                sigbit(libc::SIGHUP) | sigbit(libc::SIGTERM),
            )
        } else if sig == libc::SIGUSR2 {
            (1, "SIGUSR2", libc::SI_TKILL, false, sigbit(libc::SIGINT))
        } else if sig == rt2 {
            rt_seen.push(r.value.load(Ordering::SeqCst) as usize);
            (2, "SIGRTMIN+2", libc::SI_QUEUE, true, sigbit(libc::SIGQUIT))
        } else {
            v.fail(format!("unexpected signal {sig} delivered"));
            continue;
        };
        counts[idx] += 1;
        v.eq(&format!("{name} si_code"), code, want_code);
        v.eq(&format!("{name} si_pid"), spid, pid);
        v.eq(
            &format!("{name} on altstack (sp {sp:#x})"),
            on_alt(sp),
            want_alt,
        );
        v.eq(&format!("{name} SS_ONSTACK in handler"), onstack, want_alt);
        let must = want_mask | sigbit(sig);
        v.check(mask & must == must, || {
            format!("{name}: mask in handler {mask:#x} lacks sa_mask+self {must:#x}")
        });
    }
    v.eq("SIGUSR1/SIGUSR2/SIGRTMIN+2 deliveries", counts, [1, 1, 2]);
    v.eq("SIGRTMIN+2 si_value order", rt_seen, RT_VALUES.to_vec());
    v.eq("pending after delivery", pending_bits(), 0);
    ctx.finish("root", v);
}
