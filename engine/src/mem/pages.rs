//! Dumping memory contents: which pages, read how, written where.
//!
//! Private memory is read from the stopped target with `process_vm_readv` in
//! scatter batches into a small buffer and written to `pages-N.img` at its
//! final offset; big dumps run one such worker per core, each taking the next
//! batch, so both copies (target -> buffer, buffer -> image) run on every
//! core and each buffer stays in its own core's cache.

use std::cell::RefCell;
use std::fs::File;
use std::io::{IoSliceMut, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use stasis_proto::criu::{PagemapEntry, PagemapHead};
use stasis_proto::image::magic;

use super::selfwrite::{self, TargetIo};
use super::vma::{Contents, Vma};
use super::{PAGE_SIZE, PE_PRESENT};
use crate::error::{Error, PathCtx, Result, TaskCtx};
use crate::images::{common, ImageDir, Writer};
use crate::progress::Progress;
use crate::sys::mman::AnonBuf;
use crate::sys::vm::{self, RemoteIoVec};
use tracing::debug;

/// Bytes read from the target per batch: small enough to stay in the core's
/// own L2 cache between the read and the write (measured: 128-512 KiB are
/// equally good here, 1 MiB and up slower).
const CHUNK: usize = 256 << 10;
/// Below this, one thread copies everything: starting and waking a second
/// thread costs more than it saves (and a lot on a busy machine).
const PARALLEL_MIN: u64 = 8 << 20;
/// At most this many workers: their writes queue on the image's inode lock.
const MAX_WORKERS: usize = 4;

const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
/// The page is file-backed or shared-anonymous, i.e. not a private COW copy.
const PM_FILE: u64 = 1 << 61;

#[derive(Debug, Default, Clone, Copy)]
pub struct PageStats {
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub shpages_scanned: u64,
    pub shpages_written: u64,
    /// Time spent reading target memory.
    pub memdump: Duration,
    /// Time spent writing page images.
    pub memwrite: Duration,
}

impl PageStats {
    pub fn add(&mut self, o: &PageStats) {
        self.pages_scanned += o.pages_scanned;
        self.pages_written += o.pages_written;
        self.shpages_scanned += o.shpages_scanned;
        self.shpages_written += o.shpages_written;
        self.memdump += o.memdump;
        self.memwrite += o.memwrite;
    }
}

/// A run of pages to save: target address and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub addr: u64,
    pub len: u64,
    /// Read with process_vm_readv, else through /proc/PID/mem: memory
    /// without PROT_READ, which process_vm_readv refuses, and pages other
    /// processes map too. process_vm_readv pins the pages it reads, and
    /// pinning an anonymous page shared copy-on-write since a fork copies
    /// it for the target: its memory would grow by what it shares.
    pub readable: bool,
}

/// Read pagemap entries for `[start, end)`.
fn read_pagemap(pm: &File, start: u64, end: u64, out: &mut Vec<u64>) -> std::io::Result<()> {
    let n = ((end - start) / PAGE_SIZE) as usize;
    let mut bytes = vec![0u8; n * 8];
    pm.read_exact_at(&mut bytes, start / PAGE_SIZE * 8)?;
    out.clear();
    out.extend(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap())),
    );
    Ok(())
}

/// What to save of a VMA: (cow_only, whole), or None to skip it.
fn wanted(v: &Vma) -> Option<(bool, bool)> {
    match v.contents {
        Contents::Anon => Some((false, false)),
        Contents::CowOnly => Some((true, false)),
        Contents::Whole => Some((false, true)),
        _ => None,
    }
}

/// Whether `v`'s pages are read with process_vm_readv (see [`Run::readable`]).
fn direct(v: &Vma) -> bool {
    v.entry.prot & libc::PROT_READ as u32 != 0 && !v.shared_pages
}

/// Append `[addr, addr + len)` to `runs`, merging with the last run.
fn push_run(runs: &mut Vec<Run>, addr: u64, len: u64, readable: bool) {
    match runs.last_mut() {
        Some(r) if r.addr + r.len == addr && r.readable == readable => r.len += len,
        _ => runs.push(Run {
            addr,
            len,
            readable,
        }),
    }
}

/// A pte marker (uffd write-protection of an empty pte, a guard region)
/// reads as a swap entry of the last swap type (SWP_PTE_MARKER, 31): no
/// page behind it.
fn is_marker(e: u64) -> bool {
    e & PM_PRESENT == 0 && e & PM_SWAPPED != 0 && e & 0x1f == 31
}

/// Which pages of the private VMAs hold data worth saving, as runs.
///
/// One PAGEMAP_SCAN over the whole address span returns the populated runs
/// (the kernel skips holes and absent pages), instead of reading 8 bytes per
/// page of every VMA and testing each in a loop; kernels without the ioctl
/// take that older path.
pub fn collect_runs(pid: i32, vmas: &[Vma]) -> Result<(Vec<Run>, u64)> {
    let path = format!("/proc/{pid}/pagemap");
    let pm = File::open(&path).path_ctx(&path)?;
    match collect_runs_scan(&pm, vmas) {
        Ok(r) => return Ok(r),
        Err(e) => debug!(pid, "PAGEMAP_SCAN unavailable ({e}): reading pagemap"),
    }
    collect_runs_read(&pm, &path, vmas)
}

fn collect_runs_scan(pm: &File, vmas: &[Vma]) -> std::io::Result<(Vec<Run>, u64)> {
    use crate::sys::pagemap::{self, ScanParams, PAGE_IS_FILE, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
    let scanned_vmas: Vec<&Vma> = vmas
        .iter()
        .filter(|v| matches!(wanted(v), Some((_, false))))
        .collect();
    let mut regions = Vec::new();
    if let (Some(first), Some(last)) = (scanned_vmas.first(), scanned_vmas.last()) {
        let params = ScanParams {
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE,
            ..Default::default()
        };
        pagemap::scan_with(pm, first.start(), last.end(), &params, &mut regions)?;
    }
    let mut runs: Vec<Run> = Vec::new();
    let mut ents = Vec::new();
    let mut scanned = 0u64;
    // VMAs and regions are both in address order: walk them together.
    let mut ri = 0;
    for v in vmas {
        let Some((cow_only, whole)) = wanted(v) else {
            continue;
        };
        scanned += (v.end() - v.start()) / PAGE_SIZE;
        let readable = direct(v);
        if whole {
            push_run(&mut runs, v.start(), v.end() - v.start(), readable);
            continue;
        }
        while ri < regions.len() && regions[ri].end <= v.start() {
            ri += 1;
        }
        let mut j = ri;
        while j < regions.len() && regions[j].start < v.end() {
            let r = regions[j];
            j += 1;
            let keep = if cow_only {
                r.categories & PAGE_IS_SWAPPED != 0
                    || (r.categories & PAGE_IS_PRESENT != 0 && r.categories & PAGE_IS_FILE == 0)
            } else {
                true
            };
            if !keep {
                continue;
            }
            let a = r.start.max(v.start());
            let b = r.end.min(v.end());
            if a >= b {
                continue;
            }
            if r.categories & PAGE_IS_PRESENT != 0 {
                push_run(&mut runs, a, b - a, readable);
                continue;
            }
            // Not present: swapped out, or a pte marker (uffd-wp of an empty
            // pte, left by a pre-dump), which the scan also calls swapped
            // but holds no page. Rare: told apart page by page.
            read_pagemap(pm, a, b, &mut ents)?;
            for (i, &e) in ents.iter().enumerate() {
                if !is_marker(e) {
                    push_run(&mut runs, a + i as u64 * PAGE_SIZE, PAGE_SIZE, readable);
                }
            }
        }
    }
    Ok((runs, scanned))
}

fn collect_runs_read(pm: &File, path: &str, vmas: &[Vma]) -> Result<(Vec<Run>, u64)> {
    let pm = pm.try_clone().path_ctx(path)?;
    let mut ents = Vec::new();
    let mut runs: Vec<Run> = Vec::new();
    let mut scanned = 0u64;
    for v in vmas {
        let (cow_only, whole) = match v.contents {
            Contents::Anon => (false, false),
            Contents::CowOnly => (true, false),
            Contents::Whole => (false, true),
            _ => continue,
        };
        read_pagemap(&pm, v.start(), v.end(), &mut ents).path_ctx(path)?;
        scanned += ents.len() as u64;
        let readable = direct(v);
        for (i, &e) in ents.iter().enumerate() {
            if is_marker(e) {
                continue;
            }
            let keep = if whole {
                true
            } else if cow_only {
                (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAPPED != 0
            } else {
                e & (PM_PRESENT | PM_SWAPPED) != 0
            };
            if !keep {
                continue;
            }
            let addr = v.start() + i as u64 * PAGE_SIZE;
            match runs.last_mut() {
                Some(r) if r.addr + r.len == addr && r.readable == readable => r.len += PAGE_SIZE,
                _ => runs.push(Run {
                    addr,
                    len: PAGE_SIZE,
                    readable,
                }),
            }
        }
    }
    Ok((runs, scanned))
}

/// Write `pagemap-<name>.img` for `ents` (addr, len, flags; in address
/// order).
fn write_pagemap(
    dir: &ImageDir,
    name: &str,
    pages_id: u32,
    ents: impl Iterator<Item = (u64, u64, u32)>,
) -> Result<()> {
    let mut w: Writer = dir.writer(name, common(magic::PAGEMAP))?;
    dir.put(&mut w, name, &PagemapHead { pages_id })?;
    for (addr, len, flags) in ents {
        let nr = len / PAGE_SIZE;
        dir.put(
            &mut w,
            name,
            &PagemapEntry {
                vaddr: addr,
                compat_nr_pages: nr.min(u32::MAX as u64) as u32,
                in_parent: None,
                flags: Some(flags),
                nr_pages: Some(nr),
            },
        )?;
    }
    dir.finish(w, name)
}

/// Copy `runs` of `pid` into `pages-<pages_id>.img`: by the target itself
/// when `by_target` is given and it may (see [`selfwrite`]), else here.
fn save_runs(
    dir: &ImageDir,
    pid: i32,
    runs: &[Run],
    scanned: u64,
    pages_id: u32,
    progress: bool,
    by_target: Option<&mut TargetIo>,
) -> Result<PageStats> {
    let pages_name = format!("pages-{pages_id}.img");
    let out = dir.raw_writer(&pages_name)?;
    let out_path = dir.file(&pages_name);
    let total: u64 = runs.iter().map(|r| r.len).sum();
    let bar = Progress::new(progress, total, format!("dump pid {pid}"));
    let by_target = by_target.filter(|_| total >= selfwrite::MIN && selfwrite::allowed(pid, total));
    let done = match by_target {
        Some(t) => selfwrite::write_runs(t, pid, runs, &out, &out_path, &bar)?,
        None => None,
    };
    let mut st = match done {
        Some(st) => st,
        None => copy_runs(pid, runs, total, out, &out_path, &bar)?,
    };
    bar.finish();
    st.pages_scanned = scanned;
    st.pages_written = total / PAGE_SIZE;
    Ok(st)
}

/// Sorted, disjoint address ranges `[start, end)`.
pub type Ranges = [(u64, u64)];

/// Save the private memory of host pid `pid`: `pagemap-<img_pid>.img` (the
/// pid its pid namespace sees) and `pages-<pages_id>.img`. On top of a
/// parent image (`parent`: the ranges it has and those written since,
/// sorted), pages it has that were not written since are recorded as the
/// parent's (PE_PARENT) instead of saved.
#[allow(clippy::too_many_arguments)]
pub fn dump_private_as(
    dir: &ImageDir,
    pid: i32,
    img_pid: i32,
    vmas: &[Vma],
    pages_id: u32,
    progress: bool,
    parent: Option<(&Ranges, &Ranges)>,
    by_target: Option<&mut TargetIo>,
) -> Result<PageStats> {
    let (all, scanned) = collect_runs(pid, vmas)?;
    let (runs, up) = match parent {
        Some((has, written)) => super::track::split_runs(&all, has, written),
        None => (all, Vec::new()),
    };
    let mut ents: Vec<(u64, u64, u32)> = runs
        .iter()
        .map(|r| (r.addr, r.len, PE_PRESENT))
        .chain(up.iter().map(|&(s, e)| (s, e - s, super::PE_PARENT)))
        .collect();
    if !up.is_empty() {
        ents.sort_unstable();
    }
    let pm_name = format!("pagemap-{img_pid}.img");
    write_pagemap(dir, &pm_name, pages_id, ents.into_iter())?;
    save_runs(dir, pid, &runs, scanned, pages_id, progress, by_target)
}

/// Split runs into batches of at most `BATCH` bytes.
fn batches(runs: &[Run], limit: usize) -> Vec<Vec<Run>> {
    let mut out = Vec::new();
    let mut cur: Vec<Run> = Vec::new();
    let mut size = 0u64;
    for r in runs {
        let mut r = *r;
        while r.len > 0 {
            let room = limit as u64 - size;
            let take = r.len.min(room);
            cur.push(Run {
                addr: r.addr,
                len: take,
                readable: r.readable,
            });
            size += take;
            r.addr += take;
            r.len -= take;
            if size == limit as u64 {
                out.push(std::mem::take(&mut cur));
                size = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Read one batch of target memory into `buf` (which is exactly its size).
pub(super) fn read_batch(
    pid: i32,
    mem: &mut Option<File>,
    batch: &[Run],
    buf: &mut [u8],
) -> Result<()> {
    let mut off = 0usize;
    let mut i = 0;
    while i < batch.len() {
        if !batch[i].readable {
            // process_vm_readv honours protections; /proc/PID/mem does not.
            if mem.is_none() {
                *mem = Some(vm::open_mem(pid, false).task_ctx(pid, "open /proc/PID/mem")?);
            }
            let r = batch[i];
            let len = r.len as usize;
            vm::mem_read(mem.as_ref().unwrap(), r.addr, &mut buf[off..off + len])
                .task_ctx(pid, &format!("read memory at {:#x}", r.addr))?;
            off += len;
            i += 1;
            continue;
        }
        let j = batch[i..]
            .iter()
            .position(|r| !r.readable)
            .map_or(batch.len(), |p| i + p);
        let remote: Vec<RemoteIoVec> = batch[i..j]
            .iter()
            .map(|r| RemoteIoVec {
                base: r.addr,
                len: r.len as usize,
            })
            .collect();
        let want: usize = remote.iter().map(|r| r.len).sum();
        let mut local = [IoSliceMut::new(&mut buf[off..off + want])];
        let got = vm::read_remote(pid, &mut local, &remote)
            .task_ctx(pid, &format!("process_vm_readv at {:#x}", batch[i].addr))?;
        if got != want {
            return Err(Error::task(
                pid,
                format!(
                    "process_vm_readv at {:#x}: short read {got} of {want}",
                    batch[i].addr
                ),
                std::io::Error::from_raw_os_error(libc::EFAULT),
            ));
        }
        off += want;
        i = j;
    }
    Ok(())
}

thread_local! {
    /// The page-copy buffer of this thread, kept between tasks: mapping and
    /// faulting in a fresh one per task cost ~0.13 ms each in a tree of 100.
    static BUF: RefCell<Option<AnonBuf>> = const { RefCell::new(None) };
}

/// This thread's kept buffer if it holds `len` bytes, else a new one.
fn take_buf(len: usize) -> Result<AnonBuf> {
    if let Some(b) = BUF.with(|c| c.borrow_mut().take()) {
        if b.len() >= len {
            return Ok(b);
        }
    }
    AnonBuf::new(len).map_err(|e| Error::Other(format!("page copy buffer: {e}")))
}

fn keep_buf(b: AnonBuf) {
    BUF.with(|c| *c.borrow_mut() = Some(b));
}

/// Copy all runs into `out`. Each worker takes the next batch, reads it from
/// the target into its own buffer and writes it at the batch's offset: no
/// hand-off between threads, and both copies of a batch run on one core
/// while its buffer is still in that core's cache. (A reader thread feeding
/// a writer thread, with the file fallocated first, took about 15% more CPU
/// and left the reader as the bottleneck.)
///
/// The image grows by these writes, never sized first: on a tmpfs mounted
/// huge=within_size a write below i_size gets a 2 MiB folio, one at its
/// end only a folio of the write's size (256 KiB). Measured on this VM
/// (1 GiB, same runs): appending 1.4 s (plain /dev/shm 2.0-2.7 s); 2 MiB
/// folios 3.5-10 s, whether by pwrite into the pre-sized file, by 2 MiB
/// batches, or by process_vm_readv straight into a shared mapping of it
/// (one copy fewer, but 82% of the time went to clearing the fresh huge
/// pages: free 2 MiB blocks are handed back to the host by the balloon's
/// free page reporting, so each is faulted in anew there). On a plain tmpfs
/// the mapping is slower too (2.7 s vs 2.0 s: every 4 KiB page is zeroed by
/// its fault, then copied).
fn copy_runs(
    pid: i32,
    runs: &[Run],
    total: u64,
    out: File,
    out_path: &std::path::Path,
    bar: &Progress,
) -> Result<PageStats> {
    let mut st = PageStats::default();
    if total == 0 {
        return Ok(st);
    }
    let chunks = batches(runs, CHUNK);
    let mut offsets = Vec::with_capacity(chunks.len());
    let mut at = 0u64;
    for b in &chunks {
        offsets.push(at);
        at += b.iter().map(|r| r.len).sum::<u64>();
    }
    let workers = if total >= PARALLEL_MIN {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS)
            .min(chunks.len())
    } else {
        1
    };
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let out = &out;
    let work = || -> Result<(Duration, Duration)> {
        let mut owned = take_buf((CHUNK as u64).min(total) as usize)?;
        let buf = owned.as_mut_slice();
        let mut mem = None;
        let (mut read, mut write) = (Duration::ZERO, Duration::ZERO);
        let res = (|| -> Result<()> {
            while !failed.load(Ordering::Relaxed) {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = chunks.get(i) else { break };
                let n: usize = b.iter().map(|r| r.len as usize).sum();
                let t = Instant::now();
                crate::error::check_interrupt()?;
                read_batch(pid, &mut mem, b, &mut buf[..n])?;
                let t2 = Instant::now();
                out.write_all_at(&buf[..n], offsets[i]).path_ctx(out_path)?;
                read += t2 - t;
                write += t2.elapsed();
                bar.inc(n as u64);
            }
            Ok(())
        })();
        if res.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        keep_buf(owned);
        res.map(|()| (read, write))
    };
    let results: Vec<Result<(Duration, Duration)>> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..workers).map(|_| s.spawn(work)).collect();
        let mut all = vec![work()];
        all.extend(
            helpers
                .into_iter()
                .map(|h| h.join().expect("page copy worker panicked")),
        );
        all
    });
    for r in results {
        // Per worker, in parallel: the longest one is what the dump waited.
        let (read, write) = r?;
        st.memdump = st.memdump.max(read);
        st.memwrite = st.memwrite.max(write);
    }
    Ok(st)
}

/// Split runs into `n` parts of about equal bytes, keeping address order.
pub(crate) fn split(runs: &[Run], n: usize) -> Vec<Vec<Run>> {
    let total: u64 = runs.iter().map(|r| r.len).sum();
    let per = (total / n as u64).div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
    batches(runs, per as usize)
}

/// Save a shared anonymous memory object once: `pagemap-shmem-<shmid>.img` and
/// its pages, read through `/proc/PID/map_files` so pages no process has
/// touched through its own page tables are found too (SEEK_DATA/SEEK_HOLE).
pub fn dump_shmem(
    dir: &ImageDir,
    pid: i32,
    vma: &Vma,
    shmid: u64,
    pages_id: u32,
) -> Result<PageStats> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;

    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", vma.start(), vma.end());
    let f = File::open(&path).path_ctx(&path)?;
    let size = f.metadata().path_ctx(&path)?.len();
    let fd = f.as_raw_fd();
    let mut runs = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < size {
        let data = match lseek(fd, off, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(Error::io(&path, e.into())),
        };
        let hole = lseek(fd, data, Whence::SeekHole)
            .map_err(|e| Error::io(&path, e.into()))?
            .min(size as i64);
        let a = (data as u64) & !(PAGE_SIZE - 1);
        let b = (hole as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        runs.push((a, b - a));
        off = hole;
    }
    let name = format!("pagemap-shmem-{shmid}.img");
    write_pagemap(
        dir,
        &name,
        pages_id,
        runs.iter().map(|&(a, l)| (a, l, PE_PRESENT)),
    )?;
    let pages_name = format!("pages-{pages_id}.img");
    let mut out = dir.raw_writer(&pages_name)?;
    let mut st = PageStats {
        shpages_scanned: size / PAGE_SIZE,
        ..Default::default()
    };
    let mut buf = vec![0u8; CHUNK.min(size as usize).max(PAGE_SIZE as usize)];
    for (a, len) in runs {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            let t = Instant::now();
            f.read_exact_at(&mut buf[..n], a + done).path_ctx(&path)?;
            st.memdump += t.elapsed();
            let t = Instant::now();
            out.write_all(&buf[..n]).path_ctx(dir.file(&pages_name))?;
            st.memwrite += t.elapsed();
            done += n as u64;
        }
        st.shpages_written += len / PAGE_SIZE;
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_matches_pagemap_read() {
        // A sleeping child holds still: both ways of finding its populated
        // pages must give the same runs and the same scanned count.
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        std::thread::sleep(Duration::from_millis(50));
        let vmas: Vec<Vma> = crate::proc::read_smaps(pid)
            .unwrap()
            .iter()
            .map(|s| super::super::vma::classify(pid, s).unwrap())
            .collect();
        let path = format!("/proc/{pid}/pagemap");
        let pm = File::open(&path).unwrap();
        let read = collect_runs_read(&pm, &path, &vmas).unwrap();
        let scan = collect_runs_scan(&pm, &vmas);
        let _ = child.kill();
        let _ = child.wait();
        let scan = match scan {
            Ok(s) => s,
            Err(e) => {
                eprintln!("no PAGEMAP_SCAN here ({e}): skipped");
                return;
            }
        };
        assert!(!read.0.is_empty());
        assert_eq!(scan, read);
    }

    #[test]
    fn batches_split_at_limit() {
        let runs = vec![
            Run {
                addr: 0x1000,
                len: CHUNK as u64 + 0x2000,
                readable: true,
            },
            Run {
                addr: 0x10_0000_0000,
                len: 0x1000,
                readable: false,
            },
        ];
        let b = batches(&runs, CHUNK);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].iter().map(|r| r.len).sum::<u64>(), CHUNK as u64);
        assert_eq!(b[1].len(), 2);
        assert_eq!(b[1][0].addr, 0x1000 + CHUNK as u64);
        assert_eq!(b[1][0].len, 0x2000);
        assert!(!b[1][1].readable);
    }
}
