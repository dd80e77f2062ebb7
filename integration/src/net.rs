//! Commands the network tests run around their workloads: `ip`, `nft`,
//! `ss` in the test's network namespaces, and the TCP counters that tell
//! whether a reset was sent or received.

use std::io::Write;
use std::process::{Command, Stdio};

/// Run `prog args`; its stdout, or an error naming the command and its
/// stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<String, String> {
    run_with_input(prog, args, None)
}

/// `run` with `input` fed to the command's stdin.
pub fn run_with_input(prog: &str, args: &[&str], input: Option<&str>) -> Result<String, String> {
    let what = || format!("{prog} {args:?}");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", what()))?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{}: stdin: {e}", what()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{}: {e}", what()))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}",
            what(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip args` in the caller's network namespace.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run("ip", args)
}

/// The `nsenter --net=` argument for `ns`: a path as given, or the name
/// of a namespace made by `ip netns add`.
fn ns_arg(ns: &str) -> String {
    if ns.contains('/') {
        format!("--net={ns}")
    } else {
        format!("--net=/run/netns/{ns}")
    }
}

/// Run `prog args` in the network namespace `ns` (a path or an
/// `ip netns` name).
pub fn in_ns(ns: &str, prog: &str, args: &[&str]) -> Result<String, String> {
    in_ns_with_input(ns, prog, args, None)
}

/// `in_ns` with `input` fed to the command's stdin.
pub fn in_ns_with_input(
    ns: &str,
    prog: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, String> {
    let net = ns_arg(ns);
    let mut all = vec![net.as_str(), prog];
    all.extend_from_slice(args);
    run_with_input("nsenter", &all, input)
}

/// A `Tcp:` counter of /proc/net/snmp in `ns` (EstabResets: resets
/// received on established connections; OutRsts: resets sent).
pub fn tcp_counter(ns: &str, name: &str) -> u64 {
    let text = in_ns(ns, "cat", &["/proc/net/snmp"]).expect("read /proc/net/snmp");
    snmp_counter(&text, "Tcp:", name).unwrap_or_else(|| panic!("no Tcp counter {name} in {ns}"))
}

/// Assert that each `(namespace, counter)` of `Tcp:` is still 0: no reset
/// was sent or received there.
pub fn assert_no_resets(counters: &[(&str, &str)]) {
    for (ns, what) in counters {
        assert_eq!(tcp_counter(ns, what), 0, "{what} in {ns}");
    }
}

/// The counter `name` of the `prefix` lines (a names line, then a values
/// line) of /proc/net/snmp text.
fn snmp_counter(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_counter_reads_the_values_line() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Tcp: RtoAlgorithm EstabResets OutRsts\nTcp: 1 3 0\n";
        assert_eq!(snmp_counter(text, "Tcp:", "EstabResets"), Some(3));
        assert_eq!(snmp_counter(text, "Tcp:", "OutRsts"), Some(0));
        assert_eq!(snmp_counter(text, "Tcp:", "Nope"), None);
        assert_eq!(snmp_counter("Tcp: A\n", "Tcp:", "A"), None);
    }

    #[test]
    fn ns_arg_takes_paths_and_names() {
        assert_eq!(ns_arg("/proc/1/ns/net"), "--net=/proc/1/ns/net");
        assert_eq!(ns_arg("stasis-a"), "--net=/run/netns/stasis-a");
    }
}
