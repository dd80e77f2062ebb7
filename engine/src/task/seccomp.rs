//! Seccomp: each thread's mode and filter chain (seccomp.img, core's
//! `thread_core.seccomp_mode`/`seccomp_filter`).
//!
//! Dump reads every filtered thread's programs through ptrace and stores
//! each chain oldest first, every filter with the index of the one
//! below it (`prev`); the thread core names its newest filter. The kernel
//! gives filters no identity, so a program with the same flags on the same
//! parent is taken to be the same filter (as CRIU does): chains inherited by
//! threads and children are stored once.
//!
//! Restore installs the chains by remote `seccomp()` calls, with the tracee's
//! seccomp suspended (`PTRACE_O_SUSPEND_SECCOMP`) so that the remote calls
//! that follow are not filtered. It runs before credentials are restored: a
//! task without no_new_privs needs CAP_SYS_ADMIN to install a filter, which
//! it has at that point and may lose with its credentials. Threads that
//! share a chain get it from the leader with TSYNC, so they share the kernel
//! filter objects again (a later TSYNC install by the program needs that).

use std::collections::HashMap;

use stasis_proto::criu::{CoreEntry, SeccompEntry, SeccompFilter};
use stasis_proto::image::magic;
use tracing::debug;

use crate::error::{Error, Result, TaskCtx};
use crate::images::{common, ImageDir};
use crate::restore::plan::TaskPlan;
use crate::sys::ptrace;
use crate::task::remote::Remote;

pub const SECCOMP_IMG: &str = "seccomp.img";

pub const MODE_DISABLED: u32 = 0;
pub const MODE_STRICT: u32 = 1;
pub const MODE_FILTER: u32 = 2;

const SECCOMP_SET_MODE_FILTER: u64 = 1;
const FLAG_TSYNC: u64 = 1;
/// Flags the kernel reports back and that a restore may pass again (LOG,
/// SPEC_ALLOW); TSYNC/NEW_LISTENER/... are install-time only.
const FLAGS_KEPT: u64 = 2 | 4;
/// The kernel's limits: instructions per program and over a whole chain.
const BPF_MAXINSNS: usize = 4096;
const MAX_INSNS_PER_PATH: usize = 32768;

/// The filters of a dump, collected thread by thread.
#[derive(Default)]
pub struct Filters {
    list: Vec<SeccompFilter>,
    /// (prev, flags, program) -> index in `list`.
    index: HashMap<(Option<u32>, u32, Vec<u8>), u32>,
}

impl Filters {
    /// Read the filters of the stopped, seized thread `tid` (in filter mode)
    /// and return the index of its newest one.
    pub fn dump_thread(&mut self, tid: i32) -> Result<Option<u32>> {
        let mut progs = Vec::new();
        let mut insns = 0;
        let at = |i: usize| i as u64;
        while let Some(p) =
            ptrace::seccomp_filter(tid, at(progs.len())).task_ctx(tid, "get seccomp filter")?
        {
            let flags = ptrace::seccomp_flags(tid, at(progs.len()))
                .task_ctx(tid, "get seccomp filter flags")?;
            insns += p.len() / 8;
            if insns > MAX_INSNS_PER_PATH {
                return Err(Error::unsupported(
                    tid,
                    "seccomp filter chain longer than the kernel allows",
                ));
            }
            progs.push((p, (flags & FLAGS_KEPT) as u32));
        }
        let mut prev = None;
        for (filter, flags) in progs {
            let key = (prev, flags, filter);
            let id = match self.index.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.list.len() as u32;
                    self.list.push(SeccompFilter {
                        filter: key.2.clone(),
                        prev,
                        flags: Some(flags),
                    });
                    self.index.insert(key, id);
                    id
                }
            };
            prev = Some(id);
        }
        debug!(tid, newest = ?prev, "seccomp filters dumped");
        Ok(prev)
    }

    /// Write seccomp.img when some thread has filters.
    pub fn write(&self, dir: &ImageDir) -> Result<()> {
        if self.list.is_empty() {
            return Ok(());
        }
        dir.write_one(
            SECCOMP_IMG,
            common(magic::SECCOMP),
            &SeccompEntry {
                seccomp_filters: self.list.clone(),
            },
        )
    }
}

/// Read seccomp.img (absent: no filters).
pub fn read_filters(dir: &ImageDir) -> Result<Vec<SeccompFilter>> {
    if !dir.exists(SECCOMP_IMG) {
        return Ok(Vec::new());
    }
    let e: SeccompEntry = dir.read_one(SECCOMP_IMG, common(magic::SECCOMP))?;
    for (i, f) in e.seccomp_filters.iter().enumerate() {
        let n = f.filter.len();
        if n == 0 || n % 8 != 0 || n / 8 > BPF_MAXINSNS {
            return Err(Error::bad_image(
                SECCOMP_IMG,
                format!("filter {i}: {n} bytes is not a BPF program"),
            ));
        }
    }
    Ok(e.seccomp_filters)
}

/// A thread's mode and newest filter; old images keep them in the task core.
fn thread_state(core: &CoreEntry, leader: &CoreEntry) -> (u32, Option<u32>) {
    if let Some(tc) = core
        .thread_core
        .as_ref()
        .filter(|t| t.seccomp_mode.is_some())
    {
        return (tc.seccomp_mode.unwrap_or(0) as u32, tc.seccomp_filter);
    }
    match leader.tc.as_ref() {
        Some(tc) => (
            tc.old_seccomp_mode.unwrap_or(0) as u32,
            tc.old_seccomp_filter,
        ),
        None => (MODE_DISABLED, None),
    }
}

/// The chain ending at `newest`, oldest first.
fn chain(filters: &[SeccompFilter], newest: u32) -> std::result::Result<Vec<u32>, String> {
    let mut out = Vec::new();
    let mut at = Some(newest);
    while let Some(i) = at {
        let f = filters
            .get(i as usize)
            .ok_or_else(|| format!("filter {i} is not in {SECCOMP_IMG}"))?;
        if out.len() >= filters.len() {
            return Err(format!("filter chain through {newest} loops"));
        }
        out.push(i);
        at = f.prev;
    }
    out.reverse();
    Ok(out)
}

/// Each thread's mode and chain (oldest first), checked against the image.
fn task_chains(t: &TaskPlan, filters: &[SeccompFilter]) -> Result<Vec<(u32, Vec<u32>)>> {
    let img = || format!("core-{}.img", t.pid);
    t.cores
        .iter()
        .map(|c| {
            let (mode, newest) = thread_state(c, &t.cores[0]);
            match (mode, newest) {
                (MODE_DISABLED | MODE_STRICT, _) => Ok((mode, Vec::new())),
                (MODE_FILTER, Some(n)) => Ok((
                    mode,
                    chain(filters, n).map_err(|e| Error::bad_image(img(), e))?,
                )),
                (MODE_FILTER, None) => Err(Error::bad_image(
                    img(),
                    "seccomp filter mode without a filter",
                )),
                (m, _) => Err(Error::bad_image(img(), format!("unknown seccomp mode {m}"))),
            }
        })
        .collect()
}

/// Check every live task's seccomp state before anything is created.
pub fn check_plan(tasks: &[TaskPlan], filters: &[SeccompFilter]) -> Result<()> {
    for t in tasks.iter().filter(|t| t.alive()) {
        task_chains(t, filters)?;
    }
    Ok(())
}

/// Put task `t`'s seccomp state back. Every thread is stopped under `r`;
/// `opts` are its current ptrace options; `data` is scratch memory with
/// `room` bytes for the programs.
pub fn restore_task(
    r: &mut Remote,
    t: &TaskPlan,
    filters: &[SeccompFilter],
    opts: u64,
    data: u64,
    room: u64,
) -> Result<()> {
    let chains = task_chains(t, filters)?;
    if chains.iter().all(|c| c.0 == MODE_DISABLED) {
        return Ok(());
    }
    for &tid in &t.threads {
        ptrace::set_options(tid, opts | ptrace::PTRACE_O_SUSPEND_SECCOMP)
            .task_ctx(tid, "suspend seccomp (PTRACE_O_SUSPEND_SECCOMP)")?;
    }
    // What every thread has in common comes from the leader with TSYNC (a
    // strict or unfiltered thread would refuse it, or wrongly get filters).
    let shared = if t.threads.len() > 1 && chains.iter().all(|c| c.0 == MODE_FILTER) {
        let first = &chains[0].1;
        (0..first.len())
            .take_while(|&i| chains.iter().all(|c| c.1.get(i) == first.get(i)))
            .count()
    } else {
        0
    };
    for &f in &chains[0].1[..shared] {
        install(r, t.pid, &filters[f as usize], FLAG_TSYNC, data, room)?;
    }
    for (k, &tid) in t.threads.iter().enumerate() {
        let (mode, ch) = &chains[k];
        match *mode {
            MODE_FILTER => {
                for &f in &ch[shared..] {
                    install(r, tid, &filters[f as usize], 0, data, room)?;
                }
            }
            MODE_STRICT => {
                r.call(
                    tid,
                    "prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT)",
                    libc::SYS_prctl,
                    [libc::PR_SET_SECCOMP as u64, MODE_STRICT as u64, 0, 0, 0, 0],
                )?;
            }
            _ => {}
        }
    }
    debug!(pid = t.pid, shared, "seccomp restored");
    Ok(())
}

/// One `seccomp(SECCOMP_SET_MODE_FILTER)` in thread `tid`.
fn install(
    r: &mut Remote,
    tid: i32,
    f: &SeccompFilter,
    extra: u64,
    data: u64,
    room: u64,
) -> Result<()> {
    let need = 16 + f.filter.len() as u64;
    // A program larger than the scratch data area gets a mapping of its own.
    let (at, mapped) = if need <= room {
        (data, false)
    } else {
        let len = need.next_multiple_of(4096);
        let a = r.call(
            tid,
            "mmap for a seccomp filter",
            libc::SYS_mmap,
            [
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )?;
        (a, true)
    };
    // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    let mut prog = Vec::with_capacity(need as usize);
    prog.extend_from_slice(&((f.filter.len() / 8) as u64).to_ne_bytes());
    prog.extend_from_slice(&(at + 16).to_ne_bytes());
    prog.extend_from_slice(&f.filter);
    r.write(at, &prog)?;
    let flags = u64::from(f.flags.unwrap_or(0)) & FLAGS_KEPT | extra;
    let res = r.call(
        tid,
        "seccomp(SECCOMP_SET_MODE_FILTER)",
        libc::SYS_seccomp,
        [SECCOMP_SET_MODE_FILTER, flags, at, 0, 0, 0],
    )?;
    if mapped {
        r.call(
            tid,
            "munmap",
            libc::SYS_munmap,
            [at, need.next_multiple_of(4096), 0, 0, 0, 0],
        )?;
    }
    if res != 0 {
        // TSYNC names the thread that could not take the filter.
        return Err(Error::Other(format!(
            "pid {}: thread {res} cannot share the seccomp filter (TSYNC)",
            r.pid
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(prev: Option<u32>) -> SeccompFilter {
        SeccompFilter {
            filter: vec![0; 8],
            prev,
            flags: None,
        }
    }

    #[test]
    fn chains_are_oldest_first_and_checked() {
        let fs = [f(None), f(Some(0)), f(Some(1)), f(Some(0))];
        assert_eq!(chain(&fs, 2).unwrap(), vec![0, 1, 2]);
        assert_eq!(chain(&fs, 3).unwrap(), vec![0, 3]);
        assert!(chain(&fs, 4).unwrap_err().contains("not in seccomp.img"));
        let looped = [f(Some(1)), f(Some(0))];
        assert!(chain(&looped, 0).unwrap_err().contains("loops"));
    }
}
