//! Small syscalls and structs that fit nowhere else.

use std::io;
use std::mem;

use super::cvt;
use super::ptrace::Tid;

/// Syscall numbers (x86_64) used for injection, re-exported from libc.
pub mod nr {
    pub use libc::{
        SYS_arch_prctl, SYS_brk, SYS_capget, SYS_capset, SYS_chdir, SYS_clone, SYS_clone3,
        SYS_close, SYS_dup2, SYS_dup3, SYS_exit, SYS_exit_group, SYS_fchdir, SYS_fcntl,
        SYS_get_robust_list, SYS_getitimer, SYS_getpgid, SYS_getpid, SYS_getppid, SYS_getsid,
        SYS_gettid, SYS_ioctl, SYS_kill, SYS_lseek, SYS_madvise, SYS_memfd_create, SYS_mmap,
        SYS_mprotect, SYS_mremap, SYS_munmap, SYS_openat, SYS_personality, SYS_prctl, SYS_pread64,
        SYS_preadv, SYS_pwrite64, SYS_pwritev, SYS_read, SYS_restart_syscall, SYS_rseq,
        SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo,
        SYS_sched_getattr, SYS_sched_setattr, SYS_seccomp, SYS_set_robust_list,
        SYS_set_tid_address, SYS_setgroups, SYS_setitimer, SYS_setns, SYS_setpgid, SYS_setresgid,
        SYS_setresuid, SYS_setsid, SYS_shmat, SYS_shmdt, SYS_sigaltstack, SYS_socket, SYS_tgkill,
        SYS_timer_create, SYS_timer_delete, SYS_timer_getoverrun, SYS_timer_gettime,
        SYS_timer_settime, SYS_umask, SYS_unshare, SYS_userfaultfd, SYS_write,
    };
}

/// `prctl(PR_SET_MM, PR_SET_MM_MAP, ...)` option values.
pub const PR_SET_MM: i32 = 35;
/// Sub-option of `PR_SET_MM` taking a whole [`PrctlMmMap`].
pub const PR_SET_MM_MAP: i32 = 14;
/// Sub-option returning `size_of::<PrctlMmMap>()`.
pub const PR_SET_MM_MAP_SIZE: i32 = 15;

/// `struct prctl_mm_map` (104 bytes), for an injected
/// `prctl(PR_SET_MM, PR_SET_MM_MAP, addr, 104, 0)`. Write [`Self::to_bytes`]
/// into the target's memory and pass that address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct PrctlMmMap {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// Address (in the target) of the saved auxv words.
    pub auxv: u64,
    /// Size of the auxv in bytes.
    pub auxv_size: u32,
    /// fd (in the target) of the new exe, or `u32::MAX` (-1) to keep it.
    pub exe_fd: u32,
}

impl PrctlMmMap {
    /// Size of the kernel struct.
    pub const SIZE: usize = 104;

    /// Native-endian bytes in kernel layout.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let words = [
            self.start_code,
            self.end_code,
            self.start_data,
            self.end_data,
            self.start_brk,
            self.brk,
            self.start_stack,
            self.arg_start,
            self.arg_end,
            self.env_start,
            self.env_end,
            self.auxv,
        ];
        let mut out = [0u8; Self::SIZE];
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        out[96..100].copy_from_slice(&self.auxv_size.to_ne_bytes());
        out[100..104].copy_from_slice(&self.exe_fd.to_ne_bytes());
        out
    }
}

/// The calling thread's id (raw syscall; not glibc's cache).
pub fn gettid() -> Tid {
    // SAFETY: gettid has no arguments and cannot fail.
    (unsafe { libc::syscall(libc::SYS_gettid) }) as Tid
}

/// Raw `kill(pid, sig)`.
pub fn raw_kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_kill, pid as libc::c_long, sig as libc::c_long) })
        .map(drop)
}

/// Raw `tgkill(tgid, tid, sig)`: a thread-directed signal.
pub fn raw_tgkill(tgid: i32, tid: Tid, sig: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            tgid as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        )
    })
    .map(drop)
}

/// `rt_tgsigqueueinfo(tgid, tid, sig, info)`. From another process only
/// user `si_code`s (< 0, not SI_TKILL) are allowed; EPERM otherwise.
pub fn rt_tgsigqueueinfo(tgid: i32, tid: Tid, sig: i32, info: &[u8; 128]) -> io::Result<()> {
    // SAFETY: the kernel reads 128 bytes of siginfo from `info`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_rt_tgsigqueueinfo,
            tgid as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
            info.as_ptr(),
        )
    })
    .map(drop)
}

/// `get_robust_list(tid)`: the head address and length registered by the
/// thread (`set_robust_list` must be replayed on restore).
pub fn get_robust_list(tid: Tid) -> io::Result<(u64, usize)> {
    let mut head: usize = 0;
    let mut len: usize = 0;
    // SAFETY: the kernel writes one pointer-sized value to each out param.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid as libc::c_long,
            &mut head as *mut usize,
            &mut len as *mut usize,
        )
    })?;
    Ok((head as u64, len))
}

/// Scheduling attributes of a thread (`struct sched_attr`, version 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct SchedAttr {
    pub size: u32,
    pub sched_policy: u32,
    pub sched_flags: u64,
    pub sched_nice: i32,
    pub sched_priority: u32,
    pub sched_runtime: u64,
    pub sched_deadline: u64,
    pub sched_period: u64,
    pub sched_util_min: u32,
    pub sched_util_max: u32,
}

/// `sched_getattr(tid)`: policy, nice, RT priority and deadline parameters.
pub fn sched_getattr(tid: Tid) -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: the kernel writes at most `size` bytes into `attr`.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid as libc::c_long,
            &mut attr as *mut SchedAttr,
            mem::size_of::<SchedAttr>() as libc::c_uint,
            0 as libc::c_uint,
        )
    })?;
    Ok(attr)
}

/// `which` for [`getpriority`]: a single process or thread.
pub const PRIO_PROCESS: i32 = 0;
/// `which` for [`getpriority`]: a process group.
pub const PRIO_PGRP: i32 = 1;
/// `which` for [`getpriority`]: a user.
pub const PRIO_USER: i32 = 2;

/// `getpriority(which, who)` as a nice value (-20..=19). Uses the raw
/// syscall (which returns `20 - nice`) so -1 is not ambiguous.
pub fn getpriority(which: i32, who: i32) -> io::Result<i32> {
    // SAFETY: plain integer arguments.
    let r = cvt(unsafe {
        libc::syscall(
            libc::SYS_getpriority,
            which as libc::c_long,
            who as libc::c_long,
        )
    })?;
    Ok(20 - r as i32)
}

/// An entry of our own auxiliary vector (0 when absent).
pub fn own_auxval(kind: u64) -> u64 {
    // SAFETY: getauxval only reads the process's auxv; any type is allowed.
    unsafe { libc::getauxval(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prctl_mm_map_layout() {
        assert_eq!(mem::size_of::<PrctlMmMap>(), 104);
        let m = PrctlMmMap {
            start_code: 1,
            env_end: 11,
            auxv: 12,
            auxv_size: 13,
            exe_fd: u32::MAX,
            ..Default::default()
        };
        let b = m.to_bytes();
        assert_eq!(u64::from_ne_bytes(b[0..8].try_into().unwrap()), 1);
        assert_eq!(u64::from_ne_bytes(b[80..88].try_into().unwrap()), 11);
        assert_eq!(u64::from_ne_bytes(b[88..96].try_into().unwrap()), 12);
        assert_eq!(u32::from_ne_bytes(b[96..100].try_into().unwrap()), 13);
        assert_eq!(i32::from_ne_bytes(b[100..104].try_into().unwrap()), -1);
    }

    #[test]
    fn prctl_mm_map_size_matches_kernel() {
        let mut size: libc::c_uint = 0;
        // SAFETY: PR_SET_MM_MAP_SIZE writes one unsigned int to arg3.
        let r = unsafe {
            libc::prctl(
                PR_SET_MM,
                PR_SET_MM_MAP_SIZE as libc::c_ulong,
                &mut size as *mut libc::c_uint,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r != 0 {
            eprintln!(
                "skipped: PR_SET_MM_MAP_SIZE: {}",
                io::Error::last_os_error()
            );
            return;
        }
        assert_eq!(size as usize, PrctlMmMap::SIZE);
    }

    #[test]
    fn self_queries() {
        let tid = gettid();
        assert!(tid > 0);
        let attr = sched_getattr(tid).unwrap();
        assert_eq!(attr.sched_policy, libc::SCHED_OTHER as u32);
        assert_eq!(attr.sched_nice, getpriority(PRIO_PROCESS, tid).unwrap());
        let (head, len) = get_robust_list(tid).unwrap();
        // glibc registers a robust list for every thread.
        assert_ne!(head, 0);
        assert_eq!(len, 24);
        raw_kill(std::process::id() as i32, 0).unwrap();
        assert_eq!(mem::size_of::<SchedAttr>(), 56);
    }
}
