//! The restore stub: what each forked task runs before it is taken over.
//!
//! The stub is a fork of the restorer, so it has the whole plan in memory and
//! runs ordinary Rust (the restorer is single-threaded when it forks). It
//! builds what a process can build for itself cheaply — session, children,
//! fd table, cwd, umask, rlimits, signal actions — then maps the scratch
//! page and stops itself. Everything touching its address space is done by
//! the restorer from outside (see `puppet`).

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};

use super::plan::{Plan, TaskPlan};
use super::Prep;
use crate::files;
use crate::sys::{clone3, misc, stub};
use crate::task::signals;

type R<T> = std::result::Result<T, String>;

/// Run the stub of task `idx`; never returns.
pub fn main(plan: &Plan, prep: &Prep, idx: usize) -> ! {
    // Errors name the task by its pid in the image (its host pid is a
    // placeholder in a tree with a pid namespace of its own).
    let pid = crate::ns::pid::image_pid(&plan.tasks[idx]);
    // Signals to ourselves use the pid our pid namespace knows.
    let own_pid = crate::ns::pid::local_pid(&plan.tasks[idx]);
    match run(plan, prep, idx) {
        Ok(()) => {
            // Only dead tasks get here: leave as they left.
            let code = plan.tasks[idx].exit_code as i32;
            if code & 0x7f != 0 {
                let _ = nix::sys::signal::sigprocmask(
                    SigmaskHow::SIG_SETMASK,
                    Some(&SigSet::empty()),
                    None,
                );
                let _ = misc::raw_kill(own_pid, code & 0x7f);
            }
            clone3::child_exit((code >> 8) & 0xff)
        }
        Err(e) => {
            let msg = format!("pid {pid}: {e}\n");
            let _ = stub::write_fd(prep.err_fd, msg.as_bytes());
            clone3::child_exit(1)
        }
    }
}

fn ctx<T, E: std::fmt::Display>(r: Result<T, E>, what: impl FnOnce() -> String) -> R<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

fn open_ctx<'a>(plan: &'a Plan, prep: &'a Prep) -> files::OpenCtx<'a> {
    files::OpenCtx {
        files: &plan.files,
        ghost_fds: &prep.ghost_fds,
        memfd_fds: &prep.memfd_fds,
        inherit_fds: &prep.inherit_fds,
        orphan_masters: &prep.orphan_masters,
        tty_fd: prep.tty_fd,
        images_dir: &prep.images_dir,
        tcp_close: prep.tcp_close,
    }
}

/// Put `fd` at exactly `at` (closing the original).
fn place(fd: OwnedFd, at: i32) -> R<()> {
    if fd.as_raw_fd() != at {
        ctx(nix::unistd::dup2(fd.as_raw_fd(), at), || {
            format!("dup2 to fd {at}")
        })?;
    } else {
        std::mem::forget(fd);
    }
    Ok(())
}

fn run(plan: &Plan, prep: &Prep, idx: usize) -> R<()> {
    let t: &TaskPlan = &plan.tasks[idx];
    ctx(
        sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), None),
        || "block signals".into(),
    )?;
    if idx == 0 {
        // Wait until the restorer has seized us, so every fork is traced.
        let mut b = [0u8; 1];
        ctx(stub::read_fd(prep.sync_fd, &mut b), || {
            "wait for the restorer".into()
        })?;
        super::join::enter(&prep.join_ns)?;
        // Fresh namespaces are filled before anything else is created.
        crate::ns::setup_root(&plan.ns)?;
    }
    // Nothing of the restorer's below the staging area survives.
    if prep.base > 0 {
        ctx(stub::close_range(0, prep.base as u32 - 1), || {
            "close inherited fds".into()
        })?;
    }
    if t.sid == t.pid {
        ctx(nix::unistd::setsid(), || "setsid".into())?;
    }
    // Files shared with descendants: opened here once, inherited by them.
    let cx = open_ctx(plan, prep);
    for &(g, owner) in &prep.owner {
        if owner == idx {
            for (id, fd) in files::create(g, &cx)? {
                place(fd, prep.shared[&id])?;
            }
        }
    }
    // A session leader takes back its pty as controlling terminal before it
    // forks, so its children inherit it.
    files::tty::set_ctty(plan, idx, &prep.shared)?;
    for &c in &t.children {
        let child = &plan.tasks[c];
        // Traced by the restorer from birth (CLONE_PTRACE: it stops at its
        // first instruction) without a fork event that would hold us until
        // the restorer continues us: siblings are forked back to back.
        let flags = crate::ns::pid::clone_flags(Some(t), child) | libc::CLONE_PTRACE as u64;
        let newpid = flags & libc::CLONE_NEWPID as u64 != 0;
        match clone3::CloneArgs::new()
            .flags(flags)
            .set_tid(&crate::ns::pid::set_tid(child))
            .exit_signal(libc::SIGCHLD)
            .pidfd(newpid)
            .fork()
        {
            Ok(clone3::Fork::Child) => main(plan, prep, c),
            Ok(clone3::Fork::Parent { pidfd, .. }) => {
                // We had unshared the child's pid namespace: our later
                // children go there too (pid_for_children).
                if let Some(fd) = pidfd {
                    crate::ns::pid::enter_for_children(&fd)?;
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(format!(
                    "cannot create pid {}: it is in use",
                    crate::ns::pid::image_pid(child)
                ))
            }
            Err(e) => {
                return Err(format!(
                    "clone3 for pid {}: {e}",
                    crate::ns::pid::image_pid(child)
                ))
            }
        }
    }
    if !t.alive() {
        return Ok(());
    }
    // The fd table: every fd at its number, with its fd flags.
    for fi in &t.fds {
        let staged = prep.shared[&fi.id];
        // dup3 sets the fd flag in the same call (staged fds are above
        // every fd number, so never equal to it).
        let fl = if fi.flags & libc::FD_CLOEXEC as u32 != 0 {
            nix::fcntl::OFlag::O_CLOEXEC
        } else {
            nix::fcntl::OFlag::empty()
        };
        ctx(nix::unistd::dup3(staged, fi.fd as i32, fl), || {
            format!("dup3 fd {}", fi.fd)
        })?;
    }
    // What needs the whole table: epoll targets, flock/OFD locks.
    files::after_fds(plan, idx, &cx)?;
    // What puppeting needs: the exe and the mapped files.
    for (i, l) in prep.tasks[idx].locals.iter().enumerate() {
        let fd = match *l {
            super::Local::File(id) => files::open_one(id, &cx)?,
        };
        place(fd, prep.local_base + i as i32)?;
    }
    let mine: HashSet<u64> =
        t.mm.as_ref()
            .map(|m| m.vmas.iter().map(|v| v.shmid).collect())
            .unwrap_or_default();
    for (&shmid, &fd) in &prep.shmem_fds {
        let used = mine.contains(&shmid)
            && t.mm.as_ref().unwrap().vmas.iter().any(|v| {
                use crate::mem::vma::{VMA_ANON_SHARED, VMA_AREA_SYSVIPC};
                v.shmid == shmid
                    && v.status & (VMA_ANON_SHARED | VMA_AREA_SYSVIPC) == VMA_ANON_SHARED
            });
        if !used {
            let _ = nix::unistd::close(fd);
        }
    }
    for &fd in prep.memfd_fds.values() {
        let _ = nix::unistd::close(fd);
    }
    for &fd in prep.ghost_fds.values() {
        let _ = nix::unistd::close(fd);
    }
    if let Some(fd) = prep.tty_fd {
        let _ = nix::unistd::close(fd);
    }
    // Staged objects: one close_range instead of a close per file id.
    if prep.local_base > prep.stage_base {
        let _ = stub::close_range(prep.stage_base as u32, prep.local_base as u32 - 1);
    }
    let _ = nix::unistd::close(prep.sync_fd);

    // fs: cwd, root, umask.
    let fs = t.fs.as_ref().unwrap();
    let name = |id: u32| -> R<String> {
        plan.files
            .get(&id)
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.name.clone())
            .ok_or_else(|| format!("no directory file {id}"))
    };
    let root = name(fs.root_id)?;
    if root != "/" {
        ctx(nix::unistd::chroot(Path::new(&root)), || {
            format!("chroot {root}")
        })?;
    }
    let cwd = name(fs.cwd_id)?;
    ctx(nix::unistd::chdir(Path::new(&cwd)), || {
        format!("chdir {cwd}")
    })?;
    if let Some(m) = fs.umask {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }

    let tc = t.cores[0].tc.as_ref().unwrap();
    // Signal actions, exactly as dumped (handlers point into the restored image).
    // An ignored SIGTRAP is set at the very end (restore::finish_task):
    // single-stepping resets it.
    let skip_trap = signals::ignored_trap(&tc.sigactions).is_some();
    for (sig, sa) in signals::settable().zip(tc.sigactions.iter()) {
        if skip_trap && sig == libc::SIGTRAP as u32 {
            continue;
        }
        let act = signals::encode_ksigaction(sa);
        if prep.inherited_sigactions.get(&sig) == Some(&act) {
            continue;
        }
        ctx(stub::rt_sigaction_raw(sig as i32, &act), || {
            format!("rt_sigaction({sig})")
        })?;
    }
    if let Some(rl) = &tc.rlimits {
        for (res, r) in rl.rlimits.iter().enumerate() {
            set_rlimit(res as u32, r.cur, r.max)?;
        }
    }
    ctx(stub::personality(tc.personality), || "personality".into())?;
    if tc.child_subreaper == Some(true) {
        ctx(
            stub::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0),
            || "set child subreaper".into(),
        )?;
    }
    if t.mm.as_ref().and_then(|m| m.thp_disabled) == Some(true) {
        ctx(stub::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0), || {
            "disable THP".into()
        })?;
    }
    if let Some(a) = t.cores[0]
        .thread_core
        .as_ref()
        .and_then(|c| c.pdeath_sig)
        .filter(|&s| s != 0)
    {
        ctx(
            stub::prctl(libc::PR_SET_PDEATHSIG, a as u64, 0, 0, 0),
            || "set pdeath signal".into(),
        )?;
    }
    if let Some(adj) = tc
        .oom_score_adj
        .filter(|&a| Some(a) != prep.inherited_oom_score_adj)
    {
        // Raising it back needs CAP_SYS_RESOURCE only when lowering below 0.
        let _ = std::fs::write("/proc/self/oom_score_adj", adj.to_string());
    }

    // Scratch page for remote calls, then hand over.
    ctx(
        stub::map_scratch(prep.tasks[idx].scratch, crate::task::remote::SCRATCH_LEN),
        || format!("map scratch at {:#x}", prep.tasks[idx].scratch),
    )?;
    let _ = nix::unistd::close(prep.err_fd);
    let _ = misc::raw_kill(crate::ns::pid::local_pid(t), libc::SIGSTOP);
    // Not reached: the restorer takes over at the stop.
    loop {
        std::thread::park();
    }
}

/// setrlimit; a hard limit above ours cannot be raised without
/// CAP_SYS_RESOURCE, so it is clamped (and the soft limit with it).
fn set_rlimit(res: u32, cur: u64, max: u64) -> R<()> {
    let (old_cur, old_max) = ctx(stub::get_rlimit(res), || format!("getrlimit({res})"))?;
    let max = max.min(old_max);
    let cur = cur.min(max);
    if (cur, max) == (old_cur, old_max) {
        // Inherited as saved (the usual case): no second syscall.
        return Ok(());
    }
    ctx(stub::set_rlimit(res, cur, max), || {
        format!("setrlimit({res}, {cur}, {max})")
    })
}
