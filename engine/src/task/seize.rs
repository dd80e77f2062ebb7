//! Seizing a process tree: every thread of every process ends up in a
//! ptrace-stop, without losing a race with fork, clone or exit.
//!
//! Each thread is `PTRACE_SEIZE`d and `PTRACE_INTERRUPT`ed. A stopped process
//! cannot fork or clone, so once all its threads are stopped its children and
//! threads are final. Until the tree is released, a [`SeizedTree`] guard
//! detaches every thread if it is dropped, so a failed dump never leaves the
//! target traced or stopped.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::error::{Error, Result, TaskCtx};
use crate::proc;
use crate::sys::kcmp;
use crate::sys::ptrace::{self, WaitStatus};

/// How a process was found when it was seized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Alive,
    /// In group-stop by this signal when seized; restored stopped.
    Stopped(i32),
    /// Exited and not yet reaped by its parent.
    Zombie {
        exit_code: i32,
    },
}

/// A signal dequeued while we waited for a thread to stop. It no longer sits in
/// the kernel's queues, so the dump keeps it and hands it back on release.
#[derive(Debug, Clone)]
pub struct StolenSignal {
    pub tid: i32,
    pub siginfo: [u8; 128],
}

#[derive(Debug, Clone)]
pub struct Task {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Thread ids, the leader first.
    pub threads: Vec<i32>,
    pub children: Vec<i32>,
    pub state: TaskState,
    /// `/proc/PID/stat` once every thread was stopped (a zombie's as it
    /// was found).
    pub stat: proc::Stat,
}

#[derive(Debug)]
pub struct SeizedTree {
    /// Parents before children (pre-order from the root).
    pub tasks: Vec<Task>,
    /// Every thread we hold in a ptrace-stop.
    traced: BTreeSet<i32>,
    pub stolen: Vec<StolenSignal>,
    released: bool,
}

/// Refuse targets we must never touch.
pub fn check_target(pid: i32) -> Result<()> {
    if pid <= 0 {
        return Err(Error::Other(format!("invalid pid {pid}")));
    }
    let stat = match proc::read_stat(pid) {
        Ok(s) => s,
        Err(_) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
            return Err(Error::NoProcess(pid))
        }
        Err(e) => return Err(e.into()),
    };
    if stat.flags & proc::PF_KTHREAD != 0 || pid == 2 {
        return Err(Error::unsupported(
            pid,
            "is a kernel thread and cannot be checkpointed",
        ));
    }
    if pid == std::process::id() as i32 {
        return Err(Error::unsupported(pid, "is stasis itself"));
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(Error::unsupported(
            pid,
            "is a zombie; dump its parent instead",
        ));
    }
    Ok(())
}

/// How seizing waits for stops.
pub struct SeizeOpts<'a> {
    /// Longest wait for any one thread's stop; past it the dump fails naming
    /// the thread and what it is doing (CRIU's `--timeout`, 10 s by default).
    pub timeout: Duration,
    /// Called once when a thread is slow to stop (see [`SLOW_STOP`]): a
    /// frozen cgroup is thawed there, so that a vfork child can run to its
    /// exec and let its parent stop.
    pub on_slow: Option<&'a mut dyn FnMut() -> Result<()>>,
    /// Called with each live process once all its threads are stopped
    /// (its fds, say, can be read from then on, while seizing goes on).
    pub on_stopped: Option<&'a mut dyn FnMut(i32)>,
}

impl Default for SeizeOpts<'_> {
    fn default() -> Self {
        SeizeOpts {
            timeout: DEFAULT_TIMEOUT,
            on_slow: None,
            on_stopped: None,
        }
    }
}

/// CRIU's default for `--timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// A stop normally arrives within microseconds; a thread still running after
/// this is sleeping where signals cannot reach it (a vfork parent waits
/// killably for its child's exec or exit).
const SLOW_STOP: Duration = Duration::from_millis(20);

impl SeizedTree {
    pub fn seize(root: i32) -> Result<SeizedTree> {
        Self::seize_with(root, SeizeOpts::default())
    }

    /// Seize the tree under `root`, parents before children. That order is
    /// also what keeps vfork working: a vfork child is only seized once its
    /// parent has stopped, which needs the child to have exec'd or exited
    /// first; stopping the child before would leave the parent waiting
    /// forever.
    pub fn seize_with(root: i32, mut opts: SeizeOpts<'_>) -> Result<SeizedTree> {
        let mut tree = SeizedTree {
            tasks: Vec::new(),
            traced: BTreeSet::new(),
            stolen: Vec::new(),
            released: false,
        };
        // On error the guard's Drop detaches whatever was seized.
        // One generation at a time: every child of the stopped parents is
        // interrupted first, then their stops are collected, so they stop
        // in parallel (each stop waits for its task to be scheduled: a few
        // hundred µs on a VM whose other vCPU sleeps).
        let mut generation = vec![root];
        let mut seen = BTreeSet::new();
        while !generation.is_empty() {
            let mut started = Vec::with_capacity(generation.len());
            for pid in generation.drain(..) {
                if seen.insert(pid) {
                    started.push(tree.start_process(pid, pid == root)?);
                }
            }
            for st in started {
                let Some(task) = tree.finish_process(st, &mut opts)? else {
                    continue;
                };
                generation.extend(task.children.iter().copied());
                if !matches!(task.state, TaskState::Zombie { .. }) {
                    if let Some(f) = opts.on_stopped.as_mut() {
                        f(task.pid);
                    }
                }
                tree.tasks.push(task);
            }
        }
        tree.order();
        Ok(tree)
    }

    /// Keep parents before their children, root first (pre-order).
    fn order(&mut self) {
        let by_pid: HashMap<i32, Task> = self.tasks.drain(..).map(|t| (t.pid, t)).collect();
        let root = by_pid
            .values()
            .find(|t| !by_pid.contains_key(&t.ppid))
            .map(|t| t.pid);
        let mut out = Vec::with_capacity(by_pid.len());
        let mut by_pid = by_pid;
        let mut stack: Vec<i32> = root.into_iter().collect();
        while let Some(pid) = stack.pop() {
            if let Some(t) = by_pid.remove(&pid) {
                for &c in t.children.iter().rev() {
                    stack.push(c);
                }
                out.push(t);
            }
        }
        self.tasks = out;
    }

    /// Interrupt every thread `pid` has now: the first half of seizing a
    /// process, [`finish_process`](Self::finish_process) the second.
    fn start_process(&mut self, pid: i32, is_root: bool) -> Result<Started> {
        let stat = match proc::read_stat(pid) {
            Ok(s) => s,
            Err(_) if !is_root => return Ok(Started::Gone),
            Err(_) => return Err(Error::NoProcess(pid)),
        };
        if stat.state == 'Z' {
            return Ok(Started::Zombie(Box::new(zombie(pid, &stat))));
        }
        let listed = match proc::read_tids(pid) {
            Ok(t) => t,
            Err(_) if !is_root => return Ok(Started::Gone),
            Err(e) => return Err(e.into()),
        };
        let mut interrupted = Vec::with_capacity(listed.len());
        let mut gone = BTreeSet::new();
        for tid in listed {
            if self.traced.contains(&tid) {
                continue;
            }
            if self.seize_thread(tid)? {
                interrupted.push(tid);
            } else {
                gone.insert(tid);
            }
        }
        Ok(Started::Interrupted {
            pid,
            is_root,
            interrupted,
            gone,
        })
    }

    /// Stop every thread of a started process; `None` if the process
    /// vanished first (only allowed for non-root tasks).
    fn finish_process(&mut self, st: Started, opts: &mut SeizeOpts<'_>) -> Result<Option<Task>> {
        let (pid, is_root, mut interrupted, mut gone) = match st {
            Started::Gone => return Ok(None),
            Started::Zombie(t) => return Ok(Some(*t)),
            Started::Interrupted {
                pid,
                is_root,
                interrupted,
                gone,
            } => (pid, is_root, interrupted, gone),
        };
        let mut group_stop = None;
        // Threads may be created until every existing one is stopped: repeat
        // until a listing shows nothing new.
        let mut threads: Vec<i32> = Vec::new();
        loop {
            for tid in interrupted.drain(..) {
                match self.wait_stop(pid, tid, opts)? {
                    Some(sig) => {
                        group_stop.get_or_insert(sig);
                        threads.push(tid);
                    }
                    None if self.traced.contains(&tid) => threads.push(tid),
                    None => {
                        gone.insert(tid);
                    }
                }
            }
            let listed = match proc::read_tids(pid) {
                Ok(t) => t,
                Err(_) if threads.is_empty() && !is_root => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let new: Vec<i32> = listed
                .iter()
                .copied()
                .filter(|t| !self.traced.contains(t) && !gone.contains(t))
                .collect();
            if new.is_empty() {
                // Drop threads that exited meanwhile.
                threads.retain(|t| listed.contains(t));
                break;
            }
            // Interrupt them all first, then collect the stops: the threads
            // stop in parallel.
            for tid in new {
                if self.seize_thread(tid)? {
                    interrupted.push(tid);
                } else {
                    gone.insert(tid);
                }
            }
        }
        if threads.is_empty() || !threads.contains(&pid) {
            // Exited while we looked: a zombie its parent has not reaped.
            if threads.is_empty() {
                if let Ok(st) = proc::read_stat(pid) {
                    if st.state == 'Z' {
                        return Ok(Some(zombie(pid, &st)));
                    }
                }
            }
            if is_root {
                return Err(Error::NoProcess(pid));
            }
            // A leader that exited while threads live on is a corner we refuse.
            if !threads.is_empty() {
                return Err(Error::unsupported(pid, "thread group leader has exited"));
            }
            return Ok(None);
        }
        threads.sort_by_key(|&t| (t != pid, t));
        // Everything is stopped: stat and children are now stable.
        let stat = proc::read_stat(pid)?;
        let mut children = BTreeSet::new();
        for &tid in &threads {
            for c in proc::read_children(pid, tid)? {
                children.insert(c);
            }
        }
        let state = match group_stop {
            Some(sig) if sig != libc::SIGTRAP => TaskState::Stopped(sig),
            _ => TaskState::Alive,
        };
        debug!(
            pid,
            threads = threads.len(),
            children = children.len(),
            "seized"
        );
        Ok(Some(Task {
            pid,
            ppid: stat.ppid,
            pgid: stat.pgrp,
            sid: stat.session,
            threads,
            children: children.into_iter().collect(),
            state,
            stat,
        }))
    }

    /// Seize and interrupt one thread; false if it exited first.
    fn seize_thread(&mut self, tid: i32) -> Result<bool> {
        match ptrace::seize(tid, ptrace::PTRACE_O_TRACESYSGOOD) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                // Seizing a zombie thread or one already traced by someone else.
                if proc::read_stat(tid).map(|s| s.state == 'Z').unwrap_or(true) {
                    return Ok(false);
                }
                return Err(Error::task(tid, "ptrace seize (already traced?)", e));
            }
            Err(e) => return Err(Error::task(tid, "ptrace seize", e)),
        }
        self.traced.insert(tid);
        match ptrace::interrupt(tid) {
            Ok(()) => Ok(true),
            // Exited between seize and interrupt: its exit is collected
            // by wait_stop.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(true),
            Err(e) => Err(Error::task(tid, "ptrace interrupt", e)),
        }
    }

    /// Wait for the stop of an interrupted thread, at most `opts.timeout`.
    /// Returns the stop signal (SIGTRAP for our interrupt, another for a
    /// group-stop), or None if the thread exited before it could be stopped.
    fn wait_stop(&mut self, pid: i32, tid: i32, opts: &mut SeizeOpts<'_>) -> Result<Option<i32>> {
        let t0 = Instant::now();
        let mut slow_done = false;
        let mut nap = Duration::from_micros(10);
        loop {
            let Some(st) = ptrace::wait_nohang(tid).task_ctx(tid, "wait for stop")? else {
                let waited = t0.elapsed();
                if waited >= opts.timeout {
                    return Err(self.not_stopped(pid, tid, opts.timeout));
                }
                if !slow_done && waited >= SLOW_STOP {
                    slow_done = true;
                    debug!(pid, tid, "slow to stop; letting the tree run");
                    if let Some(f) = opts.on_slow.as_mut() {
                        f()?;
                    }
                }
                // Sleep in growing steps, not sched_yield: on a busy machine
                // a yield can hand the CPU away for a whole time slice (5 ms
                // seen here), a short sleep is back in tens of microseconds.
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(1));
                continue;
            };
            match st {
                WaitStatus::PtraceEvent { sig, event } if event == ptrace::PTRACE_EVENT_STOP => {
                    return Ok(Some(sig));
                }
                WaitStatus::GroupStop { sig } => return Ok(Some(sig)),
                WaitStatus::Stopped { sig } => {
                    // A signal arrived before our interrupt: it is already
                    // dequeued, so keep it and suppress its delivery for now.
                    let siginfo = ptrace::get_siginfo(tid).task_ctx(tid, "get siginfo")?;
                    debug!(tid, sig, "signal caught while stopping");
                    self.stolen.push(StolenSignal { tid, siginfo });
                    ptrace::cont(tid, 0).task_ctx(tid, "ptrace cont")?;
                }
                WaitStatus::Exited(_) | WaitStatus::Signaled(_) => {
                    self.traced.remove(&tid);
                    return Ok(None);
                }
                other => {
                    debug!(tid, ?other, "unexpected stop while seizing");
                    ptrace::cont(tid, 0).task_ctx(tid, "ptrace cont")?;
                }
            }
        }
    }

    /// The error for a thread that did not stop in time, saying what it is
    /// doing: most often a vfork parent whose child neither exec'd nor exited.
    fn not_stopped(&self, pid: i32, tid: i32, timeout: Duration) -> Error {
        let state = proc::read_stat_tid(pid, tid)
            .map(|s| s.state)
            .unwrap_or('?');
        let who = if tid == pid {
            String::new()
        } else {
            format!(" (thread {tid})")
        };
        if let Some(child) = vfork_child(pid, tid) {
            let cstate = proc::read_stat(child).map(|s| s.state).unwrap_or('?');
            return Error::unsupported(
                pid,
                format!(
                    "did not stop within {timeout:?}{who}: it is in vfork, waiting for its \
                     child {child} (state {cstate}) to exec or exit"
                ),
            );
        }
        Error::unsupported(
            pid,
            format!("did not stop within {timeout:?}{who} (state {state})"),
        )
    }

    pub fn task(&self, pid: i32) -> Option<&Task> {
        self.tasks.iter().find(|t| t.pid == pid)
    }

    /// Let the tree run on: detach every thread. Signals we dequeued while
    /// stopping are sent back (their siginfo was already re-queued by the
    /// dumper when it could inject; this is the fallback).
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        let mut first_err = None;
        for &tid in &self.traced {
            if let Err(e) = ptrace::detach(tid, 0) {
                if e.raw_os_error() != Some(libc::ESRCH) && first_err.is_none() {
                    first_err = Some(Error::task(tid, "ptrace detach", e));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// End the tree after a successful dump: SIGKILL every process while it is
    /// still traced, so nothing runs between the dump and its death. The
    /// kernel's teardown (about 150 ms for 1 GiB here) is not waited for: a
    /// background thread reaps our ptrace links, and a restore waits for
    /// pids that are still exiting.
    pub fn kill(mut self) -> Result<()> {
        self.released = true;
        for t in &self.tasks {
            if matches!(t.state, TaskState::Zombie { .. }) {
                continue;
            }
            if let Err(e) = crate::sys::misc::raw_kill(t.pid, libc::SIGKILL) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    warn!(pid = t.pid, "kill after dump: {e}");
                }
            }
        }
        // Non-leader threads first: a traced leader is reported dead only
        // once its other threads have been reaped. Then children before
        // parents: a pid namespace's dying init waits for its children,
        // whose exits we (their tracer) must take first.
        let leaders: BTreeSet<i32> = self.tasks.iter().map(|t| t.pid).collect();
        let order: Vec<i32> = self
            .traced
            .iter()
            .filter(|t| !leaders.contains(t))
            .copied()
            .chain(
                self.tasks
                    .iter()
                    .rev()
                    .map(|t| t.pid)
                    .filter(|p| self.traced.contains(p)),
            )
            .collect();
        std::thread::spawn(move || {
            for tid in order {
                loop {
                    match ptrace::wait(tid) {
                        Ok(st) if st.is_exit() => break,
                        Ok(_) => {
                            // A stop reported before the kill landed: let it die.
                            let _ = ptrace::cont(tid, 0);
                        }
                        Err(_) => break,
                    }
                }
            }
        });
        Ok(())
    }
}

impl Drop for SeizedTree {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        for &tid in &self.traced {
            if let Err(e) = ptrace::detach(tid, 0) {
                if e.raw_os_error() != Some(libc::ESRCH) {
                    warn!(tid, "detach on error path: {e}");
                }
            }
        }
        // Signals dequeued during seizing are not lost on the error path.
        for s in &self.stolen {
            let signo = i32::from_ne_bytes(s.siginfo[0..4].try_into().unwrap());
            let _ = crate::sys::misc::raw_tgkill(tgid_of(s.tid), s.tid, signo);
        }
    }
}

/// A process half seized (see [`SeizedTree::start_process`]).
enum Started {
    /// It exited before it could be looked at.
    Gone,
    Zombie(Box<Task>),
    /// These threads were seized and interrupted; their stops are pending.
    Interrupted {
        pid: i32,
        is_root: bool,
        interrupted: Vec<i32>,
        /// Threads that exited (or died) before they could be seized:
        /// their task entries may linger, and must not be retried forever.
        gone: BTreeSet<i32>,
    },
}

fn zombie(pid: i32, stat: &proc::Stat) -> Task {
    Task {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        threads: vec![pid],
        children: Vec::new(),
        state: TaskState::Zombie {
            exit_code: stat.exit_code,
        },
        stat: stat.clone(),
    }
}

fn tgid_of(tid: i32) -> i32 {
    proc::read_status(tid).map(|s| s.tgid).unwrap_or(tid)
}

/// The child `tid` of process `pid` waits for in vfork: a child of that
/// thread sharing its address space (a thread of ours would not be listed as
/// a child). `tid` must be in uninterruptible sleep, as a vfork parent is.
fn vfork_child(pid: i32, tid: i32) -> Option<i32> {
    let st = proc::read_stat_tid(pid, tid).ok()?;
    if st.state != 'D' {
        return None;
    }
    proc::read_children(pid, tid)
        .ok()?
        .into_iter()
        .find(|&c| kcmp::kcmp(tid, c, kcmp::KCMP_VM, 0, 0).ok() == Some(0))
}
