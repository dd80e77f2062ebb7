//! Network namespace of the tree, in CRIU's images:
//! - `netdev-<id>.img`: the links (loopback; veth, its peer outside the
//!   namespace or inside; macvlan over a device outside it) with name, ifindex, MTU,
//!   MAC, flags and their `net.ipv4/ipv6.conf.<dev>.*` values;
//! - `netns-<id>.img`: the `all`/`default` conf values, `net.unix` and
//!   `net.ipv4.ping_group_range`;
//! - raw images, as CRIU makes them with the same tools: `ifaddr-<id>`
//!   (`ip addr save`), `route-<id>`/`route6-<id>` (`ip [-6] route save`),
//!   `rule-<id>` (`ip rule save`), `iptables-`/`ip6tables-<id>` (legacy
//!   iptables-save, when there is one), `nftables-<id>` (`nft list
//!   ruleset`, without our own network lock table).
//!
//! A veth pair with both ends inside is saved as two entries naming each
//! other (`peer_nsid` = the namespace's own id, as CRIU writes it) and made
//! once. Any other link (tun, bridge, vxlan,
//! ...) is refused at dump, naming the pid and the link.
//!
//! Restore makes the namespace from the restorer ([`fresh`], before the
//! root is forked; the root joins it) so it can reach outside: a veth's
//! outer end is made in the restorer's namespace, named by `--external
//! veth[IN]:OUT[@BRIDGE]` (else by the kernel) and put in BRIDGE (then up),
//! as CRIU does; a macvlan is made on the restorer's device OUT of
//! `--external macvlan[IN]:OUT`. Order: the namespace sysctls, links (with
//! their dumped ifindex, which the address and route images refer to) and
//! their sysctls, addresses, routes, rules, iptables, nftables.

mod conf;
pub mod rtnl;
mod tools;

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;

use stasis_proto::criu::{MacvlanLinkEntry, NdType, NetDeviceEntry, NetnsEntry};
use stasis_proto::image::magic;
use tracing::{debug, info, warn};

use super::{in_ns_of, DumpCx, KindOps, NsPlan};
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc::NsKind;
use crate::sys::netdev;
use rtnl::{Link, Msg};

pub const OPS: KindOps = KindOps {
    kind: NsKind::Net,
    check,
    dump,
    read,
    setup,
};

/// The raw images of a namespace, CRIU's names without `-<id>.img`.
const RAW: &[&str] = &[
    "ifaddr",
    "route",
    "route6",
    "rule",
    "iptables",
    "ip6tables",
    "nftables",
];

/// What we restore of a network namespace.
#[derive(Debug, Clone, Default)]
pub struct NetNs {
    pub id: u32,
    pub devices: Vec<NetDeviceEntry>,
    pub netns: Option<NetnsEntry>,
    /// Raw images by name (see [`RAW`]); missing ones are empty.
    pub raw: BTreeMap<&'static str, Vec<u8>>,
    /// `--external veth[IN]:OUT[@BRIDGE]`: IN -> (OUT, BRIDGE).
    pub veth_out: BTreeMap<String, (String, Option<String>)>,
    /// `--external macvlan[IN]:OUT`: IN -> OUT.
    pub macvlan_out: BTreeMap<String, String>,
    /// `--empty-ns net`: only loopback; the caller configures the rest.
    pub empty: bool,
}

/// What a link of the dumped namespace is.
#[derive(Debug, PartialEq, Eq)]
enum Class {
    Loopback,
    Veth,
    Macvlan,
    /// A fallback tunnel device every namespace gets from a loaded module
    /// (`sit0`, `tunl0`, ...): made again by the kernel, not saved (CRIU
    /// skips sit0/gre0/gretap0 the same way).
    Skip,
}

const FALLBACK_TUNNELS: &[(&str, &str)] = &[
    ("sit0", "sit"),
    ("gre0", "gre"),
    ("gretap0", "gretap"),
    ("erspan0", "erspan"),
    ("tunl0", "ipip"),
    ("ip6tnl0", "ip6tnl"),
    ("ip6gre0", "ip6gre"),
    ("ip_vti0", "vti"),
    ("ip6_vti0", "vti6"),
];

fn classify(l: &Link) -> std::result::Result<Class, String> {
    if l.hw_type == rtnl::ARPHRD_LOOPBACK {
        return Ok(Class::Loopback);
    }
    let kind = l.kind.as_deref().unwrap_or("");
    if FALLBACK_TUNNELS.contains(&(l.name.as_str(), kind)) {
        return Ok(Class::Skip);
    }
    if l.master.is_some() {
        return Err(format!(
            "{kind} enslaved to master ifindex {}: bridges and bonds are not supported",
            l.master.unwrap_or(0)
        ));
    }
    match kind {
        "veth" => Ok(Class::Veth),
        "macvlan" if l.link_netnsid.is_some() => Ok(Class::Macvlan),
        "macvlan" => Err("a macvlan over a device inside the namespace: not supported".into()),
        "" => Err("a device of unknown kind: not supported".into()),
        k => Err(format!(
            "kind {k}: only loopback, veth and macvlan (on a device outside) are supported"
        )),
    }
}

fn links_of(pid: i32) -> Result<Vec<Link>> {
    in_ns_of(pid, &[NsKind::Net], || {
        rtnl::Sock::new()
            .and_then(|mut s| s.links())
            .map_err(|e| Error::task(pid, "list the links of its network namespace", e))
    })
}

fn check(cx: &DumpCx) -> Result<()> {
    for l in links_of(cx.root_pid)? {
        classify(&l).map_err(|why| {
            Error::unsupported(
                cx.root_pid,
                format!(
                    "its network namespace has link {} (ifindex {}): {why}",
                    l.name, l.index
                ),
            )
        })?;
    }
    Ok(())
}

/// The device entry of a link, its sysctls read (in the namespace).
fn device(l: &Link, class: &Class, ns_id: u32) -> std::result::Result<NetDeviceEntry, String> {
    let ty = match class {
        Class::Loopback => NdType::Loopback,
        Class::Veth => NdType::Veth,
        Class::Macvlan => NdType::Macvlan,
        Class::Skip => unreachable!("skipped links have no entry"),
    };
    let mut d = NetDeviceEntry {
        r#type: ty as i32,
        ifindex: l.index as u32,
        mtu: l.mtu,
        flags: l.flags,
        name: l.name.clone(),
        // As CRIU: the peer's (or lower device's) index, ours if none; no
        // peer_nsid, the peer being in a namespace we do not dump.
        peer_ifindex: Some(l.link.unwrap_or(l.index as u32)),
        master: l.master,
        conf4: conf::read_conf("ipv4", &l.name),
        conf6: conf::read_conf("ipv6", &l.name),
        ..Default::default()
    };
    if *class != Class::Loopback {
        d.address = l.address.clone();
    }
    if *class == Class::Veth && l.link_netnsid.is_none() {
        // The peer is in this namespace too.
        d.peer_nsid = Some(ns_id);
    }
    if *class == Class::Macvlan {
        let get = |t| {
            l.info_data
                .iter()
                .find(|(x, _)| *x == t)
                .and_then(|(_, v)| match v.len() {
                    2 => Some(u16::from_ne_bytes([v[0], v[1]]) as u32),
                    _ => rtnl::u32_of(v),
                })
        };
        let mode =
            get(rtnl::IFLA_MACVLAN_MODE).ok_or_else(|| format!("macvlan {}: no mode", l.name))?;
        d.macvlan = Some(MacvlanLinkEntry {
            mode,
            flags: get(rtnl::IFLA_MACVLAN_FLAGS),
        });
    }
    Ok(d)
}

/// Everything read inside the namespace at dump.
struct Dumped {
    devices: Vec<NetDeviceEntry>,
    netns: NetnsEntry,
    raw: Vec<(&'static str, Vec<u8>)>,
}

fn dump_inside(pid: i32, ns_id: u32) -> std::result::Result<Dumped, String> {
    let links = rtnl::Sock::new()
        .and_then(|mut s| s.links())
        .map_err(|e| format!("list links: {e}"))?;
    let mut devices = Vec::new();
    for l in &links {
        let class = classify(l).map_err(|why| format!("link {}: {why}", l.name))?;
        if class == Class::Skip {
            debug!(pid, link = %l.name, "fallback tunnel device: not saved");
            continue;
        }
        devices.push(device(l, &class, ns_id)?);
    }
    let netns = NetnsEntry {
        def_conf4: conf::read_conf("ipv4", "default"),
        all_conf4: conf::read_conf("ipv4", "all"),
        def_conf6: conf::read_conf("ipv6", "default"),
        all_conf6: conf::read_conf("ipv6", "all"),
        unix_conf: conf::read_unix(),
        ipv4_sysctl: conf::read_ipv4(),
        ..Default::default()
    };
    if !tools::exists("ip") {
        if devices.iter().all(|d| d.r#type == NdType::Loopback as i32) {
            // Loopback only: its addresses come back with it.
            warn!(
                pid,
                "no ip command (iproute2): addresses and routes not saved"
            );
            return Ok(Dumped {
                devices,
                netns,
                raw: Vec::new(),
            });
        }
        return Err("the ip command (iproute2) is needed to save addresses and routes".into());
    }
    let nft = tools::exists("nft");
    let mut cmds: Vec<(&str, &[&str])> = vec![
        ("ip", &["addr", "save"]),
        ("ip", &["route", "save"]),
        ("ip", &["-6", "route", "save"]),
        ("ip", &["rule", "save"]),
    ];
    if nft {
        cmds.push(("nft", &["list", "ruleset"]));
    }
    let mut out = tools::run_all(&cmds)?.into_iter();
    let mut raw = Vec::new();
    for name in ["ifaddr", "route", "route6", "rule"] {
        raw.push((name, out.next().unwrap_or_default()));
    }
    let ruleset = out.next().unwrap_or_default();
    // Legacy iptables only (an nft-based iptables is in the nft ruleset),
    // and only when the namespace has such tables.
    for (img, prog, names) in [
        ("iptables", "iptables-legacy-save", "ip_tables_names"),
        ("ip6tables", "ip6tables-legacy-save", "ip6_tables_names"),
    ] {
        let has = std::fs::read_to_string(format!("/proc/thread-self/net/{names}"))
            .is_ok_and(|s| !s.trim().is_empty());
        let out = if has && tools::exists(prog) {
            tools::run(prog, &[], None)?
        } else {
            Vec::new()
        };
        raw.push((img, out));
    }
    let nft = tools::strip_lock_tables(&String::from_utf8_lossy(&ruleset)).into_bytes();
    raw.push(("nftables", nft));
    Ok(Dumped {
        devices,
        netns,
        raw,
    })
}

fn dump(cx: &DumpCx) -> Result<()> {
    let root = cx.root_pid;
    let d = in_ns_of(root, &[NsKind::Net], || {
        dump_inside(root, cx.id)
            .map_err(|e| Error::Other(format!("pid {root}: dump its network namespace: {e}")))
    })?;
    cx.dir.write_one(
        &format!("netns-{}.img", cx.id),
        common(magic::NETNS),
        &d.netns,
    )?;
    cx.dir.write_all(
        &format!("netdev-{}.img", cx.id),
        common(magic::NETDEV),
        &d.devices,
    )?;
    for (name, data) in &d.raw {
        let f = format!("{name}-{}.img", cx.id);
        let mut w = cx.dir.raw_writer(&f)?;
        std::io::Write::write_all(&mut w, data).map_err(|e| Error::io(cx.dir.file(&f), e))?;
    }
    info!(
        pid = root,
        links = d.devices.len(),
        "network namespace dumped"
    );
    Ok(())
}

fn read(dir: &ImageDir, id: u32, p: &mut NsPlan) -> Result<()> {
    let name = format!("netdev-{id}.img");
    let devices: Vec<NetDeviceEntry> = dir.read_all(&name, common(magic::NETDEV))?;
    for d in &devices {
        let ok = [NdType::Loopback, NdType::Veth, NdType::Macvlan]
            .iter()
            .any(|t| *t as i32 == d.r#type);
        if !ok {
            return Err(Error::bad_image(
                &name,
                format!(
                    "device {} of type {}: only loopback, veth and macvlan are supported",
                    d.name, d.r#type
                ),
            ));
        }
        if d.r#type == NdType::Macvlan as i32 && d.macvlan.is_none() {
            return Err(Error::bad_image(
                &name,
                format!("macvlan {} without its mode", d.name),
            ));
        }
    }
    let nsname = format!("netns-{id}.img");
    let netns = if dir.exists(&nsname) {
        dir.read_all::<NetnsEntry>(&nsname, common(magic::NETNS))?
            .into_iter()
            .next()
    } else {
        None
    };
    if netns.as_ref().is_some_and(|n| n.ext_key.is_some()) {
        return Err(Error::bad_image(
            &nsname,
            "an external network namespace (ext_key): pass --join-ns net:PATH",
        ));
    }
    let mut raw = BTreeMap::new();
    for r in RAW {
        let f = format!("{r}-{id}.img");
        if dir.exists(&f) {
            raw.insert(*r, dir.read_raw(&f)?);
        }
    }
    p.net = Some(NetNs {
        id,
        devices,
        netns,
        raw,
        ..Default::default()
    });
    Ok(())
}

/// Take the restore's `--external veth[IN]:OUT[@BRIDGE]` and
/// `macvlan[IN]:OUT` entries (other kinds are not ours) and `--empty-ns
/// net`.
pub fn configure(p: &mut NsPlan, external: &[String], empty: bool) -> Result<()> {
    let Some(n) = p.net.as_mut() else {
        return Ok(());
    };
    n.empty = empty;
    for s in external {
        let Some((kind, rest)) = s.split_once('[') else {
            continue;
        };
        if kind != "veth" && kind != "macvlan" {
            continue;
        }
        let bad = || Error::Other(format!("--external {s:?}: expected {kind}[IFNAME]:OUTNAME"));
        let (inner, out) = rest.split_once("]:").ok_or_else(bad)?;
        if inner.is_empty() || out.is_empty() {
            return Err(bad());
        }
        if kind == "veth" {
            let (o, br) = match out.split_once('@') {
                Some((o, b)) => (o, Some(b.to_string())),
                None => (out, None),
            };
            n.veth_out.insert(inner.into(), (o.into(), br));
        } else {
            n.macvlan_out.insert(inner.into(), out.into());
        }
    }
    for d in &n.devices {
        if d.r#type == NdType::Macvlan as i32 && !n.macvlan_out.contains_key(&d.name) && !empty {
            return Err(Error::Other(format!(
                "the images have macvlan {0} on a device outside the namespace: \
                 pass --external macvlan[{0}]:DEVICE",
                d.name
            )));
        }
    }
    Ok(())
}

/// If the plan still has a network namespace of its own to make (not
/// joined, not made for the network lock), make and fill it now; the root
/// joins it.
pub fn prepare(p: &mut NsPlan, joined: &mut Vec<(NsKind, std::os::fd::OwnedFd)>) -> Result<()> {
    // In a user namespace of its own the root makes it (owned by that user
    // namespace) and [`fill_root`] fills it before the root goes on.
    if !p.owns(NsKind::Net) || p.user.is_some() {
        return Ok(());
    }
    let f = fresh(p, &mut |_| Ok(()))?;
    p.own.retain(|k| *k != NsKind::Net);
    joined.push((NsKind::Net, std::os::fd::OwnedFd::from(f)));
    Ok(())
}

/// A fresh network namespace made by the restorer ahead of the root, filled
/// as dumped; `first` runs on it before anything is made in it (the
/// network lock). The root joins it instead of unsharing its own.
pub fn fresh(
    p: &NsPlan,
    first: &mut (dyn FnMut(&std::fs::File) -> Result<()> + Send),
) -> Result<std::fs::File> {
    in_netns(p, None, first)
}

/// The root's own network namespace (made by its clone, in its user
/// namespace), filled as dumped from here while the root waits.
pub fn fill_root(p: &NsPlan, root_pid: i32) -> Result<()> {
    if !p.owns(NsKind::Net) || p.user.is_none() {
        return Ok(());
    }
    let path = format!("/proc/{root_pid}/ns/net");
    let f = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    in_netns(p, Some(f), &mut |_| Ok(())).map(drop)
}

/// On a helper thread, enter `ns` (a fresh one when None), run `first` on
/// it, then populate it as dumped.
fn in_netns(
    p: &NsPlan,
    ns: Option<std::fs::File>,
    first: &mut (dyn FnMut(&std::fs::File) -> Result<()> + Send),
) -> Result<std::fs::File> {
    let home_path = "/proc/thread-self/ns/net";
    let home = std::fs::File::open(home_path).map_err(|e| Error::io(home_path, e))?;
    // A socket made here stays in our namespace: the outer ends.
    let outside = rtnl::Sock::new().map_err(|e| Error::Other(format!("netlink socket: {e}")))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<std::fs::File> {
            let mut outside = outside;
            // Only this helper thread moves into the namespace.
            let f = match ns {
                Some(f) => {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::Other(format!("enter the restored network namespace: {e}"))
                    })?;
                    f
                }
                None => {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| Error::Other(format!("unshare a network namespace: {e}")))?;
                    let path = "/proc/thread-self/ns/net";
                    std::fs::File::open(path).map_err(|e| Error::io(path, e))?
                }
            };
            first(&f)?;
            if let Some(n) = &p.net {
                populate(n, &home, &f, &mut outside).map_err(|e| {
                    Error::Other(format!("restore network namespace {}: {e}", n.id))
                })?;
            }
            Ok(f)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Other("network namespace thread panicked".into())))
    })
}

/// Flags a link request may set (the rest are state the kernel keeps).
fn settable(flags: u32) -> u32 {
    let keep = libc::IFF_UP
        | libc::IFF_NOARP
        | libc::IFF_PROMISC
        | libc::IFF_ALLMULTI
        | libc::IFF_MULTICAST
        | libc::IFF_DEBUG
        | libc::IFF_DYNAMIC;
    flags & keep as u32
}

/// Name, MTU and MAC of a device in a link request.
fn link_attrs(m: &mut Msg, d: &NetDeviceEntry) {
    m.attr_str(rtnl::IFLA_IFNAME, &d.name);
    m.attr_u32(rtnl::IFLA_MTU, d.mtu);
    if let Some(a) = &d.address {
        m.attr(rtnl::IFLA_ADDRESS, a);
    }
}

/// Fill the namespace the calling thread is in (`ns`), CRIU's order.
fn populate(
    n: &NetNs,
    home: &std::fs::File,
    ns: &std::fs::File,
    outside: &mut rtnl::Sock,
) -> std::result::Result<(), String> {
    let mut inside = rtnl::Sock::new().map_err(|e| format!("netlink socket: {e}"))?;
    if n.empty {
        // Only loopback, as dumped.
        for d in n
            .devices
            .iter()
            .filter(|d| d.r#type == NdType::Loopback as i32)
        {
            set_lo(d)?;
        }
        info!(id = n.id, "empty network namespace made (--empty-ns net)");
        return Ok(());
    }
    if let Some(ns) = &n.netns {
        let sys =
            |r: std::result::Result<(), String>| r.map_err(|e| format!("namespace sysctls: {e}"));
        sys(conf::write_conf("ipv4", "all", &ns.all_conf4))?;
        sys(conf::write_conf("ipv4", "default", &ns.def_conf4))?;
        sys(conf::write_conf("ipv6", "all", &ns.all_conf6))?;
        sys(conf::write_conf("ipv6", "default", &ns.def_conf6))?;
        sys(conf::write_unix(&ns.unix_conf))?;
        sys(conf::write_ipv4(&ns.ipv4_sysctl))?;
    }
    // Ends of inner veth pairs made with their peer.
    let mut made = std::collections::BTreeSet::new();
    for d in &n.devices {
        let what = format!("link {} (ifindex {})", d.name, d.ifindex);
        if d.r#type == NdType::Loopback as i32 {
            set_lo(d)?;
        } else if d.r#type == NdType::Veth as i32 && d.peer_nsid == Some(n.id) {
            make_inner_pair(n, d, &mut inside, &mut made).map_err(|e| format!("{what}: {e}"))?;
        } else if d.r#type == NdType::Veth as i32 {
            make_veth(n, d, home, &mut inside, outside).map_err(|e| format!("{what}: {e}"))?;
        } else {
            make_macvlan(n, d, ns, outside).map_err(|e| format!("{what}: {e}"))?;
        }
        conf::write_conf("ipv4", &d.name, &d.conf4).map_err(|e| format!("{what}: {e}"))?;
        conf::write_conf("ipv6", &d.name, &d.conf6).map_err(|e| format!("{what}: {e}"))?;
    }
    let raw = |name: &str| n.raw.get(name).filter(|b| !b.is_empty());
    let img = |name: &str| format!("{name}-{}.img", n.id);
    // `ip addr save` images start with a 4-byte magic: nothing saved is
    // just that.
    let dev = |i: u32| {
        n.devices
            .iter()
            .find(|d| d.ifindex == i)
            .map(|d| d.name.clone())
            .unwrap_or_else(|| format!("ifindex {i}"))
    };
    if let Some(b) = raw("ifaddr").filter(|b| b.len() > 4) {
        tools::ip_restore("addr", b, &dev).map_err(|e| format!("{}: {e}", img("ifaddr")))?;
    }
    for r in ["route", "route6"] {
        if let Some(b) = raw(r).filter(|b| b.len() > 4) {
            tools::ip_restore("route", b, &dev).map_err(|e| format!("{}: {e}", img(r)))?;
        }
    }
    if let Some(b) = raw("rule").filter(|b| b.len() > 4) {
        // The image has the default rules too: drop the kernel's first
        // (CRIU does the same).
        let _ = tools::run("ip", &["rule", "flush"], None);
        let _ = tools::run("ip", &["rule", "delete", "table", "local"], None);
        tools::ip_restore("rule", b, &dev).map_err(|e| format!("{}: {e}", img("rule")))?;
    }
    for (r, prog) in [
        ("iptables", "iptables-legacy-restore"),
        ("ip6tables", "ip6tables-legacy-restore"),
    ] {
        if let Some(b) = raw(r) {
            tools::run(prog, &["-w"], Some(b)).map_err(|e| format!("{r} ({}): {e}", img(r)))?;
        }
    }
    if let Some(b) = raw("nftables") {
        tools::run("nft", &["-f", "-"], Some(b))
            .map_err(|e| format!("nftables ruleset ({}): {e}", img("nftables")))?;
    }
    info!(
        id = n.id,
        links = n.devices.len(),
        "network namespace restored"
    );
    Ok(())
}

/// Loopback comes with the namespace: set its flags (up, typically) and
/// MTU.
fn set_lo(d: &NetDeviceEntry) -> std::result::Result<(), String> {
    let cur = netdev::get_flags(&d.name).map_err(|e| format!("link {}: {e}", d.name))?;
    let keep = libc::IFF_UP | libc::IFF_NOARP | libc::IFF_PROMISC | libc::IFF_ALLMULTI;
    let want = (cur & !(keep as u32)) | (d.flags & keep as u32);
    if want != cur {
        netdev::set_flags(&d.name, want).map_err(|e| format!("link {} flags: {e}", d.name))?;
    }
    Ok(())
}

/// A veth pair from inside: this end as dumped (index, name, MTU, MAC,
/// flags), the peer made in the restorer's namespace under the external
/// name (else the kernel's), put in its bridge and up when one is given.
fn make_veth(
    n: &NetNs,
    d: &NetDeviceEntry,
    home: &std::fs::File,
    inside: &mut rtnl::Sock,
    outside: &mut rtnl::Sock,
) -> std::result::Result<(), String> {
    let ext = n.veth_out.get(&d.name);
    let mut m = Msg::link(
        rtnl::RTM_NEWLINK,
        rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
        d.ifindex as i32,
        settable(d.flags),
    );
    link_attrs(&mut m, d);
    let li = m.begin(rtnl::IFLA_LINKINFO);
    m.attr(rtnl::IFLA_INFO_KIND, b"veth");
    let data = m.begin(rtnl::IFLA_INFO_DATA);
    let peer = m.begin(rtnl::VETH_INFO_PEER);
    m.raw(&rtnl::ifinfo(0));
    if let Some((out, _)) = ext {
        m.attr_str(rtnl::IFLA_IFNAME, out);
    }
    m.attr_u32(rtnl::IFLA_NET_NS_FD, home.as_raw_fd() as u32);
    m.end(peer);
    m.end(data);
    m.end(li);
    inside.request(&mut m).map_err(|e| {
        let out = ext
            .map(|(o, _)| format!(" (outer end {o})"))
            .unwrap_or_default();
        format!("create veth{out}: {e}")
    })?;
    // The outer end, by the index this end reports for its peer.
    let me = inside
        .link_by_name(&d.name)
        .map_err(|e| format!("list links: {e}"))?
        .ok_or("the new veth is not there")?;
    let peer_index = me.link.ok_or("the new veth has no peer index")?;
    let outer = outside
        .links()
        .map_err(|e| format!("list the restorer's links: {e}"))?
        .into_iter()
        .find(|l| l.index as u32 == peer_index)
        .ok_or("the outer end is not in the restorer's namespace")?;
    match ext {
        Some((_, Some(br))) => {
            let b = outside
                .link_by_name(br)
                .map_err(|e| format!("list the restorer's links: {e}"))?
                .ok_or_else(|| format!("bridge {br} (of --external veth[{}]) not found", d.name))?;
            let mut m = Msg::link(
                rtnl::RTM_SETLINK,
                0,
                outer.index,
                settable(outer.flags) | libc::IFF_UP as u32,
            );
            m.attr_u32(rtnl::IFLA_MASTER, b.index as u32);
            outside
                .request(&mut m)
                .map_err(|e| format!("put outer end {} in bridge {br}: {e}", outer.name))?;
            info!(link = %d.name, outer = %outer.name, bridge = %br, "veth restored");
        }
        Some(_) => info!(link = %d.name, outer = %outer.name, "veth restored"),
        None => info!(
            link = %d.name,
            outer = %outer.name,
            "veth restored; its outer end was named by the kernel (no --external veth[{}]:NAME)",
            d.name
        ),
    }
    Ok(())
}

/// Both ends of a veth pair inside the namespace, at the first of the two
/// entries, each as dumped (the peer's ifinfomsg carries its index).
fn make_inner_pair(
    n: &NetNs,
    d: &NetDeviceEntry,
    inside: &mut rtnl::Sock,
    made: &mut std::collections::BTreeSet<u32>,
) -> std::result::Result<(), String> {
    if made.contains(&d.ifindex) {
        return Ok(());
    }
    let pi = d.peer_ifindex.unwrap_or(0);
    let peer = n
        .devices
        .iter()
        .find(|p| p.ifindex == pi && p.ifindex != d.ifindex)
        .ok_or_else(|| format!("its peer (ifindex {pi}) is not in the image"))?;
    let mut m = Msg::link(
        rtnl::RTM_NEWLINK,
        rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
        d.ifindex as i32,
        settable(d.flags),
    );
    link_attrs(&mut m, d);
    let li = m.begin(rtnl::IFLA_LINKINFO);
    m.attr(rtnl::IFLA_INFO_KIND, b"veth");
    let data = m.begin(rtnl::IFLA_INFO_DATA);
    let pn = m.begin(rtnl::VETH_INFO_PEER);
    // Up only once paired (a veth opened without its peer is ENOTCONN).
    let mut ifi = rtnl::ifinfo(peer.ifindex as i32);
    ifi[8..12].copy_from_slice(&(settable(peer.flags) & !(libc::IFF_UP as u32)).to_ne_bytes());
    m.raw(&ifi);
    link_attrs(&mut m, peer);
    m.end(pn);
    m.end(data);
    m.end(li);
    inside
        .request(&mut m)
        .map_err(|e| format!("create veth pair with {}: {e}", peer.name))?;
    let mut up = Msg::link(
        rtnl::RTM_SETLINK,
        0,
        peer.ifindex as i32,
        settable(peer.flags),
    );
    inside
        .request(&mut up)
        .map_err(|e| format!("flags of its peer {}: {e}", peer.name))?;
    made.insert(d.ifindex);
    made.insert(peer.ifindex);
    info!(link = %d.name, peer = %peer.name, "veth pair inside restored");
    Ok(())
}

/// A macvlan made from outside on the external device, straight into the
/// new namespace (`ns`) under its dumped index, as CRIU does.
fn make_macvlan(
    n: &NetNs,
    d: &NetDeviceEntry,
    ns: &std::fs::File,
    outside: &mut rtnl::Sock,
) -> std::result::Result<(), String> {
    let lower_name = n
        .macvlan_out
        .get(&d.name)
        .ok_or_else(|| format!("pass --external macvlan[{}]:DEVICE", d.name))?;
    let lower = outside
        .link_by_name(lower_name)
        .map_err(|e| format!("list the restorer's links: {e}"))?
        .ok_or_else(|| {
            format!(
                "device {lower_name} (of --external macvlan[{}]) not found",
                d.name
            )
        })?;
    let mv = d.macvlan.as_ref().ok_or("no macvlan mode in the image")?;
    let mut m = Msg::link(
        rtnl::RTM_NEWLINK,
        rtnl::NLM_F_CREATE | rtnl::NLM_F_EXCL,
        d.ifindex as i32,
        settable(d.flags),
    );
    link_attrs(&mut m, d);
    m.attr_u32(rtnl::IFLA_LINK, lower.index as u32);
    m.attr_u32(rtnl::IFLA_NET_NS_FD, ns.as_raw_fd() as u32);
    let li = m.begin(rtnl::IFLA_LINKINFO);
    m.attr(rtnl::IFLA_INFO_KIND, b"macvlan");
    let data = m.begin(rtnl::IFLA_INFO_DATA);
    m.attr_u32(rtnl::IFLA_MACVLAN_MODE, mv.mode);
    if let Some(f) = mv.flags {
        m.attr(rtnl::IFLA_MACVLAN_FLAGS, &(f as u16).to_ne_bytes());
    }
    m.end(data);
    m.end(li);
    outside
        .request(&mut m)
        .map_err(|e| format!("create macvlan on {lower_name}: {e}"))?;
    info!(link = %d.name, lower = %lower_name, "macvlan restored");
    Ok(())
}

/// Run by the root's stub when it made the namespace itself (clone): only
/// loopback can be set up from there; anything else is made by the
/// restorer ([`prepare`]) before the root is forked.
fn setup(p: &NsPlan) -> std::result::Result<(), String> {
    let Some(n) = &p.net else {
        return Ok(());
    };
    for d in &n.devices {
        if d.r#type != NdType::Loopback as i32 {
            return Err(format!(
                "link {}: the network namespace was not prepared by the restorer",
                d.name
            ));
        }
        set_lo(d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> NsPlan {
        NsPlan {
            net: Some(NetNs {
                devices: vec![NetDeviceEntry {
                    r#type: NdType::Veth as i32,
                    name: "nl0".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn externals() {
        let mut p = plan();
        configure(
            &mut p,
            &[
                "veth[nl0]:nlout@nlbr".into(),
                "macvlan[mv0]:eth0".into(),
                "mnt[/x]:y".into(),
            ],
            false,
        )
        .unwrap();
        let n = p.net.unwrap();
        assert_eq!(
            n.veth_out["nl0"],
            ("nlout".to_string(), Some("nlbr".to_string()))
        );
        assert_eq!(n.macvlan_out["mv0"], "eth0");
        let mut p = plan();
        assert!(configure(&mut p, &["veth[nl0]".into()], false).is_err());
    }

    #[test]
    fn classes() {
        let mut l = Link {
            name: "x".into(),
            kind: Some("veth".into()),
            link_netnsid: Some(0),
            ..Default::default()
        };
        assert_eq!(classify(&l), Ok(Class::Veth));
        l.link_netnsid = None;
        assert_eq!(classify(&l), Ok(Class::Veth));
        l.kind = Some("vxlan".into());
        assert!(classify(&l).unwrap_err().contains("vxlan"));
        l.kind = Some("sit".into());
        l.name = "sit0".into();
        assert_eq!(classify(&l), Ok(Class::Skip));
    }
}
