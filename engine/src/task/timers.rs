//! Interval timers (setitimer: real, virtual, prof) and POSIX timers
//! (timer_create), saved in `task_core.timers` (`task_timers_entry`) as CRIU
//! does.
//!
//! Dump: `/proc/PID/timers` gives each POSIX timer's id, clock and sigevent;
//! remote `timer_gettime`, `timer_getoverrun` and `getitimer` calls in the
//! stopped task give the time left, the period and the overrun.
//!
//! Restore, by remote calls in the restored task: the POSIX timers are
//! created disarmed with their original ids ([`create`]; with
//! `PR_TIMER_CREATE_RESTORE_IDS` where the kernel has it, else by creating and
//! deleting timers until the id counter reaches each wanted id), and every
//! timer is armed with the time it had left only at the very end, just
//! before the tree is released ([`arm`]). The overrun count cannot be set.

use stasis_proto::criu::{ItimerEntry, PosixTimerEntry, TaskTimersEntry};

use crate::error::{Error, Result};
use crate::proc;
use crate::restore::plan::{Plan, TaskPlan};
use crate::task::remote::{Call, Remote};

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, ON|OFF)` (Linux 6.15+): while on,
/// timer_create takes the wanted id from its timer_t argument.
pub const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;

/// Timers to burn at most when ids must be reached by counting (old kernels).
const MAX_BURN: u32 = 1 << 16;

/// Bytes of scratch memory [`dump`], [`create`] and [`arm`] use at the
/// address they are given.
pub const SCRATCH_BYTES: u64 = 128;

const NSEC: u64 = 1_000_000_000;
const USEC: u64 = 1_000_000;

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_ne_bytes(b[o..o + 8].try_into().unwrap())
}

/// An `ItimerEntry` from a `struct itimerval` (it_interval, it_value;
/// timeval: sec, usec) as getitimer wrote it.
fn itimer_at(b: &[u8]) -> ItimerEntry {
    ItimerEntry {
        isec: u64_at(b, 0),
        iusec: u64_at(b, 8),
        vsec: u64_at(b, 16),
        vusec: u64_at(b, 24),
    }
}

/// The getitimer calls [`dump`] needs to have run, writing to `at`: the
/// caller puts them into its first batch of remote calls (no round trip of
/// their own).
pub fn itimer_calls(at: u64) -> [Call; 3] {
    // ITIMER_REAL, _VIRTUAL, _PROF are 0, 1, 2: 32 bytes each at `at`.
    [libc::ITIMER_REAL, libc::ITIMER_VIRTUAL, libc::ITIMER_PROF].map(|w| {
        (
            libc::SYS_getitimer,
            [w as u64, at + 32 * w as u64, 0, 0, 0, 0],
        )
    })
}

/// Read every timer of process `pid` (`threads`: its thread ids) through
/// remote calls; `at` is scratch memory in the task, where the calls of
/// [`itimer_calls`] have already written the interval timers.
pub fn dump(r: &mut Remote, pid: i32, threads: &[i32], at: u64) -> Result<TaskTimersEntry> {
    let mut b = [0u8; 96];
    r.read(at, &mut b)?;
    let [real, virt, prof] = [0, 32, 64].map(|o| itimer_at(&b[o..o + 32]));
    let mut list = proc::read_timers(pid)?;
    list.sort_by_key(|t| t.id);
    let mut posix = Vec::with_capacity(list.len());
    for t in list {
        r.call(
            pid,
            "timer_gettime",
            libc::SYS_timer_gettime,
            [t.id as u64, at, 0, 0, 0, 0],
        )?;
        let mut b = [0u8; 32];
        r.read(at, &mut b)?;
        let overrun = r.call(
            pid,
            "timer_getoverrun",
            libc::SYS_timer_getoverrun,
            [t.id as u64, 0, 0, 0, 0, 0],
        )? as u32;
        let notify_thread_id = if t.thread_id {
            if !threads.contains(&t.notify_pid) {
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "POSIX timer {} signals thread {}, which is not one of its threads",
                        t.id, t.notify_pid
                    ),
                ));
            }
            Some(t.notify_pid)
        } else {
            None
        };
        // struct itimerspec: it_interval, it_value (timespec: sec, nsec).
        posix.push(PosixTimerEntry {
            it_id: t.id as u32,
            clock_id: t.clock_id as u32,
            si_signo: t.signo as u32,
            it_sigev_notify: t.sigev_notify() as u32,
            sival_ptr: t.sigval,
            overrun,
            isec: u64_at(&b, 0),
            insec: u64_at(&b, 8),
            vsec: u64_at(&b, 16),
            vnsec: u64_at(&b, 24),
            notify_thread_id,
        });
    }
    Ok(TaskTimersEntry {
        real,
        virt,
        prof,
        posix,
    })
}

/// (interval, value) of a timer to arm: a timer whose time left was too
/// small to show (value 0, period set) fires after one period, as in CRIU.
/// None when the timer was disarmed.
fn arm_value(isec: u64, isub: u64, vsec: u64, vsub: u64) -> Option<[u64; 4]> {
    if isec == 0 && isub == 0 && vsec == 0 && vsub == 0 {
        return None;
    }
    if vsec == 0 && vsub == 0 {
        Some([isec, isub, isec, isub])
    } else {
        Some([isec, isub, vsec, vsub])
    }
}

/// Reject timers the kernel would not take back, naming them.
pub fn check(pid: i32, threads: &[i32], t: &TaskTimersEntry) -> Result<()> {
    let bad = |why: String| Error::bad_image(format!("core-{pid}.img"), why);
    for (name, it) in [("real", &t.real), ("virtual", &t.virt), ("prof", &t.prof)] {
        if it.iusec >= USEC
            || it.vusec >= USEC
            || it.isec > i64::MAX as u64
            || it.vsec > i64::MAX as u64
        {
            return Err(bad(format!("bad {name} interval timer")));
        }
    }
    let mut ids = Vec::new();
    for p in &t.posix {
        if p.insec >= NSEC
            || p.vnsec >= NSEC
            || p.isec > i64::MAX as u64
            || p.vsec > i64::MAX as u64
        {
            return Err(bad(format!("POSIX timer {}: bad time", p.it_id)));
        }
        if p.it_id > i32::MAX as u32 || ids.contains(&p.it_id) {
            return Err(bad(format!("POSIX timer {}: bad or duplicate id", p.it_id)));
        }
        ids.push(p.it_id);
        if p.it_sigev_notify & libc::SIGEV_THREAD_ID as u32 != 0 {
            match p.notify_thread_id {
                Some(tid) if threads.contains(&tid) => {}
                other => {
                    return Err(bad(format!(
                        "POSIX timer {} signals thread {other:?}, not a thread of the task",
                        p.it_id
                    )))
                }
            }
        }
    }
    Ok(())
}

fn sigevent(p: &PosixTimerEntry) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&p.sival_ptr.to_ne_bytes());
    b[8..12].copy_from_slice(&(p.si_signo as i32).to_ne_bytes());
    b[12..16].copy_from_slice(&(p.it_sigev_notify as i32).to_ne_bytes());
    b[16..20].copy_from_slice(&p.notify_thread_id.unwrap_or(0).to_ne_bytes());
    b
}

/// Create the POSIX timers of task `pid` (disarmed) with their ids, by
/// remote calls in the task; `at` is [`SCRATCH_BYTES`] of scratch memory.
pub fn create(r: &mut Remote, pid: i32, t: &TaskTimersEntry, at: u64) -> Result<()> {
    if t.posix.is_empty() {
        return Ok(());
    }
    let mut list: Vec<&PosixTimerEntry> = t.posix.iter().collect();
    list.sort_by_key(|p| p.it_id);
    let rc = r.raw(
        pid,
        libc::SYS_prctl,
        [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0, 0],
    )?;
    let by_id = match rc {
        0 => true,
        e if e == -(libc::EINVAL as i64) => false,
        e => {
            return Err(Error::task(
                pid,
                "remote prctl(PR_TIMER_CREATE_RESTORE_IDS)",
                std::io::Error::from_raw_os_error(-e as i32),
            ))
        }
    };
    let id_at = at + 64;
    let mut burnt = 0u32;
    for p in list {
        r.write(at, &sigevent(p))?;
        loop {
            r.write(id_at, &(p.it_id as i32).to_ne_bytes())?;
            r.call(
                pid,
                "timer_create",
                libc::SYS_timer_create,
                [p.clock_id as i32 as i64 as u64, at, id_at, 0, 0, 0],
            )?;
            let mut b = [0u8; 4];
            r.read(id_at, &mut b)?;
            let got = i32::from_ne_bytes(b) as u32;
            if got == p.it_id {
                break;
            }
            if by_id || got > p.it_id || burnt >= MAX_BURN {
                return Err(Error::unsupported(
                    pid,
                    format!(
                        "POSIX timer {} came back with id {got}: cannot restore timer ids",
                        p.it_id
                    ),
                ));
            }
            r.call(
                pid,
                "timer_delete",
                libc::SYS_timer_delete,
                [got as u64, 0, 0, 0, 0, 0],
            )?;
            burnt += 1;
        }
    }
    if by_id {
        r.call(
            pid,
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// Arm every timer of task `pid` with the time it had left at dump (remote
/// timer_settime / setitimer); `at` is [`SCRATCH_BYTES`] of scratch memory.
pub fn arm(r: &mut Remote, pid: i32, t: &TaskTimersEntry, at: u64) -> Result<()> {
    let words = |w: [u64; 4]| -> Vec<u8> { w.iter().flat_map(|x| x.to_ne_bytes()).collect() };
    for p in &t.posix {
        let Some(v) = arm_value(p.isec, p.insec, p.vsec, p.vnsec) else {
            continue;
        };
        r.write(at, &words(v))?;
        r.call(
            pid,
            "timer_settime",
            libc::SYS_timer_settime,
            [p.it_id as u64, 0, at, 0, 0, 0],
        )?;
    }
    for (which, it) in [
        (libc::ITIMER_REAL, &t.real),
        (libc::ITIMER_VIRTUAL, &t.virt),
        (libc::ITIMER_PROF, &t.prof),
    ] {
        let Some(v) = arm_value(it.isec, it.iusec, it.vsec, it.vusec) else {
            continue;
        };
        r.write(at, &words(v))?;
        r.call(
            pid,
            "setitimer",
            libc::SYS_setitimer,
            [which as u64, at, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

/// The timers of a restored task, if its image has them.
fn of(t: &TaskPlan) -> Option<&TaskTimersEntry> {
    t.cores
        .first()
        .and_then(|c| c.tc.as_ref())
        .and_then(|tc| tc.timers.as_ref())
}

/// Check the timers of every live task before anything is created.
pub fn check_plan(plan: &Plan) -> Result<()> {
    for t in plan.tasks.iter().filter(|t| t.alive()) {
        if let Some(tm) = of(t) {
            check(t.pid, &t.threads, tm)?;
        }
    }
    Ok(())
}

/// [`create`] for a task of the plan (its threads exist by now).
pub fn create_task(r: &mut Remote, t: &TaskPlan, at: u64) -> Result<()> {
    match of(t) {
        // In a pid namespace the image names the target thread by its host
        // tid; the task must name it by its own.
        Some(tm) if t.pids.is_some() => {
            let mut tm = tm.clone();
            for p in &mut tm.posix {
                let k = p
                    .notify_thread_id
                    .and_then(|id| t.threads.iter().position(|&x| x == id));
                if let Some(k) = k {
                    p.notify_thread_id = Some(crate::ns::pid::local_tid(t, k));
                }
            }
            create(r, t.pid, &tm, at)
        }
        Some(tm) => create(r, t.pid, tm, at),
        None => Ok(()),
    }
}

/// [`arm`] for a task of the plan: the last thing before its release.
pub fn arm_task(r: &mut Remote, t: &TaskPlan, at: u64) -> Result<()> {
    match of(t) {
        Some(tm) => arm(r, t.pid, tm, at),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arm_values() {
        assert_eq!(arm_value(0, 0, 0, 0), None);
        assert_eq!(arm_value(1, 5, 0, 0), Some([1, 5, 1, 5]));
        assert_eq!(arm_value(0, 0, 3, 7), Some([0, 0, 3, 7]));
        assert_eq!(arm_value(1, 0, 0, 9), Some([1, 0, 0, 9]));
    }

    #[test]
    fn sigevent_layout() {
        let p = PosixTimerEntry {
            it_id: 3,
            clock_id: 1,
            si_signo: 35,
            it_sigev_notify: (libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID) as u32,
            sival_ptr: 0xc0ffee,
            notify_thread_id: Some(1234),
            ..Default::default()
        };
        let b = sigevent(&p);
        assert_eq!(u64_at(&b, 0), 0xc0ffee);
        assert_eq!(i32::from_ne_bytes(b[8..12].try_into().unwrap()), 35);
        assert_eq!(i32::from_ne_bytes(b[12..16].try_into().unwrap()), 4);
        assert_eq!(i32::from_ne_bytes(b[16..20].try_into().unwrap()), 1234);
    }

    #[test]
    fn checks() {
        let mut t = TaskTimersEntry::default();
        t.posix.push(PosixTimerEntry {
            it_id: 1,
            insec: NSEC,
            ..Default::default()
        });
        assert!(check(1, &[1], &t).is_err());
        t.posix[0].insec = 0;
        assert!(check(1, &[1], &t).is_ok());
        t.posix.push(t.posix[0]);
        assert!(check(1, &[1], &t).is_err());
        t.posix.pop();
        t.posix[0].it_sigev_notify = (libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID) as u32;
        t.posix[0].notify_thread_id = Some(7);
        assert!(check(1, &[1], &t).is_err());
        assert!(check(1, &[1, 7], &t).is_ok());
    }
}
