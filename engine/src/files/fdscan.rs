//! One look at every fd of the tree before any task is dumped: its number,
//! link text and stat. Unix sockets, pty masters and the fd tables all need
//! them; reading /proc once instead of once per pass saves two readlinks
//! and a stat per fd. The tree is frozen, so they stay valid until the dump
//! itself changes an fd table (moving pending connections), which scans
//! again.

use std::collections::HashMap;

use crate::error::Result;
use crate::proc;

pub(crate) struct ScannedFd {
    pub fd: i32,
    /// The /proc/PID/fd/N link text; None if it could not be read (the
    /// fd table dump reads it again and reports the error).
    pub link: Option<String>,
    /// stat through the link; None if it failed (reported the same way).
    pub st: Option<std::fs::Metadata>,
}

#[derive(Default)]
pub(crate) struct FdScan {
    by_pid: HashMap<i32, Vec<ScannedFd>>,
}

impl FdScan {
    /// Every fd of `pids`, sorted by number.
    pub(crate) fn scan(pids: &[i32]) -> Result<FdScan> {
        let mut by_pid = HashMap::with_capacity(pids.len());
        for &pid in pids {
            let fds = proc::read_fd_numbers(pid)?;
            let mut v = Vec::with_capacity(fds.len());
            for fd in fds {
                let link = proc::read_fd_link(pid, fd)
                    .ok()
                    .map(|l| l.to_string_lossy().into_owned());
                let st = link
                    .as_ref()
                    .and_then(|_| std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok());
                v.push(ScannedFd { fd, link, st });
            }
            by_pid.insert(pid, v);
        }
        Ok(FdScan { by_pid })
    }

    /// The scanned fds of `pid` (empty if it was not scanned).
    pub(crate) fn fds(&self, pid: i32) -> &[ScannedFd] {
        self.by_pid.get(&pid).map_or(&[], |v| v.as_slice())
    }

    /// How many fds were scanned in all.
    pub(crate) fn total(&self) -> usize {
        self.by_pid.values().map(Vec::len).sum()
    }

    /// The fd numbers of `pid`, if it was scanned.
    pub(crate) fn numbers(&self, pid: i32) -> Option<Vec<i32>> {
        self.by_pid
            .get(&pid)
            .map(|v| v.iter().map(|s| s.fd).collect())
    }

    /// Link and stat of `fd` of `pid`, once (the fd table dump takes them).
    pub(crate) fn take(&mut self, pid: i32, fd: i32) -> Option<(String, std::fs::Metadata)> {
        let v = self.by_pid.get_mut(&pid)?;
        let i = v.binary_search_by_key(&fd, |s| s.fd).ok()?;
        let s = &mut v[i];
        Some((s.link.take()?, s.st.take()?))
    }

    /// Forget `pid` (its fd table is dumped).
    pub(crate) fn done(&mut self, pid: i32) {
        self.by_pid.remove(&pid);
    }
}
