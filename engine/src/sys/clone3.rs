//! clone3(2) used as a fork that can choose the child's pid (`set_tid`).
//!
//! The child is a copy of the caller with a single thread. Because the call
//! bypasses glibc's `fork()`, glibc's per-thread data in the child is stale
//! (cached TID in `struct pthread`, atfork handlers not run, locks held by
//! other threads stay held). The child must therefore only do
//! async-signal-safe work using raw syscalls — e.g. set up and `execve`, or
//! stop itself with a raw `kill(getpid(), SIGSTOP)` — and leave with
//! `_exit`. In particular no allocation if the caller is multi-threaded.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::cvt;

/// Most pid namespace levels (`MAX_PID_NS_LEVEL`), hence `set_tid` entries.
pub const MAX_SET_TID: usize = 32;
/// `CLONE_PIDFD`: return a pidfd of the child to the parent.
pub const CLONE_PIDFD: u64 = 0x1000;
/// `CLONE_INTO_CGROUP`: start the child in the cgroup given by `cgroup`.
pub const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Kernel layout of `struct clone_args` (version 2, 88 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RawCloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Result of a fork-like clone.
#[derive(Debug)]
pub enum Fork {
    /// We are the new child.
    Child,
    /// We are the parent; `pid` is the child's pid in our namespace.
    Parent {
        pid: i32,
        /// The child's pidfd if [`CloneArgs::pidfd`] was requested.
        pidfd: Option<OwnedFd>,
    },
}

/// Builder for a fork-like clone3 (no `CLONE_VM`, no new stack, no
/// `CLONE_THREAD`: threads are created by injection into the target).
#[derive(Debug, Clone, Default)]
pub struct CloneArgs {
    flags: u64,
    exit_signal: i32,
    set_tid: Vec<i32>,
    cgroup_fd: Option<i32>,
    want_pidfd: bool,
}

impl CloneArgs {
    /// A plain fork with SIGCHLD as exit signal.
    pub fn new() -> Self {
        CloneArgs {
            exit_signal: libc::SIGCHLD,
            ..Default::default()
        }
    }

    /// `CLONE_*` flags (namespaces, `CLONE_PARENT`, ...). Flags that would
    /// share memory or make a thread are rejected by [`Self::fork`].
    pub fn flags(mut self, flags: u64) -> Self {
        self.flags = flags;
        self
    }

    /// Signal sent to the parent when the child exits (0 for none).
    pub fn exit_signal(mut self, sig: i32) -> Self {
        self.exit_signal = sig;
        self
    }

    /// Pids to use, innermost pid namespace first (`set_tid[0]` is the pid
    /// in the child's own namespace). Needs CAP_SYS_ADMIN or
    /// CAP_CHECKPOINT_RESTORE over the owning user namespaces; EEXIST if a
    /// pid is taken.
    pub fn set_tid(mut self, pids: &[i32]) -> Self {
        self.set_tid = pids.to_vec();
        self
    }

    /// Start the child in the cgroup v2 directory open as `fd`.
    pub fn cgroup(mut self, fd: i32) -> Self {
        self.cgroup_fd = Some(fd);
        self
    }

    /// Also return a pidfd of the child.
    pub fn pidfd(mut self, yes: bool) -> Self {
        self.want_pidfd = yes;
        self
    }

    /// Performs the clone. See the module docs for what the child may do.
    pub fn fork(&self) -> io::Result<Fork> {
        const FORBIDDEN: u64 = (libc::CLONE_VM
            | libc::CLONE_THREAD
            | libc::CLONE_SIGHAND
            | libc::CLONE_VFORK
            | libc::CLONE_SETTLS
            | libc::CLONE_CHILD_SETTID
            | libc::CLONE_CHILD_CLEARTID
            | libc::CLONE_PARENT_SETTID) as u64
            | CLONE_PIDFD;
        if self.flags & FORBIDDEN != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "clone3_fork: flags would share memory, make a thread or need pointers",
            ));
        }
        if self.set_tid.len() > MAX_SET_TID || !(0..=64).contains(&self.exit_signal) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut pidfd: i32 = -1;
        let mut args = RawCloneArgs {
            flags: self.flags,
            exit_signal: self.exit_signal as u64,
            ..Default::default()
        };
        if !self.set_tid.is_empty() {
            args.set_tid = self.set_tid.as_ptr() as u64;
            args.set_tid_size = self.set_tid.len() as u64;
        }
        if let Some(fd) = self.cgroup_fd {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = fd as u64;
        }
        if self.want_pidfd {
            args.flags |= CLONE_PIDFD;
            args.pidfd = &mut pidfd as *mut i32 as u64;
        }
        // Without CLONE_VM and with no stack the child gets a private copy
        // of our address space and returns here like fork(); the flags that
        // would break that (shared VM, threads, settls, tid pointers) are
        // rejected above.
        // SAFETY: `args` is a valid clone_args whose pointers (set_tid,
        // pidfd) refer to memory alive for the call; see above.
        let r = cvt(unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut RawCloneArgs,
                std::mem::size_of::<RawCloneArgs>(),
            )
        })?;
        if r == 0 {
            return Ok(Fork::Child);
        }
        let pidfd = (pidfd >= 0).then(|| {
            // SAFETY: with CLONE_PIDFD the kernel stored a new fd we own.
            unsafe { OwnedFd::from_raw_fd(pidfd) }
        });
        Ok(Fork::Parent {
            pid: r as i32,
            pidfd,
        })
    }
}

/// Fork-like `clone3` with `flags`, `set_tid` (innermost namespace first, may
/// be empty) and `exit_signal`. Returns [`Fork::Child`] in the child and
/// [`Fork::Parent`] with the new pid in the parent.
///
/// The child must only use async-signal-safe operations (raw syscalls,
/// `_exit`) if the caller is multi-threaded; see the module docs.
pub fn clone3_fork(flags: u64, set_tid: &[i32], exit_signal: i32) -> io::Result<Fork> {
    CloneArgs::new()
        .flags(flags)
        .set_tid(set_tid)
        .exit_signal(exit_signal)
        .fork()
}

/// Exits the calling process at once (`_exit`), for children of
/// [`clone3_fork`]: no atexit handlers, no stdio flush, no destructors.
pub fn child_exit(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::ptrace::{wait, WaitStatus};
    use crate::sys::require_root;

    #[test]
    fn clone_args_layout() {
        assert_eq!(std::mem::size_of::<RawCloneArgs>(), 88);
    }

    #[test]
    fn rejects_thread_flags() {
        let e = clone3_fork(libc::CLONE_VM as u64, &[], libc::SIGCHLD).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn plain_fork_with_pidfd() {
        match CloneArgs::new().pidfd(true).fork().unwrap() {
            Fork::Child => child_exit(3),
            Fork::Parent { pid, pidfd } => {
                assert!(pidfd.is_some());
                assert_eq!(wait(pid).unwrap(), WaitStatus::Exited(3));
            }
        }
    }

    fn free_pid() -> i32 {
        let read = |p: &str| -> i32 { std::fs::read_to_string(p).unwrap().trim().parse().unwrap() };
        let max = read("/proc/sys/kernel/pid_max");
        let mut pid = read("/proc/sys/kernel/ns_last_pid") + 1000;
        loop {
            if pid >= max {
                pid = 300 + pid % max;
            }
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return pid;
            }
            pid += 1;
        }
    }

    #[test]
    fn set_tid_picks_pid_and_eexist() {
        require_root!();
        let want = free_pid();
        match clone3_fork(0, &[want], libc::SIGCHLD).unwrap() {
            Fork::Child => child_exit(0),
            Fork::Parent { pid, .. } => {
                assert_eq!(pid, want);
                assert_eq!(wait(pid).unwrap(), WaitStatus::Exited(0));
            }
        }
        let me = std::process::id() as i32;
        let e = clone3_fork(0, &[me], libc::SIGCHLD).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    }
}
