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
    let mut dir = proc::FdDir::open(pid)?;
    let fds = dir.numbers()?;
    let mut v = Vec::with_capacity(fds.len());
    for fd in fds {
        let link = dir.link(fd).ok().map(|l| l.to_string_lossy().into_owned());
        let st = link
            .as_deref()
            .filter(|l| maybe_ptmx(l))
            .and_then(|_| std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok());
        v.push(ScannedFd { fd, link, st });
    }
    Ok(v)
}

/// One process's fds as [`scan_pid`] read them.
type Scanned = (i32, Result<Vec<ScannedFd>>);

/// Fd tables scanned while the tree was being seized (see [`Scanner`]).
#[derive(Default)]
pub struct Early(HashMap<i32, Result<Vec<ScannedFd>>>);

/// Scans the fd tables of processes as soon as they are stopped, on two
/// threads of its own, while the tracer seizes the rest of the tree: the
/// scan is /proc lookups (kernel time), seizing mostly waits for stops.
pub struct Scanner {
    tx: Option<std::sync::mpsc::Sender<i32>>,
    workers: Vec<std::thread::JoinHandle<Vec<Scanned>>>,
}

impl Scanner {
    pub fn start() -> Scanner {
        let (tx, rx) = std::sync::mpsc::channel::<i32>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        let workers = (0..2)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(pid) = next else { break };
                        out.push((pid, scan_pid(pid)));
                    }
                    out
                })
            })
            .collect();
        Scanner {
            tx: Some(tx),
            workers,
        }
    }

    /// Scan `pid` (stopped, and staying so until the dump is over).
    pub fn push(&self, pid: i32) {
        if let Some(tx) = &self.tx {
            // Fails only if both workers panicked: prepare_tree scans then.
            let _ = tx.send(pid);
        }
    }

    /// Wait for every scan pushed.
    pub fn finish(mut self) -> Early {
        self.tx = None;
        let mut out = HashMap::new();
        for w in self.workers.drain(..) {
            // A panicked worker's pids are scanned again by prepare_tree.
            if let Ok(v) = w.join() {
                out.extend(v);
            }
        }
        Early(out)
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
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
        Self::scan_with(pids, Early::default())
    }

    /// [`scan`](Self::scan), taking what `early` has scanned already.
    pub(crate) fn scan_with(pids: &[i32], mut early: Early) -> Result<FdScan> {
        let mut by_pid = HashMap::with_capacity(pids.len());
        let mut rest = Vec::new();
        for &pid in pids {
            match early.0.remove(&pid) {
                Some(r) => {
                    by_pid.insert(pid, r?);
                }
                None => rest.push(pid),
            }
        }
        for (pid, r) in proc::map_halves(&rest, SPLIT_MIN, |pid| (pid, scan_pid(pid))) {
            by_pid.insert(pid, r?);
        }
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
    use super::*;

    #[test]
    fn early_scan_is_used() {
        let me = std::process::id() as i32;
        let s = Scanner::start();
        s.push(me);
        let early = s.finish();
        assert!(early.0[&me].as_ref().is_ok_and(|v| !v.is_empty()));
        let scan = FdScan::scan_with(&[me], early).unwrap();
        assert!(scan
            .fds(me)
            .iter()
            .any(|f| f.fd == 0 || f.fd == 1 || f.fd == 2));
        // Nothing pushed: scanned there and then.
        let scan = FdScan::scan_with(&[me], Scanner::start().finish()).unwrap();
        assert!(!scan.fds(me).is_empty());
    }

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
