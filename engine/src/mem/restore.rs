//! Rebuilding an address space inside a restore stub, from outside: every
//! call here is a remote syscall run on the stub's scratch page.

use std::collections::HashMap;

use stasis_proto::criu::{MmEntry, VmaEntry};

use super::pages::{split, Run};
use super::vma::*;
use super::PAGE_SIZE;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::restore::plan::{Pagemap, TASK_SIZE};
use crate::sys::misc::PrctlMmMap;
use crate::sys::mman::FileMap;
use crate::sys::vm::{self, RemoteIoVec};
use crate::task::remote::{Call, Remote, SCRATCH_LEN};

/// Where in the scratch area the data (iovecs, structs) goes; the first page
/// holds the `syscall; int3` code.
pub const SCRATCH_DATA: u64 = 4096;
const MAX_IOV: usize = 1024;

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
    /// pages-N.img, read by the restorer.
    pub pages: &'a std::fs::File,
    /// Draw a progress bar while filling.
    pub progress: bool,
    pub scratch: u64,
    /// The stub's current [vvar]..[vdso] block (the restorer's).
    pub cur_vdso: (u64, u64),
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
    pm.runs.iter().any(|&(a, n)| a < e && s < a + n * PAGE_SIZE)
}

/// Replace the stub's address space with the dumped one and fill it.
/// Returns the number of pages written.
pub fn restore_vmas(r: &mut Remote, mm: &MmEntry, pm: &Pagemap, cx: &MemCtx<'_>) -> Result<u64> {
    let pid = r.pid;
    let scratch = (cx.scratch, cx.scratch + SCRATCH_LEN);
    let cur = cx.cur_vdso;
    let target = vdso_block(&mm.vmas);
    let mut keep = vec![scratch, cur];
    keep.sort();
    // One batch: unmap the stub, move the vDSO, map every VMA.
    let mut calls: Vec<Call> = Vec::with_capacity(mm.vmas.len() + 6);
    let mut what: Vec<String> = Vec::with_capacity(mm.vmas.len() + 6);
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

    // Map every VMA, writable while it is filled.
    let mut fixups = Vec::new();
    let first_mmap = calls.len();
    for v in &mm.vmas {
        if v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) != 0 {
            continue;
        }
        let len = v.end - v.start;
        let mut prot = v.prot as u64;
        let fill = has_pages(pm, v.start, v.end);
        if fill && prot & libc::PROT_WRITE as u64 == 0 {
            prot |= (libc::PROT_READ | libc::PROT_WRITE) as u64;
            fixups.push(v);
        }
        let mut flags = (v.flags as u64
            & (libc::MAP_SHARED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_GROWSDOWN)
                as u64)
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
    let names: Vec<&str> = what.iter().map(|s| s.as_str()).collect();
    let res = r.batch_checked(pid, &calls, &names)?;
    for (i, &got) in res.iter().enumerate().skip(first_mmap) {
        let want = calls[i].1[0];
        if got != want {
            return Err(Error::task(
                pid,
                format!("mmap at {want:#x} landed at {got:#x}"),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
    }

    let pages = fill(pid, pm, cx.pages, cx.progress)?;

    // Final protections, then advice (best effort, as in CRIU: KSM or THP
    // may be off).
    let prot: Vec<Call> = fixups
        .iter()
        .map(|v| {
            (
                libc::SYS_mprotect,
                [v.start, v.end - v.start, v.prot as u64, 0, 0, 0],
            )
        })
        .collect();
    r.batch_checked(pid, &prot, &vec!["mprotect"; prot.len()])?;
    let mut adv: Vec<Call> = Vec::new();
    for v in &mm.vmas {
        let Some(m) = v.madv.filter(|&m| m != 0) else {
            continue;
        };
        for a in 0..64u64 {
            if m & (1 << a) != 0 {
                adv.push((libc::SYS_madvise, [v.start, v.end - v.start, a, 0, 0, 0]));
            }
        }
    }
    r.batch(pid, &adv)?;
    Ok(pages)
}

/// Restore mm fields, auxv and exe with one PR_SET_MM_MAP.
pub fn set_mm(r: &mut Remote, mm: &MmEntry, exe_fd: i32, scratch: u64) -> Result<()> {
    let pid = r.pid;
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
    r.call(
        pid,
        "prctl(PR_SET_MM_MAP)",
        libc::SYS_prctl,
        [
            libc::PR_SET_MM as u64,
            libc::PR_SET_MM_MAP as u64,
            map_at,
            PrctlMmMap::SIZE as u64,
            0,
            0,
        ],
    )?;
    Ok(())
}

/// Fill the target's private memory from the pages image with one kernel
/// copy per byte: the image is mapped here and process_vm_writev copies from
/// the page cache into the target, split over two threads (one per core).
fn fill(pid: i32, pm: &Pagemap, pages: &std::fs::File, progress: bool) -> Result<u64> {
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
    std::thread::scope(|s| -> Result<()> {
        let hs: Vec<_> = split
            .iter()
            .zip(starts)
            .map(|(part, start)| {
                let bar = &bar;
                s.spawn(move || write_part(pid, src, part, start, bar))
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

/// Write one part of the runs; its bytes start at `start` in the image.
fn write_part(pid: i32, src: &[u8], part: &[Run], start: u64, bar: &Progress) -> Result<()> {
    let mut off = start as usize;
    for chunk in part.chunks(MAX_IOV) {
        let mut local = Vec::with_capacity(chunk.len());
        for r in chunk {
            local.push(std::io::IoSlice::new(&src[off..off + r.len as usize]));
            off += r.len as usize;
        }
        let remote: Vec<RemoteIoVec> = chunk
            .iter()
            .map(|r| RemoteIoVec {
                base: r.addr,
                len: r.len as usize,
            })
            .collect();
        let want: u64 = chunk.iter().map(|r| r.len).sum();
        let got = vm::write_remote(pid, &local, &remote)
            .map_err(|e| Error::task(pid, format!("write memory at {:#x}", chunk[0].addr), e))?;
        if got as u64 != want {
            return Err(Error::task(
                pid,
                format!(
                    "write memory at {:#x}: short write {got} of {want}",
                    chunk[0].addr
                ),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
        bar.inc(want);
    }
    Ok(())
}
