//! Dump: freeze a process tree and write it to an image directory.
//!
//! 1. seize every thread of the tree (ptrace, no fork/clone race);
//! 2. per process: read /proc, ask the process what only it can tell by
//!    remote syscalls, save its fds, VMAs and memory;
//! 3. write the tree, the files and the stats; write the inventory last;
//! 4. kill the tree, or let it run on (`leave_running`).
//!
//! Any error before step 4 drops the seized tree, which detaches every
//! thread: the target keeps running as if nothing happened.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use stasis_proto::criu::{
    core_entry::March, CoreEntry, FsEntry, InventoryEntry, Lsmtype, MmEntry, PstreeEntry,
    RlimitEntry, RseqEntry, TaskCoreEntry, TaskKobjIdsEntry, TaskRlimitsEntry, ThreadCoreEntry,
    ThreadInfoX86,
};
use stasis_proto::image::magic;
use tracing::{debug, info};

use crate::error::{Error, PathCtx, Result, TaskCtx};
use crate::files::fdscan::Scanner;
use crate::files::{tables, FileOpts, FileTable};
use crate::images::{common, ImageDir};
use crate::mem::pages::{self, PageStats};
use crate::mem::selfwrite::TargetIo;
use crate::mem::track;
use crate::mem::vma::{self, Contents, Vma};
use crate::proc;
use crate::stats::{self, DumpStats};
use crate::sys::{kcmp, misc, ptrace};
use crate::task::remote::{Kept, Remote, BATCH_TABLE, SCRATCH_LEN};
use crate::task::seize::{check_target, SeizeOpts, SeizedTree, Task, TaskState};
use crate::task::{creds, regs, signals};

mod ask;
use ask::{suspend_seccomp, thread_extra, thread_extra_read, Asked, TaskCalls, ThreadExtra};

pub const TASK_ALIVE: u32 = 1;
pub const TASK_DEAD: u32 = 2;
pub const TASK_STOPPED: u32 = 3;

#[derive(Debug, Clone, Default)]
pub struct DumpOptions {
    pub pid: i32,
    pub images_dir: PathBuf,
    /// Let the tree run on after the dump instead of killing it.
    pub leave_running: bool,
    /// The tree is a job of the caller's shell: terminals are re-bound and a
    /// session/process group outside the tree is allowed.
    pub shell_job: bool,
    /// Save file locks held by the tree (`--file-locks`); without it a held
    /// lock fails the dump.
    pub file_locks: bool,
    /// Draw progress bars for long operations (on stderr).
    pub progress: bool,
    /// Unix sockets connected outside the tree are saved as external
    /// (`--ext-unix-sk`) instead of refused.
    pub ext_unix_sk: bool,
    /// Run once the images are complete, the tree still frozen (CRIU's
    /// post-dump); an error lets the tree run on and fails the dump.
    pub post_dump: Option<crate::hook::Hook>,
    /// Save a pty slave whose master is outside the tree as a pty end; on
    /// restore it gets a new master (CRIU's orphan_pts_master).
    pub orphan_pts_master: bool,
    /// `--external` entries (`mnt[PATH]:KEY` marks a mount external).
    pub external: Vec<String>,
    /// Freeze this cgroup while seizing (`--freeze-cgroup`).
    pub freeze_cgroup: Option<PathBuf>,
    /// Longest wait for any thread to stop while seizing (`--timeout`).
    pub timeout: Option<std::time::Duration>,
    /// Save established TCP connections (`--tcp-established`); refused
    /// without it.
    pub tcp_established: bool,
    /// Drop connections waiting in a listener's accept queue
    /// (`--tcp-skip-in-flight`); refused without it.
    pub tcp_skip_in_flight: bool,
    /// A pre-dump: the tree runs on and its memory changes are tracked
    /// from now on (see mem::track) for a dump on top of these images.
    pub pre_dump: bool,
    /// Images of an earlier (pre-)dump (`--prev-images-dir`, relative to
    /// `images_dir`): pages unchanged since are left in it.
    pub parent: Option<PathBuf>,
}

/// Remote-call scratch layout (offsets into the scratch area): code at 0,
/// then the outputs of the calls.
const SC_SIGACT: u64 = 4096;
const SC_MISC: u64 = 8192;
const SC_LIMITS: u64 = SC_MISC + 1024;
const SC_THREAD: u64 = 12288;
const SC_TIMERS: u64 = 24576;
/// The iovecs of the task's own page writes, once the outputs above are read.
const SC_PAGES: u64 = 4096;

/// Trees with at most this many fds dump their fd tables on the main thread.
const INLINE_TABLES_MAX: usize = 64;

/// Trees with fewer live processes copy their pages on the main thread.
const PAGES_THREAD_MIN: usize = 4;

/// A task's private pages to copy, handed to the pages thread.
struct PageJob {
    pid: i32,
    vpid: i32,
    vmas: Vec<Vma>,
    pages_id: u32,
}

/// Copy the pages of each job received (see [`Dumper::page_jobs`]) until
/// the sender is gone; stop early, successfully, once `stop` is set.
fn page_worker(
    dir: &ImageDir,
    jobs: std::sync::mpsc::Receiver<PageJob>,
    progress: bool,
    stop: &AtomicBool,
) -> Result<PageStats> {
    let mut total = PageStats::default();
    for j in jobs {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let st = pages::dump_private_as(
            dir, j.pid, j.vpid, &j.vmas, j.pages_id, progress, None, None,
        )
        .inspect_err(|_| stop.store(true, Ordering::Relaxed))?;
        total.add(&st);
    }
    Ok(total)
}

pub fn dump(opts: &DumpOptions) -> Result<DumpStats> {
    let dir = ImageDir::create(&opts.images_dir)?;
    // The parent image, as CRIU links it; its pages count only while its
    // memory tracking still runs. A pre-dump starts tracking afresh.
    let parent = match &opts.parent {
        Some(p) => {
            let link = dir.file("parent");
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(p, &link).path_ctx(&link)?;
            Some(opts.images_dir.join(p))
        }
        None => None,
    };
    let tracked_parent = match &parent {
        Some(p) if opts.pre_dump => {
            track::stop(p);
            None
        }
        Some(p) if track::active(p) => Some(p.clone()),
        Some(p) => {
            info!(parent = %p.display(), "parent images not tracked: every page is saved");
            None
        }
        None => None,
    };
    check_target(opts.pid)?;
    crate::ns::mnt::set_dump_externals(&opts.external)?;
    let t0 = Instant::now();
    // A frozen cgroup holds still while we seize it; injected syscalls do
    // not run in a frozen cgroup, so it is thawed once all are seized (and
    // on any error, by the guard's drop).
    // A v1 freezer is not used: its frozen tasks never reach the ptrace
    // stop that seizing waits for; ptrace alone stops them consistently.
    let mut freezer = opts
        .freeze_cgroup
        .as_deref()
        .filter(|p| {
            let v2 = p.join("cgroup.freeze").exists();
            if !v2 {
                debug!(cgroup = %p.display(), "v1 freezer: the tree is stopped by ptrace");
            }
            v2
        })
        .map(|p| crate::cgroup::Freezer::freeze(p, std::time::Duration::from_secs(10)))
        .transpose()?;
    // A vfork parent in a frozen cgroup only stops once its child has run
    // to its exec: thaw if a stop is slow in coming.
    let mut thaw = || freezer.as_mut().map_or(Ok(()), |f| f.thaw());
    // Fd tables are scanned as their processes stop, once there is more
    // than one (a single process is not worth two threads).
    let (mut scanner, mut stopped) = (None, 0usize);
    let mut scan = |pid: i32| {
        stopped += 1;
        if stopped == 2 {
            scanner = Some(Scanner::start());
        }
        if let Some(s) = &scanner {
            s.push(pid);
        }
    };
    let tree = SeizedTree::seize_with(
        opts.pid,
        SeizeOpts {
            timeout: opts.timeout.unwrap_or(crate::task::seize::DEFAULT_TIMEOUT),
            on_slow: Some(&mut thaw),
            on_stopped: Some(&mut scan),
        },
    )?;
    if let Some(f) = freezer.as_mut() {
        f.thaw()?;
    }
    let frozen_at = Instant::now();
    info!(pid = opts.pid, tasks = tree.tasks.len(), "tree seized");

    let files = Mutex::new(FileTable::new(
        &dir,
        FileOpts {
            shell_job: opts.shell_job,
            file_locks: opts.file_locks,
            ext_unix_sk: opts.ext_unix_sk,
            orphan_pts: opts.orphan_pts_master,
            tcp_established: opts.tcp_established,
            tcp_skip_in_flight: opts.tcp_skip_in_flight,
        },
    ));
    let pages_ids = tables::lock(&files).pages_ids.clone();
    let mut d = Dumper {
        dir: &dir,
        opts,
        files: &files,
        ns_ids: HashMap::new(),
        cg_sets: Default::default(),
        pids: Default::default(),
        shmem_done: HashSet::new(),
        pages: PageStats::default(),
        tracked_parent,
        track_fds: Vec::new(),
        stolen: tree.stolen.clone(),
        ns_links: HashMap::new(),
        seccomp: Default::default(),
        own_ipc: false,
        page_jobs: None,
        smaps_ahead: None,
        asked: HashMap::new(),
        tables_done: false,
        kept: Vec::new(),
        paths: HashMap::new(),
        userns: None,
        pages_ids,
    };
    let live: Vec<i32> = tree
        .tasks
        .iter()
        .filter(|t| !matches!(t.state, TaskState::Zombie { .. }))
        .map(|t| t.pid)
        .collect();
    // smaps costs the kernel a walk of every mapped page (~0.25 ms for a
    // small process): a thread reads them from now on, while the tree's
    // cgroups, namespaces and remote calls are collected and the tasks
    // dumped. The tasks are stopped, and nothing of ours changes their
    // mappings but the scratch area of the remote calls (cut out of smaps
    // read after it was mapped), so theirs is what dump_task would read (a
    // task sharing its mm with another is refused by check_sharing).
    if live.len() >= PAGES_THREAD_MIN {
        d.smaps_ahead = Some(SmapsAhead::start(live.clone()));
    }
    // The fd scans may still run: cgroups and namespaces first.
    d.cg_sets = crate::cgroup::dump(&dir, &live)?;
    // Namespaces: refuse what we cannot restore before writing anything.
    let mut tree_ns = crate::ns::collect(&dir, &live)?;
    d.ns_links = std::mem::take(&mut tree_ns.links);
    d.own_ipc = tree_ns.owns(crate::proc::NsKind::Ipc);
    // The tree's own user namespace: credentials and file owners are
    // written as seen inside.
    d.files().userns = tree_ns.user.clone();
    d.userns = tree_ns.user.clone();
    let host: Vec<crate::ns::pid::HostTask> = tree.tasks.iter().map(host_task).collect();
    d.pids = crate::ns::pid::PidMap::collect(&host, tree_ns.pid_levels)?;
    let early = scanner.take().map(Scanner::finish).unwrap_or_default();
    d.files().prepare_tree(&live, early)?;
    // Fd tables (files id = task index + 2) on a second thread, see
    // files::tables.
    let fd_tasks: Vec<(i32, u32)> = (2..)
        .zip(&tree.tasks)
        .filter(|(_, t)| !matches!(t.state, TaskState::Zombie { .. }))
        .map(|(id, t)| (t.pid, id))
        .collect();
    let stop = AtomicBool::new(false);
    // A second thread pays off only with many fds: starting it costs more
    // than a few fd tables (and a wake-up on a busy machine).
    let inline_tables = d.files().scanned_fds() <= INLINE_TABLES_MAX;
    if inline_tables {
        tables::dump_tables(&files, &fd_tasks, &stop)?;
        d.tables_done = true;
    } else {
        d.files().fast_fd_flags();
    }
    d.ask_all(&live)?;
    let (root_ids, root_task_ids) = std::thread::scope(|s| -> Result<_> {
        let tables =
            (!inline_tables).then(|| s.spawn(|| tables::dump_tables(&files, &fd_tasks, &stop)));
        // Copying pages needs no tracer either (process_vm_readv): with many
        // processes it runs on a thread of its own while the main thread
        // goes on with the next task's remote calls. The tasks stay stopped
        // until the end of the dump, after this thread is joined.
        let pages_thread = (live.len() >= PAGES_THREAD_MIN && !opts.pre_dump).then(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            d.page_jobs = Some(tx);
            let (dir, progress, stop) = (&dir, opts.progress, &stop);
            s.spawn(move || page_worker(dir, rx, progress, stop))
        });
        let mut run = || -> Result<_> {
            // inventory.root_ids are the dumper's own, as CRIU writes them:
            // its restore takes a root task whose ids match them for a
            // CLONE_* sibling ("Image corruption on kIDs data"), and the
            // kinds where the root task's differ are the namespaces the
            // tree owns. The dumper is object id 1, tasks 2.. (fdinfo-2.img
            // is the root's, as CRIU names it).
            let root_ids = d.ids(std::process::id() as i32, 1)?;
            let mut root_task_ids = None;
            for (i, task) in tree.tasks.iter().enumerate() {
                crate::error::check_interrupt()?;
                let ids = d.dump_task(&tree, task, i as u32 + 2)?;
                if i == 0 {
                    root_task_ids = Some(ids);
                }
            }
            Ok((root_ids, root_task_ids))
        };
        let r = run();
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        // No more jobs: the pages thread ends once it has copied the last.
        d.page_jobs = None;
        d.smaps_ahead = None;
        let pg = pages_thread.map(|t| {
            t.join()
                .unwrap_or_else(|_| Err(Error::Other("page copy thread panicked".into())))
        });
        let t = tables.map_or(Ok(()), |t| {
            t.join()
                .unwrap_or_else(|_| Err(Error::Other("fd table thread panicked".into())))
        });
        let root_ids = r?;
        if let Some(pg) = pg {
            d.pages.add(&pg?);
        }
        t?;
        tables::all_written(&files)?;
        Ok(root_ids)
    })?;
    d.write_pstree(&tree)?;
    d.seccomp.write(&dir)?;
    if let Some(ids) = &root_task_ids {
        crate::ns::dump(&dir, &tree_ns, opts.pid, ids)?;
    }
    let Dumper {
        pages,
        track_fds,
        tracked_parent,
        kept,
        ..
    } = d;
    // The table is still borrowed by `d`'s type: take it out of its mutex.
    let mut table = std::mem::replace(
        &mut *tables::lock(&files),
        FileTable::new(&dir, FileOpts::default()),
    );
    // Connections in repair mode and the network lock: undone on any
    // error from here (drop), settled once the tree is killed or let go.
    let held = table.take_inet_held();
    table.write()?;
    let st = DumpStats {
        freezing_time: frozen_at - t0,
        frozen_time: frozen_at.elapsed(),
        memdump_time: pages.memdump,
        memwrite_time: pages.memwrite,
        pages_scanned: pages.pages_scanned,
        pages_written: pages.pages_written,
        shpages_scanned: pages.shpages_scanned,
        shpages_written: pages.shpages_written,
    };
    stats::write_dump(&dir, &st)?;
    dir.commit_inventory(&InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        root_ids: Some(root_ids),
        ns_per_id: Some(true),
        lsmtype: Some(Lsmtype::NoLsm as i32),
        dump_uptime: uptime_us(),
        ..Default::default()
    })?;
    if let Err(e) = crate::hook::run(&opts.post_dump, opts.pid) {
        drop(held);
        crate::task::remote::unmap_kept(kept)?;
        tree.release()?;
        return Err(e);
    }
    if opts.pre_dump {
        track::keep(&opts.images_dir, track_fds, &live)?;
    } else if let Some(p) = &tracked_parent {
        track::stop(p);
    }
    if opts.leave_running || opts.pre_dump {
        crate::task::remote::unmap_kept(kept)?;
        held.finish(false)?;
        tree.release()?;
    } else {
        tree.kill()?;
        kept.into_iter().for_each(Kept::forget);
        held.finish(true)?;
    }
    let mut st = st;
    st.frozen_time = frozen_at.elapsed();
    Ok(st)
}

/// The uptime /proc/uptime shows (CLOCK_BOOTTIME), in microseconds.
fn uptime_us() -> Option<u64> {
    let (s, ns) = crate::sys::clock::gettime(libc::CLOCK_BOOTTIME).ok()?;
    Some(s as u64 * 1_000_000 + ns as u64 / 1000)
}

struct Dumper<'a> {
    dir: &'a ImageDir,
    opts: &'a DumpOptions,
    files: &'a Mutex<FileTable<'a>>,
    /// Namespace inode -> small id, as CRIU numbers namespaces.
    ns_ids: HashMap<u64, u32>,
    /// Each task's cgroup set in cgroup.img.
    cg_sets: crate::cgroup::CgSets,
    /// Pids as the root's pid namespace sees them (file names, pstree).
    pids: crate::ns::pid::PidMap,
    shmem_done: HashSet<u64>,
    pages: PageStats,
    stolen: Vec<crate::task::seize::StolenSignal>,
    /// Namespace links read by ns::collect, by pid.
    ns_links: HashMap<i32, Vec<proc::NsLink>>,
    seccomp: crate::task::seccomp::Filters,
    /// Parent images whose memory tracking runs: unchanged pages stay there.
    tracked_parent: Option<PathBuf>,
    /// Pre-dump: the uffds tracking each task's memory.
    track_fds: Vec<std::os::fd::OwnedFd>,
    /// The tree has its own IPC namespace (SysV shm attachments need it).
    own_ipc: bool,
    /// Private pages are copied by the pages thread when there is one.
    page_jobs: Option<std::sync::mpsc::Sender<PageJob>>,
    /// smaps of the live tasks, in dump order, read ahead by a thread of
    /// its own when there is one.
    smaps_ahead: Option<SmapsAhead>,
    /// What each task told [`Dumper::ask_all`], taken by its dump_task.
    asked: HashMap<i32, Asked>,
    /// The fd tables are dumped: a task may be given a passing fd of ours
    /// (mem::selfwrite) without it showing up in its table.
    tables_done: bool,
    /// The scratch areas of dumped tasks, left mapped until the end of the
    /// dump: unmapped all at once if the tree runs on, never if it is
    /// killed, one by one (drop) if the dump fails.
    kept: Vec<Kept>,
    /// File ids of paths seen before, by (path, flags): see `path_file`.
    paths: HashMap<(String, u32), u32>,
    /// The tree's own user namespace (see FileTable::userns).
    userns: Option<crate::ns::user::UserNs>,
    /// FileTable::pages_ids.
    pages_ids: crate::files::PagesIds,
}

type SmapsRead = std::result::Result<Vec<proc::SmapsEntry>, proc::ProcError>;

/// The smaps of tasks, in the order given, read by a thread of its own a
/// few tasks ahead of their use.
struct SmapsAhead {
    /// None once dropped (the thread's next send fails: it ends).
    rx: Option<std::sync::mpsc::Receiver<(i32, SmapsRead)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SmapsAhead {
    /// How far ahead the thread reads: enough to never keep the dump
    /// waiting, few enough to hold little memory on a big tree.
    const AHEAD: usize = 32;

    fn start(pids: Vec<i32>) -> SmapsAhead {
        let (tx, rx) = std::sync::mpsc::sync_channel(Self::AHEAD);
        let thread = std::thread::spawn(move || {
            for pid in pids {
                // Fails once the dump no longer wants them: stop.
                if tx.send((pid, proc::read_smaps(pid))).is_err() {
                    break;
                }
            }
        });
        SmapsAhead {
            rx: Some(rx),
            thread: Some(thread),
        }
    }

    /// `pid`'s smaps if it is the next one read; None if out of step.
    fn next(&self, pid: i32) -> Option<SmapsRead> {
        match self.rx.as_ref()?.recv() {
            Ok((p, r)) if p == pid => Some(r),
            _ => None,
        }
    }
}

impl Drop for SmapsAhead {
    fn drop(&mut self) {
        // The thread ends at its next send (at most one smaps read later).
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<'a> Dumper<'a> {
    fn pages_id(&mut self) -> u32 {
        // One counter for every pages image (memfds take ids too).
        self.pages_ids.next()
    }

    /// A thread's credentials as it sees them (CRIU reads them inside).
    fn creds(&self, st: &proc::Status, secbits: u32) -> stasis_proto::criu::CredsEntry {
        let mut c = creds::from_status(st, secbits);
        if let Some(u) = &self.userns {
            u.creds_to_ns(&mut c);
        }
        c
    }

    /// [`FileTable::path_file`], remembered here: the tasks of a tree
    /// mostly share their exe, mapped files, cwd and root, and the table's
    /// lock is busy with the fd table thread (a wait behind it can be a
    /// whole time slice when that thread is preempted holding it).
    fn path_file(
        &mut self,
        pid: i32,
        path: &str,
        deleted: bool,
        flags: u32,
        source: impl FnOnce() -> PathBuf,
    ) -> Result<u32> {
        // A deleted file (or memfd) is an object of its own each time.
        let key = (path.to_owned(), flags);
        if let Some(&id) = self.paths.get(&key).filter(|_| !deleted) {
            return Ok(id);
        }
        let id = self
            .files()
            .path_file(pid, path, deleted, flags, source())?;
        if !deleted {
            self.paths.insert(key, id);
        }
        Ok(id)
    }

    fn files(&self) -> MutexGuard<'a, FileTable<'a>> {
        tables::lock(self.files)
    }

    fn ns_id(&mut self, ino: u64) -> u32 {
        let n = self.ns_ids.len() as u32 + 1;
        *self.ns_ids.entry(ino).or_insert(n)
    }

    fn ids(&mut self, pid: i32, id: u32) -> Result<TaskKobjIdsEntry> {
        let mut ids = TaskKobjIdsEntry {
            vm_id: id,
            files_id: id,
            fs_id: id,
            sighand_id: id,
            ..Default::default()
        };
        let links = match self.ns_links.remove(&pid) {
            Some(l) => l,
            None => proc::read_all_ns(pid)?,
        };
        for l in links {
            if l.name.ends_with("_for_children") {
                continue;
            }
            let v = self.ns_id(l.ino);
            crate::ns::set_id(&mut ids, l.kind, v);
        }
        Ok(ids)
    }

    fn write_pstree(&self, tree: &SeizedTree) -> Result<()> {
        let entries: Vec<PstreeEntry> = tree
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| self.pids.entry(&host_task(t), i == 0))
            .collect();
        self.dir
            .write_all("pstree.img", common(magic::PSTREE), &entries)
    }

    /// Processes sharing their mm, fd table, fs or signal handlers without
    /// being threads (vfork, CLONE_FILES, ...) are refused by name.
    fn check_sharing(&self, tree: &SeizedTree, task: &Task) -> Result<()> {
        let Some(parent) = tree.task(task.ppid) else {
            return Ok(());
        };
        if matches!(parent.state, TaskState::Zombie { .. }) {
            return Ok(());
        }
        for (kind, what) in [
            (kcmp::KCMP_VM, "memory"),
            (kcmp::KCMP_FILES, "fd table"),
            (kcmp::KCMP_FS, "fs info"),
            (kcmp::KCMP_SIGHAND, "signal handlers"),
        ] {
            if kcmp::kcmp(task.pid, parent.pid, kind, 0, 0).unwrap_or(1) == 0 {
                return Err(Error::unsupported(
                    task.pid,
                    format!(
                        "shares its {what} with its parent {} (vfork/CLONE_*)",
                        parent.pid
                    ),
                ));
            }
        }
        Ok(())
    }

    fn dump_task(&mut self, tree: &SeizedTree, task: &Task, id: u32) -> Result<TaskKobjIdsEntry> {
        let pid = task.pid;
        if let TaskState::Zombie { exit_code } = task.state {
            return self.dump_zombie(pid, id, exit_code);
        }
        self.check_sharing(tree, task)?;
        let ids = self.ids(pid, id)?;
        let (status, auxv, asked) = match self.asked.remove(&pid) {
            Some(a) => (a.status, Some(a.auxv), Some((a.kept, a.res))),
            None => (proc::read_status(pid)?, None, None),
        };
        // Our remote calls must not meet the task's seccomp filters.
        for &tid in &task.threads {
            let mode = if tid == pid {
                status.seccomp
            } else {
                proc::read_status_tid(pid, tid)?.seccomp
            };
            if mode != 0 {
                suspend_seccomp(tid)?;
            }
        }
        // Read once the task was stopped: it holds still since.
        let stat = &task.stat;
        let mut smaps = self.smaps(pid)?;
        if let Some((kept, _)) = &asked {
            // ask_all may have mapped our scratch area before smaps were
            // read.
            smaps = vma::cut_out(smaps, (kept.addr, kept.addr + SCRATCH_LEN));
        }

        // VMAs (without our scratch area).
        let mut vmas: Vec<Vma> = Vec::with_capacity(smaps.len());
        let mut vdso = None;
        for s in &smaps {
            let mut v = vma::classify(pid, s)?;
            if v.is_sysv() && !self.own_ipc {
                // As CRIU: the segment belongs to the host, not to the tree.
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "sysv shm segment {} attached at {:#x} is in the host's ipc namespace \
                         (dump a tree with its own ipc namespace)",
                        v.entry.shmid,
                        v.start()
                    ),
                ));
            }
            if v.status() & vma::VMA_AREA_VDSO != 0 {
                vdso = Some((v.start(), v.end()));
            }
            if v.is_file() {
                let (start, end) = (v.start(), v.end());
                let source = || PathBuf::from(format!("/proc/{pid}/map_files/{start:x}-{end:x}"));
                let path = v.path.as_deref().unwrap_or_default();
                let flags = v.entry.fdflags.unwrap_or(0);
                v.entry.shmid = self.path_file(pid, path, v.deleted, flags, source)? as u64;
            }
            vmas.push(v);
        }
        vma::merge_vvar(&mut vmas);

        // What only the process can tell: asked already by `ask_all`, or now.
        // SigIgn is per process and the task is stopped: `status` still holds.
        let (mut remote, pre) = match asked {
            Some((kept, res)) => (Remote::from_kept(kept, status.sig_ign), res),
            None => {
                let mut r = Remote::with_sig_ign(pid, vdso, status.sig_ign)?;
                r.map_scratch()?;
                (r, None)
            }
        };
        let scratch = remote.scratch();
        let (res, main_extra) = match pre {
            Some(x) => x,
            None => {
                let want = self.files().fd_flags_wanted(pid).map(<[i32]>::to_vec);
                // Unbatched (SIGTRAP ignored): fdinfo is read instead.
                let fds = want.as_deref().filter(|_| remote.batches());
                let tc = TaskCalls::new(scratch, fds);
                let res = remote.batch_checked(pid, &tc.calls, &tc.names)?;
                if want.is_some() {
                    tc.deliver_fd_flags(self.files, pid, fds, &res)?;
                }
                (res, tc.main_extra)
            }
        };
        let brk = res[ask::ASKED_BRK];
        let dumpable = res[ask::ASKED_DUMPABLE] as i32;
        let thp_disabled = res[ask::ASKED_THP_DISABLED] != 0;
        let personality = res[ask::ASKED_PERSONALITY] as u32;
        let limits = ask::read_limits(&remote, scratch + SC_LIMITS)?;
        let sigactions = signals::read_actions(&remote, scratch + SC_SIGACT)?;
        let subreaper = remote.read_u64(scratch + SC_MISC)? as u32 != 0;
        let mut extra = Vec::with_capacity(task.threads.len());
        for &tid in &task.threads {
            extra.push(if tid == pid {
                thread_extra_read(&remote, &res[main_extra..], scratch + SC_THREAD)?
            } else {
                thread_extra(&mut remote, tid, scratch + SC_THREAD)?
            });
        }
        // Signals dequeued while seizing go back to their thread when the tree
        // runs on (and into the image either way).
        let stolen: Vec<_> = self
            .stolen
            .iter()
            .filter(|s| task.threads.contains(&s.tid))
            .cloned()
            .collect();
        if self.opts.leave_running {
            for s in &stolen {
                remote.write(scratch + SC_MISC, &s.siginfo)?;
                remote.call(
                    s.tid,
                    "rt_tgsigqueueinfo",
                    libc::SYS_rt_tgsigqueueinfo,
                    [
                        pid as u64,
                        s.tid as u64,
                        signals::signo(&s.siginfo) as u64,
                        scratch + SC_MISC,
                        0,
                        0,
                    ],
                )?;
            }
        }
        let timers =
            crate::task::timers::dump(&mut remote, pid, &task.threads, scratch + SC_TIMERS)?;
        // Tracking starts before the memory is read, the task still stopped.
        if self.opts.pre_dump {
            if let Some(fd) = track::start(&mut remote, pid, &vmas)? {
                self.track_fds.push(fd);
            }
        }
        // The scratch area goes at the end of the dump (see Dumper::kept).
        self.kept.extend(remote.keep_scratch()?);

        // Per-thread state.
        for (i, &tid) in task.threads.iter().enumerate() {
            let ex = &extra[i];
            // The leader's status was read above (creds and seccomp mode
            // do not change meanwhile): not again.
            let leader = (tid == pid).then_some((&status, stat));
            let mut core = self.thread_core(pid, tid, ex, &stolen, leader)?;
            let tcore = core.thread_core.as_mut().unwrap();
            if tcore.seccomp_mode == Some(crate::task::seccomp::MODE_FILTER as i32) {
                tcore.seccomp_filter = self.seccomp.dump_thread(tid)?;
            }
            if tid == pid {
                core.tc = Some(TaskCoreEntry {
                    task_state: match task.state {
                        TaskState::Stopped(_) => TASK_STOPPED,
                        _ => TASK_ALIVE,
                    },
                    exit_code: 0,
                    personality,
                    flags: stat.flags,
                    blk_sigset: core
                        .thread_core
                        .as_ref()
                        .and_then(|t| t.blk_sigset)
                        .unwrap_or(0),
                    comm: stat.comm.clone(),
                    rlimits: Some(TaskRlimitsEntry {
                        rlimits: limits
                            .iter()
                            .map(|&(cur, max)| RlimitEntry { cur, max })
                            .collect(),
                    }),
                    signals_s: signals::queue(
                        ptrace::peek_siginfo(pid, true).task_ctx(pid, "peek shared signals")?,
                    ),
                    loginuid: proc::read_loginuid(pid).ok(),
                    cg_set: self.cg_sets.of.get(&pid).copied(),
                    oom_score_adj: proc::read_oom_score_adj(pid).ok(),
                    sigactions: sigactions.clone(),
                    child_subreaper: Some(subreaper),
                    timers: Some(timers.clone()),
                    stop_signo: match task.state {
                        TaskState::Stopped(s) => Some(s as u32),
                        _ => None,
                    },
                    ..Default::default()
                });
                core.ids = Some(ids);
            }
            self.dir.write_one(
                &format!("core-{}.img", self.pids.vpid(tid)),
                common(magic::CORE),
                &core,
            )?;
        }
        let vpid = self.pids.vpid(pid);
        self.dir
            .write_one(&format!("ids-{vpid}.img"), common(magic::IDS), &ids)?;

        // Files: cwd, root, exe (the fd table is dumped by files::tables).
        let dirflags = (libc::O_RDONLY | libc::O_DIRECTORY) as u32;
        let cwd = link(pid, "cwd")?;
        let root = link(pid, "root")?;
        let exe = link(pid, "exe")?;
        let mut file = |l: &(String, bool), what: &str, flags: u32| {
            self.path_file(pid, &l.0, l.1, flags, || {
                format!("/proc/{pid}/{what}").into()
            })
        };
        let cwd_id = file(&cwd, "cwd", dirflags)?;
        let root_id = file(&root, "root", dirflags)?;
        let exe_file_id = file(&exe, "exe", libc::O_RDONLY as u32)?;
        self.dir.write_one(
            &format!("fs-{vpid}.img"),
            common(magic::FS),
            &FsEntry {
                cwd_id,
                root_id,
                umask: status.umask,
            },
        )?;

        // Memory.
        let auxv = match auxv {
            Some(a) => a,
            None => proc::read_auxv(pid)?,
        };
        let mm = MmEntry {
            mm_start_code: stat.start_code,
            mm_end_code: stat.end_code,
            mm_start_data: stat.start_data,
            mm_end_data: stat.end_data,
            mm_start_stack: stat.start_stack,
            mm_start_brk: stat.start_brk,
            mm_brk: brk,
            mm_arg_start: stat.arg_start,
            mm_arg_end: stat.arg_end,
            mm_env_start: stat.env_start,
            mm_env_end: stat.env_end,
            exe_file_id,
            mm_saved_auxv: proc::criu_saved_auxv(&auxv),
            vmas: vmas.iter().map(|v| v.entry).collect(),
            dumpable: Some(dumpable),
            aios: Vec::new(),
            thp_disabled: Some(thp_disabled),
        };
        self.dir
            .write_one(&format!("mm-{vpid}.img"), common(magic::MM), &mm)?;
        let pages_id = self.pages_id();
        if self.tracked_parent.is_none() && self.page_jobs.is_some() {
            // Shared memory on the main thread, as below.
            self.dump_shmem(pid, &vmas)?;
            if let Some(tx) = &self.page_jobs {
                // A send fails only once the pages thread has failed: its
                // error is reported when it is joined.
                let _ = tx.send(PageJob {
                    pid,
                    vpid,
                    vmas,
                    pages_id,
                });
            }
            debug!(pid, "task dumped (pages queued)");
            return Ok(ids);
        }
        // Big memory may be written by the task itself (mem::selfwrite), on
        // its scratch area (all outputs read by now). Not with seccomp
        // filters (they would apply to the thread that writes), nor in a
        // job-control stop (which that thread would join).
        let writes_itself =
            self.tables_done && status.seccomp == 0 && !matches!(task.state, TaskState::Stopped(_));
        let mut by_target = writes_itself
            .then(|| self.kept.pop_if(|k| k.pid == pid))
            .flatten()
            .map(|kept| TargetIo::new(kept, status.sig_ign, SC_PAGES, BATCH_TABLE - SC_PAGES));
        let parent = match &self.tracked_parent {
            Some(p) => Some((
                track::parent_ranges(p, &format!("pagemap-{vpid}.img"))?,
                track::written(pid, &vmas)?,
            )),
            None => None,
        };
        let st = pages::dump_private_as(
            self.dir,
            pid,
            vpid,
            &vmas,
            pages_id,
            self.opts.progress,
            parent.as_ref().map(|(h, w)| (&h[..], &w[..])),
            by_target.as_mut(),
        )?;
        if let Some(t) = by_target {
            self.kept.extend(t.into_kept());
        }
        self.pages.add(&st);
        self.dump_shmem(pid, &vmas)?;
        debug!(pid, vmas = vmas.len(), "task dumped");
        Ok(ids)
    }

    /// The smaps of live task `pid`: read ahead when a thread does that
    /// (tasks come in the same order), else now.
    fn smaps(&mut self, pid: i32) -> Result<Vec<proc::SmapsEntry>> {
        if let Some(ahead) = &self.smaps_ahead {
            match ahead.next(pid) {
                Some(r) => return Ok(r?),
                // Out of step (cannot happen: same order): read it here.
                None => self.smaps_ahead = None,
            }
        }
        Ok(proc::read_smaps(pid)?)
    }

    /// The shared memory of `vmas` not dumped yet.
    fn dump_shmem(&mut self, pid: i32, vmas: &[Vma]) -> Result<()> {
        for v in vmas.iter().filter(|v| v.contents == Contents::Shmem) {
            if self.shmem_done.insert(v.entry.shmid) {
                let pid_ = self.pages_id();
                let st = pages::dump_shmem(self.dir, pid, v, v.entry.shmid, pid_)?;
                self.pages.add(&st);
            }
        }
        Ok(())
    }
}

impl<'a> Dumper<'a> {
    fn thread_core(
        &self,
        pid: i32,
        tid: i32,
        ex: &ThreadExtra,
        stolen: &[crate::task::seize::StolenSignal],
        leader: Option<(&proc::Status, &proc::Stat)>,
    ) -> Result<CoreEntry> {
        let gp = ptrace::get_regs(tid).task_ctx(tid, "get registers")?;
        let xs = ptrace::get_xstate(tid).task_ctx(tid, "get xsave state")?;
        let mask = ptrace::get_sigmask(tid).task_ctx(tid, "get signal mask")?;
        let mut pending = ptrace::peek_siginfo(tid, false).task_ctx(tid, "peek signals")?;
        pending.extend(stolen.iter().filter(|s| s.tid == tid).map(|s| s.siginfo));
        let rseq = match ptrace::get_rseq_config(tid) {
            Ok(c) if c.rseq_abi_pointer != 0 => Some(RseqEntry {
                rseq_abi_pointer: c.rseq_abi_pointer,
                rseq_abi_size: c.rseq_abi_size,
                signature: c.signature,
                rseq_cs_pointer: None,
            }),
            Ok(_) => None,
            Err(e) => return Err(Error::task(tid, "get rseq configuration", e)),
        };
        let (futex_rla, futex_rla_len) =
            misc::get_robust_list(tid).task_ctx(tid, "get_robust_list")?;
        // The leader's status and stat were read already (the task is
        // stopped): not again.
        let (read_st, read_stat);
        let (st, tstat) = match leader {
            Some(x) => x,
            None => {
                read_st = proc::read_status_tid(pid, tid)?;
                read_stat = proc::read_stat_tid(pid, tid)?;
                (&read_st, &read_stat)
            }
        };
        let sched = misc::sched_getattr(tid).task_ctx(tid, "sched_getattr")?;
        Ok(CoreEntry {
            mtype: March::X8664 as i32,
            thread_info: Some(ThreadInfoX86 {
                clear_tid_addr: ex.clear_tid,
                gpregs: regs::regs_to_image(&gp),
                fpregs: regs::xsave_to_image(&xs),
                tls: Vec::new(),
            }),
            tc: None,
            ids: None,
            thread_core: Some(ThreadCoreEntry {
                futex_rla,
                futex_rla_len: futex_rla_len as u32,
                sched_nice: Some(tstat.nice as i32),
                sched_policy: Some(sched.sched_policy),
                sched_prio: Some(sched.sched_priority),
                blk_sigset: Some(mask),
                sas: ex.sas,
                pdeath_sig: Some(ex.pdeath_sig),
                signals_p: signals::queue(pending),
                creds: Some(self.creds(st, ex.secbits)),
                seccomp_mode: Some(st.seccomp as i32),
                seccomp_filter: None,
                // /proc/PID/task/TID/comm and stat show the same bytes.
                comm: Some(tstat.comm.clone()),
                blk_sigset_extended: None,
                rseq_entry: rseq,
                cg_set: None,
            }),
        })
    }

    fn dump_zombie(&mut self, pid: i32, id: u32, exit_code: i32) -> Result<TaskKobjIdsEntry> {
        let ids = TaskKobjIdsEntry {
            vm_id: id,
            files_id: id,
            fs_id: id,
            sighand_id: id,
            ..Default::default()
        };
        let core = CoreEntry {
            mtype: March::X8664 as i32,
            tc: Some(TaskCoreEntry {
                task_state: TASK_DEAD,
                exit_code: exit_code as u32,
                comm: proc::read_comm(pid).unwrap_or_default(),
                ..Default::default()
            }),
            ids: Some(ids),
            ..Default::default()
        };
        self.dir.write_one(
            &format!("core-{}.img", self.pids.vpid(pid)),
            common(magic::CORE),
            &core,
        )?;
        Ok(ids)
    }
}

fn host_task(t: &Task) -> crate::ns::pid::HostTask<'_> {
    crate::ns::pid::HostTask {
        pid: t.pid,
        ppid: t.ppid,
        pgid: t.pgid,
        sid: t.sid,
        threads: &t.threads,
    }
}

/// A /proc/PID/{cwd,root,exe} link: (path, deleted).
fn link(pid: i32, what: &str) -> Result<(String, bool)> {
    let p = format!("/proc/{pid}/{what}");
    let t = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
    let s = t.to_string_lossy().into_owned();
    Ok(match s.strip_suffix(" (deleted)") {
        Some(x) => (x.to_string(), true),
        None => (s, false),
    })
}
