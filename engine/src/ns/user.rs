//! User namespace: the tree root's uid/gid maps (`userns-<id>.img`).
//!
//! Only the root's user namespace is saved; a task in another (nested) one
//! is refused by pid in [`super::collect`].
//!
//! Ids in the images are the ones the tasks see in their own namespace, as
//! CRIU writes them (its parasite reads them from inside): credentials,
//! SysV IPC owners, tmpfs tarball owners. The dumper reads host values
//! (/proc/PID/status, IPC_STAT, stat map ids into the reader's namespace)
//! and translates them with [`UserNs::uid_to_ns`] / [`UserNs::gid_to_ns`].
//!
//! Restore: the root is forked with `CLONE_NEWUSER` together with the other
//! `CLONE_NEW*` flags, so its fresh namespaces are owned by the new user
//! namespace (a time namespace, entered through the restorer's
//! `time_for_children`, stays owned by the restorer's). The restorer writes
//! the maps ([`write_maps`], `setgroups` "deny" first when the dump saw
//! it) before it lets the root's stub go; the stub then becomes root of
//! the namespace ([`OPS`] setup, first in table order) and fills the other
//! namespaces; credentials are set last from the in-namespace values.

use stasis_proto::criu::{CredsEntry, UidGidExtent, UsernsEntry};
use stasis_proto::image::magic;

use super::{DumpCx, KindOps, NsPlan};
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc::NsKind;

/// What an id outside every extent reads as (the kernel's default
/// overflowuid/overflowgid).
pub const OVERFLOW_ID: u32 = 65534;

/// uid/gid maps of a user namespace, lower ids as the dumper's (the
/// parent's) namespace sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserNs {
    pub uid_map: Vec<UidGidExtent>,
    pub gid_map: Vec<UidGidExtent>,
    /// `/proc/PID/setgroups` said "deny".
    pub setgroups_deny: bool,
}

/// Outer id -> id inside the namespace (the inverse of the map), or
/// [`OVERFLOW_ID`] when no extent covers it (what the kernel shows).
pub fn to_ns(map: &[UidGidExtent], outer: u32) -> u32 {
    map.iter()
        .find(|e| outer >= e.lower_first && outer - e.lower_first < e.count)
        .map_or(OVERFLOW_ID, |e| e.first + (outer - e.lower_first))
}

/// Id inside the namespace -> outer id, if mapped.
pub fn from_ns(map: &[UidGidExtent], inner: u32) -> Option<u32> {
    map.iter()
        .find(|e| inner >= e.first && inner - e.first < e.count)
        .map(|e| e.lower_first + (inner - e.first))
}

/// Parse a `/proc/PID/{uid,gid}_map` ("first lower_first count" lines).
pub fn parse_map(s: &str) -> std::result::Result<Vec<UidGidExtent>, String> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let n: Vec<u32> = l
                .split_whitespace()
                .map(|x| x.parse().map_err(|_| format!("bad map line {l:?}")))
                .collect::<std::result::Result<_, _>>()?;
            match n[..] {
                [first, lower_first, count] => Ok(UidGidExtent {
                    first,
                    lower_first,
                    count,
                }),
                _ => Err(format!("bad map line {l:?}")),
            }
        })
        .collect()
}

/// The map file's text (one line per extent, as the kernel wants it in a
/// single write).
pub fn format_map(map: &[UidGidExtent]) -> String {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.first, e.lower_first, e.count))
        .collect()
}

impl UserNs {
    /// The maps of `pid`'s user namespace.
    pub fn of(pid: i32) -> Result<UserNs> {
        let read = |f: &str| -> Result<String> {
            let p = format!("/proc/{pid}/{f}");
            std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))
        };
        let map = |f: &str| -> Result<Vec<UidGidExtent>> {
            parse_map(&read(f)?).map_err(|e| Error::Other(format!("/proc/{pid}/{f}: {e}")))
        };
        Ok(UserNs {
            uid_map: map("uid_map")?,
            gid_map: map("gid_map")?,
            setgroups_deny: read("setgroups")?.trim() == "deny",
        })
    }

    pub fn uid_to_ns(&self, outer: u32) -> u32 {
        to_ns(&self.uid_map, outer)
    }

    pub fn gid_to_ns(&self, outer: u32) -> u32 {
        to_ns(&self.gid_map, outer)
    }

    /// Credentials read from outside (/proc/PID/status) as the task sees
    /// them. Capability sets are relative to the task's own namespace
    /// already.
    pub fn creds_to_ns(&self, c: &mut CredsEntry) {
        for u in [&mut c.uid, &mut c.euid, &mut c.suid, &mut c.fsuid] {
            *u = self.uid_to_ns(*u);
        }
        for g in [&mut c.gid, &mut c.egid, &mut c.sgid, &mut c.fsgid] {
            *g = self.gid_to_ns(*g);
        }
        for g in c.groups.iter_mut() {
            *g = self.gid_to_ns(*g);
        }
    }
}

/// An owner read from outside (stat) as the tree sees it, in the tree's
/// user namespace `u` (None: the tree has none of its own).
pub fn owner_to_tree(u: Option<&UserNs>, uid: u32, gid: u32) -> (u32, u32) {
    match u {
        Some(u) => (u.uid_to_ns(uid), u.gid_to_ns(gid)),
        None => (uid, gid),
    }
}

/// An owner from the images as the restorer (outside) writes it; ids the
/// maps do not cover are left as they are.
pub fn owner_from_tree(u: Option<&UserNs>, uid: u32, gid: u32) -> (u32, u32) {
    match u {
        Some(u) => (
            from_ns(&u.uid_map, uid).unwrap_or(uid),
            from_ns(&u.gid_map, gid).unwrap_or(gid),
        ),
        None => (uid, gid),
    }
}

pub const OPS: KindOps = KindOps {
    kind: NsKind::User,
    check: |cx| {
        let u = cx.user.ok_or_else(|| {
            Error::unsupported(cx.root_pid, "its user namespace maps were not read")
        })?;
        if u.uid_map.is_empty() || u.gid_map.is_empty() {
            return Err(Error::unsupported(
                cx.root_pid,
                "its user namespace has no uid_map or gid_map written yet",
            ));
        }
        Ok(())
    },
    dump,
    read,
    setup,
};

fn image(id: u32) -> String {
    format!("userns-{id}.img")
}

fn dump(cx: &DumpCx) -> Result<()> {
    let u = match cx.user {
        Some(u) => u.clone(),
        None => UserNs::of(cx.root_pid)?,
    };
    let e = UsernsEntry {
        uid_map: u.uid_map,
        gid_map: u.gid_map,
        stasis_setgroups_deny: u.setgroups_deny.then_some(true),
    };
    cx.dir.write_one(&image(cx.id), common(magic::USERNS), &e)
}

fn read(dir: &ImageDir, id: u32, p: &mut NsPlan) -> Result<()> {
    let e: UsernsEntry = dir.read_one(&image(id), common(magic::USERNS))?;
    if e.uid_map.is_empty() || e.gid_map.is_empty() {
        return Err(Error::bad_image(
            format!("{} in {}", image(id), dir.path().display()),
            "the user namespace has an empty uid_map or gid_map",
        ));
    }
    p.user = Some(UserNs {
        uid_map: e.uid_map,
        gid_map: e.gid_map,
        setgroups_deny: e.stasis_setgroups_deny == Some(true),
    });
    Ok(())
}

/// Namespaces made or opened by the restorer (`--join-ns`, the network
/// lock of established connections) belong to its user namespace: the
/// root, once in a fresh one, may not enter them.
pub fn check_join(p: &NsPlan, root_pid: i32, joined: usize) -> Result<()> {
    if p.user.is_some() && joined > 0 {
        return Err(Error::unsupported(
            root_pid,
            "the tree has a user namespace of its own: joining namespaces made outside it \
             (--join-ns, or the network lock of established TCP connections) is not supported",
        ));
    }
    Ok(())
}

/// Write the maps of the restored root's fresh user namespace; called by
/// the restorer (outside, root of the parent namespace) before the root's
/// stub goes on.
pub fn write_maps(pid: i32, p: &NsPlan) -> Result<()> {
    let Some(u) = &p.user else {
        return Ok(());
    };
    let write = |f: &str, v: &str| -> Result<()> {
        let path = format!("/proc/{pid}/{f}");
        std::fs::write(&path, v).map_err(|e| Error::task(pid, format!("write {v:?} to {path}"), e))
    };
    write("uid_map", &format_map(&u.uid_map))?;
    if u.setgroups_deny {
        write("setgroups", "deny")?;
    }
    write("gid_map", &format_map(&u.gid_map))?;
    Ok(())
}

/// The credentials restored task `pid` has now, as seen inside the tree's
/// user namespace (None: the tree has none, the task has the restorer's).
pub fn current_creds(pid: i32, p: &NsPlan) -> Result<Option<CredsEntry>> {
    let Some(u) = &p.user else {
        return Ok(None);
    };
    let mut c = crate::task::creds::from_status(&crate::proc::read_status(pid)?, 0);
    u.creds_to_ns(&mut c);
    Ok(Some(c))
}

/// Run by the root's stub inside the fresh namespace, maps written: become
/// its root (uid/gid 0 when mapped) so the other namespaces are filled by
/// an owner their file systems know (tmpfs files need a mapped fsuid).
/// Credentials proper are set later, per task.
fn setup(p: &NsPlan) -> std::result::Result<(), String> {
    let Some(u) = &p.user else {
        return Ok(());
    };
    if from_ns(&u.gid_map, 0).is_some() {
        nix::unistd::setresgid(0.into(), 0.into(), 0.into())
            .map_err(|e| format!("setresgid(0) in the user namespace: {e}"))?;
    }
    if from_ns(&u.uid_map, 0).is_some() {
        nix::unistd::setresuid(0.into(), 0.into(), 0.into())
            .map_err(|e| format!("setresuid(0) in the user namespace: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(first: u32, lower_first: u32, count: u32) -> UidGidExtent {
        UidGidExtent {
            first,
            lower_first,
            count,
        }
    }

    #[test]
    fn translation_through_extents() {
        let m = vec![ext(0, 0, 1), ext(1, 100_000, 65535)];
        assert_eq!(to_ns(&m, 0), 0);
        assert_eq!(to_ns(&m, 100_000), 1);
        assert_eq!(to_ns(&m, 100_004), 5);
        assert_eq!(to_ns(&m, 100_000 + 65534), 65535);
        // Unmapped outer ids read as the overflow id.
        assert_eq!(to_ns(&m, 1000), OVERFLOW_ID);
        assert_eq!(to_ns(&m, 100_000 + 65535), OVERFLOW_ID);
        assert_eq!(to_ns(&[], 0), OVERFLOW_ID);
        assert_eq!(from_ns(&m, 5), Some(100_004));
        assert_eq!(from_ns(&m, 0), Some(0));
        assert_eq!(from_ns(&m, 65536), None);
        for inner in [0, 1, 77, 65535] {
            assert_eq!(to_ns(&m, from_ns(&m, inner).unwrap()), inner);
        }
        // No overflow near u32::MAX.
        let top = vec![ext(0, u32::MAX - 1, 2)];
        assert_eq!(to_ns(&top, u32::MAX), 1);
        assert_eq!(to_ns(&top, 3), OVERFLOW_ID);
    }

    #[test]
    fn maps_parse_and_format() {
        let s = "         0          0          1\n         1     100000      65535\n";
        let m = parse_map(s).unwrap();
        assert_eq!(m, vec![ext(0, 0, 1), ext(1, 100_000, 65535)]);
        assert_eq!(format_map(&m), "0 0 1\n1 100000 65535\n");
        assert!(parse_map("0 1\n").is_err());
        assert!(parse_map("").unwrap().is_empty());
    }

    #[test]
    fn creds_seen_from_inside() {
        let u = UserNs {
            uid_map: vec![ext(0, 0, 1), ext(1, 100_000, 1000)],
            gid_map: vec![ext(0, 0, 1), ext(1, 200_000, 1000)],
            setgroups_deny: false,
        };
        let mut c = CredsEntry {
            uid: 0,
            euid: 100_004,
            suid: 0,
            fsuid: 100_004,
            gid: 0,
            egid: 200_004,
            sgid: 0,
            fsgid: 200_004,
            groups: vec![0, 200_009, 7],
            ..Default::default()
        };
        u.creds_to_ns(&mut c);
        assert_eq!((c.uid, c.euid, c.suid, c.fsuid), (0, 5, 0, 5));
        assert_eq!((c.gid, c.egid, c.sgid, c.fsgid), (0, 5, 0, 5));
        assert_eq!(c.groups, vec![0, 10, OVERFLOW_ID]);
    }
}
