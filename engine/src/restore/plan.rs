//! Reading an image directory into a restore plan, checking everything we
//! will rely on: a bad image is rejected here, by name, before anything is
//! created.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stasis_proto::criu::{
    CoreEntry, FdinfoEntry, FileEntry, FsEntry, InventoryEntry, MmEntry, PagemapEntry, PagemapHead,
    PstreeEntry, RemapFilePathEntry, TaskKobjIdsEntry,
};
use stasis_proto::image::{magic, Header};

use crate::dump::{TASK_ALIVE, TASK_DEAD, TASK_STOPPED};
use crate::error::{Error, Result};
use crate::files::{FILES_IMG, REMAP_IMG};
use crate::images::{common, ImageDir, INVENTORY};
use crate::mem::vma::{
    VMA_ANON_SHARED, VMA_AREA_SYSVIPC, VMA_AREA_VSYSCALL, VMA_AREA_VVAR, VMA_FILE_SHARED,
};
use crate::mem::{PAGE_SIZE, PE_PARENT, PE_PRESENT};

/// Highest user address on x86_64 with 4-level paging.
pub const TASK_SIZE: u64 = 0x7fff_ffff_f000;

#[derive(Debug, Clone)]
pub struct Pagemap {
    pub pages_id: u32,
    /// (vaddr, nr_pages) of PRESENT runs, in file order.
    pub runs: Vec<(u64, u64)>,
    /// Runs whose data is in a parent image (incremental dumps).
    pub parent: Vec<ParentRun>,
}

/// Pages kept in a parent image: `len` bytes at `addr`, found at `off` in
/// the parent's pages file `file`.
#[derive(Debug, Clone)]
pub struct ParentRun {
    pub addr: u64,
    pub len: u64,
    pub file: Arc<PathBuf>,
    pub off: u64,
}

impl Pagemap {
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum::<u64>()
            + self.parent.iter().map(|p| p.len / PAGE_SIZE).sum::<u64>()
    }

    /// Every run with data, here or in a parent: (vaddr, nr_pages).
    pub fn all_runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs
            .iter()
            .copied()
            .chain(self.parent.iter().map(|p| (p.addr, p.len / PAGE_SIZE)))
    }
}

/// An entry's PE_* flags; old images say `in_parent` instead.
fn entry_flags(e: &PagemapEntry) -> u32 {
    e.flags.unwrap_or(if e.in_parent == Some(true) {
        PE_PARENT
    } else {
        PE_PRESENT
    })
}

/// A parent image directory holds at most this many ancestors.
const MAX_PARENTS: usize = 64;

/// Where the pages `want` (vaddr, nr_pages) of pagemap `name` are in the
/// parent images of `dir` (its `parent` link, then the parent's, ...).
fn resolve_parent(
    dir: &Path,
    name: &str,
    want: &[(u64, u64)],
    depth: usize,
) -> Result<Vec<ParentRun>> {
    let pdir = dir.join("parent");
    if depth >= MAX_PARENTS {
        return Err(bad(name, "chain of parent images too long"));
    }
    if !pdir.is_dir() {
        return Err(bad(
            name,
            format!("pages in a parent image, but {} is missing", pdir.display()),
        ));
    }
    let pd = ImageDir::open(&pdir)?;
    let mut r = pd.reader(name, common(magic::PAGEMAP))?;
    let head: PagemapHead = r
        .read_entry()?
        .ok_or_else(|| bad(name, "missing pagemap head in a parent image"))?;
    // (start, end, offset in the pages file) here; (start, end) further up.
    let mut here: Vec<(u64, u64, u64)> = Vec::new();
    let mut up: Vec<(u64, u64)> = Vec::new();
    let mut off = 0u64;
    while let Some(e) = r.read_entry::<PagemapEntry>()? {
        let nr = e.nr_pages.unwrap_or(e.compat_nr_pages as u64);
        let flags = entry_flags(&e);
        let end = e
            .vaddr
            .checked_add(nr * PAGE_SIZE)
            .ok_or_else(|| bad(name, format!("bad entry at {:#x} in a parent", e.vaddr)))?;
        if flags & PE_PRESENT != 0 {
            here.push((e.vaddr, end, off));
            off += nr * PAGE_SIZE;
        } else if flags & PE_PARENT != 0 {
            up.push((e.vaddr, end));
        }
    }
    here.sort_unstable();
    up.sort_unstable();
    let file = Arc::new(pd.file(&format!("pages-{}.img", head.pages_id)));
    let have = std::fs::metadata(&*file)
        .map_err(|e| Error::io(&*file, e))?
        .len();
    if have < off {
        return Err(bad(
            file.display().to_string(),
            format!("holds {have} bytes but its pagemap describes {off}"),
        ));
    }
    let mut out = Vec::new();
    let mut deeper = Vec::new();
    for &(a, n) in want {
        let end = a + n * PAGE_SIZE;
        let mut cur = a;
        while cur < end {
            let i = here.partition_point(|p| p.1 <= cur);
            if let Some(&(s, e, o)) = here.get(i).filter(|p| p.0 <= cur) {
                let upto = e.min(end);
                out.push(ParentRun {
                    addr: cur,
                    len: upto - cur,
                    file: file.clone(),
                    off: o + (cur - s),
                });
                cur = upto;
                continue;
            }
            let j = up.partition_point(|p| p.1 <= cur);
            if let Some(&(_, e)) = up.get(j).filter(|p| p.0 <= cur) {
                let upto = e.min(end);
                deeper.push((cur, (upto - cur) / PAGE_SIZE));
                cur = upto;
                continue;
            }
            return Err(bad(
                name,
                format!("page at {cur:#x} is in none of its parent images"),
            ));
        }
    }
    if !deeper.is_empty() {
        out.extend(resolve_parent(&pdir, name, &deeper, depth + 1)?);
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct TaskPlan {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub threads: Vec<i32>,
    pub state: u32,
    pub exit_code: u32,
    /// Index of the parent in `Plan::tasks` (None for the root).
    pub parent: Option<usize>,
    pub children: Vec<usize>,
    /// One per thread, leader first.
    pub cores: Vec<CoreEntry>,
    pub mm: Option<MmEntry>,
    pub pagemap: Option<Pagemap>,
    pub fds: Vec<FdinfoEntry>,
    pub fs: Option<FsEntry>,
    /// Per-level pids when the tree has pid namespaces (see `ns::pid`);
    /// `pid`, `ppid`, `pgid`, `sid` and `threads` are host pids then.
    pub pids: Option<crate::ns::pid::TaskPids>,
}

impl TaskPlan {
    pub fn alive(&self) -> bool {
        self.state != TASK_DEAD
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub inventory: InventoryEntry,
    pub tasks: Vec<TaskPlan>,
    pub files: HashMap<u32, FileEntry>,
    /// File id -> ghost remap id.
    pub ghosts: HashMap<u32, u32>,
    /// Shared anonymous memory: shmid -> (size, pagemap).
    pub shmem: BTreeMap<u64, (u64, Pagemap)>,
    /// File locks to take again (filelocks.img).
    pub locks: Vec<stasis_proto::criu::FileLockEntry>,
    /// Namespaces the tree has of its own.
    pub ns: crate::ns::NsPlan,
    /// seccomp.img's filters, referenced by the thread cores.
    pub seccomp: Vec<stasis_proto::criu::SeccompFilter>,
}

fn bad(image: impl Into<String>, why: impl Into<String>) -> Error {
    Error::bad_image(image, why)
}

/// Read a pagemap; `parents`: pages may be in parent images.
fn read_pagemap(dir: &ImageDir, name: &str, parents: bool) -> Result<Pagemap> {
    let mut r = dir.reader(name, common(magic::PAGEMAP))?;
    let head: PagemapHead = r
        .read_entry()?
        .ok_or_else(|| bad(name, "missing pagemap head"))?;
    let mut runs = Vec::new();
    let mut in_parent = Vec::new();
    while let Some(e) = r.read_entry::<PagemapEntry>()? {
        let nr = e.nr_pages.unwrap_or(e.compat_nr_pages as u64);
        let flags = entry_flags(&e);
        if e.vaddr % PAGE_SIZE != 0 || nr == 0 || e.vaddr.checked_add(nr * PAGE_SIZE).is_none() {
            return Err(bad(
                name,
                format!("bad entry at {:#x} (+{nr} pages)", e.vaddr),
            ));
        }
        if flags & PE_PRESENT == 0 {
            if flags & PE_PARENT != 0 {
                if !parents {
                    return Err(bad(
                        name,
                        "pages of shared memory in a parent image are not supported",
                    ));
                }
                in_parent.push((e.vaddr, nr));
            }
            continue;
        }
        runs.push((e.vaddr, nr));
    }
    let pages = format!("pages-{}.img", head.pages_id);
    let want: u64 = runs.iter().map(|r| r.1).sum::<u64>() * PAGE_SIZE;
    let have = std::fs::metadata(dir.file(&pages))
        .map_err(|e| Error::io(dir.file(&pages), e))?
        .len();
    if have != want {
        return Err(bad(
            &pages,
            format!("holds {have} bytes but {name} describes {want}: truncated or mismatched"),
        ));
    }
    let parent = if in_parent.is_empty() {
        Vec::new()
    } else {
        resolve_parent(dir.path(), name, &in_parent, 0)?
    };
    Ok(Pagemap {
        pages_id: head.pages_id,
        runs,
        parent,
    })
}

pub fn read(dir: &ImageDir) -> Result<Plan> {
    let inventory: InventoryEntry = dir.read_one(INVENTORY, Header::Inventory)?;
    if inventory.img_version != 2 {
        return Err(bad(
            INVENTORY,
            format!("unsupported image version {}", inventory.img_version),
        ));
    }
    if inventory.fdinfo_per_id != Some(true) {
        return Err(bad(INVENTORY, "too old image (no fdinfo_per_id)"));
    }
    let pstree: Vec<PstreeEntry> = dir.read_all("pstree.img", common(magic::PSTREE))?;
    if pstree.is_empty() {
        return Err(bad("pstree.img", "no tasks"));
    }
    let mut index: HashMap<i32, usize> = HashMap::new();
    let mut parents = Vec::with_capacity(pstree.len());
    for (i, p) in pstree.iter().enumerate() {
        let pid = p.pid as i32;
        if pid <= 0 || index.insert(pid, i).is_some() {
            return Err(bad("pstree.img", format!("bad or duplicate pid {}", p.pid)));
        }
        parents.push(if i == 0 {
            None
        } else {
            Some(*index.get(&(p.ppid as i32)).ok_or_else(|| {
                bad(
                    "pstree.img",
                    format!("pid {} listed before its parent {}", p.pid, p.ppid),
                )
            })?)
        });
        if p.threads.first().is_some_and(|&t| t as i32 != pid) {
            return Err(bad(
                "pstree.img",
                format!("pid {pid}: first thread is not the leader"),
            ));
        }
    }
    let mut tasks: Vec<TaskPlan> = Vec::with_capacity(pstree.len());
    for (i, t) in read_tasks(dir, &pstree).into_iter().enumerate() {
        let mut t = t?;
        t.parent = parents[i];
        if let Some(pi) = parents[i] {
            tasks[pi].children.push(i);
        }
        tasks.push(t);
    }
    // Straight into the map: no list of every entry to copy from first.
    let mut files = HashMap::new();
    let mut r = dir.reader(FILES_IMG, common(magic::FILES))?;
    while let Some(f) = r.read_entry::<FileEntry>()? {
        files.insert(f.id, f);
    }
    writable_mapping_files(&mut tasks, &mut files);
    let mut ghosts = HashMap::new();
    if dir.exists(REMAP_IMG) {
        for r in dir.read_all::<RemapFilePathEntry>(REMAP_IMG, common(magic::REMAP_FPATH))? {
            ghosts.insert(r.orig_id, r.remap_id);
        }
    }
    // Every id the tasks use must exist.
    for t in tasks.iter().filter(|t| t.alive()) {
        let mm = t.mm.as_ref().unwrap();
        let fs = t.fs.as_ref().unwrap();
        let mut ids: Vec<u32> = t.fds.iter().map(|f| f.id).collect();
        ids.extend([mm.exe_file_id, fs.cwd_id, fs.root_id]);
        for v in &mm.vmas {
            if v.status & (crate::mem::vma::VMA_FILE_PRIVATE | crate::mem::vma::VMA_FILE_SHARED)
                != 0
            {
                ids.push(v.shmid as u32);
            }
        }
        for id in ids {
            if !files.contains_key(&id) {
                return Err(bad(
                    FILES_IMG,
                    format!("pid {}: no file with id {id}", t.pid),
                ));
            }
        }
    }
    // Shared anonymous memory objects.
    let mut shmem = BTreeMap::new();
    for t in tasks.iter().filter(|t| t.alive()) {
        for v in &t.mm.as_ref().unwrap().vmas {
            // SysV segments live in the IPC namespace's images.
            if v.status & VMA_ANON_SHARED != 0 && v.status & VMA_AREA_SYSVIPC == 0 {
                let end = v.pgoff + (v.end - v.start);
                let e = shmem.entry(v.shmid).or_insert((0u64, None::<()>));
                e.0 = e.0.max(end);
            }
        }
    }
    let mut shm = BTreeMap::new();
    for (id, (size, _)) in shmem {
        let name = format!("pagemap-shmem-{id}.img");
        let pm = read_pagemap(dir, &name, false)?;
        for &(a, n) in &pm.runs {
            if a + n * PAGE_SIZE > size {
                return Err(bad(
                    &name,
                    format!("page at offset {a:#x} beyond the object ({size:#x})"),
                ));
            }
        }
        shm.insert(id, (size, pm));
    }
    let root_ids = tasks[0].cores[0].ids.unwrap_or_default();
    let ns = crate::ns::read(dir, &inventory, &root_ids)?;
    crate::ns::ipc::check_attachments(&tasks, &ns)?;
    crate::ns::pid::to_host(&mut tasks, &pstree, ns.owns(crate::proc::NsKind::Pid))?;
    let seccomp = crate::task::seccomp::read_filters(dir)?;
    crate::task::seccomp::check_plan(&tasks, &seccomp)?;
    Ok(Plan {
        inventory,
        tasks,
        files,
        ghosts,
        shmem: shm,
        locks: crate::files::locks::read_image(dir)?,
        ns,
        seccomp,
    })
}

/// Below this many tasks, their images are read on one thread.
const READ_THREADS_MIN: usize = 8;

/// [`read_task`] of every task of `pstree`, in order: on two threads for a
/// big tree (each of its tasks is six small files or more).
fn read_tasks(dir: &ImageDir, pstree: &[PstreeEntry]) -> Vec<Result<TaskPlan>> {
    if pstree.len() < READ_THREADS_MIN {
        return pstree.iter().map(|p| read_task(dir, p)).collect();
    }
    let half = |first: usize| {
        pstree
            .iter()
            .skip(first)
            .step_by(2)
            .map(|p| read_task(dir, p))
            .collect::<Vec<_>>()
    };
    let (even, odd) = std::thread::scope(|s| {
        let odd = s.spawn(|| half(1));
        let even = half(0);
        // A panic is passed on as it is.
        (
            even,
            odd.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
        )
    });
    let mut out = Vec::with_capacity(pstree.len());
    let mut odd = odd.into_iter();
    for e in even {
        out.push(e);
        out.extend(odd.next());
    }
    out
}

/// The images of task `p` (its pstree entry checked already), read and
/// checked: its cores; if alive, its mm, pagemap, fd table and fs.
fn read_task(dir: &ImageDir, p: &PstreeEntry) -> Result<TaskPlan> {
    let pid = p.pid as i32;
    let threads: Vec<i32> = if p.threads.is_empty() {
        vec![pid]
    } else {
        p.threads.iter().map(|&t| t as i32).collect()
    };
    let mut cores = Vec::with_capacity(threads.len());
    for &tid in &threads {
        let name = format!("core-{tid}.img");
        let c: CoreEntry = dir.read_one(&name, common(magic::CORE))?;
        if c.mtype != 1 {
            return Err(bad(
                &name,
                format!("not an x86_64 image (mtype {})", c.mtype),
            ));
        }
        cores.push(c);
    }
    let tc = cores[0]
        .tc
        .as_ref()
        .ok_or_else(|| bad(format!("core-{pid}.img"), "no task core"))?;
    let state = tc.task_state;
    if ![TASK_ALIVE, TASK_DEAD, TASK_STOPPED].contains(&state) {
        return Err(bad(
            format!("core-{pid}.img"),
            format!("unknown task state {state}"),
        ));
    }
    let mut t = TaskPlan {
        pid,
        ppid: p.ppid as i32,
        pgid: p.pgid as i32,
        sid: p.sid as i32,
        threads,
        state,
        exit_code: tc.exit_code,
        parent: None,
        children: Vec::new(),
        cores,
        mm: None,
        pagemap: None,
        fds: Vec::new(),
        fs: None,
        pids: None,
    };
    if t.alive() {
        for c in &t.cores {
            if c.thread_info.is_none() || c.thread_core.is_none() {
                return Err(bad(format!("core-{pid}.img"), "thread without registers"));
            }
        }
        let mm_name = format!("mm-{pid}.img");
        let mm: MmEntry = dir.read_one(&mm_name, common(magic::MM))?;
        check_vmas(&mm_name, &mm)?;
        let pm_name = format!("pagemap-{pid}.img");
        let pm = read_pagemap(dir, &pm_name, true)?;
        check_runs(&pm_name, &pm, &mm)?;
        // CRIU keeps the ids in ids-PID.img only; stasis also in the core.
        let files_id = match t.cores[0].ids.as_ref() {
            Some(i) => i.files_id,
            None => {
                let ids: TaskKobjIdsEntry =
                    dir.read_one(&format!("ids-{pid}.img"), common(magic::IDS))?;
                ids.files_id
            }
        };
        t.fds = dir.read_all(&format!("fdinfo-{files_id}.img"), common(magic::FDINFO))?;
        t.fs = Some(dir.read_one(&format!("fs-{pid}.img"), common(magic::FS))?);
        t.mm = Some(mm);
        t.pagemap = Some(pm);
    }
    Ok(t)
}

/// CRIU maps a shared writable file mapping through a file entry that may
/// be read-only (a memfd's, flags 0) and opens it with the VMA's `fdflags`
/// instead; stasis gives such mappings their own O_RDWR entry. For CRIU
/// images, give each such mapping a writable copy of its entry (a new id),
/// leaving the entry of any descriptor using the original untouched.
fn writable_mapping_files(tasks: &mut [TaskPlan], files: &mut HashMap<u32, FileEntry>) {
    let mut next = files.keys().copied().max().unwrap_or(0) + 1;
    let mut copies: HashMap<u32, u32> = HashMap::new();
    for t in tasks.iter_mut() {
        let Some(mm) = t.mm.as_mut() else { continue };
        for v in mm.vmas.iter_mut() {
            let rw = v.fdflags.unwrap_or(0) as i32 & libc::O_ACCMODE;
            if v.status & VMA_FILE_SHARED == 0 || rw == libc::O_RDONLY {
                continue;
            }
            let id = v.shmid as u32;
            let Some(f) = files.get(&id).cloned() else {
                continue;
            };
            let flags = f
                .reg
                .as_ref()
                .map(|r| r.flags)
                .or(f.memfd.as_ref().map(|m| m.flags));
            match flags {
                Some(fl) if fl as i32 & libc::O_ACCMODE == libc::O_RDONLY => {}
                _ => continue,
            }
            let new = *copies.entry(id).or_insert_with(|| {
                let mut c = f;
                let n = next;
                next += 1;
                c.id = n;
                if let Some(r) = c.reg.as_mut() {
                    r.id = n;
                    r.flags = (r.flags & !(libc::O_ACCMODE as u32)) | rw as u32;
                }
                if let Some(m) = c.memfd.as_mut() {
                    m.id = n;
                    m.flags = (m.flags & !(libc::O_ACCMODE as u32)) | rw as u32;
                }
                files.insert(n, c);
                n
            });
            v.shmid = new as u64;
        }
    }
}

/// VMAs must be page aligned, inside user space, sorted and disjoint.
fn check_vmas(name: &str, mm: &MmEntry) -> Result<()> {
    let mut last_end = 0u64;
    for v in &mm.vmas {
        let special = v.status & (VMA_AREA_VSYSCALL) != 0;
        if v.start % PAGE_SIZE != 0 || v.end % PAGE_SIZE != 0 || v.start >= v.end {
            return Err(bad(name, format!("bad vma {:#x}-{:#x}", v.start, v.end)));
        }
        if !special && v.end > TASK_SIZE {
            return Err(bad(
                name,
                format!("vma {:#x}-{:#x} outside user space", v.start, v.end),
            ));
        }
        if v.start < last_end {
            return Err(bad(
                name,
                format!("vma {:#x}-{:#x} overlaps the previous one", v.start, v.end),
            ));
        }
        last_end = v.end;
    }
    Ok(())
}

/// Page runs must fall inside private VMAs that may hold pages (a run may
/// span adjacent VMAs).
fn check_runs(name: &str, pm: &Pagemap, mm: &MmEntry) -> Result<()> {
    // vDSO pages are saved (as CRIU does) but never written back.
    let no_pages = VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_ANON_SHARED;
    for (a, n) in pm.all_runs() {
        let end = a + n * PAGE_SIZE;
        let mut cur = a;
        while cur < end {
            match mm
                .vmas
                .iter()
                .find(|v| v.start <= cur && cur < v.end && v.status & no_pages == 0)
            {
                Some(v) => cur = v.end.min(end),
                None => {
                    return Err(bad(
                        name,
                        format!("pages at {cur:#x} outside any private vma"),
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis_proto::criu::{MemfdFileEntry, VmaEntry};

    /// A CRIU image maps a memfd shared and writable through its read-only
    /// entry (flags 0, vma fdflags O_RDWR): the mapping gets a writable copy,
    /// the descriptor's entry stays read-only.
    #[test]
    fn criu_shared_mapping_gets_writable_entry() {
        let vma = |shmid, fdflags| VmaEntry {
            start: 0x1000,
            end: 0x2000,
            shmid,
            flags: libc::MAP_SHARED as u32,
            status: 1 | VMA_FILE_SHARED,
            fd: -1,
            fdflags: Some(fdflags),
            ..Default::default()
        };
        let mut t = TaskPlan {
            pid: 1,
            ppid: 0,
            pgid: 1,
            sid: 1,
            threads: vec![1],
            state: 1,
            exit_code: 0,
            parent: None,
            children: vec![],
            pids: None,
            cores: vec![],
            mm: Some(MmEntry {
                vmas: vec![vma(2, libc::O_RDWR as u32), vma(2, 0)],
                ..Default::default()
            }),
            pagemap: None,
            fds: vec![],
            fs: None,
        };
        let mut files = HashMap::new();
        files.insert(
            2,
            FileEntry {
                id: 2,
                memfd: Some(Box::new(MemfdFileEntry {
                    id: 2,
                    inode_id: 1,
                    ..Default::default()
                })),
                ..Default::default()
            },
        );
        writable_mapping_files(std::slice::from_mut(&mut t), &mut files);
        let vmas = &t.mm.as_ref().unwrap().vmas;
        assert_eq!(vmas[0].shmid, 3);
        assert_eq!(vmas[1].shmid, 2);
        assert_eq!(files[&2].memfd.as_ref().unwrap().flags, 0);
        let m = files[&3].memfd.as_ref().unwrap();
        assert_eq!((m.id, m.inode_id, m.flags), (3, 1, libc::O_RDWR as u32));
    }
}
