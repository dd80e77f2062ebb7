//! Time namespace (`timens-<id>.img`). CRIU's rule: the image holds the
//! namespace's CLOCK_MONOTONIC and CLOCK_BOOTTIME as its tasks saw them at
//! dump time; on restore the offsets are chosen so both clocks continue
//! from there. So the clocks inside never go backwards, whenever and
//! wherever the tree is restored (time stands still while it is saved).
//!
//! Offsets can only be written before any task is in the namespace, so the
//! restorer unshares it for its children, writes them, forks the root into
//! it, and then takes its own `time_for_children` back.

use std::os::fd::OwnedFd;

use stasis_proto::criu::{TimensEntry, Timespec};
use stasis_proto::image::magic;
use tracing::warn;

use super::{DumpCx, KindOps, NsPlan};
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc::NsKind;
use crate::sys::clock;

pub const OPS: KindOps = KindOps {
    kind: NsKind::Time,
    check: |_| Ok(()),
    dump,
    read,
    setup: |_| Ok(()),
};

const NSEC: i128 = 1_000_000_000;

fn image(id: u32) -> String {
    format!("timens-{id}.img")
}

/// `/proc/PID/timens_offsets`: (monotonic, boottime) offsets in ns.
pub fn read_offsets(pid: i32) -> Result<(i128, i128)> {
    let p = format!("/proc/{pid}/timens_offsets");
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    parse_offsets(&s).ok_or_else(|| Error::Other(format!("{p}: cannot parse {s:?}")))
}

fn parse_offsets(s: &str) -> Option<(i128, i128)> {
    let (mut mono, mut boot) = (None, None);
    for l in s.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() != 3 {
            continue;
        }
        let v = f[1].parse::<i128>().ok()? * NSEC + f[2].parse::<i128>().ok()?;
        match f[0] {
            "monotonic" | "1" => mono = Some(v),
            "boottime" | "7" => boot = Some(v),
            _ => {}
        }
    }
    Some((mono?, boot?))
}

fn now(c: libc::clockid_t) -> Result<i128> {
    let (s, ns) = clock::gettime(c).map_err(|e| Error::Other(format!("clock_gettime: {e}")))?;
    Ok(s as i128 * NSEC + ns as i128)
}

fn ts(v: i128) -> Timespec {
    Timespec {
        tv_sec: (v / NSEC) as u64,
        tv_nsec: (v % NSEC) as u64,
    }
}

fn ns_of(t: &Timespec) -> i128 {
    t.tv_sec as i128 * NSEC + t.tv_nsec as i128
}

fn dump(cx: &DumpCx) -> Result<()> {
    let (mo, bo) = read_offsets(cx.root_pid)?;
    let e = TimensEntry {
        monotonic: ts(now(libc::CLOCK_MONOTONIC)? + mo),
        boottime: ts(now(libc::CLOCK_BOOTTIME)? + bo),
    };
    cx.dir.write_one(&image(cx.id), common(magic::TIMENS), &e)
}

fn read(dir: &ImageDir, id: u32, p: &mut NsPlan) -> Result<()> {
    p.time = Some(dir.read_one(&image(id), common(magic::TIMENS))?);
    Ok(())
}

/// "<secs> <nsecs>" with nsecs in [0, 1e9), secs possibly negative.
fn fmt_offset(v: i128) -> String {
    format!("{} {}", v.div_euclid(NSEC), v.rem_euclid(NSEC))
}

/// Unshare a time namespace for the restorer's children, with offsets that
/// make its clocks read what the image says. Returns the restorer's old
/// `time_for_children` to go back to.
pub fn enter_for_children(t: &TimensEntry) -> Result<OwnedFd> {
    let back = std::fs::File::open("/proc/self/ns/time_for_children")
        .map_err(|e| Error::io("/proc/self/ns/time_for_children", e))?;
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
        NsKind::Time.clone_flag(),
    ))
    .map_err(|e| Error::Other(format!("unshare a time namespace: {e}")))?;
    let mo = ns_of(&t.monotonic) - now(libc::CLOCK_MONOTONIC)?;
    let bo = ns_of(&t.boottime) - now(libc::CLOCK_BOOTTIME)?;
    let text = format!(
        "monotonic {}\nboottime {}\n",
        fmt_offset(mo),
        fmt_offset(bo)
    );
    if let Err(e) = std::fs::write("/proc/self/timens_offsets", &text) {
        let back = OwnedFd::from(back);
        leave_for_children(back);
        return Err(Error::io("/proc/self/timens_offsets", e));
    }
    Ok(OwnedFd::from(back))
}

/// Go back to the restorer's previous `time_for_children`.
pub fn leave_for_children(fd: OwnedFd) {
    if let Err(e) = nix::sched::setns(
        &fd,
        nix::sched::CloneFlags::from_bits_retain(NsKind::Time.clone_flag()),
    ) {
        warn!("cannot return to the restorer's time namespace: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets() {
        assert_eq!(
            parse_offsets("monotonic           0         0\nboottime         86400         5\n"),
            Some((0, 86400 * NSEC + 5))
        );
        assert_eq!(
            parse_offsets("1 -3 0\n7 2 1\n"),
            Some((-3 * NSEC, 2 * NSEC + 1))
        );
        assert_eq!(parse_offsets("monotonic 0 0\n"), None);
        assert_eq!(fmt_offset(-1), "-1 999999999");
        assert_eq!(fmt_offset(2 * NSEC + 3), "2 3");
        let t = ts(5 * NSEC + 7);
        assert_eq!(ns_of(&t), 5 * NSEC + 7);
    }
}
