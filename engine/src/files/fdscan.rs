//! One look at every fd of the tree before any task is dumped: its number
//! and link text (and the stat of what may be a pty master). Unix and
//! inet sockets, pty masters and the fd tables all need them; reading /proc
//! once instead of once per pass saves two readlinks per fd. The tree is
//! frozen, so they stay valid until the dump itself changes an fd table
//! (moving pending connections), which scans again.
//!
//! Other fds are not stat'ed here: the fd table dump stats its stolen
//! duplicate (no /proc path walk) on its own thread, while this scan holds
//! up the whole dump. The scan itself is split over two threads.

use std::collections::HashMap;

use crate::error::Result;
use crate::proc;

/// Fewer processes than this in each half are scanned on one thread.
const SPLIT_MIN: usize = 8;

/// The fds of `pid`: numbers, link texts and the stats of possible pty
/// masters.
fn scan_pid(pid: i32) -> Result<Vec<ScannedFd>> {
    let fds = proc::read_fd_numbers(pid)?;
    let mut v = Vec::with_capacity(fds.len());
    for fd in fds {
        let link = proc::read_fd_link(pid, fd)
            .ok()
            .map(|l| l.to_string_lossy().into_owned());
        let st = link
            .as_deref()
            .filter(|l| maybe_ptmx(l))
            .and_then(|_| std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok());
        v.push(ScannedFd { fd, link, st });
    }
    Ok(v)
}

/// Whether an fd with link text `link` may be a pty master: opened as
/// `/dev/ptmx` or `/dev/pts/ptmx`, seen from here (a container's shows its
/// rootfs path, or the path in its own mounts). Any other link (files in
/// `/dev/shm`, say) is not stat'ed: a /proc stat is ~6 µs an fd.
fn maybe_ptmx(link: &str) -> bool {
    link.starts_with('/') && link.ends_with("/ptmx")
}

pub(crate) struct ScannedFd {
    pub fd: i32,
    /// The /proc/PID/fd/N link text; None if it could not be read (the
    /// fd table dump reads it again and reports the error).
    pub link: Option<String>,
    /// stat through the link, of possible pty masters only (see
    /// [`maybe_ptmx`]); None otherwise or if it failed.
    pub st: Option<std::fs::Metadata>,
}

#[derive(Default)]
pub(crate) struct FdScan {
    by_pid: HashMap<i32, Vec<ScannedFd>>,
}

impl FdScan {
    /// Every fd of `pids`, sorted by number.
    pub(crate) fn scan(pids: &[i32]) -> Result<FdScan> {
        let by_pid = proc::map_halves(pids, SPLIT_MIN, |pid| Ok((pid, scan_pid(pid)?)))
            .into_iter()
            .collect::<Result<_>>()?;
        Ok(FdScan { by_pid })
    }

    /// The scanned fds of `pid` (empty if it was not scanned).
    pub(crate) fn fds(&self, pid: i32) -> &[ScannedFd] {
        self.by_pid.get(&pid).map_or(&[], |v| v.as_slice())
    }

    /// The scanned processes.
    pub(crate) fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.by_pid.keys().copied()
    }

    /// How many fds were scanned in all.
    pub(crate) fn total(&self) -> usize {
        self.by_pid.values().map(Vec::len).sum()
    }

    /// The scanned fds of `pid`, once (the fd table dump takes them), or
    /// None if it was not scanned.
    pub(crate) fn take(&mut self, pid: i32) -> Option<Vec<ScannedFd>> {
        self.by_pid.remove(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::maybe_ptmx;

    #[test]
    fn ptmx_links() {
        assert!(maybe_ptmx("/dev/ptmx"));
        assert!(maybe_ptmx("/dev/pts/ptmx"));
        assert!(maybe_ptmx("/run/ctr/rootfs/dev/pts/ptmx"));
        assert!(!maybe_ptmx("/dev/pts/3"));
        assert!(!maybe_ptmx("/dev/shm/data"));
        assert!(!maybe_ptmx("/dev/null"));
        assert!(!maybe_ptmx("anon_inode:ptmx"));
    }
}
