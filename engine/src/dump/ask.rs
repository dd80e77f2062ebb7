//! What only the process can tell: the remote calls each task's threads
//! answer (signal actions, brk, prctls, tid address, sigaltstack, interval
//! timers, fd flags), asked of every task at once ([`Dumper::ask_all`]) or
//! of one task by its dump.

use std::sync::Mutex;

use stasis_proto::criu::ThreadSasEntry;

use super::{Dumper, SC_LIMITS, SC_MISC, SC_SIGACT, SC_THREAD, SC_TIMERS};
use crate::error::{Result, TaskCtx};
use crate::files::{tables, FileTable};
use crate::proc;
use crate::sys::ptrace;
use crate::task::remote::{Kept, Remote};
use crate::task::signals;

/// Where [`TaskCalls`] results are: brk, dumpable, THP disabled,
/// personality.
pub(super) const ASKED_BRK: usize = 0;
pub(super) const ASKED_DUMPABLE: usize = 2;
pub(super) const ASKED_THP_DISABLED: usize = 3;
pub(super) const ASKED_PERSONALITY: usize = 4;

/// The resource limits [`TaskCalls`] wrote at `at` (struct rlimit64 each).
pub(super) fn read_limits(r: &Remote, at: u64) -> Result<Vec<(u64, u64)>> {
    let mut b = [0u8; proc::RLIM_NLIMITS * 16];
    r.read(at, &mut b)?;
    let word = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap());
    Ok(b.chunks_exact(16)
        .map(|c| (word(&c[..8]), word(&c[8..])))
        .collect())
}

/// What remote calls tell us about one thread.
#[derive(Default)]
pub(super) struct ThreadExtra {
    pub(super) clear_tid: u64,
    pub(super) sas: Option<ThreadSasEntry>,
    pub(super) secbits: u32,
    pub(super) pdeath_sig: u32,
}

/// The remote calls a task's main thread answers in one batch, with their
/// names (results in the scratch area at `scratch`).
pub(super) struct TaskCalls {
    pub(super) calls: Vec<crate::task::remote::Call>,
    pub(super) names: Vec<&'static str>,
    /// Where the main thread's [`thread_extra_calls`] start.
    pub(super) main_extra: usize,
    /// Where the fcntl(F_GETFD) of each fd start (see files::tables).
    pub(super) fd_flags_at: usize,
}

impl TaskCalls {
    /// `fds`: the fds whose flags to read, if any.
    pub(super) fn new(scratch: u64, fds: Option<&[i32]>) -> TaskCalls {
        let prctl = |opt: i32, arg: u64| (libc::SYS_prctl, [opt as u64, arg, 0, 0, 0, 0]);
        // Results at fixed places: see ASKED_BRK and the others.
        let mut calls = vec![
            (libc::SYS_brk, [0; 6]),
            prctl(libc::PR_GET_CHILD_SUBREAPER, scratch + SC_MISC),
            prctl(libc::PR_GET_DUMPABLE, 0),
            prctl(libc::PR_GET_THP_DISABLE, 0),
            (libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0, 0]),
        ];
        let mut names = vec![
            "brk",
            "prctl(PR_GET_CHILD_SUBREAPER)",
            "prctl(PR_GET_DUMPABLE)",
            "prctl(PR_GET_THP_DISABLE)",
            "personality",
        ];
        // Resource limits, as /proc/PID/limits shows them, without its
        // path walk and text.
        for r in 0..proc::RLIM_NLIMITS as u64 {
            let at = scratch + SC_LIMITS + r * 16;
            calls.push((libc::SYS_prlimit64, [0, r, 0, at, 0, 0]));
        }
        names.resize(calls.len(), "prlimit64");
        calls.extend(signals::action_calls(scratch + SC_SIGACT));
        names.resize(calls.len(), "rt_sigaction");
        // The main thread's own questions and the interval timers ride along
        // in the same round trip.
        let (tcalls, tnames) = thread_extra_calls(scratch + SC_THREAD);
        let main_extra = calls.len();
        calls.extend(tcalls);
        names.extend(tnames);
        calls.extend(crate::task::timers::itimer_calls(scratch + SC_TIMERS));
        names.resize(calls.len(), "getitimer");
        // The fd flags of a many-fd table, where one round trip asks for all.
        let fd_flags_at = calls.len();
        for &fd in fds.unwrap_or_default() {
            calls.push((
                libc::SYS_fcntl,
                [fd as u64, libc::F_GETFD as u64, 0, 0, 0, 0],
            ));
        }
        names.resize(calls.len(), "fcntl(F_GETFD)");
        TaskCalls {
            calls,
            names,
            main_extra,
            fd_flags_at,
        }
    }

    /// Hand the fd flags in `res` (of `fds`; None: not asked, so the fd
    /// table thread reads them from fdinfo) to the fd table of `pid`.
    pub(super) fn deliver_fd_flags(
        &self,
        files: &Mutex<FileTable<'_>>,
        pid: i32,
        fds: Option<&[i32]>,
        res: &[u64],
    ) -> Result<()> {
        let flags = fds.map(|fds| {
            fds.iter()
                .zip(&res[self.fd_flags_at..])
                .map(|(&fd, &f)| (fd, f as u32 & libc::FD_CLOEXEC as u32))
                .collect()
        });
        tables::deliver(files, pid, flags)
    }
}

/// What [`Dumper::ask_all`] got from a task ahead of its dump.
pub(super) struct Asked {
    pub(super) status: proc::Status,
    /// Its auxv (read for the vDSO's address; saved in its mm image).
    pub(super) auxv: Vec<(u64, u64)>,
    /// Its scratch area, with the batch's results in it.
    pub(super) kept: Kept,
    /// The batch's results and where the main thread's extra calls start;
    /// None if it was too long for one round trip (asked in dump_task).
    pub(super) res: Option<(Vec<u64>, usize)>,
}

impl<'a> Dumper<'a> {
    /// Ask every task of `live` its [`TaskCalls`] at once: each remote round
    /// trip waits for the task to be scheduled (a few hundred µs on a busy
    /// VM), and this way they all run in parallel instead of one after the
    /// other. Each task gets its registers back right after, and keeps its
    /// scratch area (with the answers) until the end of the dump. Tasks this
    /// cannot serve (SIGTRAP ignored: no batch; a moved vDSO) ask in
    /// dump_task as before.
    pub(super) fn ask_all(&mut self, live: &[i32]) -> Result<()> {
        let mut started = Vec::with_capacity(live.len());
        for &pid in live {
            let status = proc::read_status(pid)?;
            if signals::ignores_trap(status.sig_ign) {
                continue;
            }
            let auxv = proc::read_auxv(pid)?;
            let Some(ip) = crate::task::remote::vdso_syscall_ip(pid, &auxv) else {
                continue;
            };
            if status.seccomp != 0 {
                suspend_seccomp(pid)?;
            }
            let mut r = Remote::at(pid, ip, status.sig_ign);
            r.begin_map_scratch()?;
            started.push(((status, auxv), r));
        }
        let mut batched = Vec::with_capacity(started.len());
        for ((status, auxv), mut r) in started {
            let pid = r.pid;
            let scratch = r.end_map_scratch()?;
            let want = self.files().fd_flags_wanted(pid).map(<[i32]>::to_vec);
            let tc = TaskCalls::new(scratch, want.as_deref());
            if tc.calls.len() > crate::task::remote::BATCH_MAX {
                self.keep_asked(r, (status, auxv), None)?;
                continue;
            }
            r.begin_batch(pid, &tc.calls)?;
            batched.push(((status, auxv), r, tc, want));
        }
        for ((status, auxv), mut r, tc, want) in batched {
            let pid = r.pid;
            let raw = r.end_batch(pid, tc.calls.len())?;
            let res = crate::task::remote::check_all(pid, &raw, &tc.names)?;
            if want.is_some() {
                tc.deliver_fd_flags(self.files, pid, want.as_deref(), &res)?;
            }
            self.keep_asked(r, (status, auxv), Some((res, tc.main_extra)))?;
        }
        Ok(())
    }

    /// Keep `r`'s scratch area and what the prologue learnt, for dump_task.
    fn keep_asked(
        &mut self,
        r: Remote,
        (status, auxv): (proc::Status, Vec<(u64, u64)>),
        res: Option<(Vec<u64>, usize)>,
    ) -> Result<()> {
        let pid = r.pid;
        if let Some(kept) = r.keep_scratch()? {
            let asked = Asked {
                status,
                auxv,
                kept,
                res,
            };
            self.asked.insert(pid, asked);
        }
        Ok(())
    }
}

/// Let our remote calls in thread `tid` pass its seccomp filters.
pub(super) fn suspend_seccomp(tid: i32) -> Result<()> {
    ptrace::set_options(
        tid,
        ptrace::PTRACE_O_TRACESYSGOOD | ptrace::PTRACE_O_SUSPEND_SECCOMP,
    )
    .task_ctx(tid, "suspend seccomp (PTRACE_O_SUSPEND_SECCOMP)")
}

/// The per-thread remote calls (results at `sc`), with their names.
pub(super) fn thread_extra_calls(sc: u64) -> ([crate::task::remote::Call; 4], [&'static str; 4]) {
    let prctl = |opt: i32, arg: u64| (libc::SYS_prctl, [opt as u64, arg, 0, 0, 0, 0]);
    (
        [
            prctl(libc::PR_GET_TID_ADDRESS, sc),
            prctl(libc::PR_GET_PDEATHSIG, sc + 8),
            prctl(libc::PR_GET_SECUREBITS, 0),
            (libc::SYS_sigaltstack, [0, sc + 16, 0, 0, 0, 0]),
        ],
        [
            "prctl(PR_GET_TID_ADDRESS)",
            "prctl(PR_GET_PDEATHSIG)",
            "prctl(PR_GET_SECUREBITS)",
            "sigaltstack",
        ],
    )
}

pub(super) fn thread_extra(r: &mut Remote, tid: i32, sc: u64) -> Result<ThreadExtra> {
    let (calls, names) = thread_extra_calls(sc);
    let res = r.batch_checked(tid, &calls, &names)?;
    thread_extra_read(r, &res, sc)
}

/// Decode what the calls of [`thread_extra_calls`] returned (`res`) and
/// wrote at `sc`.
pub(super) fn thread_extra_read(r: &Remote, res: &[u64], sc: u64) -> Result<ThreadExtra> {
    let secbits = res[2] as u32;
    let mut b = [0u8; 40];
    r.read(sc, &mut b)?;
    let u = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
    let ss_sp = u(16);
    let ss_flags = u32::from_ne_bytes(b[24..28].try_into().unwrap());
    let ss_size = u(32);
    Ok(ThreadExtra {
        clear_tid: u(0),
        pdeath_sig: u(8) as u32,
        secbits,
        sas: Some(ThreadSasEntry {
            ss_sp,
            ss_size,
            ss_flags,
        }),
    })
}
