//! Credentials: ids, groups, capability sets, securebits, no_new_privs.
//!
//! Dump reads them from /proc/PID/task/TID/status (plus securebits, which only
//! the thread itself can tell). Restore applies them last, per thread, in the
//! one order the kernel accepts: bounding set, groups, gids, uids (keeping
//! capabilities across the uid change), capability sets, ambient set,
//! securebits.

use stasis_proto::criu::CredsEntry;

use crate::error::Result;
use crate::proc::Status;
use crate::task::remote::Remote;

/// Highest capability number this kernel knows (CAP_LAST_CAP).
pub fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn words(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}

fn unwords(w: &[u32]) -> u64 {
    w.first().copied().unwrap_or(0) as u64 | (w.get(1).copied().unwrap_or(0) as u64) << 32
}

pub fn from_status(st: &Status, secbits: u32) -> CredsEntry {
    CredsEntry {
        uid: st.uid[0],
        euid: st.uid[1],
        suid: st.uid[2],
        fsuid: st.uid[3],
        gid: st.gid[0],
        egid: st.gid[1],
        sgid: st.gid[2],
        fsgid: st.gid[3],
        cap_inh: words(st.cap_inh),
        cap_prm: words(st.cap_prm),
        cap_eff: words(st.cap_eff),
        cap_bnd: words(st.cap_bnd),
        cap_amb: words(st.cap_amb),
        secbits,
        groups: st.groups.clone(),
        no_new_privs: Some(st.no_new_privs as u32),
        ..Default::default()
    }
}

/// The capability masks of an entry: (inh, prm, eff, bnd, amb).
pub fn caps(c: &CredsEntry) -> (u64, u64, u64, u64, u64) {
    (
        unwords(&c.cap_inh),
        unwords(&c.cap_prm),
        unwords(&c.cap_eff),
        unwords(&c.cap_bnd),
        unwords(&c.cap_amb),
    )
}

const SECBIT_KEEP_CAPS: u64 = 1 << 4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Apply credentials to thread `tid` of a restored process by remote calls.
/// `cur` is what the thread has now (the restorer's own credentials), so
/// the common case of unchanged credentials costs nothing.
pub fn restore(
    r: &mut Remote,
    tid: i32,
    c: &CredsEntry,
    cur: &CredsEntry,
    scratch: u64,
) -> Result<()> {
    let (inh, prm, eff, bnd, amb) = caps(c);
    let (_, _, _, cur_bnd, _) = caps(cur);
    // 1. Bounding set: needs CAP_SETPCAP, so first.
    let last = last_cap();
    for cap in 0..=last {
        let bit = 1u64 << cap;
        if cur_bnd & bit != 0 && bnd & bit == 0 {
            r.call(
                tid,
                "prctl(PR_CAPBSET_DROP)",
                libc::SYS_prctl,
                [libc::PR_CAPBSET_DROP as u64, cap as u64, 0, 0, 0, 0],
            )?;
        }
    }
    // 2. Groups and gids (need CAP_SETGID).
    if c.groups != cur.groups {
        let bytes: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
        r.write(scratch, &bytes)?;
        r.call(
            tid,
            "setgroups",
            libc::SYS_setgroups,
            [c.groups.len() as u64, scratch, 0, 0, 0, 0],
        )?;
    }
    let same_ids = (
        c.uid, c.euid, c.suid, c.fsuid, c.gid, c.egid, c.sgid, c.fsgid,
    ) == (
        cur.uid, cur.euid, cur.suid, cur.fsuid, cur.gid, cur.egid, cur.sgid, cur.fsgid,
    );
    if !same_ids {
        r.call(
            tid,
            "setresgid",
            libc::SYS_setresgid,
            [c.gid as u64, c.egid as u64, c.sgid as u64, 0, 0, 0],
        )?;
        r.call(
            tid,
            "setfsgid",
            libc::SYS_setfsgid,
            [c.fsgid as u64, 0, 0, 0, 0, 0],
        )?;
        // 3. Keep permitted caps across the uid change, then set uids.
        r.call(
            tid,
            "prctl(PR_SET_SECUREBITS)",
            libc::SYS_prctl,
            [
                libc::PR_SET_SECUREBITS as u64,
                c.secbits as u64 | SECBIT_KEEP_CAPS,
                0,
                0,
                0,
                0,
            ],
        )?;
        r.call(
            tid,
            "setresuid",
            libc::SYS_setresuid,
            [c.uid as u64, c.euid as u64, c.suid as u64, 0, 0, 0],
        )?;
        r.call(
            tid,
            "setfsuid",
            libc::SYS_setfsuid,
            [c.fsuid as u64, 0, 0, 0, 0, 0],
        )?;
    } else if c.secbits != cur.secbits {
        r.call(
            tid,
            "prctl(PR_SET_SECUREBITS)",
            libc::SYS_prctl,
            [libc::PR_SET_SECUREBITS as u64, c.secbits as u64, 0, 0, 0, 0],
        )?;
    }
    // 4. Capability sets: header {version, pid=0} + 2 data {eff, prm, inh}.
    if caps(c) != caps(cur) {
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&LINUX_CAPABILITY_VERSION_3.to_ne_bytes());
        b.extend_from_slice(&0i32.to_ne_bytes());
        for shift in [0, 32] {
            b.extend_from_slice(&((eff >> shift) as u32).to_ne_bytes());
            b.extend_from_slice(&((prm >> shift) as u32).to_ne_bytes());
            b.extend_from_slice(&((inh >> shift) as u32).to_ne_bytes());
        }
        r.write(scratch, &b)?;
        r.call(
            tid,
            "capset",
            libc::SYS_capset,
            [scratch, scratch + 8, 0, 0, 0, 0],
        )?;
        for cap in 0..=last {
            if amb & (1u64 << cap) != 0 {
                r.call(
                    tid,
                    "prctl(PR_CAP_AMBIENT_RAISE)",
                    libc::SYS_prctl,
                    [
                        libc::PR_CAP_AMBIENT as u64,
                        libc::PR_CAP_AMBIENT_RAISE as u64,
                        cap as u64,
                        0,
                        0,
                        0,
                    ],
                )?;
            }
        }
    }
    // 5. Drop KEEP_CAPS again unless it was set.
    if !same_ids && c.secbits as u64 & SECBIT_KEEP_CAPS == 0 {
        r.call(
            tid,
            "prctl(PR_SET_KEEPCAPS)",
            libc::SYS_prctl,
            [libc::PR_SET_KEEPCAPS as u64, 0, 0, 0, 0, 0],
        )?;
    }
    if c.no_new_privs.unwrap_or(0) != 0 && cur.no_new_privs.unwrap_or(0) == 0 {
        r.call(
            tid,
            "prctl(PR_SET_NO_NEW_PRIVS)",
            libc::SYS_prctl,
            [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_words_round_trip() {
        let v = 0x1_ffff_ffffu64 | 1 << 40;
        assert_eq!(unwords(&words(v)), v);
    }
}
