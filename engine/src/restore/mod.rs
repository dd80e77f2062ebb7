//! Restore: bring a dumped tree back, each task with its original PID.
//!
//! 1. read and check every image into a [`plan::Plan`] (nothing is created
//!    before the images are known to be sound);
//! 2. prepare shared kernel objects in the restorer (ghost files, shared
//!    memory) so forked tasks inherit them;
//! 3. fork the tree with clone3 + set_tid; each task runs a [`stub`] that
//!    builds its fd table, session and signal actions, then stops;
//! 4. puppet each stopped task by remote syscalls: address space, mm fields,
//!    threads, per-thread state, process groups, credentials;
//! 5. load the final registers and let every task go at once.
//!
//! Until step 5 succeeds a guard kills every task created: a failed restore
//! leaves nothing behind.

pub mod join;
pub mod plan;
pub mod stub;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use tracing::{debug, info, warn};

use crate::error::{Error, PathCtx, Result, TaskCtx};
use crate::files::{self, reg, Group};
use crate::images::ImageDir;
use crate::mem::restore::{self as memr, MemCtx, SCRATCH_DATA};
use crate::mem::vma::{VMA_FILE_PRIVATE, VMA_FILE_SHARED};
use crate::mem::PAGE_SIZE;
use crate::ns::pid::TaskNames;
use crate::proc;
use crate::stats::{self, RestoreStats};
use crate::sys::{clone3, misc, ptrace, stub as sstub};
use crate::task::remote::{Call, Remote, SCRATCH_LEN};
use crate::task::{creds, regs};
use plan::{Plan, TASK_SIZE};

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub images_dir: PathBuf,
    /// Return once the tree runs (else the caller waits for the root).
    pub detach: bool,
    /// Terminals of the dump are the caller's terminal now.
    pub shell_job: bool,
    pub pidfile: Option<PathBuf>,
    /// Take the dumped file locks again (`--file-locks`); images holding
    /// locks are refused without it.
    pub file_locks: bool,
    /// Draw progress bars for long operations (on stderr).
    pub progress: bool,
    /// Connect unix sockets whose peer was outside the dumped tree to that
    /// peer's address again (`--ext-unix-sk`); refused without it.
    pub ext_unix_sk: bool,
    /// Fork the root as our sibling (CLONE_PARENT): the caller's parent
    /// becomes its parent (CRIU's --restore-sibling / rst_sibling).
    pub sibling: bool,
    /// Run with the root's pid once the whole tree is forked (CRIU's
    /// setup-namespaces point).
    pub on_forked: Option<crate::hook::Hook>,
    /// Run with the root's pid when everything is restored, just before the
    /// tree resumes (CRIU's post-restore point).
    pub before_resume: Option<crate::hook::Hook>,
    /// (our fd, key): files of the images named `key` ("pipe:[INO]", or a
    /// path without its leading '/') become that fd (CRIU's --inherit-fd).
    pub inherit_fds: Vec<(i32, String)>,
    /// Give a pty slave whose master was not dumped a new master, passed to
    /// `on_orphan_pts` before the tree resumes (else such images fail).
    pub orphan_pts_master: bool,
    pub on_orphan_pts: Option<crate::hook::FdHook>,
    /// `--root`: the directory that becomes the root of the rebuilt mount
    /// namespace.
    pub root: Option<PathBuf>,
    /// `--external` entries (`mnt[KEY]:VALUE` binds VALUE at mount KEY).
    pub external: Vec<String>,
    /// `--manage-cgroups[=MODE]`; `None` when not given.
    pub manage_cgroups: Option<crate::cgroup::CgMode>,
    /// `--cgroup-root [CTRL:]PATH`.
    pub cgroup_root: Vec<String>,
    /// `--join-ns NS:PATH`: namespaces to enter instead of creating.
    pub join_ns: Vec<String>,
    /// Rebuild established TCP connections (`--tcp-established`); images
    /// holding some are refused without it or `tcp_close`.
    pub tcp_established: bool,
    /// Restore established TCP connections as closed sockets (`--tcp-close`).
    pub tcp_close: bool,
    /// `--empty-ns net`: the tree's network namespace is made with
    /// loopback only (the caller sets up the rest).
    pub empty_net: bool,
}

#[derive(Debug)]
pub struct Restored {
    pub root_pid: i32,
    pub stats: RestoreStats,
}

/// Something a task opens for itself at `Prep::local_base + index`: its exe
/// and the files it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    File(u32),
}

#[derive(Debug, Default)]
pub struct TaskPrep {
    pub scratch: u64,
    pub locals: Vec<Local>,
}

impl TaskPrep {
    fn local(&self, base: i32, l: Local) -> Option<i32> {
        self.locals
            .iter()
            .position(|&x| x == l)
            .map(|i| base + i as i32)
    }
}

/// What the restorer sets up before forking, shared by every stub.
#[derive(Debug, Default)]
pub struct Prep {
    pub base: i32,
    pub local_base: i32,
    pub err_fd: i32,
    pub sync_fd: i32,
    pub ghost_fds: HashMap<u32, i32>,
    /// memfd inode id -> restorer fd of the recreated memfd.
    pub memfd_fds: HashMap<u32, i32>,
    pub shmem_fds: HashMap<u64, i32>,
    pub tty_fd: Option<i32>,
    /// Inherited-fd key -> restorer fd (see `RestoreOptions::inherit_fds`).
    pub inherit_fds: HashMap<String, i32>,
    /// Pty index -> restorer fd of the new master of an orphan slave.
    pub orphan_masters: HashMap<u32, i32>,
    /// File id -> fd number where its owner puts it for the subtree.
    pub shared: HashMap<u32, i32>,
    /// Group of file objects -> index of the task that creates it (lowest
    /// common ancestor of its holders, so one open file description is
    /// inherited by all).
    pub owner: Vec<(Group, usize)>,
    pub tasks: Vec<TaskPrep>,
    pub images_dir: PathBuf,
    /// Namespaces the root enters first (`--join-ns`): kind, our fd.
    pub join_ns: Vec<(crate::proc::NsKind, i32)>,
    /// Our own signal actions when the root is forked, by signal number:
    /// every stub inherits them (stubs fork their children before setting
    /// their own), so it only sets the actions of its image that differ.
    pub inherited_sigactions: HashMap<u32, [u8; 32]>,
    /// Established TCP connections are restored closed.
    pub tcp_close: bool,
}

/// The ptrace options of every restored task (inherited by its children).
// No TRACEFORK: stubs fork their children with CLONE_PTRACE instead (see
// stub.rs), so a fork does not stop the parent for a round trip to us.
const RESTORE_PTRACE_OPTS: u64 = ptrace::PTRACE_O_TRACECLONE | ptrace::PTRACE_O_EXITKILL;

pub fn restore(opts: &RestoreOptions) -> Result<Restored> {
    let names = RefCell::new(TaskNames::default());
    restore_tree(opts, &names).map_err(|e| names.borrow().rename(e))
}

/// The restore; errors about a task are renamed through `names` (see
/// [`TaskNames`]) as its tasks get their host pids.
fn restore_tree(opts: &RestoreOptions, names: &RefCell<TaskNames>) -> Result<Restored> {
    let t0 = Instant::now();
    let dir = ImageDir::open(&opts.images_dir)?;
    let mut plan = plan::read(&dir)?;
    if !pids_pinned(&plan) {
        *names.borrow_mut() = TaskNames::planned(&plan.tasks);
    }
    files::inet::check_restore(&plan, opts.tcp_established, opts.tcp_close)?;
    // Kept until the end: the mount yard is removed on drop.
    let _mnt_yard = crate::ns::mnt::configure(&mut plan.ns, opts.root.as_deref(), &opts.external)?;
    crate::ns::net::configure(&mut plan.ns, &opts.external, opts.empty_net)?;
    // Kept open until the root is forked.
    let mut joined = join::prepare(&opts.join_ns, &mut plan.ns)?;
    // Established connections: packets held back in the tree's network
    // namespace until it runs (may make that namespace here).
    let net_lock = files::inet::lock_for_restore(&mut plan.ns, &plan.files, &mut joined)?;
    crate::ns::user::check_join(&plan.ns, plan.tasks[0].pid, joined.len())?;
    // Otherwise the tree's own network namespace is made here too.
    crate::ns::net::prepare(&mut plan.ns, &mut joined)?;
    let plan = plan;
    let mut cg_target = crate::cgroup::prepare(
        &dir,
        plan.tasks[0]
            .cores
            .first()
            .and_then(|c| c.tc.as_ref())
            .and_then(|tc| tc.cg_set),
        opts.manage_cgroups.unwrap_or_default(),
        opts.manage_cgroups.is_some(),
        &opts.cgroup_root,
    )?;
    files::unix::check_restore(&plan, opts.ext_unix_sk)?;
    check_pids_free(&plan)?;
    files::epoll::check_plan(&plan).map_err(Error::Other)?;
    files::locks::check_plan(&plan, opts.file_locks)?;
    crate::task::timers::check_plan(&plan)?;
    let mut keep_fds: Vec<OwnedFd> = Vec::new();
    let mut prep = prepare(&dir, &plan, opts, &mut keep_fds)?;
    prep.join_ns = join::raw(&joined);
    let prep = prep;
    let mut tree = Tree::default();
    let (err_r, sync_w) = (
        prep_err_reader(&mut keep_fds),
        prep_sync_writer(&mut keep_fds),
    );

    // Fork the root; it waits for us to seize it so every fork is traced.
    let root = &plan.tasks[0];
    // The root is forked into the tree's own namespaces (pid 1 of its pid
    // namespace); it fills them first thing (`ns::setup_root`).
    // Born in its cgroup: we step in for the fork and out again.
    if let Some(c) = cg_target.as_mut() {
        c.enter()?;
    }
    // A sibling takes our own exit signal; clone3 wants exit_signal 0 then.
    let (sibling_flags, exit_signal) = if opts.sibling {
        (libc::CLONE_PARENT as u64, 0)
    } else {
        (0, libc::SIGCHLD)
    };
    let mut prep = prep;
    // Reading them costs as many calls as one task would save.
    if plan.tasks.len() > 1 {
        prep.inherited_sigactions = crate::task::signals::settable()
            .filter_map(|s| Some((s, sstub::rt_sigaction_get(s as i32).ok()?)))
            .collect();
    }
    let prep = prep;
    // One read of our own maps: the plan's memory, and the vDSO block that
    // every stub inherits.
    let own_maps = proc::read_maps(std::process::id() as i32)?;
    if plan.tasks.len() > 1 {
        huge_plan(&own_maps);
    }
    let cur_vdso = own_vdso(&own_maps)?;
    let ns_guard = crate::ns::RestorerNs::enter(&plan.ns)?;
    let root_flags =
        crate::ns::clone_flags(&plan.ns) | crate::ns::pid::clone_flags(None, root) | sibling_flags;
    let forked = clone3::clone3_fork(root_flags, &crate::ns::pid::set_tid(root), exit_signal);
    // The child keeps the namespaces it was born with.
    match &forked {
        Ok(clone3::Fork::Child) => std::mem::forget(ns_guard),
        _ => drop(ns_guard),
    }
    if let (Some(c), Ok(clone3::Fork::Parent { .. })) = (cg_target.as_mut(), &forked) {
        c.leave();
    }
    let root_pid = match forked {
        Ok(clone3::Fork::Child) => stub::main(&plan, &prep, 0),
        Ok(clone3::Fork::Parent { pid, .. }) => pid,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            return Err(Error::Other(format!(
                "pid {} is in use: cannot restore the tree root",
                crate::ns::pid::image_pid(root)
            )))
        }
        Err(e) => return Err(Error::task(root.pid, "clone3", e)),
    };
    if !pids_pinned(&plan) {
        // From here on errors carry host pids, known as tasks appear.
        *names.borrow_mut() = TaskNames::hosted(&plan.tasks, &[root_pid]);
    }
    tree.pids.push(root_pid);
    ptrace::seize(root_pid, RESTORE_PTRACE_OPTS).task_ctx(root_pid, "seize restored root")?;
    // A fresh user namespace gets its maps before the root goes on.
    crate::ns::user::write_maps(root_pid, &plan.ns)?;
    crate::ns::net::fill_root(&plan.ns, root_pid)?;
    sstub::write_fd(sync_w, b"g").task_ctx(root_pid, "start the root stub")?;
    let host = wait_stubs(&plan, &mut tree, err_r, root_pid)?;
    let mut plan = plan;
    if !pids_pinned(&plan) {
        *names.borrow_mut() = TaskNames::hosted(&plan.tasks, &host);
        crate::ns::pid::rehost(&mut plan.tasks, &mut plan.locks, &host);
    }
    crate::hook::run(&opts.on_forked, root_pid)?;
    let forking = t0.elapsed();
    debug!(?forking, "tree forked");

    // Puppet every live task.
    let cur_creds = creds::from_status(&proc::read_status(std::process::id() as i32)?, 0);
    let mut remotes: Vec<Option<Remote>> = Vec::with_capacity(plan.tasks.len());
    let mut pages = 0u64;
    for i in 0..plan.tasks.len() {
        crate::error::check_interrupt()?;
        if !plan.tasks[i].alive() {
            remotes.push(None);
            continue;
        }
        let (r, n, tids) = puppet(&plan, &prep, i, cur_vdso, &mut tree, opts.progress)?;
        for &tid in tids.iter().skip(1) {
            names.borrow_mut().add_thread(plan.tasks[i].pid, tid);
        }
        crate::ns::pid::set_threads(&mut plan.tasks[i], tids);
        pages += n;
        remotes.push(Some(r));
    }
    let plan = plan;
    // Segments removed while attached are removed again, now attached.
    crate::ns::ipc::remove_destroyed(&plan.ns, root_pid)?;
    // Seals that forbid new writable mappings, now that all are mapped.
    files::memfd::late_seals(&dir, &prep.memfd_fds)?;
    // Process groups: leaders first, then members.
    for pass in 0..2 {
        for (i, t) in plan.tasks.iter().enumerate() {
            let Some(r) = remotes[i].as_mut() else {
                continue;
            };
            let leader = t.pgid == t.pid;
            if (pass == 0) != leader || t.sid == t.pid {
                continue;
            }
            if !leader && !plan.tasks.iter().any(|x| x.pid == t.pgid) {
                info!(
                    pid = t.pid,
                    pgid = t.pgid,
                    "process group leader outside the tree: keeping the restorer's"
                );
                continue;
            }
            r.call(
                t.pid,
                "setpgid",
                libc::SYS_setpgid,
                [0, crate::ns::pid::local_pgid(t) as u64, 0, 0, 0, 0],
            )?;
        }
    }
    // Credentials last, then the final registers.
    for (i, t) in plan.tasks.iter().enumerate() {
        let Some(mut r) = remotes[i].take() else {
            continue;
        };
        // In a user namespace of their own, tasks start with other
        // credentials than ours (see ns::user).
        let own = crate::ns::user::current_creds(t.pid, &plan.ns)?;
        finish_task(&plan, &prep, i, &mut r, own.as_ref().unwrap_or(&cur_creds))?;
        r.finish()?;
        let _ = t;
    }
    // Last chance to give up cleanly: after this the tree runs.
    crate::error::check_interrupt()?;
    if let Some(h) = &opts.on_orphan_pts {
        let mut masters: Vec<_> = prep.orphan_masters.iter().collect();
        masters.sort();
        for (_, &fd) in masters {
            crate::sys::fdctl::with_raw(fd, |b| h.call(b))?;
        }
    }
    crate::hook::run(&opts.before_resume, root_pid)?;
    // Go: detach every thread together.
    for &tid in &tree.traced {
        ptrace::detach(tid, 0).task_ctx(tid, "detach")?;
    }
    for t in plan
        .tasks
        .iter()
        .filter(|t| t.state == crate::dump::TASK_STOPPED)
    {
        let _ = misc::raw_kill(t.pid, libc::SIGSTOP);
    }
    tree.released = true;
    drop(keep_fds);
    // The connections are back: let their packets through.
    if let Some(l) = net_lock {
        if let Err(e) = l.unlock() {
            warn!("{e}");
        }
    }
    if let Some(p) = &opts.pidfile {
        std::fs::write(p, format!("{root_pid}")).path_ctx(p)?;
    }
    let st = RestoreStats {
        forking_time: forking,
        restore_time: t0.elapsed(),
        pages_restored: pages,
    };
    if let Err(e) = stats::write_restore(&dir, &st) {
        warn!("cannot write stats-restore: {e}");
    }
    info!(root_pid, "restored");
    Ok(Restored {
        root_pid,
        stats: st,
    })
}

/// Wait for the restored root (our child) and return its exit status the way
/// a shell reports it.
pub fn wait_root(pid: i32) -> Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus as W};
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(W::Exited(_, c)) => return Ok(c),
            Ok(W::Signaled(_, s, _)) => return Ok(128 + s as i32),
            Ok(_) => continue,
            // Interrupted: stop waiting; the restored tree runs on.
            Err(nix::errno::Errno::EINTR) if crate::sys::sig::interrupted() => return Ok(130),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::task(pid, "wait for the restored root", e.into())),
        }
    }
}

/// Whether tasks get the plan's host pids: not in a tree with a pid
/// namespace of its own, whose outer levels the kernel picks (`ns::pid`).
fn pids_pinned(plan: &Plan) -> bool {
    !plan.ns.owns(proc::NsKind::Pid)
}

/// Every PID and TID of the image must be free here (when they are pinned:
/// levels inside a fresh pid namespace always are). A zombie of the dumped
/// tree that its parent has not reaped yet, or a task still exiting, is
/// waited for a little.
fn check_pids_free(plan: &Plan) -> Result<()> {
    if !pids_pinned(plan) {
        return Ok(());
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(3);
    for t in &plan.tasks {
        for &tid in &t.threads {
            // Zombies, and tasks still exiting (PF_EXITING), e.g. a tree a
            // dump has just killed.
            while proc::read_stat(tid)
                .is_ok_and(|s| s.state == 'Z' || s.state == 'X' || s.flags & 0x4 != 0)
                && Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if std::path::Path::new(&format!("/proc/{tid}")).exists() {
                return Err(Error::Other(format!(
                    "pid {tid} is in use: restore needs the dumped pids (pid {} of the image)",
                    t.pid
                )));
            }
        }
    }
    Ok(())
}

/// Every stub is a fork of us: each fork copies the page table entries of
/// our anonymous memory (the plan: several MiB for a large tree) and each
/// stub zaps them again when it drops our address space. Backed by huge
/// pages, that is one entry per 2 MiB (fd tree of 100 x 50: 8 MiB of plan,
/// restore 217 -> 197 ms). Best effort: without huge pages it is only slower.
fn huge_plan(maps: &[proc::MapsEntry]) {
    for m in maps {
        let anon = m.inode == 0 && matches!(m.path.as_deref(), None | Some("[heap]"));
        if anon && m.perms.write && !m.perms.shared && m.size() >= 2 << 20 {
            if let Err(e) = crate::sys::mman::collapse(m.start, m.end) {
                debug!(start = m.start, "no huge pages for the plan: {e}");
            }
        }
    }
}

/// The restorer's own [vvar]..[vdso] block, which every stub inherits.
fn own_vdso(maps: &[proc::MapsEntry]) -> Result<(u64, u64)> {
    let mut r: Option<(u64, u64)> = None;
    for m in maps {
        if matches!(
            m.path.as_deref(),
            Some("[vdso]" | "[vvar]" | "[vvar_vclock]")
        ) {
            r = Some(match r {
                None => (m.start, m.end),
                Some((s, e)) => (s.min(m.start), e.max(m.end)),
            });
        }
    }
    r.ok_or_else(|| Error::Other("the restorer has no [vdso]".into()))
}

/// Stubs that failed, and all created tasks until released.
#[derive(Default)]
struct Tree {
    pids: Vec<i32>,
    traced: BTreeSet<i32>,
    released: bool,
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Kill everything we created; nothing half-restored may run.
        for &p in self.pids.iter().chain(self.traced.iter()) {
            let _ = misc::raw_kill(p, libc::SIGKILL);
        }
        // Reaped in whatever order they can go: the init of a pid namespace
        // exits only once its (traced) children are reaped by us.
        let mut left: BTreeSet<i32> = self.pids.iter().chain(&self.traced).copied().collect();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !left.is_empty() && Instant::now() < deadline {
            let mut progress = false;
            left.retain(|&p| match ptrace::wait_nohang(p) {
                Ok(Some(st)) => {
                    progress = true;
                    !st.is_exit()
                }
                Ok(None) => true,
                Err(_) => false,
            });
            if !progress {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }
}

fn prep_err_reader(keep: &mut [OwnedFd]) -> i32 {
    keep[0].as_raw_fd()
}

fn prep_sync_writer(keep: &mut [OwnedFd]) -> i32 {
    keep[1].as_raw_fd()
}

/// Put `fd` at exactly `at` in the restorer and remember it.
fn pin(fd: OwnedFd, at: i32) -> Result<i32> {
    nix::unistd::dup2(fd.as_raw_fd(), at)
        .map_err(|e| Error::Other(format!("dup2 to {at}: {e}")))?;
    drop(fd);
    Ok(at)
}

fn prepare(
    dir: &ImageDir,
    plan: &Plan,
    opts: &RestoreOptions,
    keep: &mut Vec<OwnedFd>,
) -> Result<Prep> {
    // fds above every fd number of the image are ours to stage objects in.
    let max_fd = plan
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter().map(|f| f.fd as i32))
        .max()
        .unwrap_or(2);
    let (soft, hard) = sstub::get_rlimit(libc::RLIMIT_NOFILE)
        .map_err(|e| Error::Other(format!("getrlimit: {e}")))?;
    if soft < hard {
        let _ = sstub::set_rlimit(libc::RLIMIT_NOFILE, hard, hard);
    }
    let base = (max_fd + 1).max(64);
    // Inherited fds first, before staging fds could land on their numbers.
    let mut inherited = Vec::new();
    for (fd, key) in &opts.inherit_fds {
        let own = crate::sys::fdctl::with_raw(*fd, |b| b.try_clone_to_owned())
            .map_err(|e| Error::Other(format!("inherited fd {fd} ({key}): {e}")))?;
        inherited.push((key.clone(), own));
    }
    let mut next = base;
    let mut prep = Prep {
        base,
        images_dir: dir.path().to_path_buf(),
        tcp_close: opts.tcp_close,
        ..Default::default()
    };
    // Error and start pipes: read/write ends for us stay below `base`.
    let (er, ew) = nix::unistd::pipe().map_err(|e| Error::Other(format!("pipe: {e}")))?;
    let (sr, sw) = nix::unistd::pipe().map_err(|e| Error::Other(format!("pipe: {e}")))?;
    keep.push(er);
    keep.push(sw);
    prep.err_fd = pin(ew, next)?;
    next += 1;
    prep.sync_fd = pin(sr, next)?;
    next += 1;
    if opts.shell_job && nix::unistd::isatty(0).unwrap_or(false) {
        let t = nix::unistd::dup(0).map_err(|e| Error::Other(format!("dup stdin: {e}")))?;
        nix::unistd::dup2(t, next).map_err(|e| Error::Other(format!("dup2: {e}")))?;
        let _ = nix::unistd::close(t);
        prep.tty_fd = Some(next);
        next += 1;
    }
    // Ghost files every task may reopen.
    let mut ghost_ids: Vec<u32> = plan.ghosts.keys().copied().collect();
    ghost_ids.sort();
    for id in ghost_ids {
        let name = plan
            .files
            .get(&id)
            .and_then(|f| f.reg.as_ref())
            .map(|r| r.name.clone())
            .unwrap_or_default();
        let fd = reg::restore_ghost(dir, plan.ghosts[&id], &name, plan.ns.user.as_ref())?;
        prep.ghost_fds.insert(id, pin(fd, next)?);
        next += 1;
    }
    for (key, fd) in inherited {
        prep.inherit_fds.insert(key, pin(fd, next)?);
        next += 1;
    }
    // memfd inodes, reopened by every fd and mapping of them.
    for (ino, fd) in files::memfd::restore_inodes(dir, plan.ns.user.as_ref())? {
        prep.memfd_fds.insert(ino, pin(fd, next)?);
        next += 1;
    }
    // Shared anonymous memory: one memfd per object, filled now.
    for (&shmid, (size, pm)) in &plan.shmem {
        let fd = sstub::memfd("/dev/zero (deleted)")
            .map_err(|e| Error::Other(format!("memfd_create: {e}")))?;
        let f = std::fs::File::from(fd);
        f.set_len(*size)
            .path_ctx(format!("shared memory {shmid}"))?;
        let pages = dir.open_file(&format!("pages-{}.img", pm.pages_id))?;
        let mut off = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        for &(a, n) in &pm.runs {
            let mut left = n * PAGE_SIZE;
            let mut at = a;
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                std::os::unix::fs::FileExt::read_exact_at(&pages, &mut buf[..k], off)
                    .path_ctx(dir.file(&format!("pages-{}.img", pm.pages_id)))?;
                std::os::unix::fs::FileExt::write_all_at(&f, &buf[..k], at)
                    .path_ctx(format!("shared memory {shmid}"))?;
                off += k as u64;
                at += k as u64;
                left -= k as u64;
            }
        }
        prep.shmem_fds.insert(shmid, pin(OwnedFd::from(f), next)?);
        next += 1;
    }
    // Terminal state, read by group_of and the stubs.
    files::tty::load(dir)?;
    if opts.orphan_pts_master {
        for (index, fd) in files::tty::orphan_masters(&plan.files).map_err(Error::Other)? {
            prep.orphan_masters.insert(index, pin(fd, next)?);
            next += 1;
        }
    }
    // Pipe ends and unix peers by id, built once here for every stub.
    files::memo::prepare(&plan.files);
    // Queued unix socket data, read once here rather than in every stub.
    files::unix::preload_queues(dir.path()).map_err(Error::Other)?;
    // Established TCP connections' queues, likewise.
    if !opts.tcp_close {
        files::inet::preload(dir, plan.files.values().filter_map(|f| f.isk.as_deref()))?;
    }
    // Open file descriptions in fd tables: staged once, by the lowest
    // common ancestor of their holders.
    let mut holders: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
    for (i, t) in plan.tasks.iter().enumerate() {
        for f in &t.fds {
            let h = holders
                .entry(files::group_of(&plan.files[&f.id], &plan.files))
                .or_default();
            if !h.contains(&i) {
                h.push(i);
            }
            if let std::collections::hash_map::Entry::Vacant(e) = prep.shared.entry(f.id) {
                e.insert(next);
                next += 1;
            }
        }
    }
    for (g, h) in holders {
        prep.owner.push((g, lca(plan, &h)));
    }
    prep.local_base = next;
    // Per task: its own mapped files, exe and pages image; and a scratch spot.
    let own = proc::read_maps(std::process::id() as i32)?;
    let mut max_locals = 0;
    for t in &plan.tasks {
        let mut tp = TaskPrep::default();
        if let Some(mm) = &t.mm {
            tp.locals.push(Local::File(mm.exe_file_id));
            let mut seen = HashSet::new();
            for v in &mm.vmas {
                if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0
                    && seen.insert(v.shmid as u32)
                {
                    tp.locals.push(Local::File(v.shmid as u32));
                }
            }
            let mut avoid: Vec<(u64, u64)> = own.iter().map(|m| (m.start, m.end)).collect();
            avoid.extend(mm.vmas.iter().map(|v| (v.start, v.end)));
            tp.scratch = pick_scratch(&avoid).ok_or_else(|| {
                Error::unsupported(t.pid, "no free spot for the restore scratch page")
            })?;
        }
        max_locals = max_locals.max(tp.locals.len());
        prep.tasks.push(tp);
    }
    let need = (prep.local_base as u64) + max_locals as u64 + 1;
    let (_, hard) = sstub::get_rlimit(libc::RLIMIT_NOFILE).unwrap_or((0, 0));
    if need > hard {
        return Err(Error::Other(format!(
            "restore needs {need} fds but RLIMIT_NOFILE is {hard}"
        )));
    }
    Ok(prep)
}

/// Lowest common ancestor of tasks (indices; parents precede children).
fn lca(plan: &Plan, tasks: &[usize]) -> usize {
    let chain = |mut i: usize| {
        let mut v = vec![i];
        while let Some(p) = plan.tasks[i].parent {
            v.push(p);
            i = p;
        }
        v
    };
    let mut common: Vec<usize> = chain(tasks[0]);
    for &t in &tasks[1..] {
        let c: HashSet<usize> = chain(t).into_iter().collect();
        common.retain(|x| c.contains(x));
    }
    common[0]
}

/// A free range for the scratch area, away from the restorer's mappings and
/// from everything the task will map.
fn pick_scratch(avoid: &[(u64, u64)]) -> Option<u64> {
    let len = SCRATCH_LEN + 2 * PAGE_SIZE;
    let mut a = 0x10_0000_0000u64;
    while a + len < TASK_SIZE {
        if !avoid.iter().any(|&(s, e)| a < e && s < a + len) {
            return Some(a + PAGE_SIZE);
        }
        a += 1 << 30;
    }
    None
}

/// Drive the stubs until every live task stopped itself and every dead one
/// exited; a stub that fails reports on the error pipe. Returns each task's
/// host pid (learnt from its `NSpid` at its first stop when not pinned).
fn wait_stubs(plan: &Plan, tree: &mut Tree, err_r: i32, root_pid: i32) -> Result<Vec<i32>> {
    let pinned = pids_pinned(plan);
    let mut host = vec![0; plan.tasks.len()];
    let mut index: HashMap<i32, usize> = HashMap::new();
    if pinned {
        for (i, t) in plan.tasks.iter().enumerate() {
            host[i] = t.pid;
            index.insert(t.pid, i);
        }
    }
    let learn = (!pinned).then(|| crate::ns::pid::HostIndex::new(&plan.tasks));
    host[0] = root_pid;
    index.insert(root_pid, 0);
    let alive = plan.tasks.iter().filter(|t| t.alive()).count();
    let dead = plan.tasks.len() - alive;
    let is = |index: &HashMap<i32, usize>, tid: i32, live: bool| {
        index
            .get(&tid)
            .is_some_and(|&i| plan.tasks[i].alive() == live)
    };
    let mut ready = HashSet::new();
    let mut gone = HashSet::new();
    tree.traced.insert(root_pid);
    while ready.len() < alive || gone.len() < dead {
        let (tid, st) = ptrace::wait_any()
            .map_err(|e| Error::Other(format!("waiting for restored tasks: {e}")))?;
        use ptrace::WaitStatus as W;
        match st {
            W::PtraceEvent { event, .. } if event == ptrace::PTRACE_EVENT_STOP => {
                // A new task's first stop (traced from birth: CLONE_PTRACE).
                tree.traced.insert(tid);
                if let Some(l) = &learn {
                    if let Some(i) = l.identify(tid)? {
                        host[i] = tid;
                        index.insert(tid, i);
                    }
                }
                ptrace::cont(tid, 0).task_ctx(tid, "start stub")?;
            }
            W::PtraceEvent { .. } => {
                ptrace::cont(tid, 0).task_ctx(tid, "resume stub")?;
            }
            W::Stopped { sig } if sig == libc::SIGSTOP && is(&index, tid, true) => {
                tree.traced.insert(tid);
                ready.insert(tid);
            }
            W::GroupStop { .. } | W::Stopped { .. } | W::SyscallStop | W::Continued => {
                ptrace::cont(tid, 0).task_ctx(tid, "resume stub")?;
            }
            W::Exited(code) | W::Signaled(code) => {
                tree.traced.remove(&tid);
                if is(&index, tid, false) {
                    gone.insert(tid);
                    continue;
                }
                let mut buf = vec![0u8; 4096];
                let n = nix::unistd::read(err_r, &mut buf).unwrap_or(0);
                let msg = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                let task = index.get(&tid).map(|&i| &plan.tasks[i]);
                if msg.is_empty() {
                    let who = match task {
                        Some(t) if !pinned => {
                            format!("pid {} (host pid {tid})", crate::ns::pid::image_pid(t))
                        }
                        _ => format!("pid {tid}"),
                    };
                    return Err(Error::Other(format!(
                        "restored task {who} died early (status {code})"
                    )));
                }
                let line = msg.lines().next().unwrap_or_default();
                // The stub names itself by its image pid; add the host's.
                if let Some(t) = task.filter(|_| !pinned) {
                    let own = format!("pid {}:", crate::ns::pid::image_pid(t));
                    if let Some(rest) = line.strip_prefix(&own) {
                        return Err(Error::Other(format!(
                            "pid {} (host pid {tid}):{rest}",
                            crate::ns::pid::image_pid(t)
                        )));
                    }
                }
                return Err(Error::Other(line.to_string()));
            }
        }
    }
    Ok(host)
}

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

/// Rebuild one task's memory, mm and threads. Returns its remote context
/// (injectors held), the pages written and the host tids of its threads.
fn puppet(
    plan: &Plan,
    prep: &Prep,
    i: usize,
    cur_vdso: (u64, u64),
    tree: &mut Tree,
    progress: bool,
) -> Result<(Remote, u64, Vec<i32>)> {
    let t = &plan.tasks[i];
    let tp = &prep.tasks[i];
    let pid = t.pid;
    let mm = t.mm.as_ref().unwrap();
    let mut r = Remote::with_ip(pid, tp.scratch);
    // The stub inherited the restorer's rseq registration; it must go before
    // its memory does.
    let rs = ptrace::get_rseq_config(pid).task_ctx(pid, "get rseq configuration")?;
    if rs.rseq_abi_pointer != 0 {
        r.call(
            pid,
            "rseq unregister",
            libc::SYS_rseq,
            [
                rs.rseq_abi_pointer,
                rs.rseq_abi_size as u64,
                1,
                rs.signature as u64,
                0,
                0,
            ],
        )?;
    }
    let mut file_fds = HashMap::new();
    for l in &tp.locals {
        let Local::File(id) = *l;
        file_fds.insert(id, tp.local(prep.local_base, *l).unwrap());
    }
    let pages_name = format!("pages-{}.img", t.pagemap.as_ref().unwrap().pages_id);
    let pages_file = std::fs::File::open(prep.images_dir.join(&pages_name))
        .path_ctx(prep.images_dir.join(&pages_name))?;
    let sysv_sizes = crate::ns::ipc::segment_sizes(&plan.ns);
    let cx = MemCtx {
        file_fds: &file_fds,
        shmem_fds: &prep.shmem_fds,
        sysv_sizes: &sysv_sizes,
        pages: &pages_file,
        progress,
        scratch: tp.scratch,
        cur_vdso,
    };
    let pages = memr::restore_vmas(&mut r, mm, t.pagemap.as_ref().unwrap(), &cx)?;
    memr::set_mm(&mut r, mm, file_fds[&mm.exe_file_id], tp.scratch)?;

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

    // Per-thread kernel state.
    for (k, &tid) in threads.iter().enumerate() {
        let c = &t.cores[k];
        let ti = c.thread_info.as_ref().unwrap();
        let tc = c.thread_core.as_ref().unwrap();
        // One batch per thread: tid address, robust list, rseq,
        // sigaltstack, name (the data for the last two sits at `data`).
        let mut calls: Vec<Call> = Vec::with_capacity(5);
        let mut what: Vec<&str> = Vec::with_capacity(5);
        if ti.clear_tid_addr != 0 {
            calls.push((
                libc::SYS_set_tid_address,
                [ti.clear_tid_addr, 0, 0, 0, 0, 0],
            ));
            what.push("set_tid_address");
        }
        if tc.futex_rla != 0 {
            calls.push((
                libc::SYS_set_robust_list,
                [tc.futex_rla, tc.futex_rla_len as u64, 0, 0, 0, 0],
            ));
            what.push("set_robust_list");
        }
        if let Some(rs) = &tc.rseq_entry {
            calls.push((
                libc::SYS_rseq,
                [
                    rs.rseq_abi_pointer,
                    rs.rseq_abi_size as u64,
                    0,
                    rs.signature as u64,
                    0,
                    0,
                ],
            ));
            what.push("rseq");
        }
        let mut b = Vec::with_capacity(48);
        if let Some(sas) = tc.sas.filter(|s| s.ss_flags & libc::SS_DISABLE as u32 == 0) {
            b.extend_from_slice(&sas.ss_sp.to_ne_bytes());
            b.extend_from_slice(&(sas.ss_flags & !(libc::SS_ONSTACK as u32)).to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&sas.ss_size.to_ne_bytes());
            calls.push((libc::SYS_sigaltstack, [data, 0, 0, 0, 0, 0]));
            what.push("sigaltstack");
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
        r.write(data, &b)?;
        calls.push((
            libc::SYS_prctl,
            [libc::PR_SET_NAME as u64, data + 24, 0, 0, 0, 0],
        ));
        what.push("prctl(PR_SET_NAME)");
        r.batch_checked(tid, &calls, &what)?;
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
    Ok((r, pages, threads))
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

/// Credentials, dumpable, staged fds, scratch; then the final registers of
/// every thread (loaded when the injectors are put back).
fn finish_task(
    plan: &Plan,
    prep: &Prep,
    i: usize,
    r: &mut Remote,
    cur: &stasis_proto::criu::CredsEntry,
) -> Result<()> {
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
    // One round trip for both.
    let mut calls: Vec<Call> = Vec::with_capacity(2);
    let mut what: Vec<&str> = Vec::with_capacity(2);
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
    r.batch_checked(pid, &calls, &what)?;
    // With no staging fd left to drop them: POSIX locks; then the timers
    // start, the last thing before release.
    files::locks::restore_posix(r, plan, i, data)?;
    crate::task::timers::arm_task(r, t, data)?;
    // An ignored SIGTRAP (left out by the stub): the calls from here on stop
    // at syscall stops, as a step's forced SIGTRAP would reset it to SIG_DFL.
    let tc = t.cores[0].tc.as_ref();
    let trap = tc.and_then(|tc| crate::task::signals::action_of(&tc.sigactions, libc::SIGTRAP));
    if let Some(sa) = trap.filter(|sa| sa.sigaction == libc::SIG_IGN as u64) {
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
    r.call(
        pid,
        "munmap scratch",
        libc::SYS_munmap,
        [tp.scratch, SCRATCH_LEN, 0, 0, 0, 0],
    )?;
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
