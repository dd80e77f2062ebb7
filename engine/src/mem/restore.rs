//! Rebuilding an address space inside a restore stub, from outside: every
//! call here is a remote syscall run on the stub's scratch page.

use std::collections::HashMap;

use stasis_proto::criu::{MmEntry, VmaEntry};

use super::pages::{split, Run};
use super::vma::*;
use super::PAGE_SIZE;
use crate::error::{Error, PathCtx, Result};
use crate::progress::Progress;
use crate::restore::plan::{Pagemap, TASK_SIZE};
use crate::sys::misc::PrctlMmMap;
use crate::sys::mman::FileMap;
use crate::sys::uffd;
use crate::sys::vm::{self, RemoteIoVec};
use crate::task::remote::{Call, Pending, Remote, SCRATCH_LEN};

/// Where in the scratch area the data (iovecs, structs) goes; the first page
/// holds the `syscall; int3` code.
pub const SCRATCH_DATA: u64 = 4096;
const MAX_IOV: usize = 1024;
/// Below this much private memory, pages are written without a userfaultfd.
const UFFD_MIN: u64 = 1 << 20;

/// The [vvar] .. [vdso] block as one range.
pub fn vdso_block(vmas: &[VmaEntry]) -> Option<(u64, u64)> {
    let mut it = vmas
        .iter()
        .filter(|v| v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR) != 0);
    let first = it.next()?;
    let (mut s, mut e) = (first.start, first.end);
    for v in it {
        s = s.min(v.start);
        e = e.max(v.end);
    }
    Some((s, e))
}

pub struct MemCtx<'a> {
    /// Target-side fd of each mapped file id.
    pub file_fds: &'a HashMap<u32, i32>,
    /// Target-side fd of each shared anonymous memory object.
    pub shmem_fds: &'a HashMap<u64, i32>,
    /// Size of each SysV shm segment (from the IPC namespace's images).
    pub sysv_sizes: &'a HashMap<u64, u64>,
    pub scratch: u64,
    /// The stub's current [vvar]..[vdso] block (the restorer's).
    pub cur_vdso: (u64, u64),
}

/// The batch [`begin_vmas`] started in a stub: it unmaps the stub's memory
/// and maps the dumped VMAs.
#[derive(Debug)]
pub struct Mapping {
    pending: Pending,
    what: Vec<String>,
    /// Index of the first mmap call.
    first_mmap: usize,
    /// Where each mmap must land.
    at: Vec<u64>,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// munmap calls removing everything of the stub but `keep` (sorted,
/// disjoint ranges).
fn unmap_all_but(keep: &[(u64, u64)], calls: &mut Vec<Call>) {
    let mut from = PAGE_SIZE;
    for &(s, e) in keep {
        if s > from {
            calls.push((libc::SYS_munmap, [from, s - from, 0, 0, 0, 0]));
        }
        from = from.max(e);
    }
    if from < TASK_SIZE {
        calls.push((libc::SYS_munmap, [from, TASK_SIZE - from, 0, 0, 0, 0]));
    }
}

/// Does any page run touch `[s, e)`?
fn has_pages(pm: &Pagemap, s: u64, e: u64) -> bool {
    pm.all_runs().any(|(a, n)| a < e && s < a + n * PAGE_SIZE)
}

/// Start replacing the stub's address space with the dumped one, in one
/// batch; [`end_vmas`] waits for it and fills the memory.
/// `first`: calls (with their names) to run at the start of that batch,
/// before the stub's memory goes. The protections and advice are left to
/// [`finish_vmas`].
pub fn begin_vmas(
    r: &mut Remote,
    mm: &MmEntry,
    pm: &Pagemap,
    cx: &MemCtx<'_>,
    first: &[(Call, &str)],
) -> Result<Mapping> {
    let pid = r.pid;
    let scratch = (cx.scratch, cx.scratch + SCRATCH_LEN);
    let cur = cx.cur_vdso;
    let target = vdso_block(&mm.vmas);
    let mut keep = vec![scratch, cur];
    keep.sort();
    // One batch: unmap the stub, move the vDSO, map every VMA.
    let mut calls: Vec<Call> = first.iter().map(|c| c.0).collect();
    let mut what: Vec<String> = first.iter().map(|c| c.1.to_string()).collect();
    unmap_all_but(&keep, &mut calls);
    what.resize(calls.len(), "munmap".into());

    // The vDSO block moves as one piece to where the program knew it.
    if let Some(t) = target {
        if t.1 - t.0 != cur.1 - cur.0 {
            return Err(Error::unsupported(
                pid,
                format!(
                    "[vvar]..[vdso] is {:#x} bytes here but {:#x} in the image (another kernel?)",
                    cur.1 - cur.0,
                    t.1 - t.0
                ),
            ));
        }
        if t.0 != cur.0 {
            let len = t.1 - t.0;
            let mv = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
            let mut from = cur.0;
            if overlaps(t, cur) {
                // Hop through a free spot first: mremap cannot overlap.
                let tmp = [0x1000_0000u64, 0x2000_0000, 0x3000_0000]
                    .into_iter()
                    .find(|&a| {
                        !overlaps((a, a + len), t)
                            && !overlaps((a, a + len), scratch)
                            && !overlaps((a, a + len), cur)
                    })
                    .unwrap();
                calls.push((libc::SYS_mremap, [from, len, len, mv, tmp, 0]));
                what.push("mremap vdso".into());
                from = tmp;
            }
            calls.push((libc::SYS_mremap, [from, len, len, mv, t.0, 0]));
            what.push("mremap vdso".into());
        }
    }

    // SysV shm attachments before any mmap: shmat cannot replace mappings,
    // and a segment may reach over holes that VMAs mapped later fill.
    sysv_attach_calls(pid, mm, cx, &keep, target, &mut calls, &mut what)?;

    // Map every VMA, writable while it is filled.
    let first_mmap = calls.len();
    for v in &mm.vmas {
        if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_AREA_SYSVIPC) != 0 {
            continue;
        }
        let len = v.end - v.start;
        let mut prot = v.prot as u64;
        if refilled_read_only(v, pm) {
            prot |= (libc::PROT_READ | libc::PROT_WRITE) as u64;
        }
        let mut flags = (v.flags as u64
            & (libc::MAP_SHARED
                | libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_GROWSDOWN
                | libc::MAP_NORESERVE) as u64)
            | libc::MAP_FIXED as u64;
        let (fd, off) = if v.status & VMA_ANON_SHARED != 0 {
            flags &= !(libc::MAP_ANONYMOUS as u64);
            let fd = *cx.shmem_fds.get(&v.shmid).ok_or_else(|| {
                Error::bad_image(
                    format!("mm-{pid}.img"),
                    format!("no shared memory object {}", v.shmid),
                )
            })?;
            (fd as u64, v.pgoff)
        } else if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
            let fd = *cx.file_fds.get(&(v.shmid as u32)).ok_or_else(|| {
                Error::bad_image(
                    format!("mm-{pid}.img"),
                    format!("no file {} for vma {:#x}", v.shmid, v.start),
                )
            })?;
            (fd as u64, v.pgoff)
        } else {
            (u64::MAX, 0)
        };
        calls.push((libc::SYS_mmap, [v.start, len, prot, flags, fd, off]));
        what.push(format!("mmap at {:#x}", v.start));
    }
    let at = calls[first_mmap..].iter().map(|c| c.1[0]).collect();
    Ok(Mapping {
        pending: r.start(pid, &calls, Vec::new())?,
        what,
        first_mmap,
        at,
    })
}

/// After [`begin_vmas`]: check where every VMA landed, then fill the memory
/// from `pages` (pages-N.img). Returns the number of pages written.
pub fn end_vmas(
    r: &mut Remote,
    mm: &MmEntry,
    pm: &Pagemap,
    m: Mapping,
    pages: &std::fs::File,
    progress: bool,
) -> Result<u64> {
    let pid = r.pid;
    let names: Vec<&str> = m.what.iter().map(|s| s.as_str()).collect();
    let res = r.wait(m.pending)?;
    let res = crate::task::remote::check_all(pid, &res, &names)?;
    for (&got, &want) in res[m.first_mmap..].iter().zip(&m.at) {
        if got != want {
            return Err(Error::task(
                pid,
                format!("mmap at {want:#x} landed at {got:#x}"),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
    }

    // Private anonymous memory is filled through a userfaultfd of the
    // target: UFFDIO_COPY allocates each page and copies into it, where a
    // write fault would first zero it. Other memory (COW pages of private
    // file mappings) goes by process_vm_writev.
    //
    // Memory madvised MADV_HUGEPAGE gets 4 KiB pages too (the advice is set
    // again afterwards; khugepaged collapses them later): setting it first
    // and filling by process_vm_writev, whose faults allocate 2 MiB pages,
    // took 2.6x as long here (1 GiB: 4.0-4.8 s vs 1.6-2.0 s, same run;
    // 57% of it clearing the fresh huge pages, 14% copying).
    let special = VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL;
    let anon: Vec<(u64, u64)> = mm
        .vmas
        .iter()
        .filter(|v| {
            v.status & VMA_ANON_PRIVATE != 0
                && v.status & special == 0
                && has_pages(pm, v.start, v.end)
        })
        .map(|v| (v.start, v.end))
        .collect();
    // The image's vDSO pages (CRIU's restore compares them with the running
    // kernel's) stay unused: the live vDSO was moved in place above.
    let skip: Vec<(u64, u64)> = mm
        .vmas
        .iter()
        .filter(|v| v.status & VMA_AREA_VDSO != 0)
        .map(|v| (v.start, v.end))
        .collect();
    // A few pages are cheaper to fault in by process_vm_writev than setting
    // up the userfaultfd (two more remote round trips and five syscalls).
    let private: u64 = pm.pages() * PAGE_SIZE;
    let uffd = if anon.is_empty() || private < UFFD_MIN {
        None
    } else {
        Uffd::open(r, &anon)
    };
    let pages = fill(pid, pm, pages, progress, uffd.as_ref(), &skip)?
        + fill_parent(pid, pm, uffd.as_ref(), &skip)?;
    if let Some(u) = uffd {
        u.close()?;
    }
    Ok(pages)
}

/// After [`end_vmas`], started in one batch: the final protections of the
/// VMAs it filled (checked), the calls of `then` (checked), and the advice
/// (best effort, as in CRIU: KSM or THP may be off). [`Remote::wait`]
/// waits for it.
pub fn finish_vmas(
    r: &mut Remote,
    mm: &MmEntry,
    pm: &Pagemap,
    then: &[(Call, &'static str)],
) -> Result<Pending> {
    let pid = r.pid;
    let mut calls: Vec<Call> = Vec::new();
    let mut what: Vec<&'static str> = Vec::new();
    for v in mm.vmas.iter().filter(|v| refilled_read_only(v, pm)) {
        calls.push((
            libc::SYS_mprotect,
            [v.start, v.end - v.start, v.prot as u64, 0, 0, 0],
        ));
        what.push("mprotect");
    }
    calls.extend(then.iter().map(|c| c.0));
    what.extend(then.iter().map(|c| c.1));
    for v in &mm.vmas {
        let Some(m) = v.madv.filter(|&m| m != 0) else {
            continue;
        };
        for a in 0..64u64 {
            if m & (1 << a) != 0 {
                calls.push((libc::SYS_madvise, [v.start, v.end - v.start, a, 0, 0, 0]));
            }
        }
    }
    r.start(pid, &calls, what)
}

/// A VMA mapped writable by [`begin_vmas`] to be filled, though its own
/// protection is not.
fn refilled_read_only(v: &VmaEntry, pm: &Pagemap) -> bool {
    v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_AREA_SYSVIPC) == 0
        && v.prot as u64 & libc::PROT_WRITE as u64 == 0
        && has_pages(pm, v.start, v.end)
}

/// shmat of each SysV segment at its dumped address (the segments exist:
/// the root made them in the IPC namespace before forking), then the holes
/// and protections of its VMAs. shmat with an address lands there or fails.
fn sysv_attach_calls(
    pid: i32,
    mm: &MmEntry,
    cx: &MemCtx<'_>,
    keep: &[(u64, u64)],
    vdso: Option<(u64, u64)>,
    calls: &mut Vec<Call>,
    what: &mut Vec<String>,
) -> Result<()> {
    let bad = |why: String| Error::bad_image(format!("mm-{pid}.img"), why);
    let attaches = sysv_attaches(&mm.vmas, |id| cx.sysv_sizes.get(&id).copied()).map_err(bad)?;
    for a in &attaches {
        let r = (a.base, a.base + a.len);
        if keep.iter().chain(vdso.as_ref()).any(|&k| overlaps(k, r)) {
            return Err(Error::unsupported(
                pid,
                format!(
                    "sysv shm segment {} at {:#x}-{:#x} overlaps the restorer's mappings",
                    a.shmid, r.0, r.1
                ),
            ));
        }
        calls.push((libc::SYS_shmat, [a.shmid, a.base, a.flags, 0, 0, 0]));
        what.push(format!("shmat segment {} at {:#x}", a.shmid, a.base));
        for &(s, n) in &a.unmap {
            calls.push((libc::SYS_munmap, [s, n, 0, 0, 0, 0]));
            what.push(format!("munmap {s:#x} of sysv shm segment {}", a.shmid));
        }
        for &(s, n, prot) in &a.protect {
            calls.push((libc::SYS_mprotect, [s, n, prot, 0, 0, 0]));
            what.push(format!("mprotect {s:#x} of sysv shm segment {}", a.shmid));
        }
    }
    Ok(())
}

/// The PR_SET_MM_MAP call that restores mm fields, auxv and exe, its data
/// written into the scratch area.
pub fn set_mm_call(r: &Remote, mm: &MmEntry, exe_fd: i32, scratch: u64) -> Result<Call> {
    let auxv: Vec<u8> = mm
        .mm_saved_auxv
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let auxv_at = scratch + SCRATCH_DATA;
    let map_at = auxv_at + auxv.len().next_multiple_of(16) as u64;
    let m = PrctlMmMap {
        start_code: mm.mm_start_code,
        end_code: mm.mm_end_code,
        start_data: mm.mm_start_data,
        end_data: mm.mm_end_data,
        start_brk: mm.mm_start_brk,
        brk: mm.mm_brk,
        start_stack: mm.mm_start_stack,
        arg_start: mm.mm_arg_start,
        arg_end: mm.mm_arg_end,
        env_start: mm.mm_env_start,
        env_end: mm.mm_env_end,
        auxv: auxv_at,
        auxv_size: auxv.len() as u32,
        exe_fd: exe_fd as u32,
    };
    r.write(auxv_at, &auxv)?;
    r.write(map_at, &m.to_bytes())?;
    Ok((
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            map_at,
            PrctlMmMap::SIZE as u64,
            0,
            0,
        ],
    ))
}

/// Fill the target's private memory from the pages image with one kernel
/// copy per byte: the image is mapped here and process_vm_writev copies from
/// the page cache into the target, split over two threads (one per core).
fn fill(
    pid: i32,
    pm: &Pagemap,
    pages: &std::fs::File,
    progress: bool,
    uffd: Option<&Uffd>,
    skip: &[(u64, u64)],
) -> Result<u64> {
    let total: u64 = pm.runs.iter().map(|r| r.1 * PAGE_SIZE).sum();
    if total == 0 {
        return Ok(0);
    }
    let map = FileMap::new(pages, total as usize, false)
        .map_err(|e| Error::task(pid, "map pages image", e))?;
    let src = map.as_slice();
    let runs: Vec<Run> = pm
        .runs
        .iter()
        .map(|&(addr, n)| Run {
            addr,
            len: n * PAGE_SIZE,
            readable: true,
        })
        .collect();
    let split = split(&runs, if total >= (8 << 20) { 2 } else { 1 });
    let mut starts = Vec::with_capacity(split.len());
    let mut off = 0u64;
    for p in &split {
        starts.push(off);
        off += p.iter().map(|r| r.len).sum::<u64>();
    }
    let bar = Progress::new(progress, total, format!("restore pid {pid}"));
    if let [part] = &split[..] {
        // Small: no thread start and hand-off (costly on a busy machine).
        write_part(pid, src, part, 0, &bar, uffd, skip)?;
        bar.finish();
        return Ok(total / PAGE_SIZE);
    }
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = split
            .iter()
            .zip(starts)
            .map(|(part, start)| {
                let bar = &bar;
                s.spawn(move || write_part(pid, src, part, start, bar, uffd, skip))
            })
            .collect();
        for h in hs {
            h.join().expect("page fill thread panicked")?;
        }
        Ok(())
    })?;
    bar.finish();
    Ok(total / PAGE_SIZE)
}

/// Fill the pages kept in parent images (incremental dumps): read into a
/// buffer, then written as [`fill`] does.
fn fill_parent(pid: i32, pm: &Pagemap, uffd: Option<&Uffd>, skip: &[(u64, u64)]) -> Result<u64> {
    if pm.parent.is_empty() {
        return Ok(0);
    }
    let total: u64 = pm.parent.iter().map(|p| p.len).sum();
    let mut buf = vec![0u8; total as usize];
    let mut files: HashMap<&std::path::Path, std::fs::File> = HashMap::new();
    let mut off = 0usize;
    for p in &pm.parent {
        let path = p.file.as_path();
        let f = match files.entry(path) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(std::fs::File::open(path).path_ctx(path)?)
            }
        };
        let len = p.len as usize;
        std::os::unix::fs::FileExt::read_exact_at(f, &mut buf[off..off + len], p.off)
            .path_ctx(path)?;
        off += len;
    }
    let runs: Vec<Run> = pm
        .parent
        .iter()
        .map(|p| Run {
            addr: p.addr,
            len: p.len,
            readable: true,
        })
        .collect();
    let bar = Progress::new(false, total, format!("restore pid {pid} (parent pages)"));
    write_part(pid, &buf, &runs, 0, &bar, uffd, skip)?;
    bar.finish();
    Ok(total / PAGE_SIZE)
}

/// Write one part of the runs; its bytes start at `start` in the image.
/// Bytes of runs inside `skip` ranges are passed over.
fn write_part(
    pid: i32,
    src: &[u8],
    part: &[Run],
    start: u64,
    bar: &Progress,
    uffd: Option<&Uffd>,
    skip: &[(u64, u64)],
) -> Result<()> {
    // Pieces inside registered anonymous memory go by UFFDIO_COPY; the rest
    // by process_vm_writev, which must never touch a registered missing page
    // (it would wait for us, in the kernel, forever).
    let mut by_uffd: Vec<(Run, u64)> = Vec::new();
    let mut rest: Vec<(Run, u64)> = Vec::new();
    let mut off = start;
    for r in part {
        let mut at = r.addr;
        let end = r.addr + r.len;
        while at < end {
            if let Some(&(_, e)) = skip.iter().find(|&&(s, e)| s <= at && at < e) {
                let upto = e.min(end);
                bar.inc(upto - at);
                off += upto - at;
                at = upto;
                continue;
            }
            // Stop short of the next skipped range.
            let stop = skip
                .iter()
                .filter(|&&(s, _)| s > at)
                .map(|&(s, _)| s)
                .fold(end, u64::min);
            let (inside, upto) = match uffd {
                Some(u) => u.piece(at, stop),
                None => (false, stop),
            };
            let piece = Run {
                addr: at,
                len: upto - at,
                readable: true,
            };
            if inside {
                by_uffd.push((piece, off));
            } else {
                rest.push((piece, off));
            }
            off += upto - at;
            at = upto;
        }
    }
    let part = rest;
    for (r, o) in by_uffd {
        uffd.unwrap()
            .copy(pid, r.addr, &src[o as usize..(o + r.len) as usize])?;
        bar.inc(r.len);
    }
    for chunk in part.chunks(MAX_IOV) {
        let local: Vec<std::io::IoSlice<'_>> = chunk
            .iter()
            .map(|(r, o)| std::io::IoSlice::new(&src[*o as usize..(*o + r.len) as usize]))
            .collect();
        let remote: Vec<RemoteIoVec> = chunk
            .iter()
            .map(|(r, _)| RemoteIoVec {
                base: r.addr,
                len: r.len as usize,
            })
            .collect();
        let want: u64 = chunk.iter().map(|(r, _)| r.len).sum();
        let got = vm::write_remote(pid, &local, &remote)
            .map_err(|e| Error::task(pid, format!("write memory at {:#x}", chunk[0].0.addr), e))?;
        if got as u64 != want {
            return Err(Error::task(
                pid,
                format!(
                    "write memory at {:#x}: short write {got} of {want}",
                    chunk[0].0.addr
                ),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
        bar.inc(want);
    }
    Ok(())
}

/// A userfaultfd of a restored task, held by the restorer, with the ranges
/// registered for UFFDIO_COPY.
pub struct Uffd {
    fd: std::os::fd::OwnedFd,
    ranges: Vec<(u64, u64)>,
}

impl Uffd {
    /// Create it inside the task (it must belong to the task's mm), take it
    /// over with pidfd_getfd, close the task's copy, register `ranges`. None
    /// if any step is refused: the caller falls back to process_vm_writev.
    fn open(r: &mut Remote, ranges: &[(u64, u64)]) -> Option<Uffd> {
        let pid = r.pid;
        let n = r
            .call(
                pid,
                "userfaultfd",
                libc::SYS_userfaultfd,
                [(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64, 0, 0, 0, 0, 0],
            )
            .ok()?;
        let got = crate::sys::pidfd::pidfd_open(pid)
            .and_then(|p| crate::sys::pidfd::pidfd_getfd(&p, n as i32));
        let _ = r.call(pid, "close", libc::SYS_close, [n, 0, 0, 0, 0, 0]);
        let fd = got.ok()?;
        uffd::api(&fd, 0).ok()?;
        for &(s, e) in ranges {
            uffd::register(&fd, s, e - s, uffd::UFFDIO_REGISTER_MODE_MISSING).ok()?;
        }
        Some(Uffd {
            fd,
            ranges: ranges.to_vec(),
        })
    }

    /// Whether `at` is inside a registered range, and where that answer
    /// changes (at most `end`).
    fn piece(&self, at: u64, end: u64) -> (bool, u64) {
        for &(s, e) in &self.ranges {
            if s <= at && at < e {
                return (true, e.min(end));
            }
        }
        let next = self
            .ranges
            .iter()
            .filter(|&&(s, _)| s > at)
            .map(|&(s, _)| s)
            .min()
            .unwrap_or(end);
        (false, next.min(end))
    }

    /// Copy `src` to `dst` in the task, allocating its pages.
    fn copy(&self, pid: i32, mut dst: u64, mut src: &[u8]) -> Result<()> {
        while !src.is_empty() {
            match uffd::copy(&self.fd, dst, src, 0) {
                Ok(0) => {
                    return Err(Error::task(
                        pid,
                        format!("UFFDIO_COPY at {dst:#x} made no progress"),
                        std::io::Error::from_raw_os_error(libc::EIO),
                    ));
                }
                Ok(n) => {
                    dst += n;
                    src = &src[n as usize..];
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) => return Err(Error::task(pid, format!("UFFDIO_COPY at {dst:#x}"), e)),
            }
        }
        Ok(())
    }

    /// Unregister everything: the task is left with no trace of us.
    fn close(self) -> Result<()> {
        for &(s, e) in &self.ranges {
            uffd::unregister(&self.fd, s, e - s)
                .map_err(|err| Error::Other(format!("UFFDIO_UNREGISTER {s:#x}: {err}")))?;
        }
        Ok(())
    }
}
