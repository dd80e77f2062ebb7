//! PID namespaces.
//!
//! Dump: the tree is dumped by the host pid of its root; when the root is
//! the init of a pid namespace of its own, `pstree.img`, `core-<pid>.img`
//! and the other per-task files use the pids the root's namespace sees (the
//! root is 1), as CRIU does, and each pstree entry also carries its pid,
//! pgid, sid and thread ids at every level from the dumper's namespace down
//! to the task's own (`ns_pid`, `ns_pgid`, `ns_sid`, `tids`; outermost
//! first), read from `NSpid:`/`NSpgid:`/`NSsid:` of `/proc/PID/status`.
//! Tasks may sit in pid namespaces nested below the root's.
//!
//! Restore: the plan is turned into the restorer's view (host pids, which
//! is what ptrace, /proc and kill use), keeping per task what clone3 needs
//! (`set_tid`, innermost first) and the pids the task itself sees (for
//! syscalls run inside it). A task deeper than its parent is created with
//! `CLONE_NEWPID` (it is the init of its namespace).
//!
//! Which levels are pinned, as CRIU does: a tree without a pid namespace of
//! its own gets its dumped pid at every level (host pids included). A tree
//! with one (a container) pins only the levels from its root's namespace
//! inward (the root: `[1]`); the outer levels are what the kernel gives, so
//! the tree can be restored beside its still-running original. Its host
//! pids are then unknown until each task exists: the plan keeps the dumped
//! ones as placeholders, the restorer learns each task's new host pid when
//! it is created ([`HostIndex`], [`clone_event_tid`]) and rewrites the plan
//! ([`rehost`], [`set_threads`]) before anything uses them as host pids.

use std::collections::HashMap;

use stasis_proto::criu::{FileLockEntry, NsTid, PstreeEntry};
use stasis_proto::image::magic;

use super::KindOps;
use crate::error::{Error, Result};
use crate::images::common;
use crate::proc::NsKind;
use crate::restore::plan::TaskPlan;

pub const OPS: KindOps = KindOps {
    kind: NsKind::Pid,
    check: |cx| {
        let l = status_levels(cx.root_pid, None)?;
        if l.pid.last() != Some(&1) {
            return Err(Error::unsupported(
                cx.root_pid,
                "the tree root is in a pid namespace of its own but is not its init (pid 1): \
                 dump the namespace's init instead",
            ));
        }
        Ok(())
    },
    // CRIU's pidns image (an external key, none here) marks the namespace.
    dump: |cx| {
        cx.dir.write_one(
            &format!("pidns-{}.img", cx.id),
            common(magic::PIDNS),
            &stasis_proto::criu::PidnsEntry::default(),
        )
    },
    read: |_, _, _| Ok(()),
    setup: |_| Ok(()),
};

/// A task's ids at every pid namespace level, outermost first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Levels {
    pub pid: Vec<i32>,
    pub pgid: Vec<i32>,
    pub sid: Vec<i32>,
}

fn nums(v: &str) -> Vec<i32> {
    v.split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// `NSpid`, `NSpgid`, `NSsid` of a process or thread.
pub fn status_levels(pid: i32, tid: Option<i32>) -> Result<Levels> {
    let p = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    Ok(parse_levels(&s))
}

fn parse_levels(s: &str) -> Levels {
    let mut l = Levels::default();
    for line in s.lines() {
        if let Some((k, v)) = line.split_once(':') {
            match k {
                "NSpid" => l.pid = nums(v),
                "NSpgid" => l.pgid = nums(v),
                "NSsid" => l.sid = nums(v),
                _ => {}
            }
        }
    }
    l
}

/// One process of the tree as seized (host ids).
pub struct HostTask<'a> {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub threads: &'a [i32],
}

/// How the tree's pids are written, built at dump.
#[derive(Debug, Clone, Default)]
pub struct PidMap {
    /// Index of the root's namespace in the level lists (0: the dumper's,
    /// i.e. the tree has no pid namespace of its own).
    pub root_level: usize,
    /// Host pid or tid -> its levels.
    levels: HashMap<i32, Levels>,
}

impl PidMap {
    /// Read the levels of every task and thread. With `own` false the map
    /// is the identity (no lists are written).
    pub fn collect(tasks: &[HostTask], own: bool) -> Result<PidMap> {
        let mut m = PidMap::default();
        if !own || tasks.is_empty() {
            return Ok(m);
        }
        for t in tasks {
            let l = status_levels(t.pid, None)?;
            if l.pid.first() != Some(&t.pid) {
                return Err(Error::unsupported(
                    t.pid,
                    format!("unexpected NSpid {:?} in its status", l.pid),
                ));
            }
            for &tid in t.threads {
                if tid != t.pid {
                    let tl = status_levels(t.pid, Some(tid))?;
                    m.levels.insert(tid, tl);
                }
            }
            m.levels.insert(t.pid, l);
        }
        m.root_level = m.levels[&tasks[0].pid].pid.len() - 1;
        for t in tasks {
            if m.levels[&t.pid].pid.len() <= m.root_level {
                return Err(Error::unsupported(
                    t.pid,
                    "it is outside the tree root's pid namespace",
                ));
            }
        }
        Ok(m)
    }

    /// Whether the tree has a pid namespace of its own.
    pub fn own(&self) -> bool {
        !self.levels.is_empty()
    }

    /// A host pid or tid as the root's namespace sees it (file names).
    pub fn vpid(&self, host: i32) -> i32 {
        match self.levels.get(&host) {
            Some(l) => l.pid[self.root_level],
            None => host,
        }
    }

    fn at_root(&self, v: &[i32]) -> u32 {
        v.get(self.root_level).copied().unwrap_or(0).max(0) as u32
    }

    /// The pstree entry of a task (`is_root`: its ppid is written as 0).
    pub fn entry(&self, t: &HostTask, is_root: bool) -> PstreeEntry {
        let Some(l) = self.levels.get(&t.pid) else {
            return PstreeEntry {
                pid: t.pid as u32,
                ppid: if is_root { 0 } else { t.ppid as u32 },
                pgid: t.pgid as u32,
                sid: t.sid as u32,
                threads: t.threads.iter().map(|&x| x as u32).collect(),
                ..Default::default()
            };
        };
        let u = |v: &[i32]| v.iter().map(|&x| x.max(0) as u32).collect::<Vec<u32>>();
        PstreeEntry {
            pid: self.at_root(&l.pid),
            ppid: if is_root { 0 } else { self.vpid(t.ppid) as u32 },
            pgid: self.at_root(&l.pgid),
            sid: self.at_root(&l.sid),
            threads: t.threads.iter().map(|&x| self.vpid(x) as u32).collect(),
            ns_pid: u(&l.pid),
            ns_pgid: u(&l.pgid),
            ns_sid: u(&l.sid),
            tids: t
                .threads
                .iter()
                .map(|x| NsTid {
                    tid: u(&self.levels[x].pid),
                })
                .collect(),
        }
    }
}

/// What a restored task needs beyond its host ids, when the image has
/// per-level pid lists.
#[derive(Debug, Clone, Default)]
pub struct TaskPids {
    /// clone3 `set_tid` of the leader: innermost level first.
    pub set_tid: Vec<i32>,
    /// The same per thread (leader first).
    pub thread_set_tid: Vec<Vec<i32>>,
    /// pgid as the task itself sees it (0: the leader is not visible).
    pub local_pgid: i32,
}

impl TaskPids {
    /// Pid namespace depth below the outermost pinned level.
    pub fn depth(&self) -> usize {
        self.set_tid.len() - 1
    }
}

/// Turn the plan's pids (the root namespace's view) into the restorer's
/// (host pids from the level lists: the dumped ones, placeholders when the
/// tree owns its pid namespace), keeping what clone3 and in-task syscalls
/// need in `TaskPlan::pids`. Images without lists are left alone; a tree
/// with a pid namespace of its own must have them.
pub fn to_host(tasks: &mut [TaskPlan], pstree: &[PstreeEntry], owns_pid_ns: bool) -> Result<()> {
    if !pstree.iter().any(|p| !p.ns_pid.is_empty()) {
        if owns_pid_ns {
            return Err(Error::bad_image(
                "pstree.img",
                "the tree has a pid namespace of its own but no per-level pids (ns_pid)",
            ));
        }
        return Ok(());
    }
    let bad = |pid: u32, why: &str| Error::bad_image("pstree.img", format!("pid {pid}: {why}"));
    // Root-level pid -> host pid (for ppid).
    let mut host: HashMap<u32, i32> = HashMap::new();
    for p in pstree {
        let h = *p.ns_pid.first().ok_or_else(|| bad(p.pid, "no ns_pid"))?;
        host.insert(p.pid, h as i32);
    }
    // Levels above the root's own pid namespace are not pinned.
    let skip = if owns_pid_ns {
        pstree[0].ns_pid.len() - 1
    } else {
        0
    };
    if owns_pid_ns && pstree[0].ns_pid.last() != Some(&1) {
        return Err(bad(pstree[0].pid, "the root is not pid 1 of its namespace"));
    }
    for (t, p) in tasks.iter_mut().zip(pstree) {
        if p.tids.len() != p.threads.len().max(1) && !p.threads.is_empty() {
            return Err(bad(p.pid, "tids do not match threads"));
        }
        if p.ns_pid.len() <= skip {
            return Err(bad(p.pid, "outside the root's pid namespace"));
        }
        let rev = |v: &[u32]| {
            v.iter()
                .skip(skip)
                .rev()
                .map(|&x| x as i32)
                .collect::<Vec<i32>>()
        };
        let mut thread_set_tid: Vec<Vec<i32>> = p.tids.iter().map(|x| rev(&x.tid)).collect();
        if thread_set_tid.is_empty() {
            thread_set_tid.push(rev(&p.ns_pid));
        }
        if p.tids.iter().any(|v| v.tid.len() != p.ns_pid.len()) {
            return Err(bad(p.pid, "a thread's levels differ from its process's"));
        }
        t.pid = p.ns_pid[0] as i32;
        if let Some(&pp) = host.get(&p.ppid) {
            t.ppid = pp;
        }
        t.pgid = p.ns_pgid.first().map(|&x| x as i32).unwrap_or(t.pgid);
        t.sid = p.ns_sid.first().map(|&x| x as i32).unwrap_or(t.sid);
        t.threads = if p.tids.is_empty() {
            vec![t.pid]
        } else {
            p.tids.iter().map(|x| x.tid[0] as i32).collect()
        };
        t.pids = Some(TaskPids {
            set_tid: rev(&p.ns_pid),
            local_pgid: p.ns_pgid.last().map(|&x| x as i32).unwrap_or(t.pgid),
            thread_set_tid,
        });
    }
    Ok(())
}

/// Finds which task of the plan a new process is, by its pinned levels
/// (the innermost ones of its `NSpid`), when host pids are not pinned.
pub struct HostIndex {
    by_levels: HashMap<Vec<i32>, usize>,
}

impl HostIndex {
    pub fn new(tasks: &[TaskPlan]) -> HostIndex {
        let by_levels = tasks
            .iter()
            .enumerate()
            .filter_map(|(i, t)| {
                let p = t.pids.as_ref()?;
                Some((p.set_tid.iter().rev().copied().collect(), i))
            })
            .collect();
        HostIndex { by_levels }
    }

    /// The index of the task whose host pid is `host`, None for a process
    /// that is no task of the plan.
    pub fn identify(&self, host: i32) -> Result<Option<usize>> {
        let l = status_levels(host, None)?;
        Ok((0..l.pid.len()).find_map(|k| self.by_levels.get(&l.pid[k..]).copied()))
    }
}

/// The new tid a `PTRACE_EVENT_CLONE` reported among injection `events`.
pub fn clone_event_tid(events: &[(i32, u64)]) -> Option<i32> {
    events
        .iter()
        .find(|e| e.0 == crate::sys::ptrace::PTRACE_EVENT_CLONE)
        .map(|e| e.1 as i32)
}

/// Give the plan the host pids its tasks got (`host[i]` for task `i`):
/// pids, parents, groups, sessions, leaders' tids, file lock owners. Ids
/// naming no task of the tree (outside its pid namespace) become 0.
/// Threads other than leaders get theirs when created ([`set_threads`]).
pub fn rehost(tasks: &mut [TaskPlan], locks: &mut [FileLockEntry], host: &[i32]) {
    let map: HashMap<i32, i32> = tasks.iter().zip(host).map(|(t, &h)| (t.pid, h)).collect();
    let get = |p: i32| map.get(&p).copied().unwrap_or(0);
    for (t, &h) in tasks.iter_mut().zip(host) {
        t.ppid = get(t.ppid);
        t.pgid = get(t.pgid);
        t.sid = get(t.sid);
        t.pid = h;
        let mut tids = t.threads.clone();
        tids[0] = h;
        set_threads(t, tids);
    }
    for l in locks {
        l.pid = get(l.pid);
    }
}

/// Give task `t` the host tids its threads got (leader first), and its
/// POSIX timers' target threads with them.
pub fn set_threads(t: &mut TaskPlan, tids: Vec<i32>) {
    let posix = t
        .cores
        .first_mut()
        .and_then(|c| c.tc.as_mut())
        .and_then(|tc| tc.timers.as_mut())
        .map(|tm| &mut tm.posix);
    for p in posix.into_iter().flatten() {
        if let Some(k) = p
            .notify_thread_id
            .and_then(|id| t.threads.iter().position(|&x| x == id))
        {
            p.notify_thread_id = Some(tids[k]);
        }
    }
    t.threads = tids;
}

/// clone3 `set_tid` for a task's leader (innermost first).
pub fn set_tid(t: &TaskPlan) -> Vec<i32> {
    match &t.pids {
        Some(p) => p.set_tid.clone(),
        None => vec![t.pid],
    }
}

/// clone3 `set_tid` for thread `k` of a task.
pub fn thread_set_tid(t: &TaskPlan, k: usize) -> Vec<i32> {
    match &t.pids {
        Some(p) => p.thread_set_tid[k].clone(),
        None => vec![t.threads[k]],
    }
}

/// The task's pid as it sees it (for syscalls run inside it).
pub fn local_pid(t: &TaskPlan) -> i32 {
    local_tid(t, 0)
}

/// Thread `k`'s tid as the task sees it.
pub fn local_tid(t: &TaskPlan, k: usize) -> i32 {
    match &t.pids {
        Some(p) => p.thread_set_tid[k][0],
        None => t.threads[k],
    }
}

/// The task's pgid as it sees it.
pub fn local_pgid(t: &TaskPlan) -> i32 {
    match &t.pids {
        Some(p) => p.local_pgid,
        None => t.pgid,
    }
}

/// The task's pid in the image (`pstree.img`: as the root's pid namespace
/// sees it), which is what a user of the images knows it by.
pub fn image_pid(t: &TaskPlan) -> i32 {
    match &t.pids {
        Some(p) => p.set_tid.last().copied().unwrap_or(t.pid),
        None => t.pid,
    }
}

/// How restore errors name the tasks of a tree with a pid namespace of its
/// own, whose host pids are placeholders (the dumped ones) until the tasks
/// exist, then new: each error about a task names its pid in the image,
/// and its new host pid once known (`pid 2 (host pid 41234)`).
#[derive(Debug, Clone, Default)]
pub struct TaskNames {
    by_pid: HashMap<i32, String>,
}

impl TaskNames {
    /// Before the tasks exist: the plan's placeholder pids and tids.
    pub fn planned(tasks: &[TaskPlan]) -> TaskNames {
        let mut by_pid = HashMap::new();
        for t in tasks.iter().filter(|t| t.pids.is_some()) {
            let name = format!("pid {}", image_pid(t));
            for &tid in &t.threads {
                by_pid.insert(tid, name.clone());
            }
        }
        TaskNames { by_pid }
    }

    /// Once task `i` has host pid `host[i]` (0: unknown); `tasks` still
    /// hold the placeholders.
    pub fn hosted(tasks: &[TaskPlan], host: &[i32]) -> TaskNames {
        let mut by_pid = HashMap::new();
        for (t, &h) in tasks.iter().zip(host) {
            if t.pids.is_none() || h <= 0 {
                continue;
            }
            let img = image_pid(t);
            let name = if img == h {
                format!("pid {img}")
            } else {
                format!("pid {img} (host pid {h})")
            };
            by_pid.insert(h, name);
        }
        TaskNames { by_pid }
    }

    /// A thread created later (its task's leader is `leader`, a host pid).
    pub fn add_thread(&mut self, leader: i32, tid: i32) {
        if let Some(n) = self.by_pid.get(&leader).cloned() {
            self.by_pid.insert(tid, n);
        }
    }

    pub fn name(&self, pid: i32) -> Option<&str> {
        self.by_pid.get(&pid).map(|s| s.as_str())
    }

    /// `e` with its task named as above (errors about other pids, or with
    /// no pid, unchanged).
    pub fn rename(&self, e: Error) -> Error {
        let Some(pid) = e.pid() else { return e };
        let Some(n) = self.name(pid) else { return e };
        match e {
            Error::Task { what, source, .. } => Error::Other(format!("{n}: {what}: {source}")),
            Error::NoProcess(_) => Error::Other(format!("{n}: no such process")),
            Error::Unsupported { why, .. } => Error::Other(format!("{n}: {why}")),
            Error::Fd { fd, why, .. } => Error::Other(format!("{n} fd {fd}: {why}")),
            e => e,
        }
    }
}

/// `CLONE_NEWPID` when `child` is one pid namespace below `parent` (it is
/// the init of a namespace of its own). `parent` None: the restorer.
pub fn clone_flags(parent: Option<&TaskPlan>, child: &TaskPlan) -> u64 {
    let d = |t: &TaskPlan| t.pids.as_ref().map_or(0, |p| p.depth());
    let pd = parent.map_or(0, d);
    if d(child) > pd {
        libc::CLONE_NEWPID as u64
    } else {
        0
    }
}

/// Make the pid namespace of the process behind `pidfd` our
/// `pid_for_children` (as after `unshare(CLONE_NEWPID)`).
pub fn enter_for_children(pidfd: &impl std::os::fd::AsFd) -> std::result::Result<(), String> {
    nix::sched::setns(pidfd, nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("setns into a child's pid namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        let l = parse_levels("Name:\tx\nNSpid:\t4242\t1\nNSpgid:\t4242\t1\nNSsid:\t4000\t0\n");
        assert_eq!(l.pid, vec![4242, 1]);
        assert_eq!(l.pgid, vec![4242, 1]);
        assert_eq!(l.sid, vec![4000, 0]);
    }

    #[test]
    fn entry_and_back() {
        let mut m = PidMap {
            root_level: 1,
            levels: HashMap::new(),
        };
        let lv = |p: &[i32]| Levels {
            pid: p.to_vec(),
            pgid: vec![100, 1],
            sid: vec![100, 1],
        };
        m.levels.insert(100, lv(&[100, 1]));
        m.levels.insert(101, lv(&[101, 2]));
        m.levels.insert(102, lv(&[102, 3, 1]));
        let root = HostTask {
            pid: 100,
            ppid: 50,
            pgid: 100,
            sid: 100,
            threads: &[100, 101],
        };
        let child = HostTask {
            pid: 102,
            ppid: 100,
            pgid: 100,
            sid: 100,
            threads: &[102],
        };
        let e = m.entry(&root, true);
        assert_eq!((e.pid, e.ppid, e.pgid, e.sid), (1, 0, 1, 1));
        assert_eq!(e.threads, vec![1, 2]);
        assert_eq!(e.tids[1].tid, vec![101, 2]);
        let c = m.entry(&child, false);
        assert_eq!((c.pid, c.ppid), (3, 1));
        assert_eq!(c.ns_pid, vec![102, 3, 1]);
        assert_eq!(m.vpid(102), 3);
    }

    fn task(pid: i32, ppid: i32, threads: Vec<i32>) -> TaskPlan {
        TaskPlan {
            pid,
            ppid,
            pgid: pid,
            sid: pid,
            threads,
            state: 1,
            exit_code: 0,
            parent: None,
            children: vec![],
            pids: None,
            cores: vec![],
            mm: None,
            pagemap: None,
            fds: vec![],
            fs: None,
        }
    }

    /// A tree owning its pid namespace pins only the levels from its root's
    /// inward; the host pids are placeholders until `rehost`.
    #[test]
    fn own_namespace_pins_inner_levels_only() {
        let e = |pid: u32, ppid: u32, ns: &[u32], tids: &[&[u32]]| PstreeEntry {
            pid,
            ppid,
            pgid: 1,
            sid: 1,
            threads: tids.iter().map(|t| *t.last().unwrap()).collect(),
            ns_pid: ns.to_vec(),
            ns_pgid: vec![100, 1],
            ns_sid: vec![100, 1],
            tids: tids.iter().map(|t| NsTid { tid: t.to_vec() }).collect(),
        };
        let pstree = vec![
            e(1, 0, &[100, 1], &[&[100, 1], &[101, 2]]),
            e(3, 1, &[102, 3, 1], &[&[102, 3, 1]]),
        ];
        let mut tasks = vec![task(1, 0, vec![1, 2]), task(3, 1, vec![3])];
        to_host(&mut tasks, &pstree, true).unwrap();
        assert_eq!(set_tid(&tasks[0]), vec![1]);
        assert_eq!(thread_set_tid(&tasks[0], 1), vec![2]);
        assert_eq!(set_tid(&tasks[1]), vec![1, 3]);
        assert_eq!((tasks[0].pid, tasks[1].ppid), (100, 100));
        assert_eq!(tasks[0].threads, vec![100, 101]);
        assert_eq!(clone_flags(None, &tasks[0]), 0);
        assert_eq!(
            clone_flags(Some(&tasks[0]), &tasks[1]),
            libc::CLONE_NEWPID as u64
        );
        let mut locks = vec![FileLockEntry {
            pid: 102,
            ..Default::default()
        }];
        rehost(&mut tasks, &mut locks, &[5000, 4000]);
        assert_eq!(
            (tasks[0].pid, tasks[0].pgid, tasks[0].sid),
            (5000, 5000, 5000)
        );
        assert_eq!(
            (tasks[1].pid, tasks[1].ppid, tasks[1].pgid),
            (4000, 5000, 5000)
        );
        assert_eq!(tasks[0].threads, vec![5000, 101]);
        assert_eq!(locks[0].pid, 4000);
        set_threads(&mut tasks[0], vec![5000, 5001]);
        assert_eq!(local_tid(&tasks[0], 1), 2);

        // Without a namespace of its own every level stays pinned.
        let mut tasks = vec![task(1, 0, vec![1, 2]), task(3, 1, vec![3])];
        to_host(&mut tasks, &pstree, false).unwrap();
        assert_eq!(set_tid(&tasks[0]), vec![1, 100]);
        assert_eq!(set_tid(&tasks[1]), vec![1, 3, 102]);
    }

    /// Restore errors name a task by its image pid (never the dumped host
    /// pid, a placeholder here), plus its new host pid once known.
    #[test]
    fn errors_name_image_and_new_host_pids() {
        let e = |pid: u32, ppid: u32, ns: &[u32]| PstreeEntry {
            pid,
            ppid,
            pgid: 1,
            sid: 1,
            threads: vec![pid],
            ns_pid: ns.to_vec(),
            ns_pgid: vec![100, 1],
            ns_sid: vec![100, 1],
            tids: vec![NsTid { tid: ns.to_vec() }],
        };
        let pstree = vec![e(1, 0, &[100, 1]), e(2, 1, &[102, 2])];
        let mut tasks = vec![task(1, 0, vec![1]), task(2, 1, vec![2])];
        to_host(&mut tasks, &pstree, true).unwrap();
        assert_eq!(image_pid(&tasks[1]), 2);
        let io = || std::io::Error::from_raw_os_error(libc::EPERM);
        let n = TaskNames::planned(&tasks);
        let msg = n.rename(Error::task(102, "setpgid", io())).to_string();
        assert!(msg.starts_with("pid 2: setpgid: "), "{msg}");
        let mut n = TaskNames::hosted(&tasks, &[5000, 5002]);
        let msg = n.rename(Error::unsupported(5002, "no")).to_string();
        assert_eq!(msg, "pid 2 (host pid 5002): no");
        // Not a task of the tree (or the old host pid): left alone.
        let msg = n.rename(Error::task(102, "x", io())).to_string();
        assert!(msg.starts_with("pid 102: x"), "{msg}");
        n.add_thread(5000, 5010);
        assert_eq!(n.name(5010), Some("pid 1 (host pid 5000)"));
        // Unknown host pid yet: no entry.
        let n = TaskNames::hosted(&tasks, &[5000]);
        assert_eq!(n.name(5002), None);
    }
}
