//! Syscall injection into a ptrace-stopped thread, without a parasite.
//!
//! Recipe (KERNEL-NOTES §1): point `rip` at a `syscall` instruction that is
//! already mapped in the target (its vDSO, or a restorer scratch page with
//! `0f 05 cc`), load the number and arguments, set `orig_rax = -1` so the
//! kernel's restart logic leaves our registers alone, let exactly that
//! instruction run, read `rax`, and finally put the saved registers back.
//!
//! Two ways to run the instruction ([`StepMode`]):
//! - `SyscallStops` (default, 12–15 µs per syscall here): `PTRACE_SYSCALL`
//!   to the entry stop, then to the exit stop. These stops are not signals,
//!   so nothing about the target's signal state changes.
//! - `SingleStep` (8–12 µs): `PTRACE_SINGLESTEP`. The step trap is a
//!   *forced* SIGTRAP: if the target ignores SIGTRAP the kernel silently
//!   resets that disposition to `SIG_DFL` (measured), and a blocked SIGTRAP
//!   would be unblocked. Use it only for hot loops on a thread whose SIGTRAP
//!   is known not to be ignored (`SigIgn` in /proc/PID/status).
//!
//! While an injector is live the thread's signal mask blocks every signal
//! except faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGSYS; and SIGTRAP when
//! single-stepping), which the kernel forces through anyway. Signals that
//! arrive stay queued (visible to `peek_siginfo`) and none is dequeued
//! behind our back. The few that still stop the thread (SIGSTOP, or an
//! explicitly sent fault signal) are suppressed, recorded, and queued again
//! by [`Injector::restore`].
//!
//! All calls must come from the thread that seized the target (ptrace is
//! per tracer thread).

use std::io;

use libc::user_regs_struct;

use super::misc;
use super::ptrace::{self, RawSiginfo, Tid, WaitStatus};
use super::vm;

/// Machine code of `syscall`.
pub const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// A loop running a table of syscalls in one round trip, then `int3`.
///
/// In: r12 = table, r13 = number of entries. Each entry is 8 u64:
/// nr, six arguments, and the result, which the loop stores. Only rax, rcx,
/// r11 (clobbered by `syscall`), the argument registers, r12 and r13 change.
///
/// ```text
///  0: test r13, r13          4d 85 ed
///  3: jz   55                74 32
///  5: mov  rax, [r12]        49 8b 04 24
///  9: mov  rdi, [r12+8]      49 8b 7c 24 08
/// 14: mov  rsi, [r12+16]     49 8b 74 24 10
/// 19: mov  rdx, [r12+24]     49 8b 54 24 18
/// 24: mov  r10, [r12+32]     4d 8b 54 24 20
/// 29: mov  r8,  [r12+40]     4d 8b 44 24 28
/// 34: mov  r9,  [r12+48]     4d 8b 4c 24 30
/// 39: syscall                0f 05
/// 41: mov  [r12+56], rax     49 89 44 24 38
/// 46: add  r12, 64           49 83 c4 40
/// 50: dec  r13               49 ff cd
/// 53: jmp  0                 eb c9
/// 55: int3                   cc
/// ```
pub const BATCH_CODE: [u8; 56] = [
    0x4d, 0x85, 0xed, 0x74, 0x32, 0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b,
    0x74, 0x24, 0x10, 0x49, 0x8b, 0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44,
    0x24, 0x28, 0x4d, 0x8b, 0x4c, 0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x49, 0x83,
    0xc4, 0x40, 0x49, 0xff, 0xcd, 0xeb, 0xc9, 0xcc,
];
/// Size of one entry of a [`BATCH_CODE`] table.
pub const BATCH_ENTRY: usize = 64;
/// Length of the `syscall` instruction: `rip` after it has run.
const SYSCALL_LEN: u64 = 2;

// Kernel-internal restart codes that can be seen in a stopped thread's rax.
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// How the injected `syscall` instruction is run; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMode {
    /// `PTRACE_SINGLESTEP` and wait for the step SIGTRAP. Fastest; resets
    /// an ignored SIGTRAP to `SIG_DFL`.
    SingleStep,
    /// `PTRACE_SYSCALL` to the entry stop, then to the exit stop. No side
    /// effects; the default.
    SyscallStops,
}

/// Offset of the first `syscall` instruction (bytes `0f 05`) in `code`.
pub fn find_syscall_offset(code: &[u8]) -> Option<usize> {
    code.windows(2).position(|w| w == SYSCALL_INSN)
}

/// Reads the target's `[vdso]` (`vdso_start..vdso_end`, from its maps) with
/// `process_vm_readv` and returns the address of a `syscall` instruction.
pub fn find_syscall_insn(pid: i32, vdso_start: u64, vdso_end: u64) -> io::Result<u64> {
    if vdso_end <= vdso_start || vdso_end - vdso_start > 1 << 20 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut code = vec![0u8; (vdso_end - vdso_start) as usize];
    vm::read_remote_into(pid, vdso_start, &mut code)?;
    find_syscall_offset(&code)
        .map(|off| vdso_start + off as u64)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no syscall instruction in vdso of pid {pid}"),
            )
        })
}

/// Runs syscalls inside a ptrace-stopped thread. See the module docs.
///
/// Dropping an injector without [`Injector::restore`] restores on a best
/// effort basis (errors are only logged), so an error path never leaves the
/// thread with injected registers.
pub struct Injector {
    tid: Tid,
    syscall_ip: u64,
    mode: StepMode,
    /// Registers at creation; base for injected register sets.
    base: user_regs_struct,
    /// Registers loaded by `restore`.
    saved: user_regs_struct,
    saved_sigmask: u64,
    /// The thread is still in the syscall-entry (or seccomp) stop it was
    /// found in: the next injection replaces that syscall.
    at_entry: bool,
    /// The last injected syscall ended at a syscall-exit stop (after which
    /// the kernel runs no restart logic).
    at_exit_stop: bool,
    pending: Vec<RawSiginfo>,
    events: Vec<(i32, u64)>,
    done: bool,
}

impl std::fmt::Debug for Injector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injector")
            .field("tid", &self.tid)
            .field("syscall_ip", &format_args!("{:#x}", self.syscall_ip))
            .field("mode", &self.mode)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// The signal mask while injecting. Faults stay unblocked: the kernel
/// forces them through anyway, resetting the handler of a blocked one. For
/// the same reason SIGTRAP stays unblocked when single-stepping.
fn injection_mask(mode: StepMode) -> u64 {
    let bit = |s: i32| 1u64 << (s - 1);
    let faults = bit(libc::SIGSEGV)
        | bit(libc::SIGBUS)
        | bit(libc::SIGILL)
        | bit(libc::SIGFPE)
        | bit(libc::SIGSYS);
    match mode {
        StepMode::SingleStep => !(faults | bit(libc::SIGTRAP)),
        StepMode::SyscallStops => !faults,
    }
}

fn is_fault_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGSYS
    )
}

fn tgid_of(tid: Tid) -> io::Result<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("no Tgid in /proc/{tid}/status")))
}

/// What kind of ptrace-stop a SIGTRAP-ish stop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrapKind {
    SyscallEntry,
    SyscallExit,
    Seccomp,
    Other,
}

/// Classifies the current stop from its siginfo. Works with or without
/// `PTRACE_O_TRACESYSGOOD` (unlike `PTRACE_GET_SYSCALL_INFO`, which only
/// recognises syscall stops reported as `SIGTRAP | 0x80`).
fn trap_kind(tid: Tid) -> io::Result<TrapKind> {
    let info = match ptrace::get_siginfo(tid) {
        Ok(i) => i,
        // Group-stops have no siginfo.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(TrapKind::Other),
        Err(e) => return Err(e),
    };
    if ptrace::siginfo_signo(&info) != libc::SIGTRAP {
        return Ok(TrapKind::Other);
    }
    let code = ptrace::siginfo_code(&info);
    if code == libc::SIGTRAP || code == libc::SIGTRAP | 0x80 {
        // ptrace_message holds PTRACE_EVENTMSG_SYSCALL_{ENTRY,EXIT}.
        return Ok(match ptrace::get_event_msg(tid)? {
            1 => TrapKind::SyscallEntry,
            2 => TrapKind::SyscallExit,
            _ => TrapKind::Other,
        });
    }
    if code == libc::SIGTRAP | (ptrace::PTRACE_EVENT_SECCOMP << 8) {
        return Ok(TrapKind::Seccomp);
    }
    Ok(TrapKind::Other)
}

/// Registers that make the kernel's restart logic do by hand what it would
/// have done for an interrupted syscall returning to user space with no
/// signal to deliver.
fn apply_restart(regs: &mut user_regs_struct) {
    let rax = regs.rax as i64;
    if (regs.orig_rax as i64) < 0 {
        return;
    }
    match rax {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => regs.rax = regs.orig_rax,
        ERESTART_RESTARTBLOCK => regs.rax = libc::SYS_restart_syscall as u64,
        _ => return,
    }
    regs.rip -= SYSCALL_LEN;
    regs.orig_rax = u64::MAX;
}

impl Injector {
    /// Prepares `tid` (ptrace-stopped, seized by this thread) for injection
    /// through the `syscall` instruction at `syscall_ip`: saves its
    /// registers and signal mask, then blocks asynchronous signals.
    ///
    /// If the thread is in a syscall-entry or seccomp stop, the saved
    /// registers are rewritten to execute that syscall again once restored
    /// (`rip -= 2`, `rax = nr`): an entry stop cannot be recreated.
    ///
    /// The thread must not be in a signal-delivery-stop whose signal the
    /// caller still wants: resuming it discards that signal (save it with
    /// `ptrace::get_siginfo` first).
    pub fn new(tid: Tid, syscall_ip: u64) -> io::Result<Self> {
        Self::with_mode(tid, syscall_ip, StepMode::SyscallStops)
    }

    /// Like [`Injector::new`] with an explicit step mode.
    pub fn with_mode(tid: Tid, syscall_ip: u64, mode: StepMode) -> io::Result<Self> {
        let regs = ptrace::get_regs(tid)?;
        let at_entry = matches!(trap_kind(tid)?, TrapKind::SyscallEntry | TrapKind::Seccomp);
        let mut saved = regs;
        if at_entry {
            saved.rax = saved.orig_rax;
            saved.rip -= SYSCALL_LEN;
            saved.orig_rax = u64::MAX;
        }
        let saved_sigmask = ptrace::get_sigmask(tid)?;
        ptrace::set_sigmask(tid, injection_mask(mode))?;
        Ok(Injector {
            tid,
            syscall_ip,
            mode,
            base: regs,
            saved,
            saved_sigmask,
            at_entry,
            at_exit_stop: false,
            pending: Vec::new(),
            events: Vec::new(),
            done: false,
        })
    }

    /// The thread being driven.
    pub fn tid(&self) -> Tid {
        self.tid
    }

    /// Address of the `syscall` instruction in use.
    pub fn syscall_ip(&self) -> u64 {
        self.syscall_ip
    }

    /// Switches to another `syscall` instruction (e.g. a scratch page
    /// mapped by an earlier injected mmap).
    pub fn set_syscall_ip(&mut self, ip: u64) {
        self.syscall_ip = ip;
    }

    /// The current step mode.
    pub fn mode(&self) -> StepMode {
        self.mode
    }

    /// Changes the step mode for the following syscalls.
    pub fn set_mode(&mut self, mode: StepMode) -> io::Result<()> {
        if mode != self.mode {
            ptrace::set_sigmask(self.tid, injection_mask(mode))?;
            self.mode = mode;
        }
        Ok(())
    }

    /// The registers [`Injector::restore`] will load.
    pub fn saved_regs(&self) -> &user_regs_struct {
        &self.saved
    }

    /// Replaces the registers [`Injector::restore`] will load (e.g. the
    /// dumped registers at the end of a restore). An interrupted syscall in
    /// them (`orig_rax >= 0`, `rax` = -ERESTART*) is restarted as the kernel
    /// would for the same task: -ERESTART_RESTARTBLOCK becomes
    /// `restart_syscall`, which fails in a *new* task (empty restart block).
    /// A restorer should rewrite such registers itself (`rax = orig_rax`,
    /// `rip -= 2`, `orig_rax = -1`) before handing them over.
    pub fn set_saved_regs(&mut self, regs: user_regs_struct) {
        self.saved = regs;
    }

    /// The signal mask [`Injector::restore`] will load.
    pub fn saved_sigmask(&self) -> u64 {
        self.saved_sigmask
    }

    /// Replaces the signal mask loaded by [`Injector::restore`]. Use this
    /// instead of `ptrace::set_sigmask` while the injector is live.
    pub fn set_saved_sigmask(&mut self, mask: u64) {
        self.saved_sigmask = mask;
    }

    /// Signals that stopped the thread during injection (suppressed then,
    /// queued again by `restore`), as raw siginfo.
    pub fn pending_signals(&self) -> &[RawSiginfo] {
        &self.pending
    }

    /// ptrace events seen while injecting, as `(event, event message)`:
    /// e.g. `PTRACE_EVENT_CLONE` and the new tid of an injected clone3 when
    /// `PTRACE_O_TRACECLONE` is set.
    pub fn take_events(&mut self) -> Vec<(i32, u64)> {
        std::mem::take(&mut self.events)
    }

    /// Runs syscall `nr` with `args` in the thread and returns the raw
    /// result (`-errno` on failure, as the kernel returns it).
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> io::Result<i64> {
        let mut regs = self.base;
        regs.rax = nr as u64;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        if self.at_entry {
            // Still inside the original entry stop: the kernel reads the
            // number from orig_rax and runs it now; rip is where the
            // instruction returns to.
            regs.orig_rax = nr as u64;
            regs.rip = self.syscall_ip + SYSCALL_LEN;
        } else {
            regs.orig_rax = u64::MAX;
            regs.rip = self.syscall_ip;
        }
        ptrace::set_regs(self.tid, &regs)?;
        // From an entry stop only the exit stop is still to come.
        let syscall_stops = if self.at_entry { 1 } else { 2 };
        self.at_entry = false;
        self.at_exit_stop = false;
        let rax = self.run(syscall_stops)?.rax;
        self.at_exit_stop = self.mode == StepMode::SyscallStops;
        Ok(rax as i64)
    }

    /// Run the [`BATCH_CODE`] loop mapped at `code` over `n` table entries at
    /// `table` (already written into the target) with one PTRACE_CONT, and
    /// wait for its final `int3`. SIGTRAP is unblocked meanwhile so the trap
    /// does not reset its disposition; do not use this on a thread that
    /// ignores SIGTRAP.
    pub fn run_batch(&mut self, code: u64, table: u64, n: usize) -> io::Result<()> {
        if self.at_entry {
            // Finish the interrupted entry stop first, with a harmless call.
            self.syscall(libc::SYS_getpid, [0; 6])?;
        }
        let tid = self.tid;
        let mut regs = self.base;
        regs.rip = code;
        regs.orig_rax = u64::MAX;
        regs.r12 = table;
        regs.r13 = n as u64;
        ptrace::set_regs(tid, &regs)?;
        // In single-step mode the mask is the one in place already.
        let other = self.mode != StepMode::SingleStep;
        if other {
            ptrace::set_sigmask(tid, injection_mask(StepMode::SingleStep))?;
        }
        self.at_exit_stop = false;
        let trap_ip = code + BATCH_CODE.len() as u64;
        let r = self.run_until_trap(trap_ip);
        if other {
            ptrace::set_sigmask(tid, injection_mask(self.mode))?;
        }
        r
    }

    /// A fault signal with a kernel si_code while our code runs at `at`:
    /// the injected code itself faulted.
    fn check_fault(&self, sig: i32, what: &str, at: u64) -> io::Result<()> {
        if is_fault_signal(sig) {
            let code = ptrace::siginfo_code(&ptrace::get_siginfo(self.tid)?);
            if code > 0 {
                return Err(io::Error::other(format!(
                    "{what} at {at:#x} in tid {} faulted with signal {sig}",
                    self.tid
                )));
            }
        }
        Ok(())
    }

    /// An event stop while injecting: the tracee's exit ends the injection,
    /// other events (e.g. the clone of a thread we create) are kept.
    fn note_event(&mut self, st: WaitStatus, event: i32) -> io::Result<()> {
        if event == ptrace::PTRACE_EVENT_EXIT {
            return Err(self.gone(st));
        }
        if event != ptrace::PTRACE_EVENT_STOP {
            let msg = ptrace::get_event_msg(self.tid)?;
            self.events.push((event, msg));
        }
        Ok(())
    }

    fn run_until_trap(&mut self, trap_ip: u64) -> io::Result<()> {
        let tid = self.tid;
        ptrace::cont(tid, 0)?;
        loop {
            let st = ptrace::wait(tid)?;
            match st {
                WaitStatus::Exited(_) | WaitStatus::Signaled(_) => return Err(self.gone(st)),
                WaitStatus::Stopped { sig } => {
                    let regs = ptrace::get_regs(tid)?;
                    if sig == libc::SIGTRAP && regs.rip == trap_ip {
                        return Ok(());
                    }
                    self.check_fault(sig, "syscall batch", regs.rip)?;
                    self.record_signal(sig)?;
                }
                WaitStatus::PtraceEvent { event, .. } => self.note_event(st, event)?,
                WaitStatus::GroupStop { .. } | WaitStatus::SyscallStop | WaitStatus::Continued => {}
            }
            ptrace::cont(tid, 0)?;
        }
    }

    /// Like [`Injector::syscall`], mapping results in -4095..=-1 to an
    /// `io::Error` with that errno.
    pub fn syscall_checked(&mut self, nr: i64, args: [u64; 6]) -> io::Result<u64> {
        let r = self.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            Err(io::Error::from_raw_os_error(-r as i32))
        } else {
            Ok(r as u64)
        }
    }

    fn resume(&self) -> io::Result<()> {
        match self.mode {
            StepMode::SingleStep => ptrace::singlestep(self.tid),
            StepMode::SyscallStops => ptrace::syscall(self.tid, 0),
        }
    }

    fn gone(&self, how: WaitStatus) -> io::Error {
        io::Error::other(format!(
            "tid {} ended during an injected syscall: {how:?}",
            self.tid
        ))
    }

    /// Suppresses the signal of the current signal-delivery-stop, keeping
    /// its siginfo to queue again later.
    fn record_signal(&mut self, sig: i32) -> io::Result<()> {
        let info = ptrace::get_siginfo(self.tid)?;
        tracing::debug!(tid = self.tid, sig, "signal during injection, deferred");
        self.pending.push(info);
        Ok(())
    }

    /// Resumes the thread until the injected instruction has completed and
    /// returns the registers then. In `SyscallStops` mode that is after
    /// `syscall_stops` syscall stops: SIGTRAP is blocked then, so every
    /// SIGTRAP-like stop is a syscall stop, and none needs classifying.
    fn run(&mut self, mut syscall_stops: u32) -> io::Result<user_regs_struct> {
        let tid = self.tid;
        self.resume()?;
        loop {
            let st = ptrace::wait(tid)?;
            match st {
                WaitStatus::Exited(_) | WaitStatus::Signaled(_) => return Err(self.gone(st)),
                WaitStatus::SyscallStop | WaitStatus::Stopped { sig: libc::SIGTRAP }
                    if self.mode == StepMode::SyscallStops =>
                {
                    syscall_stops -= 1;
                    if syscall_stops == 0 {
                        return ptrace::get_regs(tid);
                    }
                }
                WaitStatus::Stopped { sig } => {
                    let regs = ptrace::get_regs(tid)?;
                    let not_run = regs.rip == self.syscall_ip;
                    if sig == libc::SIGTRAP && !not_run {
                        // The step trap after the instruction.
                        return Ok(regs);
                    }
                    if not_run {
                        self.check_fault(sig, "injected syscall", self.syscall_ip)?;
                    }
                    self.record_signal(sig)?;
                }
                WaitStatus::PtraceEvent { event, .. } => self.note_event(st, event)?,
                // A group-stop: resuming a seized thread is allowed, and the
                // kernel re-arms the stop when we detach.
                WaitStatus::GroupStop { .. } | WaitStatus::SyscallStop | WaitStatus::Continued => {}
            }
            self.resume()?;
        }
    }

    fn restore_inner(&mut self) -> io::Result<()> {
        self.done = true;
        let mut regs = self.saved;
        if self.at_exit_stop {
            // The kernel runs no restart logic after a syscall-exit stop
            // unless a signal is pending: do it here.
            apply_restart(&mut regs);
        }
        ptrace::set_regs(self.tid, &regs)?;
        ptrace::set_sigmask(self.tid, self.saved_sigmask)?;
        if !self.pending.is_empty() {
            let tgid = tgid_of(self.tid)?;
            for info in std::mem::take(&mut self.pending) {
                let sig = ptrace::siginfo_signo(&info);
                let code = ptrace::siginfo_code(&info);
                // Another process may only queue user si_codes; kernel ones
                // (and SI_TKILL) are sent again as a plain tgkill.
                if code < 0 && code != libc::SI_TKILL {
                    misc::rt_tgsigqueueinfo(tgid, self.tid, sig, &info)?;
                } else {
                    misc::raw_tgkill(tgid, self.tid, sig)?;
                }
            }
        }
        Ok(())
    }

    /// Loads the saved registers and signal mask back and queues again any
    /// signal that arrived during injection. The thread stays stopped; an
    /// interrupted syscall restarts when it is resumed, as it would have.
    pub fn restore(mut self) -> io::Result<()> {
        self.restore_inner()
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.restore_inner() {
                tracing::warn!(tid = self.tid, error = %e, "restoring injected thread failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
}
