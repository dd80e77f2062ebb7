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
mod puppet;
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
use crate::mem::vma::{VMA_FILE_PRIVATE, VMA_FILE_SHARED};
use crate::mem::PAGE_SIZE;
use crate::ns::pid::TaskNames;
use crate::proc;
use crate::stats::{self, RestoreStats};
use crate::sys::{clone3, misc, ptrace, stub as sstub};
use crate::task::creds;
use crate::task::remote::{Call, Remote, SCRATCH_LEN};
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
    /// Staged fds are at [stage_base, local_base) (see `stage_numbers`).
    pub stage_base: i32,
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
    /// Our own oom_score_adj, which every stub inherits (set only where
    /// the image differs), when read.
    pub inherited_oom_score_adj: Option<i32>,
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
        prep.inherited_oom_score_adj = proc::read_oom_score_adj(std::process::id() as i32).ok();
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
    // In waves over all tasks, as the dump's prologue does: every stub runs
    // its batch (dropping our memory, mapping its own) while the restorer
    // starts or fills the others, instead of one waiting for the other.
    let sysv_sizes = crate::ns::ipc::segment_sizes(&plan.ns);
    let mut begun = Vec::with_capacity(plan.tasks.len());
    for (i, t) in plan.tasks.iter().enumerate() {
        crate::error::check_interrupt()?;
        begun.push(if t.alive() {
            Some(puppet::begin(&plan, &prep, i, cur_vdso, &sysv_sizes)?)
        } else {
            None
        });
    }
    let mut filled = Vec::with_capacity(plan.tasks.len());
    let mut pages = 0u64;
    for (i, b) in begun.into_iter().enumerate() {
        crate::error::check_interrupt()?;
        filled.push(match b {
            Some(b) => {
                let (f, n) = puppet::fill(&plan, &prep, i, b, opts.progress)?;
                pages += n;
                Some(f)
            }
            None => None,
        });
    }
    let mut remotes: Vec<Option<Remote>> = Vec::with_capacity(plan.tasks.len());
    for (i, f) in filled.into_iter().enumerate() {
        let Some(f) = f else {
            remotes.push(None);
            continue;
        };
        let (r, tids) = puppet::puppet(&plan, &prep, i, f, &mut tree)?;
        for &tid in tids.iter().skip(1) {
            names.borrow_mut().add_thread(plan.tasks[i].pid, tid);
        }
        crate::ns::pid::set_threads(&mut plan.tasks[i], tids);
        remotes.push(Some(r));
    }
    let plan = plan;
    // Segments removed while attached are removed again, now attached.
    crate::ns::ipc::remove_destroyed(&plan.ns, root_pid)?;
    // Seals that forbid new writable mappings, now that all are mapped.
    files::memfd::late_seals(&dir, &prep.memfd_fds)?;
    // Credentials last, then the final registers. Each task joins its
    // process group in its final batch: group leaders before members.
    let pgid_call = |t: &plan::TaskPlan| -> Option<Call> {
        let leader = t.pgid == t.pid;
        if t.sid == t.pid {
            return None;
        }
        if !leader && !plan.tasks.iter().any(|x| x.pid == t.pgid) {
            info!(
                pid = t.pid,
                pgid = t.pgid,
                "process group leader outside the tree: keeping the restorer's"
            );
            return None;
        }
        let pgid = crate::ns::pid::local_pgid(t) as u64;
        Some((libc::SYS_setpgid, [0, pgid, 0, 0, 0, 0]))
    };
    // Two waves, group leaders then members, each started in all its tasks
    // before any is waited for.
    let (leaders, members): (Vec<usize>, Vec<usize>) =
        (0..plan.tasks.len()).partition(|&i| plan.tasks[i].pgid == plan.tasks[i].pid);
    let mut ending = Vec::with_capacity(plan.tasks.len());
    for wave in [leaders, members] {
        let mut started = Vec::with_capacity(wave.len());
        for i in wave {
            let Some(mut r) = remotes[i].take() else {
                continue;
            };
            let t = &plan.tasks[i];
            // In a user namespace of their own, tasks start with other
            // credentials than ours (see ns::user).
            let own = crate::ns::user::current_creds(t.pid, &plan.ns)?;
            let creds = own.as_ref().unwrap_or(&cur_creds);
            let p = puppet::finish_task(&plan, &prep, i, &mut r, creds, pgid_call(t))?;
            started.push((i, r, p));
        }
        for (i, mut r, p) in started {
            puppet::finish_rest(&plan, &prep, i, &mut r, p)?;
            ending.push((i, r));
        }
    }
    for (i, mut r) in ending {
        puppet::end_task(&plan, i, &mut r)?;
        r.finish()?;
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
/// pages, that is one entry per 2 MiB (measured when the fd tree of 100 x 50
/// had 8 MiB of plan: restore 217 -> 197 ms; since file entries are boxed
/// it has ~4 MiB, mostly not in whole aligned 2 MiB blocks). Best effort:
/// without huge pages it is only slower.
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
    let mut holders: BTreeMap<Group, (Vec<usize>, BTreeSet<u32>)> = BTreeMap::new();
    for (i, t) in plan.tasks.iter().enumerate() {
        for f in &t.fds {
            let (h, ids) = holders
                .entry(files::group_of(&plan.files[&f.id], &plan.files))
                .or_default();
            if !h.contains(&i) {
                h.push(i);
            }
            ids.insert(f.id);
        }
    }
    let mut owned: Vec<Vec<u32>> = vec![Vec::new(); plan.tasks.len()];
    for (g, (h, ids)) in holders {
        let owner = lca(plan, &h);
        owned[owner].extend(ids);
        prep.owner.push((g, owner));
    }
    let parents: Vec<Option<usize>> = plan.tasks.iter().map(|t| t.parent).collect();
    prep.stage_base = next;
    prep.local_base = stage_numbers(&parents, &owned, next, &mut prep.shared);
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

/// Staging fd numbers, from `first` on, for the files each task opens and
/// its descendants inherit (`owned`, by task index; `parents` of each, a
/// parent before its children). A task sees only its
/// ancestors' staged files and its own, so its own are numbered just above
/// its parent's and siblings reuse numbers: each stub's fd table stays as
/// small as one root-to-leaf path needs (forks copy it, close_range walks
/// it) instead of one number per file of the whole dump. Returns the first
/// number above them all.
fn stage_numbers(
    parents: &[Option<usize>],
    owned: &[Vec<u32>],
    first: i32,
    shared: &mut HashMap<u32, i32>,
) -> i32 {
    // end[i]: the first number above what task i holds staged.
    let mut end = vec![first; parents.len()];
    for (i, parent) in parents.iter().enumerate() {
        let mut next = parent.map_or(first, |p| end[p]);
        for &id in &owned[i] {
            shared.insert(id, next);
            next += 1;
        }
        end[i] = next;
    }
    end.into_iter().max().unwrap_or(first)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_numbers_stack_along_paths_and_siblings_reuse_them() {
        // 0 -> {1 -> {3}, 2}: the root stages files 10, 11 for all; 1 and 2
        // stage their own; 3 its own under 1's.
        let parents = [None, Some(0), Some(0), Some(1)];
        let owned = vec![vec![10, 11], vec![20, 21, 22], vec![30], vec![40]];
        let mut shared = HashMap::new();
        let top = stage_numbers(&parents, &owned, 64, &mut shared);
        assert_eq!((shared[&10], shared[&11]), (64, 65));
        assert_eq!((shared[&20], shared[&22]), (66, 68));
        assert_eq!(shared[&30], 66, "siblings reuse numbers");
        assert_eq!(shared[&40], 69, "above everything its ancestors staged");
        assert_eq!(top, 70);
        assert_eq!(stage_numbers(&[], &[], 64, &mut HashMap::new()), 64);
    }
}
