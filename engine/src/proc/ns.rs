//! `/proc/PID/ns/*` links: `pid:[4026531836]` → (kind, inode).

use std::fmt;
use std::str::FromStr;

use super::util::{dec, pid_path};
use super::ProcError;

const FILE: &str = "ns";

/// A namespace type, as named in the link target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsKind {
    Cgroup,
    Ipc,
    Mnt,
    Net,
    Pid,
    Time,
    User,
    Uts,
}

impl NsKind {
    pub const ALL: [NsKind; 8] = [
        NsKind::Cgroup,
        NsKind::Ipc,
        NsKind::Mnt,
        NsKind::Net,
        NsKind::Pid,
        NsKind::Time,
        NsKind::User,
        NsKind::Uts,
    ];

    /// The name used in link targets and in `/proc/PID/ns/<name>`.
    pub fn as_str(self) -> &'static str {
        match self {
            NsKind::Cgroup => "cgroup",
            NsKind::Ipc => "ipc",
            NsKind::Mnt => "mnt",
            NsKind::Net => "net",
            NsKind::Pid => "pid",
            NsKind::Time => "time",
            NsKind::User => "user",
            NsKind::Uts => "uts",
        }
    }

    /// The `CLONE_NEW*` flag for setns/unshare/clone.
    pub fn clone_flag(self) -> i32 {
        match self {
            NsKind::Cgroup => libc::CLONE_NEWCGROUP,
            NsKind::Ipc => libc::CLONE_NEWIPC,
            NsKind::Mnt => libc::CLONE_NEWNS,
            NsKind::Net => libc::CLONE_NEWNET,
            NsKind::Pid => libc::CLONE_NEWPID,
            // Not in every libc release: CLONE_NEWTIME = 0x80.
            NsKind::Time => 0x80,
            NsKind::User => libc::CLONE_NEWUSER,
            NsKind::Uts => libc::CLONE_NEWUTS,
        }
    }
}

impl fmt::Display for NsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NsKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        NsKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or(())
    }
}

/// Every link in `/proc/PID/ns`, with the kind its target names.
pub const NS_LINKS: [(&str, NsKind); 10] = [
    ("cgroup", NsKind::Cgroup),
    ("ipc", NsKind::Ipc),
    ("mnt", NsKind::Mnt),
    ("net", NsKind::Net),
    ("pid", NsKind::Pid),
    ("pid_for_children", NsKind::Pid),
    ("time", NsKind::Time),
    ("time_for_children", NsKind::Time),
    ("user", NsKind::User),
    ("uts", NsKind::Uts),
];

/// One namespace link of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsLink {
    /// Link name (`pid`, `pid_for_children`, …).
    pub name: &'static str,
    pub kind: NsKind,
    /// Namespace inode (its identity; compare across tasks).
    pub ino: u64,
}

/// Parse a link target such as `pid:[4026531836]`.
pub fn parse_ns_link(target: &str) -> Result<(NsKind, u64), ProcError> {
    let bad = |reason| ProcError::bad_line(FILE, 1, target, reason);
    let (kind, rest) = target.split_once(':').ok_or_else(|| bad("no colon"))?;
    let kind = kind.parse().map_err(|_| bad("unknown namespace kind"))?;
    let ino = rest
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(dec)
        .ok_or_else(|| bad("bad inode"))?;
    Ok((kind, ino))
}

/// Read `/proc/<pid>/ns/<name>` (e.g. `"net"`, `"pid_for_children"`).
pub fn read_ns(pid: i32, name: &str) -> Result<(NsKind, u64), ProcError> {
    let path = pid_path(pid, &format!("ns/{name}"));
    let target = std::fs::read_link(&path).map_err(|e| ProcError::io(&path, e))?;
    parse_ns_link(&target.to_string_lossy())
}

/// Read every link of [`NS_LINKS`]. Links that do not exist (kernel without
/// that namespace type, or `*_for_children` of an exiting task) are skipped.
/// They are read relative to `/proc/PID/ns`, opened once: no path walk of
/// it per link.
pub fn read_all_ns(pid: i32) -> Result<Vec<NsLink>, ProcError> {
    use std::os::fd::AsRawFd;
    let dir_path = pid_path(pid, "ns");
    let dir = std::fs::File::open(&dir_path).map_err(|e| ProcError::io(&dir_path, e))?;
    let mut out = Vec::with_capacity(NS_LINKS.len());
    for (name, _) in NS_LINKS {
        match nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name) {
            Ok(target) => {
                let (kind, ino) = parse_ns_link(&target.to_string_lossy())?;
                out.push(NsLink { name, kind, ino });
            }
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(ProcError::io(dir_path.join(name), e.into())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        // Targets from `ls -l /proc/self/ns` on the test VM.
        assert_eq!(
            parse_ns_link("pid:[4026531836]").unwrap(),
            (NsKind::Pid, 4026531836)
        );
        assert_eq!(
            parse_ns_link("cgroup:[4026531835]").unwrap(),
            (NsKind::Cgroup, 4026531835)
        );
        assert_eq!(
            parse_ns_link("mnt:[4026531832]").unwrap(),
            (NsKind::Mnt, 4026531832)
        );
        assert_eq!(
            parse_ns_link("time:[4026531834]").unwrap(),
            (NsKind::Time, 4026531834)
        );
        for k in NsKind::ALL {
            assert_eq!(k.as_str().parse::<NsKind>(), Ok(k));
        }
        assert_eq!(NsKind::Time.clone_flag(), 0x80);
        assert_eq!(NsKind::Mnt.to_string(), "mnt");
    }

    #[test]
    fn errors() {
        let e = parse_ns_link("foo:[1]").unwrap_err();
        assert_eq!(
            e.to_string(),
            "ns: bad line 1: \"foo:[1]\" (unknown namespace kind)"
        );
        assert!(parse_ns_link("pid:1")
            .unwrap_err()
            .to_string()
            .ends_with("(bad inode)"));
        assert!(parse_ns_link("pid").is_err());
        assert!(parse_ns_link("pid:[x]").is_err());
    }

    #[test]
    fn live_self() {
        let pid = std::process::id() as i32;
        let all = read_all_ns(pid).unwrap();
        assert!(all.len() >= 8);
        let (k, ino) = read_ns(pid, "pid").unwrap();
        assert_eq!(k, NsKind::Pid);
        let link = all.iter().find(|l| l.name == "pid").unwrap();
        assert_eq!(link.ino, ino);
        // Matches stat() of the link.
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata("/proc/self/ns/net").unwrap().ino(),
            read_ns(pid, "net").unwrap().1
        );
    }
}
