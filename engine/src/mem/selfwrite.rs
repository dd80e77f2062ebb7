//! Big private memory written to the image by the target itself.
//!
//! The dumper's own copy reads the stopped target with process_vm_readv
//! into a buffer and writes that: two copies, and every 4 KiB page pinned
//! and unpinned. `pwritev` calls made by the target copy straight from its
//! memory into the image instead: one copy, no pinning (1 GiB into a
//! huge-page tmpfs here: ~120 ms of writing against ~150 ms per core for
//! two workers). The image's fd reaches the target over a socketpair it
//! makes (SCM_RIGHTS); the writes run on a thread it clones for them, which
//! closes the fd and exits when done (see [`write_runs`]).
//!
//! Used only where the target's writes cost it nothing the dumper's would
//! not (see [`allowed`]): the image's page cache is charged to the writer's
//! memory cgroup, so the target must be in the dumper's; and a file size
//! limit below the image's size would raise SIGXFSZ in it. Its I/O counters
//! (`/proc/PID/io`) do count the bytes, and its pid namespace gives the
//! writing thread a tid.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
use tracing::debug;

use super::pages::{read_batch, PageStats, Run};
use crate::error::{Error, PathCtx, Result};
use crate::proc::cgroup::{find_cgroup_v2, read_cgroup, CgroupEntry};
use crate::progress::Progress;
use crate::sys::pidfd::{pidfd_getfd, pidfd_open_thread};
use crate::sys::sock::readable;
use crate::task::remote::{Call, Kept, Remote, BATCH_MAX};

/// Below this many bytes the dumper copies: handing the fd over costs the
/// target three more round trips.
pub const MIN: u64 = 4 << 20;
/// Bytes per call. A tmpfs mounted huge=within_size gives a write that
/// extends the file folios up to the write's size: 2 MiB ones, on this
/// VM, come from free blocks the balloon has handed back to the host and
/// cost it ~3 s per GiB to fault in anew (1 GiB in one write: 0.7-3.3 s,
/// in 256 KiB writes: 0.13-0.2 s). Small enough for a call's iovecs (64 at
/// most) to stay far below UIO_MAXIOV.
const MAX_CALL: u64 = 256 << 10;
/// `struct msghdr`, `struct iovec` and a `cmsghdr` with one fd (x86_64).
const MSGHDR_LEN: u64 = 56;
const IOVEC_LEN: u64 = 16;
const CMSG_SPACE_FD: u64 = 24;
const CMSG_LEN_FD: u64 = 20;
/// Where the iovecs go in the free stretch (the tid word comes first).
const IOVEC_AT: u64 = 16;

/// A task whose scratch area (see task::remote) may be used to have it
/// write: the area's token, taken back when done, and a free stretch of it.
pub struct TargetIo {
    kept: Option<Kept>,
    sig_ign: u64,
    /// `[data, data + data_len)`, as offsets into the scratch area.
    data: u64,
    data_len: u64,
}

impl TargetIo {
    pub fn new(kept: Kept, sig_ign: u64, data: u64, data_len: u64) -> TargetIo {
        TargetIo {
            kept: Some(kept),
            sig_ign,
            data,
            data_len,
        }
    }

    /// The scratch area, still mapped (None if it was lost on an error).
    pub fn into_kept(self) -> Option<Kept> {
        self.kept
    }

    /// Run `f` with remote calls on the scratch area (`f` gets the address
    /// of the free stretch); the task gets its registers back right after,
    /// so it is never left mid-call while we wait for its writes.
    fn with_remote<T>(&mut self, f: impl FnOnce(&mut Remote, u64) -> Result<T>) -> Result<T> {
        let kept = self
            .kept
            .take()
            .ok_or_else(|| Error::Other("remote scratch area lost".into()))?;
        let mut r = Remote::from_kept(kept, self.sig_ign);
        let data = r.scratch() + self.data;
        let res = f(&mut r, data);
        self.kept = r.keep_scratch()?;
        res
    }
}

/// Whether `pid` may write an image of `total` bytes for the dumper: same
/// memory cgroup (v1 `memory` hierarchy and v2 line alike, as this reader
/// sees both) and a file size limit that lets it.
pub fn allowed(pid: i32, total: u64) -> bool {
    let fsize_ok =
        crate::proc::read_limits(pid).is_ok_and(|l| l[libc::RLIMIT_FSIZE as usize].0 >= total);
    let ours = read_cgroup(std::process::id() as i32);
    let theirs = read_cgroup(pid);
    let same_memcg = match (&ours, &theirs) {
        (Ok(a), Ok(b)) => memcg(a) == memcg(b),
        _ => false,
    };
    debug!(pid, fsize_ok, same_memcg, "target writes its own pages?");
    fsize_ok && same_memcg
}

/// The cgroups that charge a process's page cache.
fn memcg(e: &[CgroupEntry]) -> (Option<&str>, Option<&str>) {
    (
        e.iter()
            .find(|e| e.has_controller("memory"))
            .map(|e| e.path.as_str()),
        find_cgroup_v2(e).map(|e| e.path.as_str()),
    )
}

/// One `pwritev` of consecutive readable runs at file offset `off`.
struct Write {
    off: u64,
    iov: Vec<(u64, u64)>,
    len: u64,
}

/// Split `runs` (laid out back to back in the image from offset 0) into
/// the target's writes and the pieces left to the dumper (unreadable runs,
/// which the target's own copy would fault on), each with its offset.
fn plan(runs: &[Run]) -> (Vec<Write>, Vec<(Run, u64)>) {
    let mut writes: Vec<Write> = Vec::new();
    let mut mine = Vec::new();
    let mut off = 0u64;
    let mut open = false;
    for r in runs {
        if !r.readable {
            mine.push((*r, off));
            off += r.len;
            open = false;
            continue;
        }
        let (mut addr, mut left) = (r.addr, r.len);
        while left > 0 {
            let full = writes.last().is_none_or(|w| w.len == MAX_CALL);
            if !open || full {
                writes.push(Write {
                    off,
                    iov: Vec::new(),
                    len: 0,
                });
                open = true;
            }
            let w = writes.last_mut().unwrap();
            let take = left.min(MAX_CALL - w.len);
            w.iov.push((addr, take));
            w.len += take;
            addr += take;
            left -= take;
            off += take;
        }
    }
    (writes, mine)
}

/// The runs of `w` from byte `done` on: what a short write left undone.
fn rest(w: &Write, mut done: u64) -> Vec<(Run, u64)> {
    let mut out = Vec::new();
    let mut off = w.off;
    for &(addr, len) in &w.iov {
        if done >= len {
            done -= len;
        } else {
            out.push((
                Run {
                    addr: addr + done,
                    len: len - done,
                    readable: true,
                },
                off + done,
            ));
            done = 0;
        }
        off += len;
    }
    out
}

/// Write `runs` of `pid` into `out` (empty) by the target's own `pwritev`.
/// None if it cannot (nothing was written: the caller copies). Writes the
/// target could not finish are done by the dumper.
///
/// The writes run on a thread the target clones for them (see
/// [`Remote::spawn_batch`]), which closes its copy of the image's fd and
/// exits when done: while it writes, the task itself is stopped with its
/// own registers, so a dumper killed meanwhile leaves it unharmed. A group
/// of writes that does not fit one scratch area gets a thread (and fd) of
/// its own.
pub fn write_runs(
    t: &mut TargetIo,
    pid: i32,
    runs: &[Run],
    out: &File,
    out_path: &Path,
    bar: &Progress,
) -> Result<Option<PageStats>> {
    // The first word of the free stretch takes the thread's tid, iovecs follow.
    let room = (t.data_len.saturating_sub(IOVEC_AT) / IOVEC_LEN) as usize;
    // A thread pidfd of the leader: the kernel has them (Linux 6.9), to wait
    // for the writing thread with, and it serves pidfd_getfd.
    let pidfd = match pidfd_open_thread(pid) {
        Ok(fd) if room >= (MAX_CALL / super::PAGE_SIZE) as usize => fd,
        _ => return Ok(None),
    };
    let t0 = Instant::now();
    let (writes, mut mine) = plan(runs);
    let mut i = 0;
    while i < writes.len() {
        let Some(tfd) = t.with_remote(|r, data| hand_over(r, &pidfd, out, data))? else {
            if i == 0 {
                return Ok(None);
            }
            mine.extend(writes[i..].iter().flat_map(|w| rest(w, 0)));
            break;
        };
        // As many writes as fit the scratch area's iovecs and batch table
        // (with the clone and the close).
        let mut calls: Vec<Call> = Vec::new();
        let mut iov = Vec::new();
        let from = i;
        while i < writes.len()
            && calls.len() + 2 < BATCH_MAX
            && iov.len() / IOVEC_LEN as usize + writes[i].iov.len() <= room
        {
            let w = &writes[i];
            let at = iov.len() as u64;
            for &(a, l) in &w.iov {
                iov.extend_from_slice(&a.to_ne_bytes());
                iov.extend_from_slice(&l.to_ne_bytes());
            }
            calls.push((
                libc::SYS_pwritev,
                [tfd as u64, at, w.iov.len() as u64, w.off, 0, 0],
            ));
            i += 1;
        }
        calls.push((libc::SYS_close, [tfd as u64, 0, 0, 0, 0, 0]));
        let spawned = t.with_remote(|r, data| {
            for c in calls.iter_mut().filter(|c| c.0 == libc::SYS_pwritev) {
                c.1[1] += data + IOVEC_AT;
            }
            r.write(data + IOVEC_AT, &iov)?;
            r.spawn_batch(pid, &calls, data)
        });
        let tid = match spawned {
            Ok(Some(tid)) => tid,
            other => {
                // Best effort: the target keeps no fd of ours.
                let close = (libc::SYS_close, [tfd as u64, 0, 0, 0, 0, 0]);
                let _ = t.with_remote(|r, _| r.batch(pid, &[close]));
                other?;
                mine.extend(writes[from..].iter().flat_map(|w| rest(w, 0)));
                break;
            }
        };
        // The tid the clone stored is the one the target's pid namespace
        // knows; gone already if not found.
        if let Some(host) = host_tid(pid, tid) {
            wait_thread(pid, host)?;
        }
        let res = t.with_remote(|r, _| r.spawned_results(calls.len()))?;
        for (w, &r) in writes[from..i].iter().zip(&res) {
            let done = (r.max(0) as u64).min(w.len);
            if done < w.len {
                debug!(
                    pid,
                    off = w.off,
                    len = w.len,
                    result = r,
                    "target's write cut short"
                );
                mine.extend(rest(w, done));
            }
            bar.inc(done);
        }
    }
    let mut st = PageStats {
        memwrite: t0.elapsed(),
        ..Default::default()
    };
    if !mine.is_empty() {
        let t1 = Instant::now();
        mine.sort_unstable_by_key(|&(_, off)| off);
        let mut mem = None;
        let mut buf = Vec::new();
        for (r, off) in mine {
            buf.resize(r.len as usize, 0);
            read_batch(pid, &mut mem, &[r], &mut buf)?;
            std::os::unix::fs::FileExt::write_all_at(out, &buf, off).path_ctx(out_path)?;
            bar.inc(r.len);
        }
        st.memdump = t1.elapsed();
    }
    Ok(Some(st))
}

/// The host tid of the thread of `pid` whose own pid namespace calls it
/// `local` (the same tid unless the process is in a pid namespace of its
/// own), or None if there is no such thread (any more).
fn host_tid(pid: i32, local: i32) -> Option<i32> {
    let is = |tid: i32| {
        crate::proc::read_status_tid(pid, tid)
            .ok()
            .and_then(|s| s.ns_pid.last().copied())
            == Some(local)
    };
    if is(local) {
        return Some(local);
    }
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .find(|&t| is(t))
}

/// Wait until thread `tid` of `pid` has exited (gone already counts). An
/// interruption (SIGINT, SIGTERM) is reported only once it has: it runs
/// code in the scratch area, which the error path unmaps.
fn wait_thread(pid: i32, tid: i32) -> Result<()> {
    let mut stopped = None;
    let mut note_interrupt = || {
        if stopped.is_none() {
            stopped = crate::error::check_interrupt().err();
        }
    };
    match pidfd_open_thread(tid) {
        Ok(fd) => loop {
            match readable(fd.as_fd(), 100) {
                Ok(true) => break,
                Ok(false) => note_interrupt(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => note_interrupt(),
                Err(e) => {
                    debug!(pid, tid, "poll of the writing thread's pidfd: {e}");
                    wait_gone(pid, tid);
                    break;
                }
            }
        },
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(e) => {
            debug!(pid, tid, "pidfd of the writing thread: {e}");
            wait_gone(pid, tid);
        }
    }
    stopped.map_or(Ok(()), Err)
}

/// The slow way of [`wait_thread`]: until its /proc entry is gone.
fn wait_gone(pid: i32, tid: i32) {
    let path = format!("/proc/{pid}/task/{tid}");
    while Path::new(&path).exists() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Give the target a copy of `file`'s fd: it makes a socketpair, we take
/// one end (pidfd_getfd) and send the fd over it, it receives it
/// (close-on-exec) and closes both ends. Its fd number, or None if any step
/// was refused (the target is left as it was).
fn hand_over(remote: &mut Remote, pidfd: &OwnedFd, file: &File, data: u64) -> Result<Option<i32>> {
    let pid = remote.pid;
    let pair = remote.batch(
        pid,
        &[(
            libc::SYS_socketpair,
            [
                libc::AF_UNIX as u64,
                (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64,
                0,
                data,
                0,
                0,
            ],
        )],
    )?;
    if pair[0] < 0 {
        debug!(pid, errno = -pair[0], "socketpair in the target refused");
        return Ok(None);
    }
    let mut b = [0u8; 8];
    remote.read(data, &mut b)?;
    let s0 = i32::from_ne_bytes(b[0..4].try_into().unwrap());
    let s1 = i32::from_ne_bytes(b[4..8].try_into().unwrap());
    let sent = pidfd_getfd(pidfd, s0).and_then(|sock| {
        sendmsg::<UnixAddr>(
            sock.as_raw_fd(),
            &[IoSlice::new(&[0])],
            &[ControlMessage::ScmRights(&[file.as_raw_fd()])],
            MsgFlags::empty(),
            None,
        )
        .map_err(std::io::Error::from)
    });
    let closes: [Call; 2] = [
        (libc::SYS_close, [s0 as u64, 0, 0, 0, 0, 0]),
        (libc::SYS_close, [s1 as u64, 0, 0, 0, 0, 0]),
    ];
    if let Err(e) = sent {
        debug!(pid, "sending the image fd failed: {e}");
        remote.batch(pid, &closes)?;
        return Ok(None);
    }
    // msghdr, then its one iovec (one byte, at `byte`) and the cmsg buffer.
    let (hdr, iov, byte, cmsg) = (
        data + 16,
        data + 16 + MSGHDR_LEN,
        data + 16 + MSGHDR_LEN + IOVEC_LEN,
        data + 16 + MSGHDR_LEN + IOVEC_LEN + 8,
    );
    let mut m = [0u8; (MSGHDR_LEN + IOVEC_LEN) as usize];
    m[16..24].copy_from_slice(&iov.to_ne_bytes());
    m[24..32].copy_from_slice(&1u64.to_ne_bytes());
    m[32..40].copy_from_slice(&cmsg.to_ne_bytes());
    m[40..48].copy_from_slice(&CMSG_SPACE_FD.to_ne_bytes());
    m[56..64].copy_from_slice(&byte.to_ne_bytes());
    m[64..72].copy_from_slice(&1u64.to_ne_bytes());
    remote.write(hdr, &m)?;
    remote.write(cmsg, &[0u8; CMSG_SPACE_FD as usize])?;
    let recv: Call = (
        libc::SYS_recvmsg,
        [
            s1 as u64,
            hdr,
            (libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT) as u64,
            0,
            0,
            0,
        ],
    );
    let res = remote.batch(pid, &[recv, closes[0], closes[1]])?;
    let mut c = [0u8; CMSG_SPACE_FD as usize];
    remote.read(cmsg, &mut c)?;
    let len = u64::from_ne_bytes(c[0..8].try_into().unwrap());
    let level = i32::from_ne_bytes(c[8..12].try_into().unwrap());
    let kind = i32::from_ne_bytes(c[12..16].try_into().unwrap());
    let fd = i32::from_ne_bytes(c[16..20].try_into().unwrap());
    if res[0] != 1 || len != CMSG_LEN_FD || level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        debug!(
            pid,
            result = res[0],
            len,
            level,
            kind,
            "target received no fd"
        );
        return Ok(None);
    }
    Ok(Some(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(addr: u64, len: u64, readable: bool) -> Run {
        Run {
            addr,
            len,
            readable,
        }
    }

    #[test]
    fn plan_splits_at_unreadable_runs_and_limits() {
        let runs = [
            run(0x1000, 0x2000, true),
            run(0x5000, 0x1000, true),
            run(0x9000, 0x1000, false),
            run(0xa000, MAX_CALL + 0x1000, true),
        ];
        let (w, mine) = plan(&runs);
        assert_eq!(w.len(), 3);
        assert_eq!((w[0].off, w[0].len, w[0].iov.len()), (0, 0x3000, 2));
        assert_eq!(mine, vec![(runs[2], 0x3000)]);
        assert_eq!((w[1].off, w[1].len), (0x4000, MAX_CALL));
        assert_eq!(w[1].iov, vec![(0xa000, MAX_CALL)]);
        assert_eq!(
            (w[2].off, w[2].iov.clone()),
            (0x4000 + MAX_CALL, vec![(0xa000 + MAX_CALL, 0x1000)])
        );
    }

    #[test]
    fn plan_caps_bytes_per_call() {
        let pages = MAX_CALL / 0x1000;
        let runs: Vec<Run> = (0..pages + 1)
            .map(|i| run(0x10_0000 + i * 0x2000, 0x1000, true))
            .collect();
        let (w, mine) = plan(&runs);
        assert!(mine.is_empty());
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].iov.len() as u64, w[0].len), (pages, MAX_CALL));
        assert_eq!((w[1].off, w[1].iov.len()), (MAX_CALL, 1));
    }

    #[test]
    fn rest_skips_what_was_written() {
        let w = Write {
            off: 0x10000,
            iov: vec![(0x1000, 0x2000), (0x8000, 0x1000)],
            len: 0x3000,
        };
        assert_eq!(
            rest(&w, 0x1800),
            vec![
                (run(0x2800, 0x800, true), 0x11800),
                (run(0x8000, 0x1000, true), 0x12000)
            ]
        );
        assert!(rest(&w, 0x3000).is_empty());
        assert_eq!(rest(&w, 0).len(), 2);
    }
}
