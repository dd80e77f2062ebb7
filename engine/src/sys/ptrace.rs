//! ptrace(2) requests used by dump and restore, on x86_64.
//!
//! Requests go through the raw syscall, not glibc's variadic wrapper, so the
//! `PEEK*` result convention of glibc never applies. All threads are expected
//! to be attached with `PTRACE_SEIZE` (no `PTRACE_ATTACH`): that is what makes
//! group-stops distinguishable (see [`WaitStatus`]).

use std::io;
use std::mem::{self, MaybeUninit};

use libc::{c_long, c_void};

use super::{cvt, cvt_retry};

/// A thread id (equal to the pid for a thread-group leader).
pub type Tid = i32;

/// Size of a raw `siginfo_t`, as the kernel copies it out.
pub const SIGINFO_SIZE: usize = 128;

/// A raw `siginfo_t` (`si_signo` at 0, `si_errno` at 4, `si_code` at 8).
pub type RawSiginfo = [u8; SIGINFO_SIZE];

// Request numbers (uapi/linux/ptrace.h). Kept local so they have one type.
const PTRACE_CONT: c_long = 7;
const PTRACE_SINGLESTEP: c_long = 9;
const PTRACE_SYSCALL: c_long = 24;
const PTRACE_DETACH: c_long = 17;
const PTRACE_SETOPTIONS: c_long = 0x4200;
const PTRACE_GETEVENTMSG: c_long = 0x4201;
const PTRACE_GETSIGINFO: c_long = 0x4202;
const PTRACE_SETSIGINFO: c_long = 0x4203;
const PTRACE_GETREGSET: c_long = 0x4204;
const PTRACE_SETREGSET: c_long = 0x4205;
const PTRACE_SEIZE: c_long = 0x4206;
const PTRACE_INTERRUPT: c_long = 0x4207;
const PTRACE_LISTEN: c_long = 0x4208;
const PTRACE_PEEKSIGINFO: c_long = 0x4209;
const PTRACE_GETSIGMASK: c_long = 0x420a;
const PTRACE_SETSIGMASK: c_long = 0x420b;
const PTRACE_SECCOMP_GET_FILTER: c_long = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: c_long = 0x420d;
const PTRACE_GET_SYSCALL_INFO: c_long = 0x420e;
const PTRACE_GET_RSEQ_CONFIGURATION: c_long = 0x420f;

/// `PTRACE_PEEKSIGINFO` flag: read the process-wide (shared) queue.
pub const PTRACE_PEEKSIGINFO_SHARED: u32 = 1;

// Options for `seize` / `set_options`.
/// Syscall stops report `SIGTRAP | 0x80`.
pub const PTRACE_O_TRACESYSGOOD: u64 = 1;
/// Auto-attach children created by fork.
pub const PTRACE_O_TRACEFORK: u64 = 1 << 1;
/// Auto-attach children created by vfork.
pub const PTRACE_O_TRACEVFORK: u64 = 1 << 2;
/// Auto-attach threads and children created by clone.
pub const PTRACE_O_TRACECLONE: u64 = 1 << 3;
/// Stop at execve.
pub const PTRACE_O_TRACEEXEC: u64 = 1 << 4;
/// Stop when a vfork parent resumes.
pub const PTRACE_O_TRACEVFORKDONE: u64 = 1 << 5;
/// Stop at exit, registers still readable.
pub const PTRACE_O_TRACEEXIT: u64 = 1 << 6;
/// Stop on `SECCOMP_RET_TRACE`.
pub const PTRACE_O_TRACESECCOMP: u64 = 1 << 7;
/// SIGKILL the tracee if the tracer exits.
pub const PTRACE_O_EXITKILL: u64 = 1 << 20;
/// Disable the tracee's seccomp filters while traced (needs CAP_SYS_ADMIN).
pub const PTRACE_O_SUSPEND_SECCOMP: u64 = 1 << 21;

// Event numbers, found in `status >> 16`.
/// fork event; the new pid is in [`get_event_msg`].
pub const PTRACE_EVENT_FORK: i32 = 1;
/// vfork event.
pub const PTRACE_EVENT_VFORK: i32 = 2;
/// clone event; the new tid is in [`get_event_msg`].
pub const PTRACE_EVENT_CLONE: i32 = 3;
/// execve event.
pub const PTRACE_EVENT_EXEC: i32 = 4;
/// vfork-done event.
pub const PTRACE_EVENT_VFORK_DONE: i32 = 5;
/// Exit event; the exit status is in [`get_event_msg`].
pub const PTRACE_EVENT_EXIT: i32 = 6;
/// seccomp event.
pub const PTRACE_EVENT_SECCOMP: i32 = 7;
/// Interrupt-, group- or initial stop of a seized tracee.
pub const PTRACE_EVENT_STOP: i32 = 128;

// ELF note types for GETREGSET/SETREGSET.
const NT_PRSTATUS: usize = 1;
const NT_PRFPREG: usize = 2;
const NT_X86_XSTATE: usize = 0x202;

/// Issues one ptrace request.
///
/// # Safety
/// `addr` and `data` must be valid for whatever the kernel reads or writes
/// for `req` (or plain integers for requests that take integers).
unsafe fn request(req: c_long, tid: Tid, addr: usize, data: usize) -> io::Result<c_long> {
    // SAFETY: the caller guarantees that `addr`/`data` are valid for `req`.
    let r = unsafe { libc::syscall(libc::SYS_ptrace, req, tid as c_long, addr, data) };
    cvt(r)
}

/// Issues a request whose `addr` and `data` are plain integers.
fn request_int(req: c_long, tid: Tid, addr: usize, data: usize) -> io::Result<c_long> {
    // SAFETY: only called for requests that take integers (signal numbers,
    // options) or ignore addr/data, so the kernel dereferences no pointer.
    unsafe { request(req, tid, addr, data) }
}

/// `PTRACE_SEIZE`: attaches without stopping the thread.
pub fn seize(tid: Tid, options: u64) -> io::Result<()> {
    request_int(PTRACE_SEIZE, tid, 0, options as usize).map(drop)
}

/// `PTRACE_SETOPTIONS`: replaces the options of a stopped tracee.
pub fn set_options(tid: Tid, options: u64) -> io::Result<()> {
    request_int(PTRACE_SETOPTIONS, tid, 0, options as usize).map(drop)
}

/// `PTRACE_SECCOMP_GET_FILTER`: the BPF program (raw `struct sock_filter`
/// array, 8 bytes an instruction) of the `index`-th seccomp filter of `tid`,
/// 0 being the first installed (the kernel counts from the root of the
/// chain); `None` past the newest one.
pub fn seccomp_filter(tid: Tid, index: u64) -> io::Result<Option<Vec<u8>>> {
    // With a null buffer the request returns the instruction count.
    let n = match request_int(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, 0) {
        Ok(n) => n as usize,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; n * 8];
    // SAFETY: `buf` holds room for the `n` instructions the kernel just
    // reported for this filter, which cannot change while `tid` is stopped.
    let got = unsafe {
        request(
            PTRACE_SECCOMP_GET_FILTER,
            tid,
            index as usize,
            buf.as_mut_ptr() as usize,
        )?
    };
    buf.truncate(got as usize * 8);
    Ok(Some(buf))
}

/// `PTRACE_SECCOMP_GET_METADATA`: the `SECCOMP_FILTER_FLAG_*` flags the
/// `index`-th filter of `tid` was installed with (only those the kernel
/// remembers, e.g. `LOG`).
pub fn seccomp_flags(tid: Tid, index: u64) -> io::Result<u64> {
    // struct seccomp_metadata { __u64 filter_off; __u64 flags; }
    let mut md = [index, 0u64];
    // SAFETY: `md` is a writable `struct seccomp_metadata` and `addr` says
    // its size, as the request expects.
    unsafe {
        request(
            PTRACE_SECCOMP_GET_METADATA,
            tid,
            mem::size_of_val(&md),
            md.as_mut_ptr() as usize,
        )?
    };
    Ok(md[1])
}

/// `PTRACE_INTERRUPT`: asks a seized thread to enter an event-stop
/// (`PTRACE_EVENT_STOP`, collect it with [`wait`]).
pub fn interrupt(tid: Tid) -> io::Result<()> {
    request_int(PTRACE_INTERRUPT, tid, 0, 0).map(drop)
}

/// `PTRACE_DETACH`, delivering `sig` (0 for none).
pub fn detach(tid: Tid, sig: i32) -> io::Result<()> {
    request_int(PTRACE_DETACH, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_CONT`, delivering `sig` (0 for none).
pub fn cont(tid: Tid, sig: i32) -> io::Result<()> {
    request_int(PTRACE_CONT, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_SYSCALL`: resumes until the next syscall entry or exit.
pub fn syscall(tid: Tid, sig: i32) -> io::Result<()> {
    request_int(PTRACE_SYSCALL, tid, 0, sig as usize).map(drop)
}

/// `PTRACE_SINGLESTEP`: executes one instruction.
///
/// The step trap is a forced `SIGTRAP`: if the tracee ignores (or blocks)
/// SIGTRAP, the kernel resets its SIGTRAP disposition to `SIG_DFL`.
pub fn singlestep(tid: Tid) -> io::Result<()> {
    request_int(PTRACE_SINGLESTEP, tid, 0, 0).map(drop)
}

/// `PTRACE_LISTEN`: leaves a group-stopped tracee stopped but lets it be
/// woken by SIGCONT (reported as a new stop).
pub fn listen(tid: Tid) -> io::Result<()> {
    request_int(PTRACE_LISTEN, tid, 0, 0).map(drop)
}

/// The decoded status of one `waitpid` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (the core-dump flag is not kept).
    Signaled(i32),
    /// Signal-delivery-stop (or the trap of a single step: `SIGTRAP`).
    Stopped { sig: i32 },
    /// Syscall entry or exit stop reported with `PTRACE_O_TRACESYSGOOD`.
    SyscallStop,
    /// A ptrace event stop (`event = status >> 16`). An interrupt-stop is
    /// `PtraceEvent { sig: SIGTRAP, event: PTRACE_EVENT_STOP }`.
    PtraceEvent { sig: i32, event: i32 },
    /// Group-stop of a seized tracee: `PTRACE_EVENT_STOP` with a stop signal.
    GroupStop { sig: i32 },
    /// Resumed by SIGCONT (only with `WCONTINUED`).
    Continued,
}

impl WaitStatus {
    /// Decodes a raw `wait` status.
    pub fn from_raw(status: i32) -> Self {
        let low = status & 0x7f;
        if low == 0 {
            return WaitStatus::Exited((status >> 8) & 0xff);
        }
        if status & 0xff == 0x7f {
            let sig = (status >> 8) & 0xff;
            let event = (status >> 16) & 0xff;
            return match event {
                0 if sig == libc::SIGTRAP | 0x80 => WaitStatus::SyscallStop,
                0 => WaitStatus::Stopped { sig },
                PTRACE_EVENT_STOP if is_stop_signal(sig) => WaitStatus::GroupStop { sig },
                _ => WaitStatus::PtraceEvent { sig, event },
            };
        }
        if status == 0xffff {
            return WaitStatus::Continued;
        }
        WaitStatus::Signaled(low)
    }

    /// The raw status this value decodes from (without the core-dump flag).
    pub fn raw(&self) -> i32 {
        match *self {
            WaitStatus::Exited(code) => (code & 0xff) << 8,
            WaitStatus::Signaled(sig) => sig & 0x7f,
            WaitStatus::Stopped { sig } => ((sig & 0xff) << 8) | 0x7f,
            WaitStatus::SyscallStop => ((libc::SIGTRAP | 0x80) << 8) | 0x7f,
            WaitStatus::PtraceEvent { sig, event } => {
                ((event & 0xff) << 16) | ((sig & 0xff) << 8) | 0x7f
            }
            WaitStatus::GroupStop { sig } => (PTRACE_EVENT_STOP << 16) | ((sig & 0xff) << 8) | 0x7f,
            WaitStatus::Continued => 0xffff,
        }
    }

    /// Whether the thread is gone (exited or killed).
    pub fn is_exit(&self) -> bool {
        matches!(self, WaitStatus::Exited(_) | WaitStatus::Signaled(_))
    }

    /// Whether this is the event-stop caused by `PTRACE_INTERRUPT` (or the
    /// initial stop of an auto-attached child).
    pub fn is_interrupt_stop(&self) -> bool {
        matches!(
            self,
            WaitStatus::PtraceEvent {
                sig: libc::SIGTRAP,
                event: PTRACE_EVENT_STOP
            }
        )
    }
}

fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// `waitpid(pid, __WALL | extra)`, retried on EINTR. Returns the pid and the
/// raw status; pid 0 only with `WNOHANG`.
fn waitpid_raw(pid: i32, extra: i32) -> io::Result<(Tid, i32)> {
    let mut status = 0i32;
    let got = cvt_retry(|| {
        // SAFETY: `status` is a valid, writable i32 for the whole call.
        (unsafe { libc::waitpid(pid, &mut status, libc::__WALL | extra) }) as c_long
    })?;
    Ok((got as Tid, status))
}

/// Waits for the next state change of `tid` (`__WALL`, so threads and
/// children with any exit signal are included).
pub fn wait(tid: Tid) -> io::Result<WaitStatus> {
    waitpid_raw(tid, 0).map(|(_, s)| WaitStatus::from_raw(s))
}

/// Waits for the next state change of any tracee or child.
pub fn wait_any() -> io::Result<(Tid, WaitStatus)> {
    waitpid_raw(-1, 0).map(|(t, s)| (t, WaitStatus::from_raw(s)))
}

/// Like [`wait`] but returns `None` at once if `tid` has nothing to report.
pub fn wait_nohang(tid: Tid) -> io::Result<Option<WaitStatus>> {
    let (got, s) = waitpid_raw(tid, libc::WNOHANG)?;
    Ok((got != 0).then(|| WaitStatus::from_raw(s)))
}

/// Like [`wait_any`] but returns `None` at once if nobody has anything to
/// report.
pub fn wait_any_nohang() -> io::Result<Option<(Tid, WaitStatus)>> {
    let (got, s) = waitpid_raw(-1, libc::WNOHANG)?;
    Ok((got != 0).then(|| (got, WaitStatus::from_raw(s))))
}

/// GETREGSET into `buf`, returning the number of bytes the kernel filled.
fn get_regset(tid: Tid, note: usize, buf: &mut [u8]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast::<c_void>(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is writable for `iov_len` bytes;
    // the kernel writes at most that much and updates `iov_len`.
    unsafe { request(PTRACE_GETREGSET, tid, note, &mut iov as *mut _ as usize)? };
    Ok(iov.iov_len)
}

/// SETREGSET from `buf`.
fn set_regset(tid: Tid, note: usize, buf: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, readable for `iov_len` bytes; SETREGSET
    // only reads from it (the iovec itself may be updated).
    unsafe { request(PTRACE_SETREGSET, tid, note, &mut iov as *mut _ as usize)? };
    Ok(())
}

/// Reads a plain-old-data register set of exactly `size_of::<T>()` bytes.
///
/// `T` must be a `#[repr(C)]` struct of integers (every bit pattern valid).
fn get_pod_regset<T: Copy>(tid: Tid, note: usize) -> io::Result<T> {
    let mut out = MaybeUninit::<T>::zeroed();
    // SAFETY: `out` is a live allocation of size_of::<T>() bytes, zeroed, so
    // viewing it as initialised bytes is fine.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), mem::size_of::<T>())
    };
    let n = get_regset(tid, note, bytes)?;
    if n != mem::size_of::<T>() {
        return Err(io::Error::other(format!(
            "regset {note:#x} of tid {tid}: got {n} bytes, expected {}",
            mem::size_of::<T>()
        )));
    }
    // SAFETY: T is plain integers (see the function contract) and all of its
    // bytes are initialised (zeroed, then overwritten by the kernel).
    Ok(unsafe { out.assume_init() })
}

/// Views a plain-old-data value as its bytes.
fn pod_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: `v` is a valid reference to size_of::<T>() bytes; T is a
    // repr(C) integer struct without padding (user_regs_struct and
    // user_fpregs_struct), so every byte is initialised.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), mem::size_of::<T>()) }
}

/// General registers (`NT_PRSTATUS`, 216 bytes).
pub fn get_regs(tid: Tid) -> io::Result<libc::user_regs_struct> {
    get_pod_regset(tid, NT_PRSTATUS)
}

/// Sets the general registers (`NT_PRSTATUS`).
pub fn set_regs(tid: Tid, regs: &libc::user_regs_struct) -> io::Result<()> {
    set_regset(tid, NT_PRSTATUS, pod_bytes(regs))
}

/// Legacy FXSAVE area (`NT_PRFPREG`, 512 bytes); a fallback when XSAVE is
/// unavailable.
pub fn get_fpregs(tid: Tid) -> io::Result<libc::user_fpregs_struct> {
    get_pod_regset(tid, NT_PRFPREG)
}

/// Sets the FXSAVE area (`NT_PRFPREG`).
pub fn set_fpregs(tid: Tid, regs: &libc::user_fpregs_struct) -> io::Result<()> {
    set_regset(tid, NT_PRFPREG, pod_bytes(regs))
}

/// The full XSAVE area (`NT_X86_XSTATE`) as opaque bytes.
///
/// The buffer starts at the larger of the CPUID size and 16 KiB and is
/// truncated to what the kernel filled; the length is the kernel's
/// `fpu_user_cfg.max_size`, which [`set_xstate`] requires back exactly.
pub fn get_xstate(tid: Tid) -> io::Result<Vec<u8>> {
    let cpuid = super::cpu::xsave_size().unwrap_or(0) as usize;
    let mut len = cpuid.max(16 << 10).next_multiple_of(8);
    loop {
        let mut buf = vec![0u8; len];
        let n = get_regset(tid, NT_X86_XSTATE, &mut buf)?;
        // A full buffer may mean truncation: grow and retry.
        if n < len {
            buf.truncate(n);
            return Ok(buf);
        }
        len *= 2;
    }
}

/// Loads an XSAVE area read by [`get_xstate`]. The kernel insists on its
/// exact size (EFAULT otherwise) and validates the header (EINVAL).
pub fn set_xstate(tid: Tid, xstate: &[u8]) -> io::Result<()> {
    set_regset(tid, NT_X86_XSTATE, xstate)
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// All queued signals of `tid` (its private queue, or the process-wide one
/// with `shared`), oldest first, as raw siginfo. Nothing is dequeued.
pub fn peek_siginfo(tid: Tid, shared: bool) -> io::Result<Vec<RawSiginfo>> {
    const BATCH: usize = 32;
    let mut out: Vec<RawSiginfo> = Vec::new();
    let mut buf = [[0u8; SIGINFO_SIZE]; BATCH];
    loop {
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: BATCH as i32,
        };
        // SAFETY: `args` is a valid peeksiginfo_args; `buf` has room for
        // `args.nr` siginfos of 128 bytes each.
        let n = unsafe {
            request(
                PTRACE_PEEKSIGINFO,
                tid,
                &args as *const _ as usize,
                buf.as_mut_ptr() as usize,
            )?
        } as usize;
        out.extend_from_slice(&buf[..n.min(BATCH)]);
        if n < BATCH {
            return Ok(out);
        }
    }
}

/// The blocked-signal mask (bit `n-1` = signal `n`). For a thread inside
/// `sigsuspend`/`ppoll`-style calls this is the mask to restore, not the
/// temporary one.
pub fn get_sigmask(tid: Tid) -> io::Result<u64> {
    let mut mask = 0u64;
    // SAFETY: addr is the size (8) of the u64 the kernel writes to `data`.
    unsafe { request(PTRACE_GETSIGMASK, tid, 8, &mut mask as *mut u64 as usize)? };
    Ok(mask)
}

/// Sets the blocked-signal mask (SIGKILL/SIGSTOP are dropped by the kernel).
/// Note: this also cancels a pending "restore sigmask" of an interrupted
/// `sigsuspend`-style call, whose restart sets the temporary mask again.
pub fn set_sigmask(tid: Tid, mask: u64) -> io::Result<()> {
    // SAFETY: addr is the size (8) of the u64 the kernel reads from `data`.
    unsafe { request(PTRACE_SETSIGMASK, tid, 8, &mask as *const u64 as usize)? };
    Ok(())
}

/// The rseq registration of a thread (`PTRACE_GET_RSEQ_CONFIGURATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct RseqConfig {
    /// Address of the registered `struct rseq` (0 if none).
    pub rseq_abi_pointer: u64,
    /// Registered length (32 for glibc 2.36, not `__rseq_size`).
    pub rseq_abi_size: u32,
    /// Signature expected before abort handlers.
    pub signature: u32,
    /// Registration flags.
    pub flags: u32,
    _pad: u32,
}

/// The rseq registration of `tid`.
pub fn get_rseq_config(tid: Tid) -> io::Result<RseqConfig> {
    let mut cfg = RseqConfig::default();
    let size = mem::size_of::<RseqConfig>();
    // SAFETY: addr is the size of `cfg`, which the kernel fills (up to size).
    let n = unsafe {
        request(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            size,
            &mut cfg as *mut _ as usize,
        )?
    };
    if n as usize != size {
        return Err(io::Error::other(format!(
            "rseq configuration of tid {tid}: kernel returned {n} bytes, expected {size}"
        )));
    }
    Ok(cfg)
}

/// `PTRACE_GETEVENTMSG`: new pid/tid after fork/clone events, exit status
/// after the exit event.
pub fn get_event_msg(tid: Tid) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: the kernel writes one unsigned long to `data`.
    unsafe { request(PTRACE_GETEVENTMSG, tid, 0, &mut msg as *mut _ as usize)? };
    Ok(msg)
}

/// `PTRACE_GETSIGINFO`: the siginfo of the current stop (EINVAL in a
/// group-stop).
pub fn get_siginfo(tid: Tid) -> io::Result<RawSiginfo> {
    let mut info = [0u8; SIGINFO_SIZE];
    // SAFETY: the kernel writes a 128-byte siginfo to `data`.
    unsafe { request(PTRACE_GETSIGINFO, tid, 0, info.as_mut_ptr() as usize)? };
    Ok(info)
}

/// `PTRACE_SETSIGINFO`: replaces the siginfo of a signal-delivery-stop.
pub fn set_siginfo(tid: Tid, info: &RawSiginfo) -> io::Result<()> {
    // SAFETY: the kernel reads a 128-byte siginfo from `data`.
    unsafe { request(PTRACE_SETSIGINFO, tid, 0, info.as_ptr() as usize)? };
    Ok(())
}

/// Signal number of a raw siginfo.
pub fn siginfo_signo(info: &RawSiginfo) -> i32 {
    i32::from_ne_bytes([info[0], info[1], info[2], info[3]])
}

/// `si_code` of a raw siginfo.
pub fn siginfo_code(info: &RawSiginfo) -> i32 {
    i32::from_ne_bytes([info[8], info[9], info[10], info[11]])
}

/// What `PTRACE_GET_SYSCALL_INFO` says about the current stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyscallInfo {
    /// Not a syscall stop.
    None,
    /// Syscall-entry stop: the syscall has not run yet.
    Entry { nr: u64, args: [u64; 6] },
    /// Syscall-exit stop: the syscall returned `rval`.
    Exit { rval: i64, is_error: bool },
    /// `PTRACE_EVENT_SECCOMP` stop: the syscall has not run yet.
    Seccomp {
        nr: u64,
        args: [u64; 6],
        ret_data: u32,
    },
}

/// Kernel layout of `struct ptrace_syscall_info` (88 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawSyscallInfo {
    op: u8,
    _pad: [u8; 3],
    arch: u32,
    instruction_pointer: u64,
    stack_pointer: u64,
    // entry: nr, args[6]; exit: rval, is_error; seccomp: nr, args[6], ret_data.
    data: [u64; 8],
}

/// `PTRACE_GET_SYSCALL_INFO`: whether the thread is stopped at a syscall
/// entry, exit or seccomp stop.
pub fn get_syscall_info(tid: Tid) -> io::Result<SyscallInfo> {
    let mut raw = RawSyscallInfo {
        op: 0,
        _pad: [0; 3],
        arch: 0,
        instruction_pointer: 0,
        stack_pointer: 0,
        data: [0; 8],
    };
    let size = mem::size_of::<RawSyscallInfo>();
    // SAFETY: addr is the size of `raw`; the kernel writes at most that much.
    unsafe {
        request(
            PTRACE_GET_SYSCALL_INFO,
            tid,
            size,
            &mut raw as *mut _ as usize,
        )?
    };
    let d = raw.data;
    let args = [d[1], d[2], d[3], d[4], d[5], d[6]];
    Ok(match raw.op {
        1 => SyscallInfo::Entry { nr: d[0], args },
        2 => SyscallInfo::Exit {
            rval: d[0] as i64,
            is_error: d[1] & 0xff != 0,
        },
        3 => SyscallInfo::Seccomp {
            nr: d[0],
            args,
            ret_data: d[7] as u32,
        },
        _ => SyscallInfo::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_wait_statuses() {
        assert_eq!(
            WaitStatus::from_raw(0x80057f),
            WaitStatus::PtraceEvent {
                sig: libc::SIGTRAP,
                event: PTRACE_EVENT_STOP
            }
        );
        assert!(WaitStatus::from_raw(0x80057f).is_interrupt_stop());
        assert_eq!(
            WaitStatus::from_raw(0x57f),
            WaitStatus::Stopped { sig: libc::SIGTRAP }
        );
        assert_eq!(WaitStatus::from_raw(0x700), WaitStatus::Exited(7));
        assert_eq!(WaitStatus::from_raw(0x9), WaitStatus::Signaled(9));
        assert_eq!(WaitStatus::from_raw(0x89), WaitStatus::Signaled(9)); // core dumped
        assert_eq!(
            WaitStatus::from_raw(0x80137f),
            WaitStatus::GroupStop { sig: libc::SIGSTOP }
        );
        assert_eq!(WaitStatus::from_raw(0x857f), WaitStatus::SyscallStop);
        assert_eq!(
            WaitStatus::from_raw(0x3057f),
            WaitStatus::PtraceEvent {
                sig: libc::SIGTRAP,
                event: PTRACE_EVENT_CLONE
            }
        );
        assert_eq!(WaitStatus::from_raw(0xffff), WaitStatus::Continued);
        assert!(WaitStatus::from_raw(0x700).is_exit());
        assert!(!WaitStatus::from_raw(0x57f).is_exit());
    }

    #[test]
    fn wait_status_raw_round_trips() {
        for raw in [
            0x80057f, 0x57f, 0x700, 0x9, 0x80137f, 0x857f, 0x3057f, 0xffff, 0,
        ] {
            assert_eq!(WaitStatus::from_raw(raw).raw(), raw, "{raw:#x}");
        }
    }

    #[test]
    fn struct_sizes() {
        assert_eq!(mem::size_of::<libc::user_regs_struct>(), 216);
        assert_eq!(mem::size_of::<libc::user_fpregs_struct>(), 512);
        assert_eq!(mem::size_of::<RseqConfig>(), 24);
        assert_eq!(mem::size_of::<PeekSiginfoArgs>(), 16);
        assert_eq!(mem::size_of::<RawSyscallInfo>(), 88);
    }

    #[test]
    fn siginfo_fields() {
        let mut info = [0u8; SIGINFO_SIZE];
        info[0..4].copy_from_slice(&5i32.to_ne_bytes());
        info[8..12].copy_from_slice(&(-6i32).to_ne_bytes());
        assert_eq!(siginfo_signo(&info), 5);
        assert_eq!(siginfo_code(&info), -6);
    }
}
