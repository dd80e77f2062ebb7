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
//!   would be unblocked. Use it only on a thread whose SIGTRAP is known
//!   not to be ignored (`SigIgn` in /proc/PID/status), and end with a call
//!   in the other mode before a tracer that may die lets the thread wait:
//!   the trap flag stays set through the kernel's implicit detach
//!   (`Injector::stepped`, `task::remote::Remote::finish`).
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
/// Where [`SPAWN_CODE`] and [`EXIT_LOOP_CODE`] go, as offsets from
/// [`BATCH_CODE`] on the same page.
pub const SPAWN_AT: u64 = 64;
pub const EXIT_LOOP_AT: u64 = 128;

/// Run the first entry of a [`BATCH_CODE`] table (a `clone` of a thread),
/// then `int3` in the caller; the new thread, which starts after the
/// `syscall` with `rax` = 0 and the caller's registers, jumps to
/// [`EXIT_LOOP_CODE`] with the table's other entries. Neither touches the
/// stack, so the thread may share the caller's.
///
/// ```text
///  0: mov  rax, [r12] .. mov r9, [r12+48]    (as BATCH_CODE 5..39)
/// 34: syscall                0f 05
/// 36: mov  [r12+56], rax     49 89 44 24 38
/// 41: test rax, rax          48 85 c0
/// 44: jnz  58                75 0c
/// 46: add  r12, 64           49 83 c4 40
/// 50: dec  r13               49 ff cd
/// 53: jmp  EXIT_LOOP         e9 06 00 00 00   (SPAWN_AT + 58 + 6)
/// 58: int3                   cc
/// ```
pub const SPAWN_CODE: [u8; 59] = [
    0x49, 0x8b, 0x04, 0x24, 0x49, 0x8b, 0x7c, 0x24, 0x08, 0x49, 0x8b, 0x74, 0x24, 0x10, 0x49, 0x8b,
    0x54, 0x24, 0x18, 0x4d, 0x8b, 0x54, 0x24, 0x20, 0x4d, 0x8b, 0x44, 0x24, 0x28, 0x4d, 0x8b, 0x4c,
    0x24, 0x30, 0x0f, 0x05, 0x49, 0x89, 0x44, 0x24, 0x38, 0x48, 0x85, 0xc0, 0x75, 0x0c, 0x49, 0x83,
    0xc4, 0x40, 0x49, 0xff, 0xcd, 0xe9, 0x06, 0x00, 0x00, 0x00, 0xcc,
];

/// [`BATCH_CODE`]'s loop ending in `exit(0)` of the thread instead of `int3`.
///
/// ```text
///  0..55: as BATCH_CODE
/// 55: mov  eax, 60           b8 3c 00 00 00
/// 60: xor  edi, edi          31 ff
/// 62: syscall                0f 05
/// ```
pub const EXIT_LOOP_CODE: [u8; 64] = {
    let mut c = [0u8; 64];
    let mut i = 0;
    while i < 55 {
        c[i] = BATCH_CODE[i];
        i += 1;
    }
    let tail = [0xb8, 0x3c, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05];
    let mut j = 0;
    while j < tail.len() {
        c[55 + j] = tail[j];
        j += 1;
    }
    c
};

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
    /// The last injection was a single step. The kernel keeps the trap flag
    /// set until a resume of another kind: should the tracer die now, its
    /// implicit detach leaves the flag, and the thread's next instruction
    /// raises a SIGTRAP that kills it (measured). A trap stop alone is
    /// harmless: waiting for it cleared its signal.
    stepped: bool,
    pending: Vec<RawSiginfo>,
    events: Vec<(i32, u64)>,
    done: bool,
    /// Syscall stops the running injected syscall is still to make.
    syscall_stops: u32,
    /// The running batch: its final trap's address, and whether the step
    /// mode's signal mask is to be put back.
    batch_trap: Option<(u64, bool)>,
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
            stepped: false,
            pending: Vec::new(),
            events: Vec::new(),
            done: false,
            syscall_stops: 0,
            batch_trap: None,
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

    /// Whether the last injection was a single step (see the `stepped`
    /// field): a tracer that may die before it detaches should run one more
    /// call with [`StepMode::SyscallStops`] first.
    pub fn stepped(&self) -> bool {
        self.stepped
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
        self.begin_syscall(nr, args)?;
        self.end_syscall()
    }

    /// The first half of [`syscall`](Self::syscall): load the registers
    /// and resume the thread. Other threads (of other processes) can be
    /// started meanwhile, so they all run at once; [`end_syscall`]
    /// (Self::end_syscall) waits for this one's result.
    pub fn begin_syscall(&mut self, nr: i64, args: [u64; 6]) -> io::Result<()> {
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
        self.syscall_stops = if self.at_entry { 1 } else { 2 };
        self.at_entry = false;
        self.at_exit_stop = false;
        self.stepped = self.mode == StepMode::SingleStep;
        self.resume()
    }

    /// The second half of [`syscall`](Self::syscall), after
    /// [`begin_syscall`](Self::begin_syscall).
    pub fn end_syscall(&mut self) -> io::Result<i64> {
        let rax = self.run()?.rax;
        self.at_exit_stop = self.mode == StepMode::SyscallStops;
        Ok(rax as i64)
    }

    /// Run the [`BATCH_CODE`] loop mapped at `code` over `n` table entries at
    /// `table` (already written into the target) with one PTRACE_CONT, and
    /// wait for its final `int3`. SIGTRAP is unblocked meanwhile so the trap
    /// does not reset its disposition; do not use this on a thread that
    /// ignores SIGTRAP.
    pub fn run_batch(&mut self, code: u64, table: u64, n: usize) -> io::Result<()> {
        self.begin_batch(code, table, n)?;
        self.end_batch()
    }

    /// The first half of [`run_batch`](Self::run_batch): load the
    /// registers and resume the thread (see [`begin_syscall`]
    /// (Self::begin_syscall)); [`end_batch`](Self::end_batch) waits.
    pub fn begin_batch(&mut self, code: u64, table: u64, n: usize) -> io::Result<()> {
        self.begin_code(code, code + BATCH_CODE.len() as u64, table, n)
    }

    /// Run code at `code` with `r12` = `table`, `r13` = `n`, until its
    /// `int3` (`rip` = `trap_ip` after it); the thread keeps the
    /// injection's registers (see [`begin_batch`](Self::begin_batch)).
    pub fn run_code(&mut self, code: u64, trap_ip: u64, table: u64, n: usize) -> io::Result<()> {
        self.begin_code(code, trap_ip, table, n)?;
        self.end_batch()
    }

    fn begin_code(&mut self, code: u64, trap_ip: u64, table: u64, n: usize) -> io::Result<()> {
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
        // PTRACE_CONT clears a trap flag left by single steps.
        self.stepped = false;
        self.batch_trap = Some((trap_ip, other));
        ptrace::cont(tid, 0)
    }

    /// The second half of [`run_batch`](Self::run_batch), after
    /// [`begin_batch`](Self::begin_batch).
    pub fn end_batch(&mut self) -> io::Result<()> {
        let (trap_ip, other) = self
            .batch_trap
            .take()
            .ok_or_else(|| io::Error::other("no batch was started"))?;
        let r = self.run_until_trap(trap_ip);
        if other {
            ptrace::set_sigmask(self.tid, injection_mask(self.mode))?;
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

    /// Wait for the batch's final trap at `trap_ip` (the thread was
    /// resumed by [`begin_batch`](Self::begin_batch)).
    fn run_until_trap(&mut self, trap_ip: u64) -> io::Result<()> {
        let tid = self.tid;
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

    /// Waits until the injected instruction (resumed by
    /// [`begin_syscall`](Self::begin_syscall)) has completed and returns
    /// the registers then. In `SyscallStops` mode that is after
    /// `syscall_stops` syscall stops: SIGTRAP is blocked then, so every
    /// SIGTRAP-like stop is a syscall stop, and none needs classifying.
    fn run(&mut self) -> io::Result<user_regs_struct> {
        let tid = self.tid;
        let mut syscall_stops = self.syscall_stops;
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
mod tests;
