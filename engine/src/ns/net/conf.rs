//! Per-namespace sysctls as CRIU keeps them: the `net.ipv4.conf.*` and
//! `net.ipv6.conf.*` values of every device and of `all`/`default`
//! (positional lists: the order of [`DEVCONFS4`]/[`DEVCONFS6`] is the
//! image format), `net.unix.max_dgram_qlen` and `net.ipv4.ping_group_range`.
//! Read and written through /proc/sys by a thread inside the namespace.

use stasis_proto::criu::{SysctlEntry, SysctlType};

/// CRIU's `devconfs4`, in its order.
pub const DEVCONFS4: &[&str] = &[
    "accept_local",
    "accept_redirects",
    "accept_source_route",
    "arp_accept",
    "arp_announce",
    "arp_filter",
    "arp_ignore",
    "arp_notify",
    "bootp_relay",
    "disable_policy",
    "disable_xfrm",
    "force_igmp_version",
    "forwarding",
    "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval",
    "log_martians",
    "medium_id",
    "promote_secondaries",
    "proxy_arp",
    "proxy_arp_pvlan",
    "route_localnet",
    "rp_filter",
    "secure_redirects",
    "send_redirects",
    "shared_media",
    "src_valid_mark",
    "tag",
    "ignore_routes_with_linkdown",
    "drop_gratuitous_arp",
    "drop_unicast_in_l2_multicast",
];

/// CRIU's `devconfs6`, in its order (`stable_secret` is a string).
pub const DEVCONFS6: &[&str] = &[
    "accept_dad",
    "accept_ra",
    "accept_ra_defrtr",
    "accept_ra_from_local",
    "accept_ra_min_hop_limit",
    "accept_ra_mtu",
    "accept_ra_pinfo",
    "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref",
    "accept_redirects",
    "accept_source_route",
    "autoconf",
    "dad_transmits",
    "disable_ipv6",
    "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na",
    "force_mld_version",
    "force_tllao",
    "forwarding",
    "hop_limit",
    "ignore_routes_with_linkdown",
    "keep_addr_on_down",
    "max_addresses",
    "max_desync_factor",
    "mldv1_unsolicited_report_interval",
    "mldv2_unsolicited_report_interval",
    "mtu",
    "ndisc_notify",
    "optimistic_dad",
    "proxy_ndp",
    "regen_max_retry",
    "router_probe_interval",
    "router_solicitation_delay",
    "router_solicitation_interval",
    "router_solicitations",
    "stable_secret",
    "suppress_frag_ndisc",
    "temp_prefered_lft",
    "temp_valid_lft",
    "use_oif_addrs_only",
    "use_optimistic",
    "use_tempaddr",
];

pub const UNIX_CONF: &[&str] = &["max_dgram_qlen"];
pub const IPV4_SYSCTL: &[&str] = &["ping_group_range"];

fn is_str(name: &str) -> bool {
    name == "stable_secret" || name == "ping_group_range"
}

fn read_one(path: &str, name: &str) -> SysctlEntry {
    let v = std::fs::read_to_string(path).ok();
    if is_str(name) {
        // Kept as read, newline included (as CRIU does); unset
        // stable_secret reads as EIO and is left out.
        SysctlEntry {
            r#type: SysctlType::CtlStr as i32,
            iarg: None,
            sarg: v,
        }
    } else {
        SysctlEntry {
            r#type: SysctlType::Ctl32 as i32,
            iarg: v
                .and_then(|s| s.trim().parse::<i64>().ok())
                .map(|x| x as i32),
            sarg: None,
        }
    }
}

fn conf_path(proto: &str, tgt: &str, name: &str) -> String {
    format!("/proc/sys/net/{proto}/conf/{tgt}/{name}")
}

/// `net.<proto>.conf.<tgt>.*` (proto ipv4 or ipv6; tgt a device, `all` or
/// `default`), every name of the list, absent ones without a value.
pub fn read_conf(proto: &str, tgt: &str) -> Vec<SysctlEntry> {
    let names = if proto == "ipv4" {
        DEVCONFS4
    } else {
        DEVCONFS6
    };
    names
        .iter()
        .map(|n| read_one(&conf_path(proto, tgt, n), n))
        .collect()
}

pub fn read_unix() -> Vec<SysctlEntry> {
    let v: Vec<_> = UNIX_CONF
        .iter()
        .map(|n| read_one(&format!("/proc/sys/net/unix/{n}"), n))
        .collect();
    if v.iter().all(|e| e.iarg.is_none()) {
        Vec::new()
    } else {
        v
    }
}

pub fn read_ipv4() -> Vec<SysctlEntry> {
    let v: Vec<_> = IPV4_SYSCTL
        .iter()
        .map(|n| read_one(&format!("/proc/sys/net/ipv4/{n}"), n))
        .collect();
    if v.iter().all(|e| e.sarg.is_none()) {
        return Vec::new();
    }
    // The default ("1 0": no group may ping) is left out, as CRIU does.
    v.into_iter()
        .map(|mut e| {
            if e.sarg.as_deref().is_some_and(|s| normalize(s) == "1 0") {
                e.sarg = None;
            }
            e
        })
        .collect()
}

fn value(e: &SysctlEntry) -> Option<String> {
    if e.r#type == SysctlType::CtlStr as i32 {
        e.sarg.as_ref().map(|s| normalize(s))
    } else {
        e.iarg.map(|v| v.to_string())
    }
}

/// Whitespace-insensitive form (ping_group_range reads as "1\t0").
fn normalize(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Write one value where it differs from the current one (so writing
/// `all` first then `default` then each device converges as the kernel
/// propagates `all`/`default` writes).
fn write_if_differs(path: &str, want: &str) -> Result<(), String> {
    match std::fs::read_to_string(path) {
        Ok(cur) if normalize(&cur) == want => Ok(()),
        // A sysctl this kernel does not have: CRIU skips it too.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::debug!(path, "sysctl absent here: not restored");
            Ok(())
        }
        _ => std::fs::write(path, format!("{want}\n"))
            .map_err(|e| format!("sysctl {path} = {want:?}: {e}")),
    }
}

/// Write `net.<proto>.conf.<tgt>.*` from `vals` (positional, as dumped);
/// accept_redirects last (it depends on forwarding, as CRIU notes).
pub fn write_conf(proto: &str, tgt: &str, vals: &[SysctlEntry]) -> Result<(), String> {
    let names = if proto == "ipv4" {
        DEVCONFS4
    } else {
        DEVCONFS6
    };
    let mut last = None;
    for (n, e) in names.iter().zip(vals) {
        let Some(v) = value(e) else { continue };
        if *n == "accept_redirects" {
            last = Some((n, v));
            continue;
        }
        write_if_differs(&conf_path(proto, tgt, n), &v)?;
    }
    if let Some((n, v)) = last {
        write_if_differs(&conf_path(proto, tgt, n), &v)?;
    }
    Ok(())
}

pub fn write_unix(vals: &[SysctlEntry]) -> Result<(), String> {
    for (n, e) in UNIX_CONF.iter().zip(vals) {
        if let Some(v) = value(e) {
            write_if_differs(&format!("/proc/sys/net/unix/{n}"), &v)?;
        }
    }
    Ok(())
}

pub fn write_ipv4(vals: &[SysctlEntry]) -> Result<(), String> {
    for (n, e) in IPV4_SYSCTL.iter().zip(vals) {
        if let Some(v) = value(e) {
            write_if_differs(&format!("/proc/sys/net/ipv4/{n}"), &v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_criu_sized() {
        assert_eq!(DEVCONFS4.len(), 30);
        assert_eq!(DEVCONFS6.len(), 42);
        assert_eq!(DEVCONFS6[35], "stable_secret");
    }

    #[test]
    fn reads_lo() {
        let v4 = read_conf("ipv4", "lo");
        assert_eq!(v4.len(), DEVCONFS4.len());
        let fwd = DEVCONFS4.iter().position(|n| *n == "forwarding").unwrap();
        assert!(v4[fwd].iarg.is_some());
        assert_eq!(normalize("1\t0\n"), "1 0");
    }
}
