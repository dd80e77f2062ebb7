//! `--join-ns NS:PATH`: the restored tree goes into a namespace the caller
//! prepared instead of a fresh one of its own (CRIU's form: PATH is a
//! namespace file such as `/proc/PID/ns/net` or `/run/netns/x`, or a pid;
//! anything after a comma is CRIU's extra options, ignored). The restorer
//! opens the files; the restored root enters them first thing, before it
//! fills its own namespaces or forks.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::ns::NsPlan;
use crate::proc::NsKind;

/// Parse one `NS:PATH[,EXTRA]`.
pub fn parse(s: &str) -> Result<(NsKind, PathBuf)> {
    let bad = |why: &str| Error::Other(format!("--join-ns {s:?}: {why}"));
    let (ns, rest) = s.split_once(':').ok_or_else(|| bad("expected NS:PATH"))?;
    let kind: NsKind = ns
        .parse()
        .map_err(|_| bad("unknown namespace kind (net, uts, ipc, mnt, time, cgroup)"))?;
    if matches!(kind, NsKind::Pid | NsKind::User) {
        return Err(bad("joining a pid or user namespace is not supported"));
    }
    let path = rest.split(',').next().unwrap_or_default();
    if path.is_empty() {
        return Err(bad("empty path"));
    }
    let p = if path.bytes().all(|b| b.is_ascii_digit()) {
        PathBuf::from(format!("/proc/{path}/ns/{}", kind.as_str()))
    } else {
        PathBuf::from(path)
    };
    Ok((kind, p))
}

/// Open the namespaces to join and take their kinds out of the plan (they
/// are neither created nor filled). The fds must stay open until the root
/// is forked.
pub fn prepare(list: &[String], p: &mut NsPlan) -> Result<Vec<(NsKind, OwnedFd)>> {
    let mut out = Vec::new();
    for s in list {
        let (kind, path) = parse(s)?;
        let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        p.own.retain(|k| *k != kind);
        if kind == NsKind::Mnt {
            p.mnt = None;
        }
        tracing::info!(kind = %kind, path = %path.display(), "joining a namespace");
        out.push((kind, OwnedFd::from(f)));
    }
    Ok(out)
}

/// The fd numbers, for the root's stub.
pub fn raw(j: &[(NsKind, OwnedFd)]) -> Vec<(NsKind, i32)> {
    j.iter().map(|(k, f)| (*k, f.as_raw_fd())).collect()
}

/// Enter them (run by the restored root).
pub fn enter(j: &[(NsKind, i32)]) -> std::result::Result<(), String> {
    for &(kind, fd) in j {
        let flags = nix::sched::CloneFlags::from_bits_truncate(kind.clone_flag());
        // Reopened through /proc (the fd is inherited from the restorer).
        let p = format!("/proc/self/fd/{fd}");
        let f = std::fs::File::open(&p).map_err(|e| format!("open {p}: {e}"))?;
        nix::sched::setns(&f, flags).map_err(|e| format!("join {kind} namespace: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(
            parse("net:/run/netns/x").unwrap(),
            (NsKind::Net, PathBuf::from("/run/netns/x"))
        );
        assert_eq!(
            parse("uts:123,extra").unwrap(),
            (NsKind::Uts, PathBuf::from("/proc/123/ns/uts"))
        );
        assert!(parse("pid:/x").is_err());
        assert!(parse("bogus:/x").is_err());
        assert!(parse("net").is_err());
    }
}
