//! Each task's second half, driven from outside once its stub has stopped:
//! its address space ([`begin`], [`fill`]), mm fields, threads and pending
//! signals ([`puppet`]), then credentials, staged fds, timers and the final
//! registers ([`finish_task`], [`finish_rest`], [`end_task`]). Each step
//! that waits for a batch of remote calls is split at that batch, so the
//! restorer starts it in every task before it waits for any.

use std::collections::HashMap;

use tracing::warn;

use super::plan::{Plan, TaskPlan};
use super::{Local, Prep, Tree, RESTORE_PTRACE_OPTS};
use crate::error::{Error, PathCtx, Result, TaskCtx};
use crate::files;
use crate::mem::restore::{self as memr, MemCtx, SCRATCH_DATA};
use crate::sys::{ptrace, stub as sstub};
use crate::task::remote::{Call, Pending, Remote, SCRATCH_LEN};
use crate::task::{creds, regs};

/// Where the leader's thread data sits in the scratch data area while the
/// final batch runs: past the auxv and PR_SET_MM_MAP struct at its start.
const LEADER_DATA: u64 = 2048;

const UNMAP: &str = "munmap scratch";

/// A thread stopped inside an rseq critical section must restart at the
/// section's abort handler, as the kernel would have made it do on its
/// next return to user space (it may resume on another CPU, or machine).
fn rseq_abort(r: &Remote, rseq: u64, regs: &mut libc::user_regs_struct) -> Result<()> {
    // struct rseq { u32 cpu_id_start; u32 cpu_id; u64 rseq_cs; ... }
    let cs = r.read_u64(rseq + 8)?;
    if cs == 0 {
        return Ok(());
    }
    // struct rseq_cs { u32 version; u32 flags; u64 start_ip;
    //                  u64 post_commit_offset; u64 abort_ip; }
    let mut b = [0u8; 32];
    r.read(cs, &mut b)?;
    let w = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap());
    let (start, len, abort) = (w(8), w(16), w(24));
    if regs.rip >= start && regs.rip < start.wrapping_add(len) {
        regs.rip = abort;
    }
    // The kernel clears rseq_cs once it has handled the section.
    r.write(rseq + 8, &0u64.to_ne_bytes())
}

/// Final registers: an interrupted syscall is restarted by hand, since the
/// new task will not return through the kernel's restart logic.
fn final_regs(e: &stasis_proto::criu::UserX86RegsEntry) -> libc::user_regs_struct {
    const ERESTARTSYS: i64 = -512;
    const ERESTARTNOINTR: i64 = -513;
    const ERESTARTNOHAND: i64 = -514;
    const ERESTART_RESTARTBLOCK: i64 = -516;
    let mut r = regs::regs_from_image(e);
    if (r.orig_rax as i64) >= 0
        && matches!(
            r.rax as i64,
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
        )
    {
        r.rax = r.orig_rax;
        r.rip -= 2;
    }
    r.orig_rax = u64::MAX;
    r
}

/// A task whose stub is replacing its address space (see [`begin`]).
pub(super) struct Begun {
    r: Remote,
    /// Target-side fd of each file it maps.
    file_fds: HashMap<u32, i32>,
    mapping: memr::Mapping,
}

/// A task whose memory is filled and whose final protections and mm fields
/// are being set (see [`fill`]).
pub(super) struct Filled {
    r: Remote,
    finishing: Pending,
}

/// Start rebuilding task `i`'s memory: its stub unmaps itself and maps the
/// dumped VMAs in one batch, which runs while the restorer starts the
/// other tasks' (then [`fill`], then [`puppet`]).
pub(super) fn begin(
    plan: &Plan,
    prep: &Prep,
    i: usize,
    cur_vdso: (u64, u64),
    sysv_sizes: &HashMap<u64, u64>,
) -> Result<Begun> {
    let t = &plan.tasks[i];
    let tp = &prep.tasks[i];
    let pid = t.pid;
    let mut r = Remote::with_ip(pid, tp.scratch);
    // The stub inherited the restorer's rseq registration; it must go before
    // its memory does.
    // First thing in the first batch.
    let rs = ptrace::get_rseq_config(pid).task_ctx(pid, "get rseq configuration")?;
    let mut first = Vec::new();
    if rs.rseq_abi_pointer != 0 {
        first.push((
            (
                libc::SYS_rseq,
                [
                    rs.rseq_abi_pointer,
                    rs.rseq_abi_size as u64,
                    1,
                    rs.signature as u64,
                    0,
                    0,
                ],
            ),
            "rseq unregister",
        ));
    }
    let mut file_fds = HashMap::new();
    for l in &tp.locals {
        let Local::File(id) = *l;
        file_fds.insert(id, tp.local(prep.local_base, *l).unwrap());
    }
    let cx = MemCtx {
        file_fds: &file_fds,
        shmem_fds: &prep.shmem_fds,
        sysv_sizes,
        scratch: tp.scratch,
        cur_vdso,
    };
    let (mm, pm) = (t.mm.as_ref().unwrap(), t.pagemap.as_ref().unwrap());
    let mapping = memr::begin_vmas(&mut r, mm, pm, &cx, &first)?;
    Ok(Begun {
        r,
        file_fds,
        mapping,
    })
}

/// After [`begin`]: fill task `i`'s memory, then start the batch of its
/// final protections, mm fields and the leader's own kernel state.
/// Returns the pages written.
pub(super) fn fill(
    plan: &Plan,
    prep: &Prep,
    i: usize,
    b: Begun,
    progress: bool,
) -> Result<(Filled, u64)> {
    let t = &plan.tasks[i];
    let tp = &prep.tasks[i];
    let (mm, pm) = (t.mm.as_ref().unwrap(), t.pagemap.as_ref().unwrap());
    let Begun {
        mut r,
        file_fds,
        mapping,
    } = b;
    let pages_name = format!("pages-{}.img", pm.pages_id);
    let pages_file = std::fs::File::open(prep.images_dir.join(&pages_name))
        .path_ctx(prep.images_dir.join(&pages_name))?;
    let pages = memr::end_vmas(&mut r, mm, pm, mapping, &pages_file, progress)?;
    // The mm fields ride with the final protections, and so does the
    // leader's own kernel state: one round trip fewer. (Threads cloned after
    // this inherit none of it but the name, which they set themselves.)
    let set_mm = memr::set_mm_call(&r, mm, file_fds[&mm.exe_file_id], tp.scratch)?;
    let leader_data = tp.scratch + SCRATCH_DATA + LEADER_DATA;
    let (mut then, bytes) = thread_calls(t, 0, leader_data);
    r.write(leader_data, &bytes)?;
    then.insert(0, (set_mm, "prctl(PR_SET_MM_MAP)"));
    let finishing = memr::finish_vmas(&mut r, mm, pm, &then)?;
    Ok((Filled { r, finishing }, pages))
}

/// After [`fill`]: task `i`'s threads and pending signals. Returns its
/// remote context (injectors held) and the host tids of its threads.
pub(super) fn puppet(
    plan: &Plan,
    prep: &Prep,
    i: usize,
    f: Filled,
    tree: &mut Tree,
) -> Result<(Remote, Vec<i32>)> {
    let t = &plan.tasks[i];
    let tp = &prep.tasks[i];
    let pid = t.pid;
    let Filled { mut r, finishing } = f;
    r.wait(finishing)?;

    // Threads, each with its own TID, by clone3 run in the leader.
    let data = tp.scratch + SCRATCH_DATA;
    let mut threads = t.threads.clone();
    for (k, &tid) in t.threads.iter().enumerate().skip(1) {
        let flags = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM) as u64;
        let set_tid_at = data + 256;
        // Every pid namespace level gets the dumped tid (innermost first);
        // clone3 returns the innermost one.
        let levels = crate::ns::pid::thread_set_tid(t, k);
        let mut args = [0u64; 11];
        args[0] = flags;
        args[8] = set_tid_at;
        args[9] = levels.len() as u64;
        let bytes: Vec<u8> = args.iter().flat_map(|w| w.to_ne_bytes()).collect();
        r.write(data, &bytes)?;
        let tids: Vec<u8> = levels.iter().flat_map(|x| x.to_ne_bytes()).collect();
        r.write(set_tid_at, &tids)?;
        let got = r.call(
            pid,
            "clone3 thread",
            libc::SYS_clone3,
            [data, 88, 0, 0, 0, 0],
        )? as i32;
        if got != levels[0] {
            return Err(Error::Other(format!(
                "pid {pid}: thread {tid} came back as {got}"
            )));
        }
        // Our view of it (its host tid is not pinned in a pid namespace of
        // the tree's own): the clone event's message.
        let events = r.injector(pid)?.take_events();
        let tid = crate::ns::pid::clone_event_tid(&events).ok_or_else(|| {
            Error::Other(format!("pid {pid}: no clone event for new thread {tid}"))
        })?;
        threads[k] = tid;
        tree.traced.insert(tid);
        // The new thread reports its first stop before running any code.
        loop {
            match ptrace::wait(tid).task_ctx(tid, "wait for new thread")? {
                ptrace::WaitStatus::PtraceEvent { .. }
                | ptrace::WaitStatus::Stopped { .. }
                | ptrace::WaitStatus::GroupStop { .. } => break,
                st if st.is_exit() => {
                    return Err(Error::Other(format!("new thread {tid} of {pid} died")))
                }
                _ => {}
            }
        }
    }

    // Per-thread kernel state (the leader's rode with the final batch).
    for (k, &tid) in threads.iter().enumerate() {
        let tc = t.cores[k].thread_core.as_ref().unwrap();
        if k > 0 {
            let (calls, bytes) = thread_calls(t, k, data);
            r.write(data, &bytes)?;
            let (calls, what): (Vec<Call>, Vec<&str>) = calls.into_iter().unzip();
            r.batch_checked(tid, &calls, &what)?;
        }
        if let Some(n) = tc.sched_nice {
            if let Err(e) = sstub::set_nice(tid, n) {
                warn!(tid, "cannot restore nice {n}: {e}");
            }
        }
        // Pending signals, queued by the leader (only it may queue kernel
        // si_codes to itself and its threads).
        if let Some(q) = &tc.signals_p {
            // Run inside the task: its own view of the pids.
            let (lp, lt) = (
                crate::ns::pid::local_pid(t),
                crate::ns::pid::local_tid(t, k),
            );
            for s in &q.signals {
                queue_signal(&mut r, pid, lp, Some(lt), &s.siginfo, data)?;
            }
        }
    }
    if let Some(q) = t.cores[0].tc.as_ref().and_then(|tc| tc.signals_s.as_ref()) {
        let lp = crate::ns::pid::local_pid(t);
        for s in &q.signals {
            queue_signal(&mut r, pid, lp, None, &s.siginfo, data)?;
        }
    }
    Ok((r, threads))
}

/// The batch that gives thread `k` of `t` its kernel state: tid address,
/// robust list, rseq, sigaltstack and name, with the bytes to write at
/// `data` first (the last two calls read them there).
fn thread_calls(t: &TaskPlan, k: usize, data: u64) -> (Vec<(Call, &'static str)>, Vec<u8>) {
    let c = &t.cores[k];
    let ti = c.thread_info.as_ref().unwrap();
    let tc = c.thread_core.as_ref().unwrap();
    let mut calls: Vec<(Call, &'static str)> = Vec::with_capacity(5);
    if ti.clear_tid_addr != 0 {
        calls.push((
            (
                libc::SYS_set_tid_address,
                [ti.clear_tid_addr, 0, 0, 0, 0, 0],
            ),
            "set_tid_address",
        ));
    }
    if tc.futex_rla != 0 {
        calls.push((
            (
                libc::SYS_set_robust_list,
                [tc.futex_rla, tc.futex_rla_len as u64, 0, 0, 0, 0],
            ),
            "set_robust_list",
        ));
    }
    if let Some(rs) = &tc.rseq_entry {
        let args = [
            rs.rseq_abi_pointer,
            rs.rseq_abi_size as u64,
            0,
            rs.signature as u64,
            0,
            0,
        ];
        calls.push(((libc::SYS_rseq, args), "rseq"));
    }
    let mut b = Vec::with_capacity(48);
    if let Some(sas) = tc.sas.filter(|s| s.ss_flags & libc::SS_DISABLE as u32 == 0) {
        b.extend_from_slice(&sas.ss_sp.to_ne_bytes());
        b.extend_from_slice(&(sas.ss_flags & !(libc::SS_ONSTACK as u32)).to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&sas.ss_size.to_ne_bytes());
        calls.push((
            (libc::SYS_sigaltstack, [data, 0, 0, 0, 0, 0]),
            "sigaltstack",
        ));
    }
    b.resize(24, 0);
    let comm = tc
        .comm
        .clone()
        .or_else(|| c.tc.as_ref().map(|x| x.comm.clone()))
        .unwrap_or_default();
    let mut cb = comm.into_bytes();
    cb.truncate(15);
    cb.push(0);
    b.extend_from_slice(&cb);
    calls.push((
        (
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, data + 24, 0, 0, 0, 0],
        ),
        "prctl(PR_SET_NAME)",
    ));
    (calls, b)
}

/// Queue a signal from inside task `pid`; `local`/`tid` are the ids the
/// task sees.
fn queue_signal(
    r: &mut Remote,
    pid: i32,
    local: i32,
    tid: Option<i32>,
    info: &[u8],
    at: u64,
) -> Result<()> {
    if info.len() != 128 {
        return Err(Error::bad_image(
            format!("core-{pid}.img"),
            "siginfo is not 128 bytes",
        ));
    }
    let sig = i32::from_ne_bytes(info[0..4].try_into().unwrap()) as u64;
    r.write(at, info)?;
    match tid {
        Some(t) => r.call(
            pid,
            "rt_tgsigqueueinfo",
            libc::SYS_rt_tgsigqueueinfo,
            [local as u64, t as u64, sig, at, 0, 0],
        )?,
        None => r.call(
            pid,
            "rt_sigqueueinfo",
            libc::SYS_rt_sigqueueinfo,
            [local as u64, sig, at, 0, 0, 0],
        )?,
    };
    Ok(())
}

/// Credentials, then the batch for the process group, dumpable and staged
/// fds is started; [`finish_rest`] goes on once it has run.
pub(super) fn finish_task(
    plan: &Plan,
    prep: &Prep,
    i: usize,
    r: &mut Remote,
    cur: &stasis_proto::criu::CredsEntry,
    setpgid: Option<Call>,
) -> Result<Pending> {
    let t = &plan.tasks[i];
    let pid = t.pid;
    let tp = &prep.tasks[i];
    let data = tp.scratch + SCRATCH_DATA;
    // POSIX timers exist (disarmed) before credentials change.
    crate::task::timers::create_task(r, t, data)?;
    // Seccomp while the task still may install filters (see task::seccomp);
    // its own seccomp is suspended for the remote calls that follow.
    crate::task::seccomp::restore_task(
        r,
        t,
        &plan.seccomp,
        RESTORE_PTRACE_OPTS,
        data,
        crate::task::remote::BATCH_TABLE - SCRATCH_DATA,
    )?;
    for (k, &tid) in t.threads.iter().enumerate() {
        if let Some(c) = t.cores[k]
            .thread_core
            .as_ref()
            .and_then(|tc| tc.creds.as_ref())
        {
            creds::restore(r, tid, c, cur, data)?;
        }
    }
    // One round trip for the process group, dumpable and the staged fds.
    let mut calls: Vec<Call> = Vec::with_capacity(3);
    let mut what: Vec<&'static str> = Vec::with_capacity(3);
    if let Some(c) = setpgid {
        calls.push(c);
        what.push("setpgid");
    }
    if let Some(d) = t.mm.as_ref().and_then(|m| m.dumpable) {
        calls.push((
            libc::SYS_prctl,
            [libc::PR_SET_DUMPABLE as u64, d as u64, 0, 0, 0, 0],
        ));
        what.push("prctl(PR_SET_DUMPABLE)");
    }
    calls.push((
        libc::SYS_close_range,
        [prep.base as u64, u32::MAX as u64, 0, 0, 0, 0],
    ));
    what.push("close_range");
    r.start(pid, &calls, what)
}

/// After [`finish_task`]: POSIX locks and timers; the scratch's unmapping
/// is started (see [`end_task`]).
pub(super) fn finish_rest(
    plan: &Plan,
    prep: &Prep,
    i: usize,
    r: &mut Remote,
    started: Pending,
) -> Result<()> {
    r.wait(started)?;
    let t = &plan.tasks[i];
    let pid = t.pid;
    let tp = &prep.tasks[i];
    let data = tp.scratch + SCRATCH_DATA;
    // With no staging fd left to drop them: POSIX locks; then the timers
    // start, the last thing before release.
    files::locks::restore_posix(r, plan, i, data)?;
    crate::task::timers::arm_task(r, t, data)?;
    // An ignored SIGTRAP (left out by the stub): the calls from here on stop
    // at syscall stops, as a step's forced SIGTRAP would reset it to SIG_DFL.
    let tc = t.cores[0].tc.as_ref();
    if let Some(sa) = tc.and_then(|tc| crate::task::signals::ignored_trap(&tc.sigactions)) {
        r.write(data, &crate::task::signals::encode_ksigaction(sa))?;
        r.injector(pid)?
            .set_mode(crate::sys::inject::StepMode::SyscallStops)
            .task_ctx(pid, "switch to syscall stops")?;
        r.call(
            pid,
            "rt_sigaction(SIGTRAP)",
            libc::SYS_rt_sigaction,
            [libc::SIGTRAP as u64, data, 0, 8, 0, 0],
        )?;
    }
    // The scratch goes last: started here, waited for in end_task, so all
    // tasks unmap theirs at the same time.
    let args = [tp.scratch, SCRATCH_LEN, 0, 0, 0, 0];
    r.begin_call(pid, UNMAP, libc::SYS_munmap, args)
}

/// After [`finish_task`]: the scratch unmapped, the final registers of every
/// thread (loaded when the injectors are put back).
pub(super) fn end_task(plan: &Plan, i: usize, r: &mut Remote) -> Result<()> {
    let t = &plan.tasks[i];
    let pid = t.pid;
    r.end_call(pid, UNMAP)?;
    let xsize = ptrace::get_xstate(pid)
        .task_ctx(pid, "get xsave state")?
        .len();
    for (k, &tid) in t.threads.iter().enumerate() {
        let c = &t.cores[k];
        let ti = c.thread_info.as_ref().unwrap();
        let tc = c.thread_core.as_ref().unwrap();
        let xs = regs::xsave_from_image(&ti.fpregs, xsize);
        ptrace::set_xstate(tid, &xs).task_ctx(tid, "set xsave state")?;
        let mut regs = final_regs(&ti.gpregs);
        if let Some(rs) = &tc.rseq_entry {
            rseq_abort(r, rs.rseq_abi_pointer, &mut regs)?;
        }
        let inj = r.injector(tid)?;
        inj.set_saved_regs(regs);
        // CRIU keeps the leader's mask in the task core only.
        let mask = tc
            .blk_sigset
            .or_else(|| c.tc.as_ref().map(|t| t.blk_sigset))
            .unwrap_or(0);
        inj.set_saved_sigmask(mask);
    }
    Ok(())
}
