//! The `ip`, `nft` and `iptables` commands CRIU's images come from and go
//! back through (`ip addr save`, `nft list ruleset`, ...). Run from a
//! thread inside the namespace: the child is born in it.

use std::io::{Seek as _, Write as _};
use std::process::{Command, Stdio};

/// Run `prog args` with `input` on stdin; its stdout, or an error with its
/// stderr.
pub fn run(prog: &str, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let what = format!("{prog} {}", args.join(" "));
    // Input from a file: `ip route restore` reads its stdin several times
    // (seeks back), as CRIU's tmpfile allows.
    let stdin = match input {
        Some(data) => {
            let mut f: std::fs::File = crate::sys::stub::memfd("stasis-net")
                .map_err(|e| format!("memfd for {what}: {e}"))?
                .into();
            f.write_all(data)
                .and_then(|_| f.seek(std::io::SeekFrom::Start(0)).map(|_| ()))
                .map_err(|e| format!("input of {what}: {e}"))?;
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    let ch = Command::new(prog)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {what}: {e}"))?;
    let out = ch
        .wait_with_output()
        .map_err(|e| format!("wait for {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        // `ip ... restore` reports objects that already exist (made by the
        // kernel with the links) and goes on.
        tracing::debug!(cmd = %what, stderr = %err.trim(), "tool messages");
    }
    Ok(out.stdout)
}

/// Several commands without input run side by side (the dump's `ip ...
/// save` and `nft list ruleset`: each costs a few ms to start); their
/// stdouts in order.
pub fn run_all(cmds: &[(&str, &[&str])]) -> Result<Vec<Vec<u8>>, String> {
    let mut children = Vec::new();
    for (prog, args) in cmds {
        let what = format!("{prog} {}", args.join(" "));
        let ch = Command::new(prog)
            .args(*args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run {what}: {e}"))?;
        children.push((what, ch));
    }
    let mut out = Vec::new();
    let mut first_err = None;
    // Wait for all, even after a failure (no child left behind).
    for (what, ch) in children {
        match ch.wait_with_output() {
            Ok(o) if o.status.success() => out.push(o.stdout),
            Ok(o) => {
                first_err.get_or_insert(format!(
                    "{what}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Err(e) => {
                first_err.get_or_insert(format!("wait for {what}: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Whether `prog` can be run (looked up in PATH).
pub fn exists(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// `nft list ruleset` output without the tables named `inet
/// stasis_lock_*` (our own network lock, never part of the image).
pub fn strip_lock_tables(ruleset: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in ruleset.split_inclusive('\n') {
        if skipping {
            if line.trim_end() == "}" {
                skipping = false;
            }
            continue;
        }
        if line.starts_with("table inet stasis_lock_") {
            skipping = !line.trim_end().ends_with('}');
            continue;
        }
        out.push_str(line);
    }
    out
}

/// The netlink messages of an `ip ... save` image (a 4-byte magic, then
/// the messages as the kernel dumped them).
pub fn saved_messages(b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = b.get(4..).unwrap_or_default();
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > rest.len() {
            break;
        }
        out.push(&rest[..len]);
        rest = &rest[((len + 3) & !3).min(rest.len())..];
    }
    out
}

fn ip_text(family: u8, d: &[u8]) -> String {
    match (family as i32, d.len()) {
        (libc::AF_INET, 4) => std::net::Ipv4Addr::new(d[0], d[1], d[2], d[3]).to_string(),
        (libc::AF_INET6, 16) => {
            let a: [u8; 16] = d.try_into().unwrap();
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => format!("{d:02x?}"),
    }
}

/// One saved address, route or rule in words, devices by name.
pub fn describe(m: &[u8], dev: &dyn Fn(u32) -> String) -> String {
    let ty = u16::from_ne_bytes([m[4], m[5]]);
    let body = &m[16..];
    let attr = |off: usize, t: u16| {
        super::rtnl::attrs(body.get(off..).unwrap_or_default())
            .into_iter()
            .find(|(x, _)| *x == t)
            .map(|(_, d)| d)
    };
    match ty {
        // RTM_NEWADDR: ifaddrmsg (8 bytes); IFA_LOCAL 2, else IFA_ADDRESS 1.
        20 if body.len() >= 8 => {
            let (fam, plen) = (body[0], body[1]);
            let index = u32::from_ne_bytes(body[4..8].try_into().unwrap());
            let a = attr(8, 2).or_else(|| attr(8, 1)).unwrap_or_default();
            format!("address {}/{plen} on {}", ip_text(fam, a), dev(index))
        }
        // RTM_NEWROUTE: rtmsg (12 bytes); RTA_DST 1, RTA_OIF 4, RTA_GATEWAY 5.
        24 if body.len() >= 12 => {
            let (fam, dlen) = (body[0], body[1]);
            let dst = attr(12, 1)
                .map(|d| format!("{}/{dlen}", ip_text(fam, d)))
                .unwrap_or_else(|| "default".into());
            let mut s = format!("route {dst}");
            if let Some(g) = attr(12, 5) {
                s += &format!(" via {}", ip_text(fam, g));
            }
            if let Some(i) = attr(12, 4).and_then(super::rtnl::u32_of) {
                s += &format!(" dev {}", dev(i));
            }
            s
        }
        // RTM_NEWRULE: fib_rule_hdr (12 bytes); FRA_PRIORITY 6, FRA_TABLE 15.
        32 if body.len() >= 12 => {
            let prio = attr(12, 6).and_then(super::rtnl::u32_of).unwrap_or(0);
            let table = attr(12, 15)
                .and_then(super::rtnl::u32_of)
                .unwrap_or(body[4] as u32);
            format!("rule {prio} (table {table})")
        }
        t => format!("netlink message of type {t}"),
    }
}

/// `ip OBJ restore` of a saved image; when it fails, each object is
/// restored alone to name the one the kernel refuses (those already there
/// are skipped by ip as existing).
pub fn ip_restore(obj: &str, blob: &[u8], dev: &dyn Fn(u32) -> String) -> Result<(), String> {
    let all = match run("ip", &[obj, "restore"], Some(blob)) {
        Ok(_) => return Ok(()),
        Err(e) => e,
    };
    for m in saved_messages(blob) {
        let mut one = blob[..4].to_vec();
        one.extend_from_slice(m);
        if let Err(e) = run("ip", &[obj, "restore"], Some(&one)) {
            return Err(format!("{}: {e}", describe(m, dev)));
        }
    }
    Err(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_table_left_out() {
        let r = "table inet nlkeep {\n\tchain c {\n\t\ttcp dport 1 drop\n\t}\n}\n\
                 table inet stasis_lock_12 {\n\tchain in {\n\t\ttype filter hook input priority -300; policy accept;\n\t}\n}\n\
                 table ip other {\n}\n";
        let s = strip_lock_tables(r);
        assert!(!s.contains("stasis_lock"), "{s}");
        assert!(s.contains("table inet nlkeep {\n\tchain c {\n\t\ttcp dport 1 drop\n\t}\n}\n"));
        assert!(s.ends_with("table ip other {\n}\n"), "{s}");
    }

    #[test]
    fn saved_objects_named() {
        // An `ip addr save` image: magic, one RTM_NEWADDR for
        // 10.1.2.3/24 on ifindex 2 (IFA_LOCAL).
        let mut m = vec![0u8; 16];
        m[4..6].copy_from_slice(&20u16.to_ne_bytes());
        m.extend_from_slice(&[libc::AF_INET as u8, 24, 0, 0]);
        m.extend_from_slice(&2u32.to_ne_bytes());
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&[10, 1, 2, 3]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        let mut blob = 0x47361222u32.to_ne_bytes().to_vec();
        blob.extend_from_slice(&m);
        let msgs = saved_messages(&blob);
        assert_eq!(msgs.len(), 1);
        let d = describe(msgs[0], &|i| format!("dev{i}"));
        assert_eq!(d, "address 10.1.2.3/24 on dev2");
    }
}
