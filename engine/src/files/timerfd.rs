//! timerfd: clock, time left, period, unread expirations, settime flags, as
//! CRIU's `timerfd_entry` (vsec/vnsec hold the time *left*, isec/insec the
//! period).
//!
//! Dump asks the timer itself (timerfd_gettime through a stolen fd): on an
//! expired periodic timer that accounts every missed period in its tick
//! count and re-arms it, just as its owner's next read would, so the tick
//! count read from fdinfo right after is the true number of unread
//! expirations. Restore arms a new timer with the time left (relative to
//! now; a TFD_TIMER_ABSTIME timer is armed at now + time left with its
//! flags, so it stays absolute and keeps TFD_TIMER_CANCEL_ON_SET) and then
//! puts the unread expirations back with the TFD_IOC_SET_TICKS ioctl, so an
//! armed periodic timer keeps firing and still reports what was not read.

use std::os::fd::{AsFd, OwnedFd};

use stasis_proto::criu::{FdTypes, FileEntry, FownEntry, TimerfdEntry};

use super::FdCtx;
use crate::error::Result;
use crate::proc::{self, FdinfoKind};
use crate::sys::fdobj::{self, TimerSpec};

const NSEC: u64 = 1_000_000_000;

fn nanos(v: (u64, u64)) -> u128 {
    v.0 as u128 * NSEC as u128 + v.1 as u128
}

pub fn dump_fd(cx: &FdCtx<'_>) -> Result<FileEntry> {
    let fd = cx.steal()?;
    let mut tries = 0;
    let (spec, info) = loop {
        let a = fdobj::timerfd_gettime(fd.as_fd())
            .map_err(|e| cx.err(format!("timerfd_gettime: {e}")))?;
        let info = proc::read_fdinfo(cx.pid, cx.fd)?;
        let b = fdobj::timerfd_gettime(fd.as_fd())
            .map_err(|e| cx.err(format!("timerfd_gettime: {e}")))?;
        // Did it expire between the two looks (so the tick count may not
        // match the time left)? Then look again.
        let fired = a.value != (0, 0) && (b.value == (0, 0) || nanos(b.value) > nanos(a.value));
        tries += 1;
        if !fired || tries >= 5 {
            break (a, info);
        }
    };
    let FdinfoKind::Timerfd(t) = info.kind else {
        return Err(cx.err("timerfd without timer lines in its fdinfo"));
    };
    Ok(FileEntry {
        r#type: FdTypes::Timerfd as i32,
        id: cx.id,
        tfd: Some(Box::new(TimerfdEntry {
            id: cx.id,
            flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
            fown: FownEntry::default(),
            clockid: t.clockid as u32,
            ticks: t.ticks,
            settime_flags: t.settime_flags,
            vsec: spec.value.0,
            vnsec: spec.value.1,
            isec: spec.interval.0,
            insec: spec.interval.1,
        })),
        ..Default::default()
    })
}

pub fn open(e: &TimerfdEntry) -> std::result::Result<OwnedFd, String> {
    let clock = e.clockid as i32;
    let mut fl = libc::TFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        fl |= libc::TFD_NONBLOCK;
    }
    let fd = fdobj::timerfd_create(clock, fl)
        .map_err(|err| format!("timerfd_create(clock {clock}): {err}"))?;
    if e.vnsec >= NSEC || e.insec >= NSEC {
        return Err(format!(
            "timerfd: bad time ({}, {}) / ({}, {})",
            e.vsec, e.vnsec, e.isec, e.insec
        ));
    }
    let mut spec = TimerSpec {
        value: (e.vsec, e.vnsec),
        interval: (e.isec, e.insec),
    };
    let abs = e.settime_flags & libc::TFD_TIMER_ABSTIME as u32 != 0;
    let mut flags = 0;
    if abs {
        flags = e.settime_flags as i32 & (libc::TFD_TIMER_ABSTIME | libc::TFD_TIMER_CANCEL_ON_SET);
        if spec.value != (0, 0) {
            let now = fdobj::clock_gettime(clock)
                .map_err(|err| format!("clock_gettime({clock}): {err}"))?;
            let t = nanos(now) + nanos(spec.value);
            spec.value = ((t / NSEC as u128) as u64, (t % NSEC as u128) as u64);
        }
    }
    fdobj::timerfd_settime(fd.as_fd(), flags, &spec)
        .map_err(|err| format!("timerfd_settime({spec:?}, flags {flags:#o}): {err}"))?;
    if e.ticks != 0 {
        fdobj::timerfd_set_ticks(fd.as_fd(), e.ticks)
            .map_err(|err| format!("timerfd: restore {} unread ticks: {err}", e.ticks))?;
    }
    Ok(fd)
}
