use super::*;
use crate::sys::clone3::{child_exit, clone3_fork, Fork};
use crate::sys::require_root;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

#[test]
fn finds_syscall_bytes() {
    assert_eq!(find_syscall_offset(&[0x90, 0x0f, 0x05, 0xc3]), Some(1));
    assert_eq!(find_syscall_offset(&[0x0f, 0x90, 0x05]), None);
    assert_eq!(find_syscall_offset(&[]), None);
}

#[test]
fn restart_rules() {
    // SAFETY: user_regs_struct is plain integers; all-zero is valid.
    let mut r: user_regs_struct = unsafe { std::mem::zeroed() };
    r.orig_rax = 230;
    r.rax = ERESTART_RESTARTBLOCK as u64;
    r.rip = 0x1002;
    apply_restart(&mut r);
    assert_eq!(
        (r.rax, r.rip, r.orig_rax),
        (libc::SYS_restart_syscall as u64, 0x1000, u64::MAX)
    );
    r.orig_rax = 7;
    r.rax = ERESTARTSYS as u64;
    r.rip = 0x2002;
    apply_restart(&mut r);
    assert_eq!((r.rax, r.rip, r.orig_rax), (7, 0x2000, u64::MAX));
    // Not in a syscall, or a normal result: untouched.
    r.rax = -4i64 as u64;
    r.orig_rax = 7;
    apply_restart(&mut r);
    assert_eq!(r.rip, 0x2000);
}

#[test]
fn injection_mask_keeps_sync_signals() {
    let bit = |s: i32| 1u64 << (s - 1);
    let m = injection_mask(StepMode::SingleStep);
    assert_eq!(m & bit(libc::SIGTRAP), 0);
    assert_eq!(m & bit(libc::SIGSEGV), 0);
    assert_ne!(m & bit(libc::SIGCHLD), 0);
    assert_ne!(m & bit(libc::SIGUSR1), 0);
    let m = injection_mask(StepMode::SyscallStops);
    assert_ne!(m & bit(libc::SIGTRAP), 0);
    assert_eq!(m & bit(libc::SIGSEGV), 0);
}

// ---- root tests: a real child, seized and injected ----

/// Whether `tid`'s SIGTRAP disposition is SIG_IGN (`SigIgn` in status).
fn sigtrap_ignored(tid: Tid) -> io::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    Ok(ign & (1 << (libc::SIGTRAP - 1)) != 0)
}

fn vdso_range(pid: i32) -> (u64, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let line = maps.lines().find(|l| l.ends_with("[vdso]")).unwrap();
    let range = line.split_whitespace().next().unwrap();
    let (a, b) = range.split_once('-').unwrap();
    (
        u64::from_str_radix(a, 16).unwrap(),
        u64::from_str_radix(b, 16).unwrap(),
    )
}

fn maps_has(pid: i32, addr: u64) -> bool {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let prefix = format!("{addr:x}-");
    maps.lines().any(|l| l.starts_with(&prefix))
}

fn proc_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.chars().next().unwrap()
}

/// Waits until `pid` sleeps in its blocking call (state S).
fn wait_blocked(pid: i32) {
    let t = Instant::now();
    while proc_state(pid) != 'S' {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "child {pid} never blocked"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What the test child does between fork and exit.
#[derive(Clone, Copy)]
enum Child {
    /// nanosleep(ms); exit 7 if it returned 0, else 10, or 8 if SIGUSR1
    /// was handled.
    Sleep(u64),
    /// Spin on the vDSO clock for ms, exit 7.
    Busy(u64),
    /// Read one byte from this fd and exit with it (10 on failure).
    Read(i32),
    /// Block SIGUSR1, then sigsuspend with an empty mask; exit 8 once
    /// the handler ran.
    Suspend,
}

static USR1_SEEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_usr1(_: i32) {
    USR1_SEEN.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Forks a child running `what`; only async-signal-safe calls inside.
fn spawn(what: Child, ignore_sigtrap: bool) -> i32 {
    match clone3_fork(0, &[], libc::SIGCHLD).unwrap() {
        Fork::Parent { pid, .. } => pid,
        Fork::Child => {
            // SAFETY: plain libc calls on our own memory; only
            // async-signal-safe functions (sigaction, nanosleep,
            // clock_gettime, _exit) run in the forked child.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_usr1 as *const () as usize;
                libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
                if ignore_sigtrap {
                    sa.sa_sigaction = libc::SIG_IGN;
                    libc::sigaction(libc::SIGTRAP, &sa, std::ptr::null_mut());
                }
                match what {
                    Child::Sleep(ms) => {
                        let ts = libc::timespec {
                            tv_sec: (ms / 1000) as i64,
                            tv_nsec: ((ms % 1000) * 1_000_000) as i64,
                        };
                        let r = libc::nanosleep(&ts, std::ptr::null_mut());
                        if USR1_SEEN.load(std::sync::atomic::Ordering::SeqCst) {
                            child_exit(8);
                        }
                        child_exit(if r == 0 { 7 } else { 10 });
                    }
                    Child::Suspend => {
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        libc::sigaddset(&mut set, libc::SIGUSR1);
                        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                        libc::sigemptyset(&mut set);
                        while !USR1_SEEN.load(std::sync::atomic::Ordering::SeqCst) {
                            libc::sigsuspend(&set);
                        }
                        child_exit(8);
                    }
                    Child::Read(fd) => {
                        let mut b = 0u8;
                        let n = libc::read(fd, (&mut b as *mut u8).cast(), 1);
                        child_exit(if n == 1 { i32::from(b) } else { 10 });
                    }
                    Child::Busy(ms) => {
                        let mut t0: libc::timespec = std::mem::zeroed();
                        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t0);
                        loop {
                            let mut t: libc::timespec = std::mem::zeroed();
                            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t);
                            let el = (t.tv_sec - t0.tv_sec) * 1000
                                + (t.tv_nsec - t0.tv_nsec) / 1_000_000;
                            if el as u64 >= ms {
                                child_exit(7);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Seizes and interrupts `pid`, returning the stop it reported.
fn seize_stop(pid: i32, options: u64) -> WaitStatus {
    ptrace::seize(pid, options | ptrace::PTRACE_O_EXITKILL).unwrap();
    ptrace::interrupt(pid).unwrap();
    let st = ptrace::wait(pid).unwrap();
    assert!(st.is_interrupt_stop(), "{st:?}");
    st
}

/// getpid, mmap + maps check, munmap, and a timing loop; returns µs per
/// injected getpid.
fn exercise(inj: &mut Injector, pid: i32) -> f64 {
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let addr = inj
        .syscall_checked(libc::SYS_mmap, [0, 4096, prot, flags, u64::MAX, 0])
        .unwrap();
    assert!(maps_has(pid, addr), "{addr:#x} not in maps");
    inj.syscall_checked(libc::SYS_munmap, [addr, 4096, 0, 0, 0, 0])
        .unwrap();
    assert!(!maps_has(pid, addr));
    let e = inj
        .syscall_checked(libc::SYS_munmap, [addr + 1, 4096, 0, 0, 0, 0])
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    const N: u32 = 1000;
    let t = Instant::now();
    for _ in 0..N {
        inj.syscall(libc::SYS_getpid, [0; 6]).unwrap();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(N)
}

fn regs_eq(a: &user_regs_struct, b: &user_regs_struct) -> bool {
    // user_regs_struct derives PartialEq through libc's extra_traits.
    a == b
}

fn run_sleeper(mode: Option<StepMode>) {
    let pid = spawn(Child::Sleep(300), false);
    wait_blocked(pid);
    seize_stop(pid, 0);
    let before = ptrace::get_regs(pid).unwrap();
    assert_eq!(before.orig_rax, libc::SYS_clock_nanosleep as u64);
    assert_eq!(before.rax as i64, ERESTART_RESTARTBLOCK);
    let (vs, ve) = vdso_range(pid);
    let ip = find_syscall_insn(pid, vs, ve).unwrap();
    let mut inj = match mode {
        Some(m) => Injector::with_mode(pid, ip, m).unwrap(),
        None => Injector::new(pid, ip).unwrap(),
    };
    let us = exercise(&mut inj, pid);
    eprintln!(
        "inject {:?}: {us:.1} us per getpid (vdso+{:#x})",
        inj.mode(),
        ip - vs
    );
    assert!(inj.pending_signals().is_empty());
    inj.restore().unwrap();
    // One injector per syscall (new + getpid + restore), as a one-off
    // caller would do.
    const M: u32 = 200;
    let t = Instant::now();
    for _ in 0..M {
        let mut inj = match mode {
            Some(m) => Injector::with_mode(pid, ip, m).unwrap(),
            None => Injector::new(pid, ip).unwrap(),
        };
        inj.syscall(libc::SYS_getpid, [0; 6]).unwrap();
        inj.restore().unwrap();
    }
    eprintln!(
        "inject {mode:?} one-shot (new+getpid+restore): {:.1} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(M)
    );
    if mode == Some(StepMode::SingleStep) {
        assert!(regs_eq(&ptrace::get_regs(pid).unwrap(), &before));
    } else {
        // Restarted by hand at the exit stop: restart_syscall, rip - 2.
        let after = ptrace::get_regs(pid).unwrap();
        assert_eq!(after.rax, libc::SYS_restart_syscall as u64);
        assert_eq!(after.rip, before.rip - 2);
        assert_eq!(after.orig_rax, u64::MAX);
    }
    ptrace::detach(pid, 0).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
}

#[test]
fn inject_into_sleeper_singlestep() {
    require_root!();
    run_sleeper(Some(StepMode::SingleStep));
}

#[test]
fn inject_into_sleeper_syscall_stops() {
    require_root!();
    run_sleeper(None);
}

#[test]
fn inject_into_busy_loop() {
    require_root!();
    let t0 = Instant::now();
    let pid = spawn(Child::Busy(300), false);
    std::thread::sleep(Duration::from_millis(30));
    seize_stop(pid, 0);
    let before = ptrace::get_regs(pid).unwrap();
    assert_eq!(before.orig_rax, u64::MAX);
    let (vs, ve) = vdso_range(pid);
    let mut inj = Injector::new(pid, find_syscall_insn(pid, vs, ve).unwrap()).unwrap();
    let us = exercise(&mut inj, pid);
    eprintln!("inject busy: {us:.1} us per getpid");
    inj.restore().unwrap();
    assert!(regs_eq(&ptrace::get_regs(pid).unwrap(), &before));
    ptrace::detach(pid, 0).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
    // The child's millisecond arithmetic may round up by < 1 ms.
    assert!(
        t0.elapsed() >= Duration::from_millis(295),
        "{:?}",
        t0.elapsed()
    );
}

#[test]
fn inject_via_scratch_page_and_unmap_it() {
    require_root!();
    for mode in [StepMode::SyscallStops, StepMode::SingleStep] {
        scratch_page(mode);
    }
}

fn scratch_page(mode: StepMode) {
    let pid = spawn(Child::Busy(200), false);
    std::thread::sleep(Duration::from_millis(20));
    seize_stop(pid, 0);
    let before = ptrace::get_regs(pid).unwrap();
    let (vs, ve) = vdso_range(pid);
    let ip = find_syscall_insn(pid, vs, ve).unwrap();
    let mut inj = Injector::with_mode(pid, ip, mode).unwrap();
    let prot = (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let page = inj
        .syscall_checked(libc::SYS_mmap, [0, 4096, prot, flags, u64::MAX, 0])
        .unwrap();
    vm::write_remote_from(pid, page, &[0x0f, 0x05, 0xcc]).unwrap();
    inj.set_syscall_ip(page);
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
    // Unmapping the page we execute from: the exit stop (or step trap)
    // still arrives, with rip just past the (now unmapped) instruction.
    inj.syscall_checked(libc::SYS_munmap, [page, 4096, 0, 0, 0, 0])
        .unwrap();
    assert_eq!(ptrace::get_regs(pid).unwrap().rip, page + 2);
    assert!(!maps_has(pid, page));
    inj.restore().unwrap();
    assert!(regs_eq(&ptrace::get_regs(pid).unwrap(), &before));
    ptrace::detach(pid, 0).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
}

#[test]
fn inject_into_blocked_read_restarts_it() {
    require_root!();
    for mode in [StepMode::SyscallStops, StepMode::SingleStep] {
        let (r, w) = nix::unistd::pipe().unwrap();
        let pid = spawn(Child::Read(r.as_raw_fd()), false);
        wait_blocked(pid);
        seize_stop(pid, 0);
        let before = ptrace::get_regs(pid).unwrap();
        assert_eq!(before.orig_rax, libc::SYS_read as u64);
        assert_eq!(before.rax as i64, ERESTARTSYS);
        let (vs, ve) = vdso_range(pid);
        let ip = find_syscall_insn(pid, vs, ve).unwrap();
        let mut inj = Injector::with_mode(pid, ip, mode).unwrap();
        assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
        inj.restore().unwrap();
        ptrace::detach(pid, 0).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        nix::unistd::write(&w, &[42]).unwrap();
        assert_eq!(
            ptrace::wait(pid).unwrap(),
            WaitStatus::Exited(42),
            "{mode:?}"
        );
    }
}

#[test]
fn inject_at_syscall_exit_stop() {
    require_root!();
    for mode in [StepMode::SyscallStops, StepMode::SingleStep] {
        let pid = spawn(Child::Sleep(150), false);
        wait_blocked(pid);
        seize_stop(pid, ptrace::PTRACE_O_TRACESYSGOOD);
        ptrace::syscall(pid, 0).unwrap(); // entry of restart_syscall
        assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::SyscallStop);
        ptrace::syscall(pid, 0).unwrap(); // its exit, once the sleep is over
        assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::SyscallStop);
        assert_eq!(trap_kind(pid).unwrap(), TrapKind::SyscallExit);
        let before = ptrace::get_regs(pid).unwrap();
        assert_eq!(before.rax, 0);
        let (vs, ve) = vdso_range(pid);
        let ip = find_syscall_insn(pid, vs, ve).unwrap();
        let mut inj = Injector::with_mode(pid, ip, mode).unwrap();
        assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
        inj.restore().unwrap();
        assert!(regs_eq(&ptrace::get_regs(pid).unwrap(), &before));
        ptrace::detach(pid, 0).unwrap();
        assert_eq!(
            ptrace::wait(pid).unwrap(),
            WaitStatus::Exited(7),
            "{mode:?}"
        );
    }
}

#[test]
fn sigsuspend_mask_survives_injection() {
    require_root!();
    for mode in [StepMode::SyscallStops, StepMode::SingleStep] {
        let pid = spawn(Child::Suspend, false);
        wait_blocked(pid);
        seize_stop(pid, 0);
        let usr1 = 1u64 << (libc::SIGUSR1 - 1);
        // The mask to restore, not sigsuspend's temporary empty one.
        assert_eq!(ptrace::get_sigmask(pid).unwrap() & usr1, usr1);
        let regs = ptrace::get_regs(pid).unwrap();
        assert_eq!(regs.orig_rax, libc::SYS_rt_sigsuspend as u64);
        assert_eq!(regs.rax as i64, ERESTARTNOHAND);
        let (vs, ve) = vdso_range(pid);
        let ip = find_syscall_insn(pid, vs, ve).unwrap();
        let mut inj = Injector::with_mode(pid, ip, mode).unwrap();
        assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
        inj.restore().unwrap();
        ptrace::detach(pid, 0).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(proc_state(pid), 'S');
        misc::raw_kill(pid, libc::SIGUSR1).unwrap();
        let t = Instant::now();
        let st = loop {
            if let Some(st) = ptrace::wait_nohang(pid).unwrap() {
                break st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{mode:?}: SIGUSR1 stayed blocked"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(st, WaitStatus::Exited(8));
    }
}

#[test]
fn inject_into_group_stopped_process() {
    require_root!();
    for mode in [StepMode::SyscallStops, StepMode::SingleStep] {
        let pid = spawn(Child::Sleep(100), false);
        wait_blocked(pid);
        misc::raw_kill(pid, libc::SIGSTOP).unwrap();
        let t = Instant::now();
        while proc_state(pid) != 'T' {
            assert!(t.elapsed() < Duration::from_secs(2));
            std::thread::sleep(Duration::from_millis(2));
        }
        ptrace::seize(pid, ptrace::PTRACE_O_EXITKILL).unwrap();
        ptrace::interrupt(pid).unwrap();
        assert_eq!(
            ptrace::wait(pid).unwrap(),
            WaitStatus::GroupStop { sig: libc::SIGSTOP }
        );
        let (vs, ve) = vdso_range(pid);
        let ip = find_syscall_insn(pid, vs, ve).unwrap();
        let mut inj = Injector::with_mode(pid, ip, mode).unwrap();
        assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
        assert!(inj.pending_signals().is_empty());
        inj.restore().unwrap();
        ptrace::detach(pid, 0).unwrap();
        // Still stopped after detach: the group-stop is re-armed.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(proc_state(pid), 'T', "{mode:?}");
        misc::raw_kill(pid, libc::SIGCONT).unwrap();
        assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
    }
}

fn run_at_entry(sysgood: bool, mode: StepMode) {
    let pid = spawn(Child::Sleep(300), false);
    wait_blocked(pid);
    let opts = if sysgood {
        ptrace::PTRACE_O_TRACESYSGOOD
    } else {
        0
    };
    seize_stop(pid, opts);
    // Resume to the entry of restart_syscall (the sleep continuing).
    ptrace::syscall(pid, 0).unwrap();
    let st = ptrace::wait(pid).unwrap();
    if sysgood {
        assert_eq!(st, WaitStatus::SyscallStop);
        match ptrace::get_syscall_info(pid).unwrap() {
            ptrace::SyscallInfo::Entry { nr, .. } => {
                assert_eq!(nr, libc::SYS_restart_syscall as u64)
            }
            other => panic!("not an entry stop: {other:?}"),
        }
    } else {
        assert_eq!(st, WaitStatus::Stopped { sig: libc::SIGTRAP });
        // Without TRACESYSGOOD the kernel cannot tell: op NONE.
        assert_eq!(
            ptrace::get_syscall_info(pid).unwrap(),
            ptrace::SyscallInfo::None
        );
    }
    assert_eq!(trap_kind(pid).unwrap(), TrapKind::SyscallEntry);
    let (vs, ve) = vdso_range(pid);
    let ip = find_syscall_insn(pid, vs, ve).unwrap();
    let mut inj = Injector::with_mode(pid, ip, mode).unwrap();
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
    assert!(inj.pending_signals().is_empty());
    inj.restore().unwrap();
    ptrace::detach(pid, 0).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
}

#[test]
fn inject_at_syscall_entry_stop() {
    require_root!();
    for sysgood in [true, false] {
        for mode in [StepMode::SingleStep, StepMode::SyscallStops] {
            run_at_entry(sysgood, mode);
        }
    }
}

#[test]
fn signals_during_injection_are_kept() {
    require_root!();
    // SIGUSR1 sent while stopped stays queued (blocked during injection)
    // and is handled after detach: the child exits 8.
    let pid = spawn(Child::Sleep(300), false);
    wait_blocked(pid);
    seize_stop(pid, 0);
    let (vs, ve) = vdso_range(pid);
    let ip = find_syscall_insn(pid, vs, ve).unwrap();
    let mut inj = Injector::new(pid, ip).unwrap();
    misc::raw_kill(pid, libc::SIGUSR1).unwrap();
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
    assert!(inj.pending_signals().is_empty());
    let queued = ptrace::peek_siginfo(pid, true).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(ptrace::siginfo_signo(&queued[0]), libc::SIGUSR1);
    inj.restore().unwrap();
    ptrace::detach(pid, 0).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(8));

    // SIGSTOP cannot be blocked: it stops the injection, is recorded and
    // queued again, so the child stops after detach.
    let pid = spawn(Child::Sleep(300), false);
    wait_blocked(pid);
    seize_stop(pid, 0);
    let (vs, ve) = vdso_range(pid);
    let ip = find_syscall_insn(pid, vs, ve).unwrap();
    let mut inj = Injector::new(pid, ip).unwrap();
    misc::raw_kill(pid, libc::SIGSTOP).unwrap();
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
    assert_eq!(inj.pending_signals().len(), 1);
    assert_eq!(
        ptrace::siginfo_signo(&inj.pending_signals()[0]),
        libc::SIGSTOP
    );
    inj.restore().unwrap();
    ptrace::detach(pid, 0).unwrap();
    let t = Instant::now();
    while proc_state(pid) != 'T' {
        assert!(t.elapsed() < Duration::from_secs(2), "child never stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    misc::raw_kill(pid, libc::SIGCONT).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
}

fn sigtrap_ignored_after(mode: Option<StepMode>) -> bool {
    let pid = spawn(Child::Sleep(200), true);
    wait_blocked(pid);
    assert!(sigtrap_ignored(pid).unwrap());
    seize_stop(pid, 0);
    let (vs, ve) = vdso_range(pid);
    let ip = find_syscall_insn(pid, vs, ve).unwrap();
    let mut inj = match mode {
        Some(m) => Injector::with_mode(pid, ip, m).unwrap(),
        None => Injector::new(pid, ip).unwrap(),
    };
    assert_eq!(inj.syscall(libc::SYS_getpid, [0; 6]).unwrap(), pid as i64);
    inj.restore().unwrap();
    let ignored = sigtrap_ignored(pid).unwrap();
    ptrace::detach(pid, 0).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
    ignored
}

#[test]
fn ignored_sigtrap_survives_injection() {
    require_root!();
    assert!(sigtrap_ignored_after(None), "default mode lost SIG_IGN");
    // Kernel behaviour (force_sig_info_to_task): the step trap resets an
    // ignored SIGTRAP to SIG_DFL. Reported, not asserted.
    let kept = sigtrap_ignored_after(Some(StepMode::SingleStep));
    eprintln!("SIG_IGN SIGTRAP after single-step injection: kept={kept}");
}

#[test]
fn dropped_injector_restores() {
    require_root!();
    let pid = spawn(Child::Busy(300), false);
    std::thread::sleep(Duration::from_millis(20));
    seize_stop(pid, 0);
    let before = ptrace::get_regs(pid).unwrap();
    let (vs, ve) = vdso_range(pid);
    {
        let mut inj = Injector::new(pid, find_syscall_insn(pid, vs, ve).unwrap()).unwrap();
        inj.syscall(libc::SYS_getpid, [0; 6]).unwrap();
    }
    assert!(regs_eq(&ptrace::get_regs(pid).unwrap(), &before));
    ptrace::detach(pid, 0).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
}

#[test]
fn bad_syscall_ip_is_an_error() {
    require_root!();
    let pid = spawn(Child::Busy(300), false);
    std::thread::sleep(Duration::from_millis(20));
    seize_stop(pid, 0);
    let before = ptrace::get_regs(pid).unwrap();
    let mut inj = Injector::new(pid, 0x1000).unwrap();
    let e = inj.syscall(libc::SYS_getpid, [0; 6]).unwrap_err();
    assert!(e.to_string().contains("faulted"), "{e}");
    inj.restore().unwrap();
    assert!(regs_eq(&ptrace::get_regs(pid).unwrap(), &before));
    ptrace::detach(pid, 0).unwrap();
    assert_eq!(ptrace::wait(pid).unwrap(), WaitStatus::Exited(7));
}

#[test]
fn regsets_and_queries_of_a_child() {
    require_root!();
    let pid = spawn(Child::Sleep(200), false);
    wait_blocked(pid);
    seize_stop(pid, 0);
    let x = ptrace::get_xstate(pid).unwrap();
    eprintln!(
        "xstate: {} bytes (cpuid {:?}), xcr0 {:#x}, xstate_bv {:#x}",
        x.len(),
        crate::sys::cpu::xsave_size(),
        crate::sys::cpu::xstate_xcr0(&x).unwrap(),
        crate::sys::cpu::xstate_bv(&x).unwrap()
    );
    assert_eq!(crate::sys::cpu::xstate_xcr0(&x), crate::sys::cpu::xcr0());
    ptrace::set_xstate(pid, &x).unwrap();
    let fp = ptrace::get_fpregs(pid).unwrap();
    ptrace::set_fpregs(pid, &fp).unwrap();
    let rseq = ptrace::get_rseq_config(pid).unwrap();
    eprintln!("rseq: {rseq:x?}");
    assert_ne!(rseq.rseq_abi_pointer, 0);
    assert_eq!(rseq.signature, 0x5305_3053);
    let mask = ptrace::get_sigmask(pid).unwrap();
    ptrace::set_sigmask(pid, mask | 1 << (libc::SIGUSR2 - 1)).unwrap();
    assert_ne!(
        ptrace::get_sigmask(pid).unwrap() & 1 << (libc::SIGUSR2 - 1),
        0
    );
    ptrace::set_sigmask(pid, mask).unwrap();
    let (head, len) = misc::get_robust_list(pid).unwrap();
    // The kernel clears the robust list on fork and glibc's fork()
    // registers it again; a raw clone3 child has none.
    assert_eq!((head, len), (0, 24));
    assert_eq!(
        ptrace::get_syscall_info(pid).unwrap(),
        ptrace::SyscallInfo::None
    );
    // Queue three SIGUSR2 (RT-style queueing does not apply: one stays)
    // and one SIGRTMIN twice (queued twice) to the process.
    let rt = libc::SIGRTMIN();
    for sig in [libc::SIGUSR2, libc::SIGUSR2, rt, rt] {
        misc::raw_kill(pid, sig).unwrap();
    }
    let shared = ptrace::peek_siginfo(pid, true).unwrap();
    let sigs: Vec<i32> = shared.iter().map(ptrace::siginfo_signo).collect();
    assert_eq!(sigs, vec![libc::SIGUSR2, rt, rt]);
    assert!(ptrace::peek_siginfo(pid, false).unwrap().is_empty());
    // Kill while stopped: the tracee reports its death.
    misc::raw_kill(pid, libc::SIGKILL).unwrap();
    assert_eq!(
        ptrace::wait(pid).unwrap(),
        WaitStatus::Signaled(libc::SIGKILL)
    );
}

#[test]
fn spawn_and_exit_loop_code_fit_together() {
    // The exit loop is the batch loop up to its int3.
    assert_eq!(EXIT_LOOP_CODE[..55], BATCH_CODE[..55]);
    assert_eq!(BATCH_CODE[55], 0xcc);
    // The spawn code's jmp (rel32 at 54, from the end of the jmp at 58)
    // lands on the exit loop; its jnz (rel8 at 45, from 46) on its int3.
    let rel = i32::from_le_bytes(SPAWN_CODE[54..58].try_into().unwrap());
    assert_eq!(SPAWN_AT as i64 + 58 + rel as i64, EXIT_LOOP_AT as i64);
    assert_eq!(46 + SPAWN_CODE[45] as usize, SPAWN_CODE.len() - 1);
    assert_eq!(SPAWN_CODE[SPAWN_CODE.len() - 1], 0xcc);
    // Neither overlaps the other or the batch loop.
    assert!(BATCH_CODE.len() as u64 <= SPAWN_AT);
    assert!(SPAWN_AT + SPAWN_CODE.len() as u64 <= EXIT_LOOP_AT);
}
