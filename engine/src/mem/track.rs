//! Memory change tracking between a pre-dump and the dump that follows it:
//! userfaultfd write-protection in async mode plus PAGEMAP_SCAN (this
//! kernel has no soft-dirty bits; KERNEL-NOTES §5).
//!
//! A pre-dump creates a uffd inside each task, takes it over, closes the
//! task's copy, registers the private VMAs for WP_ASYNC and arms them with
//! one write-protecting scan, all while the task is stopped, then reads the
//! memory. Tracking lives as long as a uffd does: the pre-dump leaves them
//! to a small holder process (its pid in [`TRACK_FILE`] of the pre-dump
//! images) that ends when the tracked tasks do or when a dump on top of the
//! pre-dump stops it. That dump asks PAGEMAP_SCAN which pages were written
//! since: the others are the parent's (PE_PARENT). Unregistered memory (new
//! VMAs, a VMA with a uffd of the program's own) always reads as written.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use tracing::debug;

use super::vma::{Contents, Vma};
use super::PAGE_SIZE;
use crate::error::{Error, PathCtx, Result, TaskCtx};
use crate::sys::{clone3, pagemap, pidfd, uffd};
use crate::task::remote::Remote;

/// In a pre-dump's image directory: the holder's pid.
pub const TRACK_FILE: &str = "stasis-mem-track";

fn tracked(v: &Vma) -> bool {
    matches!(v.contents, Contents::Anon | Contents::CowOnly)
}

/// Start tracking the stopped task `pid` (remote calls through `r`):
/// returns our uffd, or None when the kernel refuses (nothing is tracked
/// then and the next dump saves every page).
pub fn start(r: &mut Remote, pid: i32, vmas: &[Vma]) -> Result<Option<OwnedFd>> {
    // User-mode-only: allowed without CAP_SYS_PTRACE in the task (a
    // container's); async write-protect faults never reach the handler.
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | uffd::UFFD_USER_MODE_ONLY;
    let n = r.raw(pid, libc::SYS_userfaultfd, [flags as u64, 0, 0, 0, 0, 0])?;
    if n < 0 {
        debug!(pid, err = -n, "no userfaultfd: memory not tracked");
        return Ok(None);
    }
    let got = pidfd::pidfd_open(pid).and_then(|p| pidfd::pidfd_getfd(&p, n as i32));
    r.call(
        pid,
        "close (userfaultfd)",
        libc::SYS_close,
        [n as u64, 0, 0, 0, 0, 0],
    )?;
    let fd = got.task_ctx(pid, "take the userfaultfd (pidfd_getfd)")?;
    // Without WP_UNPOPULATED: a page first populated later has no
    // protection and reads as written, and empty anonymous ptes get no
    // markers (which read like swapped pages).
    if let Err(e) = uffd::api(&fd, uffd::UFFD_FEATURE_WP_ASYNC) {
        debug!(pid, "uffd WP_ASYNC refused ({e}): memory not tracked");
        return Ok(None);
    }
    let path = format!("/proc/{pid}/pagemap");
    let pm = File::open(&path).path_ctx(&path)?;
    let mut out = Vec::new();
    for v in vmas.iter().filter(|v| tracked(v)) {
        if let Err(e) = uffd::register(
            &fd,
            v.start(),
            v.end() - v.start(),
            uffd::UFFDIO_REGISTER_MODE_WP,
        ) {
            // Already the program's own uffd's, or not trackable: always
            // dumped in full.
            debug!(pid, start = v.start(), "not tracked: {e}");
            continue;
        }
        out.clear();
        pagemap::scan(
            &pm,
            v.start(),
            v.end(),
            pagemap::PAGE_IS_WRITTEN,
            pagemap::PAGE_IS_WRITTEN,
            pagemap::PM_SCAN_WP_MATCHING | pagemap::PM_SCAN_CHECK_WPASYNC,
            &mut out,
        )
        .path_ctx(&path)?;
    }
    Ok(Some(fd))
}

/// The pages of `pid`'s private VMAs written since tracking was armed, as
/// sorted (start, end) ranges.
pub fn written(pid: i32, vmas: &[Vma]) -> Result<Vec<(u64, u64)>> {
    let path = format!("/proc/{pid}/pagemap");
    let pm = File::open(&path).path_ctx(&path)?;
    let mut regions = Vec::new();
    for v in vmas.iter().filter(|v| tracked(v)) {
        pagemap::scan(
            &pm,
            v.start(),
            v.end(),
            pagemap::PAGE_IS_WRITTEN,
            pagemap::PAGE_IS_WRITTEN,
            0,
            &mut regions,
        )
        .path_ctx(&path)?;
    }
    let mut out: Vec<(u64, u64)> = regions.iter().map(|r| (r.start, r.end)).collect();
    out.sort_unstable();
    Ok(out)
}

/// Hand the uffds to a holder process that keeps tracking alive until the
/// tasks `pids` have all exited (or it is stopped); its pid goes to
/// `dir/TRACK_FILE`.
pub fn keep(dir: &Path, fds: Vec<OwnedFd>, pids: &[i32]) -> Result<()> {
    if fds.is_empty() {
        return Ok(());
    }
    let pidfds: Vec<OwnedFd> = pids
        .iter()
        .filter_map(|&p| pidfd::pidfd_open(p).ok())
        .collect();
    match clone3::clone3_fork(0, &[], 0)
        .map_err(|e| Error::Other(format!("fork the memory tracker: {e}")))?
    {
        clone3::Fork::Child => holder(&fds, &pidfds),
        clone3::Fork::Parent { pid, .. } => {
            let f = dir.join(TRACK_FILE);
            std::fs::write(&f, format!("{pid}\n")).path_ctx(&f)?;
            debug!(
                holder = pid,
                tasks = pids.len(),
                "memory tracking handed over"
            );
            Ok(())
        }
    }
}

/// The holder: nothing but the uffds and the tasks' pidfds stays open; it
/// waits for every task to exit.
fn holder(fds: &[OwnedFd], pidfds: &[OwnedFd]) -> ! {
    let keep: Vec<i32> = fds.iter().chain(pidfds).map(|f| f.as_raw_fd()).collect();
    let _ = nix::unistd::setsid();
    let open: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in open.into_iter().filter(|fd| !keep.contains(fd)) {
        let _ = nix::unistd::close(fd);
    }
    // A pidfd of an exited task refuses signal 0 (ESRCH).
    let mut left: Vec<&OwnedFd> = pidfds.iter().collect();
    while !left.is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(500));
        left.retain(|p| pidfd::pidfd_send_signal(*p, 0).is_ok());
    }
    clone3::child_exit(0)
}

/// Stop the holder of a pre-dump in `dir`, if any (tracking ends).
pub fn stop(dir: &Path) {
    let f = dir.join(TRACK_FILE);
    let Some(pid) = std::fs::read_to_string(&f)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    if holder_alive(pid) {
        let _ = crate::sys::misc::raw_kill(pid, libc::SIGKILL);
    }
    let _ = std::fs::remove_file(&f);
}

/// Whether the pre-dump in `dir` is still tracked (its holder runs).
pub fn active(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(TRACK_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(holder_alive)
}

/// A live process that is one of our holders (same executable as us).
fn holder_alive(pid: i32) -> bool {
    let exe = |p: String| std::fs::read_link(p).ok();
    let alive = crate::proc::read_stat(pid).is_ok_and(|s| s.state != 'Z');
    alive && exe(format!("/proc/{pid}/exe")) == exe("/proc/self/exe".to_string())
}

/// Split `runs` of pages into (saved here, in the parent): a page is the
/// parent's when the parent image has it (`parent`, sorted ranges) and it
/// was not written since (`written`, sorted ranges).
pub fn split_runs(
    runs: &[super::pages::Run],
    parent: &[(u64, u64)],
    written: &[(u64, u64)],
) -> (Vec<super::pages::Run>, Vec<(u64, u64)>) {
    let inside = |set: &[(u64, u64)], a: u64| {
        let i = set.partition_point(|r| r.1 <= a);
        set.get(i).is_some_and(|r| r.0 <= a)
    };
    let mut here: Vec<super::pages::Run> = Vec::new();
    let mut up: Vec<(u64, u64)> = Vec::new();
    for r in runs {
        let mut a = r.addr;
        while a < r.addr + r.len {
            if inside(parent, a) && !inside(written, a) {
                match up.last_mut() {
                    Some(u) if u.1 == a => u.1 += PAGE_SIZE,
                    _ => up.push((a, a + PAGE_SIZE)),
                }
            } else {
                match here.last_mut() {
                    Some(h) if h.addr + h.len == a && h.readable == r.readable => {
                        h.len += PAGE_SIZE
                    }
                    _ => here.push(super::pages::Run {
                        addr: a,
                        len: PAGE_SIZE,
                        readable: r.readable,
                    }),
                }
            }
            a += PAGE_SIZE;
        }
    }
    (here, up)
}

/// The ranges (sorted) a parent image has pages of, here or further up.
pub fn parent_ranges(parent: &Path, name: &str) -> Result<Vec<(u64, u64)>> {
    use stasis_proto::criu::{PagemapEntry, PagemapHead};
    let pd = crate::images::ImageDir::open(parent)?;
    if !pd.exists(name) {
        return Ok(Vec::new());
    }
    let mut r = pd.reader(
        name,
        crate::images::common(stasis_proto::image::magic::PAGEMAP),
    )?;
    let _: Option<PagemapHead> = r.read_entry()?;
    let mut out = Vec::new();
    while let Some(e) = r.read_entry::<PagemapEntry>()? {
        let nr = e.nr_pages.unwrap_or(e.compat_nr_pages as u64);
        let flags = e.flags.unwrap_or(super::PE_PRESENT);
        if flags & (super::PE_PRESENT | super::PE_PARENT) != 0 || e.in_parent == Some(true) {
            out.push((e.vaddr, e.vaddr + nr * PAGE_SIZE));
        }
    }
    out.sort_unstable();
    Ok(out)
}
