//! Finding the open file description an fd shares with an fd dumped before.
//!
//! Two fds can only share a description if they agree on everything the
//! description holds: the inode (dev, ino), the file position and the open
//! flags (fdinfo `flags:` without O_CLOEXEC, which belongs to the fd). The
//! tree is frozen, so these are stable for the whole dump (a description
//! also held, and moved, by a running process outside the tree could be
//! split in two; its position would not be consistent anyway).
//!
//! Within one such [`Key`], kcmp(KCMP_FILE) orders descriptions (by
//! scrambled kernel pointer, consistently for the whole boot), so the ones
//! already seen are kept in a vector sorted in that order and a new fd is
//! looked up by binary search: O(log n) kcmp calls per fd instead of one per
//! earlier description of the same inode (100 processes × 40 opens of one
//! file cost millions of kcmp calls before).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::sys::{kcmp, pidfd};

/// (dev, ino, position, open flags without O_CLOEXEC).
pub(crate) type Key = (u64, u64, i64, u32);

struct Seen {
    pid: i32,
    fd: i32,
    id: u32,
}

/// Where a description not seen yet goes.
pub(crate) struct Slot {
    key: Key,
    /// Insertion index, or None when (pid, fd) cannot be compared at all
    /// (kcmp fails on it): it is then never indexed, as nothing could match.
    pos: Option<usize>,
    len: usize,
}

/// The open file descriptions seen so far, by (dev, ino), in kcmp order.
#[derive(Default)]
pub(crate) struct OpenIndex {
    buckets: HashMap<Key, Vec<Seen>>,
}

fn cmp(pid: i32, fd: i32, s: &Seen) -> Option<i32> {
    kcmp::kcmp(pid, s.pid, kcmp::KCMP_FILE, fd as u64, s.fd as u64)
        .ok()
        .filter(|r| (0..=2).contains(r))
}

impl OpenIndex {
    /// The file id of the description `fd` of `pid` if an fd with the same
    /// description was recorded, else where to [`insert`](Self::insert) it.
    pub(crate) fn find(&mut self, pid: i32, fd: i32, key: Key) -> std::result::Result<u32, Slot> {
        let bucket = self.buckets.entry(key).or_default();
        'search: loop {
            let (mut lo, mut hi) = (0, bucket.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                match cmp(pid, fd, &bucket[mid]) {
                    Some(0) => return Ok(bucket[mid].id),
                    Some(1) => hi = mid,
                    Some(_) => lo = mid + 1,
                    None => {
                        // Either our fd or the recorded one cannot be
                        // compared (gone): a recorded fd that is gone can
                        // never match again, drop it and search again.
                        if cmp(pid, fd, &Seen { pid, fd, id: 0 }) == Some(0) {
                            bucket.remove(mid);
                            continue 'search;
                        }
                        return Err(Slot {
                            key,
                            pos: None,
                            len: bucket.len(),
                        });
                    }
                }
            }
            return Err(Slot {
                key,
                pos: Some(lo),
                len: bucket.len(),
            });
        }
    }

    /// Records the description of `fd` of `pid` as file `id` at `slot`
    /// (from [`find`](Self::find) for the same fd).
    pub(crate) fn insert(&mut self, slot: Slot, pid: i32, fd: i32, id: u32) {
        let Some(mut pos) = slot.pos else { return };
        let bucket = self.buckets.entry(slot.key).or_default();
        if bucket.len() != slot.len {
            // Something was recorded in between (a kind dumping other fds):
            // search the position again.
            let (mut lo, mut hi) = (0, bucket.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                match cmp(pid, fd, &bucket[mid]) {
                    Some(0) => return,
                    Some(1) => hi = mid,
                    Some(_) => lo = mid + 1,
                    None => return,
                }
            }
            pos = lo;
        }
        bucket.insert(pos, Seen { pid, fd, id });
    }
}

/// The pidfd of the last process an fd was stolen from: a dump steals many
/// fds of one process in a row, and a pidfd_open (and close) per fd is
/// wasted work. Stale entries (the process is gone, its pid reused) only
/// make pidfd_getfd fail, which is retried with a fresh pidfd.
static LAST_PIDFD: Mutex<Option<(i32, OwnedFd)>> = Mutex::new(None);

/// A duplicate of `fd` of `pid` (see [`super::FdCtx::steal`]).
pub(crate) fn steal(pid: i32, fd: i32) -> Result<OwnedFd> {
    let mut last = LAST_PIDFD.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((p, pidfd)) = last.as_ref() {
        if *p == pid {
            if let Ok(f) = pidfd::pidfd_getfd(pidfd, fd) {
                return Ok(f);
            }
        }
    }
    *last = None;
    let pidfd = pidfd::pidfd_open(pid).map_err(|e| Error::task(pid, "pidfd_open", e))?;
    let r = pidfd::pidfd_getfd(&pidfd, fd).map_err(|e| Error::Fd {
        pid,
        fd,
        why: format!("pidfd_getfd: {e}"),
    });
    *last = Some((pid, pidfd));
    r
}
