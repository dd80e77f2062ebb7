//! Namespaces of a dumped tree: which ones it has of its own, their images,
//! and recreating them for the restored tree.
//!
//! A tree "owns" a namespace kind when its root's namespace of that kind is
//! not the dumper's (CRIU's rule: `inventory.root_ids` holds the dumper's
//! ids, `core.ids` the task's; a kind is owned where they differ). Every
//! task must then be in the root's namespace of each kind, except pid,
//! where tasks may sit in pid namespaces nested below the root's.
//!
//! One module per kind, each with the same four hooks ([`KindOps`]); this
//! file is the table and the glue:
//! - dump: [`collect`] reads every task's `/proc/PID/ns/*`, refuses what we
//!   cannot handle, and names the owned kinds; [`dump`] writes each owned
//!   namespace's images (CRIU's files, keyed by the root's ns id);
//! - restore: [`read`] loads them into an [`NsPlan`]; the restorer holds a
//!   [`RestorerNs`] while it forks the root (time namespace offsets must be
//!   written before any task enters it), forks the root with
//!   [`clone_flags`] (so `CLONE_NEWPID` makes it pid 1), and the root's stub
//!   calls [`setup_root`] first, inside the new namespaces, before it forks
//!   anything (kinds in table order; the mount namespace last).
//!
//! PID namespaces also change how pids are written (`pstree.img` holds the
//! pids as the root's namespace sees them, plus per-level lists): see
//! [`pid`].

pub mod cgroup;
pub mod ipc;
pub mod mnt;
pub mod net;
pub mod pid;
pub mod time;
pub mod user;
pub mod uts;

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

use stasis_proto::criu::{InventoryEntry, TaskKobjIdsEntry, TimensEntry, UtsnsEntry};
use tracing::{debug, info};

use crate::error::{Error, Result};
use crate::images::ImageDir;
use crate::proc::{self, NsKind};

/// What a namespace kind's module provides.
pub struct KindOps {
    pub kind: NsKind,
    /// Whether the root's own namespace of this kind can be saved (called
    /// at dump before anything is written); `Err` is the refusal.
    pub check: fn(cx: &DumpCx) -> Result<()>,
    /// Write the images of the root's namespace of this kind.
    pub dump: fn(cx: &DumpCx) -> Result<()>,
    /// Read them back into the plan (`id` is the root's ns id of the kind).
    pub read: fn(dir: &ImageDir, id: u32, plan: &mut NsPlan) -> Result<()>,
    /// Fill the fresh namespace; run by the restored root inside it, before
    /// it forks. Errors are one line (the stub reports them).
    pub setup: fn(plan: &NsPlan) -> std::result::Result<(), String>,
}

/// Every kind, in restore set-up order (the mount namespace last: it may
/// pivot away from the images).
pub const KINDS: &[KindOps] = &[
    user::OPS,
    uts::OPS,
    ipc::OPS,
    net::OPS,
    cgroup::OPS,
    time::OPS,
    pid::OPS,
    mnt::OPS,
];

fn ops(kind: NsKind) -> &'static KindOps {
    KINDS
        .iter()
        .find(|o| o.kind == kind)
        .expect("every kind is in KINDS")
}

/// Dump-time context of one owned namespace.
pub struct DumpCx<'a> {
    pub dir: &'a ImageDir,
    /// Host pid of the tree's root (its namespaces are the tree's).
    pub root_pid: i32,
    /// The namespace's id in the images (`core.ids`, file names).
    pub id: u32,
    /// Namespace inode.
    pub ino: u64,
    /// The maps of the tree's own user namespace: ids read from outside
    /// are written as the tasks see them (see [`user`]).
    pub user: Option<&'a user::UserNs>,
}

/// The namespaces of a tree being dumped.
#[derive(Debug, Clone, Default)]
pub struct TreeNs {
    /// The dumper's namespace inode per kind.
    pub dumper: BTreeMap<NsKind, u64>,
    /// The root's namespace inode per kind.
    pub root: BTreeMap<NsKind, u64>,
    /// Kinds the tree has of its own, in [`KINDS`] order.
    pub own: Vec<NsKind>,
    /// Some task is in a pid namespace other than the dumper's (the root's
    /// own, or one nested below): pids are written per level.
    pub pid_levels: bool,
    /// Every link read here, by pid (the dumper's too): the task ids of the
    /// dump are made from them instead of reading them all again.
    pub links: std::collections::HashMap<i32, Vec<proc::NsLink>>,
    /// The maps of the tree's own user namespace, if it has one.
    pub user: Option<user::UserNs>,
}

impl TreeNs {
    pub fn owns(&self, kind: NsKind) -> bool {
        self.own.contains(&kind)
    }
}

fn links(t: &mut TreeNs, pid: i32) -> Result<BTreeMap<&'static str, (NsKind, u64)>> {
    let all = match t.links.remove(&pid) {
        Some(l) => l,
        None => proc::read_all_ns(pid)?,
    };
    let m = all.iter().map(|l| (l.name, (l.kind, l.ino))).collect();
    t.links.insert(pid, all);
    Ok(m)
}

/// Check the namespaces of every live task against the root's and the
/// dumper's; refuse, naming the pid and kind, what we cannot restore.
/// `live` lists host pids, root first.
pub fn collect(dir: &ImageDir, live: &[i32]) -> Result<TreeNs> {
    let Some(&root) = live.first() else {
        return Ok(TreeNs::default());
    };
    let mut t = TreeNs::default();
    // Nine links a task, ~8 µs each: read on two threads first.
    for (pid, l) in proc::map_halves(live, 8, |p| (p, proc::read_all_ns(p))) {
        t.links.insert(pid, l?);
    }
    let me = links(&mut t, std::process::id() as i32)?;
    let rl = links(&mut t, root)?;
    for (&name, &(kind, ino)) in &me {
        if !name.ends_with("_for_children") {
            t.dumper.insert(kind, ino);
        }
    }
    for (&name, &(kind, ino)) in &rl {
        if !name.ends_with("_for_children") {
            t.root.insert(kind, ino);
        }
    }
    for o in KINDS {
        if let (Some(a), Some(b)) = (t.dumper.get(&o.kind), t.root.get(&o.kind)) {
            if a != b {
                t.own.push(o.kind);
            }
        }
    }
    // Every task shares the root's namespaces (pid: or one below it).
    let mut pid_nses: Vec<u64> = Vec::new();
    let mut pid_for_children: Vec<(i32, u64)> = Vec::new();
    for &p in live {
        let l = if p == root {
            rl.clone()
        } else {
            links(&mut t, p)?
        };
        for (&name, &(kind, ino)) in &l {
            match name {
                "pid" => pid_nses.push(ino),
                "pid_for_children" => pid_for_children.push((p, ino)),
                "time_for_children" => {
                    if Some(&ino) != t.root.get(&NsKind::Time) {
                        return Err(Error::unsupported(
                            p,
                            "it unshared a time namespace it has not entered (time_for_children differs)",
                        ));
                    }
                }
                _ if kind == NsKind::Pid => {}
                _ => {
                    if Some(&ino) != t.root.get(&kind) {
                        return Err(Error::unsupported(
                            p,
                            format!(
                                "its {kind} namespace differs from the tree root's {root}: \
                                 nested {kind} namespaces are not supported"
                            ),
                        ));
                    }
                }
            }
        }
    }
    t.pid_levels = pid_nses
        .iter()
        .any(|i| Some(i) != t.dumper.get(&NsKind::Pid));
    for (p, ino) in pid_for_children {
        if !pid_nses.contains(&ino) {
            return Err(Error::unsupported(
                p,
                "it unshared a pid namespace that has no process yet (pid_for_children differs)",
            ));
        }
    }
    if t.owns(NsKind::User) {
        t.user = Some(user::UserNs::of(root)?);
    }
    for &k in &t.own {
        let cx = DumpCx {
            dir,
            root_pid: root,
            id: 0,
            ino: t.root[&k],
            user: t.user.as_ref(),
        };
        (ops(k).check)(&cx)?;
    }
    if !t.own.is_empty() {
        info!(root, own = ?t.own, "tree has namespaces of its own");
    }
    Ok(t)
}

/// The dumper's namespace ids (for `inventory.root_ids`), numbered by
/// `id_of` like the tasks' ones.
pub fn dumper_ids(t: &TreeNs, mut id_of: impl FnMut(u64) -> u32) -> TaskKobjIdsEntry {
    let mut ids = TaskKobjIdsEntry::default();
    for (&k, &ino) in &t.dumper {
        set_id(&mut ids, k, id_of(ino));
    }
    ids
}

pub fn set_id(ids: &mut TaskKobjIdsEntry, kind: NsKind, v: u32) {
    let v = Some(v);
    match kind {
        NsKind::Pid => ids.pid_ns_id = v,
        NsKind::Net => ids.net_ns_id = v,
        NsKind::Ipc => ids.ipc_ns_id = v,
        NsKind::Uts => ids.uts_ns_id = v,
        NsKind::Mnt => ids.mnt_ns_id = v,
        NsKind::User => ids.user_ns_id = v,
        NsKind::Cgroup => ids.cgroup_ns_id = v,
        NsKind::Time => ids.time_ns_id = v,
    }
}

pub fn get_id(ids: &TaskKobjIdsEntry, kind: NsKind) -> Option<u32> {
    match kind {
        NsKind::Pid => ids.pid_ns_id,
        NsKind::Net => ids.net_ns_id,
        NsKind::Ipc => ids.ipc_ns_id,
        NsKind::Uts => ids.uts_ns_id,
        NsKind::Mnt => ids.mnt_ns_id,
        NsKind::User => ids.user_ns_id,
        NsKind::Cgroup => ids.cgroup_ns_id,
        NsKind::Time => ids.time_ns_id,
    }
}

/// Write the images of every owned namespace; `root_ids` are the root
/// task's ids (the namespaces' ids in the images).
pub fn dump(dir: &ImageDir, t: &TreeNs, root_pid: i32, root_ids: &TaskKobjIdsEntry) -> Result<()> {
    for &k in &t.own {
        let Some(id) = get_id(root_ids, k) else {
            continue;
        };
        let cx = DumpCx {
            dir,
            root_pid,
            id,
            ino: t.root[&k],
            user: t.user.as_ref(),
        };
        (ops(k).dump)(&cx)?;
        debug!(kind = %k, id, "namespace dumped");
    }
    Ok(())
}

/// The namespaces to rebuild on restore.
#[derive(Debug, Clone, Default)]
pub struct NsPlan {
    /// Owned kinds, in [`KINDS`] order.
    pub own: Vec<NsKind>,
    pub uts: Option<UtsnsEntry>,
    pub ipc: Option<ipc::IpcNs>,
    pub time: Option<TimensEntry>,
    pub net: Option<net::NetNs>,
    pub user: Option<user::UserNs>,
    pub mnt: Option<mnt::MntNs>,
}

impl NsPlan {
    pub fn owns(&self, kind: NsKind) -> bool {
        self.own.contains(&kind)
    }
}

/// Owned kinds (root task's ids ≠ the dumper's) and their images.
pub fn read(dir: &ImageDir, inv: &InventoryEntry, root: &TaskKobjIdsEntry) -> Result<NsPlan> {
    let mut p = NsPlan::default();
    let Some(dumper) = inv.root_ids.as_ref() else {
        return Ok(p);
    };
    for o in KINDS {
        if let (Some(a), Some(b)) = (get_id(dumper, o.kind), get_id(root, o.kind)) {
            if a != b {
                p.own.push(o.kind);
                (o.read)(dir, b, &mut p)?;
            }
        }
    }
    if !p.own.is_empty() {
        info!(own = ?p.own, "namespaces to restore");
    }
    Ok(p)
}

/// `CLONE_NEW*` flags the root is forked with. The time namespace is not
/// among them (it is entered through `time_for_children`, see
/// [`RestorerNs`]). `CLONE_NEWUSER` is: the kernel makes the user namespace
/// first, so the others belong to it.
pub fn clone_flags(p: &NsPlan) -> u64 {
    p.own
        .iter()
        .filter(|k| !matches!(k, NsKind::Time))
        .map(|k| k.clone_flag() as u32 as u64)
        .fold(0, |a, b| a | b)
}

/// The restorer's side of namespace creation, held while it forks the root:
/// a time namespace is unshared for children and its offsets written
/// (before any task is in it); dropping this puts the restorer's
/// `time_for_children` back.
pub struct RestorerNs {
    time_back: Option<OwnedFd>,
}

impl RestorerNs {
    pub fn enter(p: &NsPlan) -> Result<RestorerNs> {
        let mut r = RestorerNs { time_back: None };
        if let Some(t) = &p.time {
            r.time_back = Some(time::enter_for_children(t)?);
        }
        Ok(r)
    }
}

impl Drop for RestorerNs {
    fn drop(&mut self) {
        if let Some(fd) = self.time_back.take() {
            time::leave_for_children(fd);
        }
    }
}

/// Fill every fresh namespace; the restored root runs this first, before it
/// forks anything.
pub fn setup_root(p: &NsPlan) -> std::result::Result<(), String> {
    for o in KINDS {
        if p.owns(o.kind) {
            (o.setup)(p)?;
        }
    }
    Ok(())
}

/// Run `f` on a helper thread that entered `pid`'s namespaces of the given
/// kinds (setns is per thread for these kinds), e.g. to read its IPC
/// objects or hostname as it sees them.
pub fn in_ns_of<T: Send>(
    pid: i32,
    kinds: &[NsKind],
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    let mut fds = Vec::with_capacity(kinds.len());
    for k in kinds {
        let p = format!("/proc/{pid}/ns/{}", k.as_str());
        let fd = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
        fds.push((*k, OwnedFd::from(fd)));
    }
    std::thread::scope(|s| {
        s.spawn(move || {
            for (k, fd) in &fds {
                nix::sched::setns(fd, nix::sched::CloneFlags::empty()).map_err(|e| {
                    Error::task(pid, format!("setns into its {k} namespace"), e.into())
                })?;
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Other("namespace helper thread panicked".into())))
    })
}

/// Write a /proc/sys file; errors name the file.
pub(crate) fn write_sys(path: &str, v: &str) -> std::result::Result<(), String> {
    std::fs::write(path, v).map_err(|e| format!("write {v:?} to {path}: {e}"))
}

/// Read a /proc/sys file as a number (-1 comes back as u64::MAX).
pub(crate) fn read_sys_u64(path: &str) -> Result<u64> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let t = s.trim();
    t.parse::<u64>()
        .or_else(|_| t.parse::<i64>().map(|v| v as u64))
        .map_err(|_| Error::Other(format!("{path}: not a number: {:?}", s.trim())))
}
