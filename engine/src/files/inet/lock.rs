//! Network lock: while established connections are dumped and until they
//! are restored, their packets are dropped (not rejected) in the socket's
//! network namespace, so the peer only sees loss and retransmits; it never
//! gets a reset from a socket that is gone or half rebuilt.
//!
//! One nftables table per dump, `inet stasis_lock_<ino>` (ino: the
//! smallest inode of the locked sockets, which restore reads back from the
//! images), with one drop rule per direction per connection, hooked before
//! conntrack. Applied by the `nft` command run from a thread that entered
//! the namespace.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use tracing::{debug, info};

/// One TCP connection as seen from the locked side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub local: (IpAddr, u16),
    pub peer: (IpAddr, u16),
}

pub fn table_name(ino: u32) -> String {
    format!("stasis_lock_{ino}")
}

fn ip_match(a: IpAddr, dir: &str) -> String {
    match a {
        IpAddr::V4(v) => format!("ip {dir} {v}"),
        // A v4-mapped address travels as IPv4 on the wire.
        IpAddr::V6(v) => match v.to_ipv4_mapped() {
            Some(m) => format!("ip {dir} {m}"),
            None => format!("ip6 {dir} {v}"),
        },
    }
}

/// The nft script that adds table `name` dropping `conns`, and the
/// connection requests (SYN without ACK) to `listeners`: a client that
/// connects meanwhile retransmits its SYN until the restored listener
/// answers, where the dumped one would have queued the connection and then,
/// killed, reset it.
pub fn script(name: &str, conns: &[Conn], listeners: &[(IpAddr, u16)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table inet {name}");
    for (chain, hook) in [("in", "input"), ("out", "output")] {
        let _ = writeln!(
            s,
            "add chain inet {name} {chain} {{ type filter hook {hook} priority -300; policy accept; }}"
        );
    }
    for &(a, port) in listeners {
        let dst = if a.is_unspecified() {
            String::new()
        } else {
            format!("{} ", ip_match(a, "daddr"))
        };
        let _ = writeln!(
            s,
            "add rule inet {name} in {dst}tcp dport {port} tcp flags & (syn | ack) == syn drop"
        );
    }
    for c in conns {
        let (l, p) = (c.local, c.peer);
        let _ = writeln!(
            s,
            "add rule inet {name} in {} {} tcp sport {} tcp dport {} drop",
            ip_match(p.0, "saddr"),
            ip_match(l.0, "daddr"),
            p.1,
            l.1
        );
        let _ = writeln!(
            s,
            "add rule inet {name} out {} {} tcp sport {} tcp dport {} drop",
            ip_match(l.0, "saddr"),
            ip_match(p.0, "daddr"),
            l.1,
            p.1
        );
    }
    s
}

/// Run `nft -f -` with `input` inside the network namespace `ns`.
fn nft(ns: &std::fs::File, input: &str) -> Result<(), String> {
    std::thread::scope(|sc| {
        sc.spawn(|| -> Result<(), String> {
            // Only this thread moves; the child it spawns is born there.
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("enter the network namespace: {e}"))?;
            let mut ch = Command::new("nft")
                .args(["-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("run nft (is nftables installed?): {e}"))?;
            if let Some(mut i) = ch.stdin.take() {
                i.write_all(input.as_bytes())
                    .map_err(|e| format!("write to nft: {e}"))?;
            }
            let out = ch
                .wait_with_output()
                .map_err(|e| format!("wait for nft: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "nft: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err("nft thread panicked".into()))
    })
}

/// A lock in place; dropping it leaves the table there (see
/// [`Lock::unlock`]).
#[derive(Debug)]
pub struct Lock {
    ns: std::fs::File,
    name: String,
}

impl Lock {
    /// Drop the packets of `conns` in the network namespace of `pid`.
    pub fn take(
        pid: i32,
        ino: u32,
        conns: &[Conn],
        listeners: &[(IpAddr, u16)],
    ) -> Result<Lock, String> {
        let p = format!("/proc/{pid}/ns/net");
        let ns = std::fs::File::open(&p).map_err(|e| format!("open {p}: {e}"))?;
        Self::take_in(ns, ino, conns, listeners)
    }

    /// The same in the network namespace `ns` (an open ns file).
    pub fn take_in(
        ns: std::fs::File,
        ino: u32,
        conns: &[Conn],
        listeners: &[(IpAddr, u16)],
    ) -> Result<Lock, String> {
        let name = table_name(ino);
        nft(&ns, &script(&name, conns, listeners)).map_err(|e| format!("network lock: {e}"))?;
        info!(table = %name, conns = conns.len(), listeners = listeners.len(), "network locked");
        Ok(Lock { ns, name })
    }

    pub fn unlock(self) -> Result<(), String> {
        remove(&self.ns, &self.name)
    }
}

fn remove(ns: &std::fs::File, name: &str) -> Result<(), String> {
    match nft(ns, &format!("delete table inet {name}\n")) {
        Ok(()) => {
            info!(table = %name, "network unlocked");
            Ok(())
        }
        Err(e) if e.contains("No such file") => {
            debug!(table = %name, "no network lock to remove");
            Ok(())
        }
        Err(e) => Err(format!("network unlock: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_rules() {
        let c = Conn {
            local: ("10.0.0.1".parse().unwrap(), 40000),
            peer: ("10.0.0.2".parse().unwrap(), 5000),
        };
        let s = script("stasis_lock_7", &[c], &[]);
        assert!(s.contains("add table inet stasis_lock_7"));
        assert!(s.contains(
            "add rule inet stasis_lock_7 in ip saddr 10.0.0.2 ip daddr 10.0.0.1 tcp sport 5000 tcp dport 40000 drop"
        ));
        assert!(s.contains(
            "out ip saddr 10.0.0.1 ip daddr 10.0.0.2 tcp sport 40000 tcp dport 5000 drop"
        ));
        let c6 = Conn {
            local: ("::ffff:10.0.0.1".parse().unwrap(), 1),
            peer: ("::ffff:10.0.0.2".parse().unwrap(), 2),
        };
        let s = script("t", &[c6], &[]);
        assert!(s.contains("in ip saddr 10.0.0.2 ip daddr 10.0.0.1"), "{s}");
        let v6 = Conn {
            local: ("fd00::1".parse().unwrap(), 1),
            peer: ("fd00::2".parse().unwrap(), 2),
        };
        let s = script("t", &[v6], &[]);
        assert!(s.contains("in ip6 saddr fd00::2 ip6 daddr fd00::1"), "{s}");
    }

    #[test]
    fn listener_rules_drop_connection_requests_only() {
        let s = script(
            "t",
            &[],
            &[
                ("0.0.0.0".parse().unwrap(), 80),
                ("fd00::1".parse().unwrap(), 443),
            ],
        );
        assert!(
            s.contains("add rule inet t in tcp dport 80 tcp flags & (syn | ack) == syn drop"),
            "{s}"
        );
        assert!(
            s.contains(
                "add rule inet t in ip6 daddr fd00::1 tcp dport 443 tcp flags & (syn | ack) == syn drop"
            ),
            "{s}"
        );
    }
}
