//! File locks: flock(2), POSIX (fcntl F_SETLK) and OFD (F_OFD_SETLK) locks
//! held by the dumped tree, saved to `filelocks.img` (CRIU's name and
//! `file_lock_entry`s) when `--file-locks` is given; without it a held lock
//! makes the dump fail, naming the task, the fd and the lock.
//!
//! Dump: every fd's fdinfo lists the locks held through it (`lock:` lines);
//! each lock is recorded once, with the pid and fd it is restored through:
//! - POSIX locks belong to a process (its fd table): recorded for that
//!   process, on an fd of the file it was taken through;
//! - flock and OFD locks belong to an open file description, which fdinfo
//!   shows in every fd (of every task) sharing it: recorded once per
//!   description, with the first holder in tree order.
//!
//! `/proc/locks` is then read to make sure no lock of a dumped process was
//! missed (a flock kept alive only by a mapping, say).
//!
//! Restore: flock and OFD locks are taken in the restore stub of the
//! recorded task once its fd table is complete ([`after_fds`]); POSIX locks
//! are taken by a remote fcntl in the task itself at the very end
//! ([`restore_posix`]), because closing any other fd of the file (the
//! restorer's staging copies) would drop them. Locks are requested without
//! waiting: a conflict means someone else holds the lock now, and restore
//! fails, naming it.

use std::collections::HashSet;

use stasis_proto::criu::FileLockEntry;
use stasis_proto::image::magic;
use tracing::debug;

use super::FileTable;
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc::{self, Fdinfo, FileLock, LockClass, LockType};
use crate::restore::plan::Plan;
use crate::sys::notify;
use crate::task::remote::Remote;

/// CRIU's image of file locks.
pub const LOCKS_IMG: &str = "filelocks.img";

/// `file_lock_entry.flag` values (CRIU's FL_*).
pub const FL_POSIX: u32 = 1;
pub const FL_FLOCK: u32 = 2;
pub const FL_OFD: u32 = 4;
pub const FL_LEASE: u32 = 8;

/// A lock found through an fd while dumping.
#[derive(Debug, Clone)]
struct Noted {
    entry: FileLockEntry,
    /// files.img id of the open file description it was found on.
    file_id: u32,
    lock: FileLock,
}

/// The locks of one dump.
#[derive(Debug, Default)]
pub struct LockTable {
    noted: Vec<Noted>,
    /// Every process whose fds were looked at.
    pids: HashSet<i32>,
}

fn class_name(c: LockClass) -> &'static str {
    match c {
        LockClass::Posix => "POSIX",
        LockClass::Flock => "flock",
        LockClass::Ofd => "OFD",
        LockClass::Access => "access",
        LockClass::Lease => "lease",
        LockClass::Deleg => "delegation",
        LockClass::Unknown => "unknown",
    }
}

/// `flock` `WRITE 0-EOF` style description of a lock, for messages.
fn describe(l: &FileLock) -> String {
    let ty = match l.lock_type {
        LockType::Read => "read",
        LockType::Write => "write",
        LockType::Unlock => "unlock",
    };
    let end = l.end.map_or("EOF".to_string(), |e| e.to_string());
    let dev = l
        .dev
        .map_or("?".to_string(), |(a, b)| format!("{a:02x}:{b:02x}"));
    format!(
        "{} {ty} lock on {dev}:{} bytes {}-{end}",
        class_name(l.class),
        l.ino,
        l.start
    )
}

fn flag_of(c: LockClass) -> Option<u32> {
    match c {
        LockClass::Posix => Some(FL_POSIX),
        LockClass::Flock => Some(FL_FLOCK),
        LockClass::Ofd => Some(FL_OFD),
        _ => None,
    }
}

/// `file_lock_entry.len` of an inclusive byte range: 0 means "to the end
/// of file", as in struct flock.
fn lock_len(start: u64, end: Option<u64>) -> i64 {
    end.map_or(0, |e| (e + 1).saturating_sub(start) as i64)
}

/// Same lock (the fields fdinfo and /proc/locks agree on).
fn same_lock(a: &FileLock, b: &FileLock) -> bool {
    a.class == b.class
        && a.lock_type == b.lock_type
        && a.dev == b.dev
        && a.ino == b.ino
        && a.start == b.start
        && a.end == b.end
}

/// Record the locks shown in the fdinfo of `fd` of `pid` (file id `id`).
pub(crate) fn note(t: &mut FileTable<'_>, pid: i32, fd: i32, id: u32, info: &Fdinfo) -> Result<()> {
    t.locks.pids.insert(pid);
    for l in &info.locks {
        if l.blocked {
            continue;
        }
        let err = |why: String| Error::Fd { pid, fd, why };
        let Some(flag) = flag_of(l.class) else {
            return Err(err(format!("holds a {}: not supported", describe(l))));
        };
        if !t.opts.file_locks {
            return Err(err(format!(
                "holds a {}: dump with --file-locks to save it",
                describe(l)
            )));
        }
        if l.lock_type == LockType::Unlock {
            continue;
        }
        // One entry per lock: POSIX locks per owner process, the others per
        // open file description.
        let dup = t.locks.noted.iter().any(|n| {
            n.file_id == id
                && same_lock(&n.lock, l)
                && (l.class != LockClass::Posix || n.entry.pid == pid)
        });
        if dup {
            continue;
        }
        t.locks.noted.push(Noted {
            entry: FileLockEntry {
                flag,
                r#type: match l.lock_type {
                    LockType::Read => libc::F_RDLCK as u32,
                    _ => libc::F_WRLCK as u32,
                },
                pid,
                fd,
                start: l.start as i64,
                len: lock_len(l.start, l.end),
            },
            file_id: id,
            lock: *l,
        });
    }
    Ok(())
}

/// With --file-locks, check that every lock `/proc/locks` lists for a dumped
/// process was found through an fd, then write `filelocks.img`. Without
/// the flag, locks seen in fdinfo have already failed the dump; the sweep
/// is skipped because reading /proc/locks takes the kernel's file-lock
/// rwsem for writing, an RCU grace period (~10 ms) every dump would pay.
pub(crate) fn write(t: &FileTable<'_>) -> Result<()> {
    if !t.locks.pids.is_empty() && t.opts.file_locks {
        let text =
            std::fs::read_to_string("/proc/locks").map_err(|e| Error::io("/proc/locks", e))?;
        // A line this parser does not know cannot be one of ours to check.
        let all = text
            .lines()
            .filter_map(|line| match proc::parse_locks(line) {
                Ok(v) => v.into_iter().next(),
                Err(e) => {
                    debug!("/proc/locks: {e}");
                    None
                }
            });
        for l in all {
            if l.blocked || !t.locks.pids.contains(&l.pid) {
                continue;
            }
            if !matches!(l.class, LockClass::Posix | LockClass::Flock) {
                continue;
            }
            let found = t.locks.noted.iter().any(|n| {
                same_lock(&n.lock, &l) && (l.class != LockClass::Posix || n.entry.pid == l.pid)
            });
            if !found {
                let why = if t.opts.file_locks {
                    "no open fd of the tree leads to it: not supported"
                } else {
                    "dump with --file-locks to save it"
                };
                return Err(Error::unsupported(
                    l.pid,
                    format!("holds a {}: {why}", describe(&l)),
                ));
            }
        }
    }
    if t.opts.file_locks {
        let entries: Vec<&FileLockEntry> = t.locks.noted.iter().map(|n| &n.entry).collect();
        t.dir
            .write_all(LOCKS_IMG, common(magic::FILE_LOCKS), entries)?;
    }
    Ok(())
}

/// The locks of an image directory (none without `filelocks.img`).
pub fn read_image(dir: &ImageDir) -> Result<Vec<FileLockEntry>> {
    if !dir.exists(LOCKS_IMG) {
        return Ok(Vec::new());
    }
    dir.read_all(LOCKS_IMG, common(magic::FILE_LOCKS))
}

/// Before anything is created: locks need `--file-locks`, and each must name
/// a live task and one of its fds.
pub fn check_plan(plan: &Plan, enabled: bool) -> Result<()> {
    if plan.locks.is_empty() {
        return Ok(());
    }
    if !enabled {
        return Err(Error::Other(format!(
            "the images hold {} file lock(s) ({LOCKS_IMG}): restore with --file-locks",
            plan.locks.len()
        )));
    }
    for l in &plan.locks {
        let bad = |why: String| Error::bad_image(LOCKS_IMG, why);
        if ![FL_POSIX, FL_FLOCK, FL_OFD].contains(&l.flag) {
            return Err(bad(format!(
                "lock of pid {} fd {} has unsupported kind {:#x} (leases are not supported)",
                l.pid, l.fd, l.flag
            )));
        }
        if ![libc::F_RDLCK as u32, libc::F_WRLCK as u32].contains(&l.r#type) {
            return Err(bad(format!(
                "lock of pid {} fd {} has bad type {}",
                l.pid, l.fd, l.r#type
            )));
        }
        let Some(t) = plan.tasks.iter().find(|t| t.pid == l.pid && t.alive()) else {
            return Err(bad(format!("lock of pid {}: no such live task", l.pid)));
        };
        if !t.fds.iter().any(|f| f.fd as i32 == l.fd) {
            return Err(bad(format!(
                "lock of pid {} fd {}: no such fd in the task",
                l.pid, l.fd
            )));
        }
    }
    Ok(())
}

fn what(l: &FileLockEntry) -> String {
    let kind = match l.flag {
        FL_POSIX => "POSIX",
        FL_FLOCK => "flock",
        _ => "OFD",
    };
    let ty = if l.r#type == libc::F_RDLCK as u32 {
        "read"
    } else {
        "write"
    };
    let end = if l.len == 0 {
        "EOF".to_string()
    } else {
        (l.start + l.len - 1).to_string()
    };
    format!("{kind} {ty} lock on fd {} (bytes {}-{end})", l.fd, l.start)
}

fn conflict(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
}

/// Take the flock and OFD locks of task `idx` (in its restore stub, fd table
/// complete).
pub fn after_fds(plan: &Plan, idx: usize) -> std::result::Result<(), String> {
    let pid = plan.tasks[idx].pid;
    for l in plan.locks.iter().filter(|l| l.pid == pid) {
        let r = match l.flag {
            FL_FLOCK => {
                let op = if l.r#type == libc::F_RDLCK as u32 {
                    libc::LOCK_SH
                } else {
                    libc::LOCK_EX
                };
                notify::flock(l.fd, op | libc::LOCK_NB)
            }
            FL_OFD => {
                let mut fl = notify::flock_struct(l.r#type as i16, l.start, l.len, 0);
                notify::fcntl_lock(l.fd, libc::F_OFD_SETLK, &mut fl)
            }
            _ => continue,
        };
        r.map_err(|e| {
            if conflict(&e) {
                format!("{}: someone else holds a conflicting lock", what(l))
            } else {
                format!("{}: {e}", what(l))
            }
        })?;
    }
    Ok(())
}

/// Take the POSIX locks of task `idx` by remote fcntl(F_SETLK) in the task
/// (`data`: scratch memory in the task for the struct flock).
pub fn restore_posix(r: &mut Remote, plan: &Plan, idx: usize, data: u64) -> Result<()> {
    let pid = plan.tasks[idx].pid;
    for l in plan
        .locks
        .iter()
        .filter(|l| l.pid == pid && l.flag == FL_POSIX)
    {
        let mut b = [0u8; 32];
        b[0..2].copy_from_slice(&(l.r#type as i16).to_ne_bytes());
        b[2..4].copy_from_slice(&(libc::SEEK_SET as i16).to_ne_bytes());
        b[8..16].copy_from_slice(&l.start.to_ne_bytes());
        b[16..24].copy_from_slice(&l.len.to_ne_bytes());
        r.write(data, &b)?;
        let rc = r.raw(
            pid,
            libc::SYS_fcntl,
            [l.fd as u64, libc::F_SETLK as u64, data, 0, 0, 0],
        )?;
        if rc < 0 {
            let e = std::io::Error::from_raw_os_error(-rc as i32);
            let why = if conflict(&e) {
                "someone else holds a conflicting lock".to_string()
            } else {
                e.to_string()
            };
            return Err(Error::unsupported(pid, format!("{}: {why}", what(l))));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_and_names() {
        assert_eq!(lock_len(10, Some(29)), 20);
        assert_eq!(lock_len(100, None), 0);
        assert_eq!(lock_len(0, Some(0)), 1);
        let l =
            proc::parse_locks("1: POSIX  ADVISORY  WRITE 5593 fe:00:10011038 5 14\n").unwrap()[0];
        assert_eq!(
            describe(&l),
            "POSIX write lock on fe:00:10011038 bytes 5-14"
        );
        assert_eq!(flag_of(l.class), Some(FL_POSIX));
        assert_eq!(flag_of(LockClass::Lease), None);
        let e = FileLockEntry {
            flag: FL_OFD,
            r#type: libc::F_RDLCK as u32,
            pid: 1,
            fd: 3,
            start: 0,
            len: 0,
        };
        assert_eq!(what(&e), "OFD read lock on fd 3 (bytes 0-EOF)");
    }
}
