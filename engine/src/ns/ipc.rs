//! IPC namespace: its sysctls and every SysV object in it, the CRIU way:
//! - `ipcns-var-<id>.img`: kernel.{sem,msg*,shm*}, fs.mqueue.*, and the
//!   pending `*_next_id`;
//! - `ipcns-shm-<id>.img`: each segment, then its bytes (padded to 4);
//! - `ipcns-sem-<id>.img`: each set, then its u16 values (padded to 8);
//! - `ipcns-msg-<id>.img`: each queue, then per message an `ipc_msg` entry
//!   and its text (padded to 8). Messages are read with MSG_COPY, so the
//!   queues are left as they were.
//!
//! Objects are read from a helper thread that entered the tree's IPC
//! namespace. On restore the root recreates them in its fresh namespace
//! with the same ids (writing `kernel.<kind>_next_id` before each get call),
//! keys, owners, modes and contents.

use stasis_proto::criu::{
    IpcDescEntry, IpcMsg, IpcMsgEntry, IpcSemEntry, IpcShmEntry, IpcVarEntry,
};
use stasis_proto::image::{magic, ImageReader};

use std::collections::HashMap;

use super::{in_ns_of, read_sys_u64, write_sys, DumpCx, KindOps, NsPlan};
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::mem::vma::{sysv_attaches, VMA_AREA_SYSVIPC};
use crate::proc::NsKind;
use crate::restore::plan::TaskPlan;
use crate::sys::ipc::{self as sipc, Perm};

pub const OPS: KindOps = KindOps {
    kind: NsKind::Ipc,
    check: |_| Ok(()),
    dump,
    read,
    setup,
};

/// One SysV object's identity and permissions; owners as the tree's user
/// namespace sees them (IPC_STAT maps them into the dumper's).
fn desc(id: i32, p: &Perm, user: Option<&super::user::UserNs>) -> IpcDescEntry {
    let (u, g) = (
        |x| user.map_or(x, |n| n.uid_to_ns(x)),
        |x| user.map_or(x, |n| n.gid_to_ns(x)),
    );
    IpcDescEntry {
        key: p.key as u32,
        uid: u(p.uid),
        gid: g(p.gid),
        cuid: u(p.cuid),
        cgid: g(p.cgid),
        mode: p.mode,
        id: id as u32,
    }
}

fn perm_of(d: &IpcDescEntry) -> Perm {
    Perm {
        key: d.key as i32,
        uid: d.uid,
        gid: d.gid,
        cuid: d.cuid,
        cgid: d.cgid,
        mode: d.mode,
    }
}

/// Everything of one IPC namespace, as read from the images.
#[derive(Debug, Clone, Default)]
pub struct IpcNs {
    pub var: IpcVarEntry,
    pub shm: Vec<(IpcShmEntry, Vec<u8>)>,
    pub sem: Vec<(IpcSemEntry, Vec<u16>)>,
    pub msg: Vec<(IpcMsgEntry, Vec<Msg>)>,
}

/// One queued message: (mtype, text).
pub type Msg = (i64, Vec<u8>);

const K: &str = "/proc/sys/kernel/";

/// shm_perm.mode bit of a segment removed while still attached.
const SHM_DEST: u32 = 0o1000;

/// Scalar sysctls: (file, getter, setter) over `IpcVarEntry`.
type VarField = (
    &'static str,
    fn(&IpcVarEntry) -> Option<u64>,
    fn(&mut IpcVarEntry, u64),
);

const VARS: &[VarField] = &[
    (
        "kernel/msgmax",
        |v| Some(v.msg_ctlmax as u64),
        |v, x| v.msg_ctlmax = x as u32,
    ),
    (
        "kernel/msgmnb",
        |v| Some(v.msg_ctlmnb as u64),
        |v, x| v.msg_ctlmnb = x as u32,
    ),
    (
        "kernel/msgmni",
        |v| Some(v.msg_ctlmni as u64),
        |v, x| v.msg_ctlmni = x as u32,
    ),
    (
        "kernel/shmmax",
        |v| Some(v.shm_ctlmax),
        |v, x| v.shm_ctlmax = x,
    ),
    (
        "kernel/shmall",
        |v| Some(v.shm_ctlall),
        |v, x| v.shm_ctlall = x,
    ),
    (
        "kernel/shmmni",
        |v| Some(v.shm_ctlmni as u64),
        |v, x| v.shm_ctlmni = x as u32,
    ),
    (
        "kernel/shm_rmid_forced",
        |v| Some(v.shm_rmid_forced as u64),
        |v, x| v.shm_rmid_forced = x as u32,
    ),
    (
        "fs/mqueue/queues_max",
        |v| Some(v.mq_queues_max as u64),
        |v, x| v.mq_queues_max = x as u32,
    ),
    (
        "fs/mqueue/msg_max",
        |v| Some(v.mq_msg_max as u64),
        |v, x| v.mq_msg_max = x as u32,
    ),
    (
        "fs/mqueue/msgsize_max",
        |v| Some(v.mq_msgsize_max as u64),
        |v, x| v.mq_msgsize_max = x as u32,
    ),
    (
        "fs/mqueue/msg_default",
        |v| v.mq_msg_default.map(u64::from),
        |v, x| v.mq_msg_default = Some(x as u32),
    ),
    (
        "fs/mqueue/msgsize_default",
        |v| v.mq_msgsize_default.map(u64::from),
        |v, x| v.mq_msgsize_default = Some(x as u32),
    ),
];

fn sys_path(rel: &str) -> String {
    format!("/proc/sys/{rel}")
}

fn read_vars() -> Result<IpcVarEntry> {
    let mut v = IpcVarEntry::default();
    for (rel, _, set) in VARS {
        let p = sys_path(rel);
        match read_sys_u64(&p) {
            Ok(x) => set(&mut v, x),
            // Optional ones (msg_default, msgsize_default) on older kernels.
            Err(_) if rel.ends_with("_default") => {}
            Err(e) => return Err(e),
        }
    }
    let sem =
        std::fs::read_to_string(format!("{K}sem")).map_err(|e| Error::io(format!("{K}sem"), e))?;
    v.sem_ctls = sem
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // -1 means "not set": nothing to restore.
    let next = |n: &str| -> Result<Option<u32>> {
        let x = read_sys_u64(&format!("{K}{n}_next_id"))? as i64;
        Ok((x >= 0).then_some(x as u32))
    };
    v.msg_next_id = next("msg")?;
    v.sem_next_id = next("sem")?;
    v.shm_next_id = next("shm")?;
    Ok(v)
}

/// Object ids listed in `/proc/sysvipc/<what>` (second column).
fn list(what: &str) -> Result<Vec<i32>> {
    let p = format!("/proc/sysvipc/{what}");
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let mut ids: Vec<i32> = s
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    ids.sort();
    Ok(ids)
}

fn pad(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

fn ctx(id: i32, what: &str) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Other(format!("sysv ipc {what} {id}: {e}"))
}

fn dump(cx: &DumpCx) -> Result<()> {
    let (root, user) = (cx.root_pid, cx.user);
    let ns = in_ns_of(root, &[NsKind::Ipc], || {
        let var = read_vars()?;
        let mut shm = Vec::new();
        for id in list("shm")? {
            let st = sipc::shm_stat(id).map_err(ctx(id, "shm"))?;
            let data = sipc::shm_read(id, st.size as usize).map_err(ctx(id, "shm"))?;
            shm.push((
                IpcShmEntry {
                    desc: desc(id, &st.perm, user),
                    size: st.size,
                    in_pagemaps: None,
                    hugetlb_flag: None,
                },
                data,
            ));
        }
        let mut sem = Vec::new();
        for id in list("sem")? {
            let st = sipc::sem_stat(id).map_err(ctx(id, "sem"))?;
            let vals = sipc::sem_getall(id, st.nsems).map_err(ctx(id, "sem"))?;
            sem.push((
                IpcSemEntry {
                    desc: desc(id, &st.perm, user),
                    nsems: st.nsems,
                },
                vals,
            ));
        }
        let mut msg = Vec::new();
        let max = var.msg_ctlmax.max(8192) as usize;
        for id in list("msg")? {
            let st = sipc::msg_stat(id).map_err(ctx(id, "msg"))?;
            let mut msgs = Vec::new();
            for i in 0..st.qnum {
                match sipc::msg_copy(id, i, max).map_err(ctx(id, "msg queue (MSG_COPY)"))? {
                    Some(m) => msgs.push(m),
                    None => break,
                }
            }
            msg.push((
                IpcMsgEntry {
                    desc: desc(id, &st.perm, user),
                    qbytes: st.qbytes as u32,
                    qnum: msgs.len() as u32,
                },
                msgs,
            ));
        }
        Ok(IpcNs { var, shm, sem, msg })
    })?;
    write(cx.dir, cx.id, &ns)
}

fn write(dir: &ImageDir, id: u32, ns: &IpcNs) -> Result<()> {
    dir.write_one(
        &format!("ipcns-var-{id}.img"),
        common(magic::IPC_VAR),
        &ns.var,
    )?;
    let io = |name: &str| {
        let p = dir.file(name);
        move |e| Error::io(p, e)
    };
    let name = format!("ipcns-shm-{id}.img");
    let mut w = dir.writer(&name, common(magic::IPCNS_SHM))?;
    for (e, data) in &ns.shm {
        dir.put(&mut w, &name, e)?;
        let mut b = data.clone();
        b.resize(pad(b.len(), 4), 0);
        w.write_payload(&b).map_err(io(&name))?;
    }
    dir.finish(w, &name)?;
    let name = format!("ipcns-sem-{id}.img");
    let mut w = dir.writer(&name, common(magic::IPCNS_SEM))?;
    for (e, vals) in &ns.sem {
        dir.put(&mut w, &name, e)?;
        let mut b: Vec<u8> = vals.iter().flat_map(|v| v.to_ne_bytes()).collect();
        b.resize(pad(b.len(), 8), 0);
        w.write_payload(&b).map_err(io(&name))?;
    }
    dir.finish(w, &name)?;
    let name = format!("ipcns-msg-{id}.img");
    let mut w = dir.writer(&name, common(magic::IPCNS_MSG))?;
    for (e, msgs) in &ns.msg {
        dir.put(&mut w, &name, e)?;
        for (mtype, text) in msgs {
            dir.put(
                &mut w,
                &name,
                &IpcMsg {
                    mtype: *mtype as u64,
                    msize: text.len() as u32,
                },
            )?;
            let mut b = text.clone();
            b.resize(pad(b.len(), 8), 0);
            w.write_payload(&b).map_err(io(&name))?;
        }
    }
    dir.finish(w, &name)
}

fn reader(
    dir: &ImageDir,
    name: &str,
    m: u32,
) -> Result<Option<ImageReader<std::io::BufReader<std::fs::File>>>> {
    if !dir.exists(name) {
        return Ok(None);
    }
    let f = dir.open_file(name)?;
    Ok(Some(ImageReader::open(
        std::io::BufReader::new(f),
        common(m),
        name,
    )?))
}

fn read(dir: &ImageDir, id: u32, p: &mut NsPlan) -> Result<()> {
    let mut ns = IpcNs {
        var: dir.read_one(&format!("ipcns-var-{id}.img"), common(magic::IPC_VAR))?,
        ..Default::default()
    };
    let name = format!("ipcns-shm-{id}.img");
    if let Some(mut r) = reader(dir, &name, magic::IPCNS_SHM)? {
        while let Some(e) = r.read_entry::<IpcShmEntry>()? {
            if e.in_pagemaps == Some(true) {
                return Err(Error::bad_image(
                    &name,
                    "segment contents in pagemaps are not supported",
                ));
            }
            let n = pad(e.size as usize, 4);
            let mut b = r.read_payload(n)?;
            b.truncate(e.size as usize);
            ns.shm.push((e, b));
        }
    }
    let name = format!("ipcns-sem-{id}.img");
    if let Some(mut r) = reader(dir, &name, magic::IPCNS_SEM)? {
        while let Some(e) = r.read_entry::<IpcSemEntry>()? {
            let b = r.read_payload(pad(e.nsems as usize * 2, 8))?;
            let vals = b
                .chunks_exact(2)
                .take(e.nsems as usize)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .collect();
            ns.sem.push((e, vals));
        }
    }
    let name = format!("ipcns-msg-{id}.img");
    if let Some(mut r) = reader(dir, &name, magic::IPCNS_MSG)? {
        while let Some(e) = r.read_entry::<IpcMsgEntry>()? {
            let mut msgs = Vec::with_capacity(e.qnum as usize);
            for _ in 0..e.qnum {
                let m: IpcMsg = r
                    .read_entry()?
                    .ok_or_else(|| Error::bad_image(&name, "queue ends before its messages"))?;
                let mut b = r.read_payload(pad(m.msize as usize, 8))?;
                b.truncate(m.msize as usize);
                msgs.push((m.mtype as i64, b));
            }
            ns.msg.push((e, msgs));
        }
    }
    p.ipc = Some(ns);
    Ok(())
}

fn next_id(kind: &str, id: u32) -> std::result::Result<(), String> {
    write_sys(&format!("{K}{kind}_next_id"), &id.to_string())
}

/// Creates one object at its dumped id: `*_next_id` set first, then `get`
/// (IPC_CREAT | IPC_EXCL), whose id must be the one asked for.
fn create_at(
    kind: &str,
    id: u32,
    get: impl FnOnce() -> std::io::Result<i32>,
) -> std::result::Result<i32, String> {
    next_id(kind, id)?;
    let got = get().map_err(|e| format!("sysv {kind} {id}: {e}"))?;
    if got as u32 != id {
        return Err(format!("sysv {kind} {id} came back as id {got}"));
    }
    Ok(got)
}

fn setup(p: &NsPlan) -> std::result::Result<(), String> {
    let Some(ns) = &p.ipc else {
        return Ok(());
    };
    let v = &ns.var;
    // Limits first: new queues take msgmnb as their size.
    for (rel, get, _) in VARS {
        if let Some(x) = get(v) {
            write_sys(&sys_path(rel), &x.to_string())?;
        }
    }
    if !v.sem_ctls.is_empty() {
        let s: Vec<String> = v.sem_ctls.iter().map(|x| x.to_string()).collect();
        write_sys(&format!("{K}sem"), &s.join(" "))?;
    }
    let e = |what: &str, id: u32| {
        let what = what.to_string();
        move |err: std::io::Error| format!("sysv {what} {id}: {err}")
    };
    let excl = libc::IPC_CREAT | libc::IPC_EXCL;
    for (s, data) in &ns.shm {
        let d = &s.desc;
        let id = create_at("shm", d.id, || {
            sipc::shmget(d.key as i32, s.size, excl | 0o600)
        })?;
        sipc::shm_write(id, data).map_err(e("shm", d.id))?;
        sipc::shm_set(id, &perm_of(d)).map_err(e("shm", d.id))?;
    }
    for (s, vals) in &ns.sem {
        let d = &s.desc;
        let id = create_at("sem", d.id, || {
            sipc::semget(d.key as i32, s.nsems as i32, excl | 0o600)
        })?;
        sipc::sem_setall(id, vals).map_err(e("sem", d.id))?;
        sipc::sem_set(id, &perm_of(d)).map_err(e("sem", d.id))?;
    }
    for (q, msgs) in &ns.msg {
        let d = &q.desc;
        let id = create_at("msg", d.id, || sipc::msgget(d.key as i32, excl | 0o600))?;
        for (mtype, text) in msgs {
            sipc::msgsnd(id, *mtype, text).map_err(e("msg", d.id))?;
        }
        sipc::msg_set(id, &perm_of(d), q.qbytes as u64).map_err(e("msg", d.id))?;
    }
    // What the next get call would have taken.
    for (k, n) in [
        ("msg", v.msg_next_id),
        ("sem", v.sem_next_id),
        ("shm", v.shm_next_id),
    ] {
        if let Some(n) = n {
            next_id(k, n)?;
        }
    }
    Ok(())
}

/// Size of each SysV shm segment of the tree's IPC namespace, by id.
pub fn segment_sizes(p: &NsPlan) -> HashMap<u64, u64> {
    p.ipc
        .iter()
        .flat_map(|ns| &ns.shm)
        .map(|(s, _)| (s.desc.id as u64, s.size))
        .collect()
}

/// Every SysV shm attachment of the image must be one restore can make:
/// its segment is in the IPC namespace's images (a tree attached to the
/// host's segments is refused at dump), and its VMAs fit in it.
pub fn check_attachments(tasks: &[TaskPlan], p: &NsPlan) -> Result<()> {
    let sizes = segment_sizes(p);
    for t in tasks.iter().filter(|t| t.alive()) {
        let Some(mm) = &t.mm else { continue };
        let name = || format!("mm-{}.img", t.pid);
        if p.ipc.is_none() {
            if let Some(v) = mm.vmas.iter().find(|v| v.status & VMA_AREA_SYSVIPC != 0) {
                return Err(Error::bad_image(
                    name(),
                    format!(
                        "sysv shm segment {} attached at {:#x}, but the image has no ipc namespace",
                        v.shmid, v.start
                    ),
                ));
            }
            continue;
        }
        sysv_attaches(&mm.vmas, |id| sizes.get(&id).copied())
            .map_err(|e| Error::bad_image(name(), e))?;
    }
    Ok(())
}

/// Segments the tree had removed (IPC_RMID) while attached: restore made
/// them anew, so once every task has attached them they are removed again
/// and go away with their last detach, as before. Run from the restorer in
/// the root's IPC namespace.
pub fn remove_destroyed(p: &NsPlan, root_pid: i32) -> Result<()> {
    let Some(ns) = &p.ipc else {
        return Ok(());
    };
    let ids: Vec<i32> = ns
        .shm
        .iter()
        .filter(|(s, _)| s.desc.mode & SHM_DEST != 0)
        .map(|(s, _)| s.desc.id as i32)
        .collect();
    if ids.is_empty() {
        return Ok(());
    }
    in_ns_of(root_pid, &[NsKind::Ipc], || {
        for id in ids {
            sipc::shm_rmid(id).map_err(ctx(id, "shm (IPC_RMID)"))?;
        }
        Ok(())
    })
}
