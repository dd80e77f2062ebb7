//! Network namespace with only loopback (full networking is another
//! issue): `netns-<id>.img` and `netdev-<id>.img` (the lo device and its
//! flags). A namespace with any other device is refused at dump. On restore
//! the fresh namespace's lo gets the dumped flags (up, typically).

use stasis_proto::criu::{NdType, NetDeviceEntry, NetnsEntry};
use stasis_proto::image::magic;

use super::{in_ns_of, DumpCx, KindOps, NsPlan};
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc::NsKind;
use crate::sys::netdev;

pub const OPS: KindOps = KindOps {
    kind: NsKind::Net,
    check,
    dump,
    read,
    setup,
};

/// What we restore of a network namespace.
#[derive(Debug, Clone, Default)]
pub struct NetNs {
    pub devices: Vec<NetDeviceEntry>,
}

/// Device names of `pid`'s network namespace, from `/proc/PID/net/dev`.
fn devices(pid: i32) -> Result<Vec<String>> {
    let p = format!("/proc/{pid}/net/dev");
    let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    Ok(s.lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_string()))
        .collect())
}

fn check(cx: &DumpCx) -> Result<()> {
    for d in devices(cx.root_pid)? {
        if d != "lo" {
            return Err(Error::unsupported(
                cx.root_pid,
                format!(
                    "its network namespace has device {d}: only loopback is supported \
                     (use the host network or an empty one)"
                ),
            ));
        }
    }
    Ok(())
}

fn dump(cx: &DumpCx) -> Result<()> {
    let root = cx.root_pid;
    let flags = in_ns_of(root, &[NsKind::Net], || {
        netdev::get_flags("lo").map_err(|e| Error::task(root, "read the flags of lo", e))
    })?;
    // lo's MTU is not settable state we restore; CRIU records it anyway.
    let mtu = 65536;
    let lo = NetDeviceEntry {
        r#type: NdType::Loopback as i32,
        ifindex: 1,
        mtu,
        flags,
        name: "lo".into(),
        ..Default::default()
    };
    cx.dir.write_one(
        &format!("netns-{}.img", cx.id),
        common(magic::NETNS),
        &NetnsEntry::default(),
    )?;
    cx.dir.write_all(
        &format!("netdev-{}.img", cx.id),
        common(magic::NETDEV),
        [&lo],
    )
}

fn read(dir: &ImageDir, id: u32, p: &mut NsPlan) -> Result<()> {
    let name = format!("netdev-{id}.img");
    let devices: Vec<NetDeviceEntry> = dir.read_all(&name, common(magic::NETDEV))?;
    for d in &devices {
        if d.r#type != NdType::Loopback as i32 {
            return Err(Error::bad_image(
                &name,
                format!("device {}: only loopback is supported", d.name),
            ));
        }
    }
    p.net = Some(NetNs { devices });
    Ok(())
}

/// A fresh network namespace made by the restorer ahead of the root (so
/// it can be prepared from outside, e.g. locked, before any socket is made
/// in it), its devices set as dumped. The root joins it instead of
/// unsharing its own.
pub fn fresh(p: &NsPlan) -> Result<std::fs::File> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<std::fs::File> {
            // Only this helper thread moves into the new namespace.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::Other(format!("unshare a network namespace: {e}")))?;
            setup(p).map_err(Error::Other)?;
            let path = "/proc/thread-self/ns/net";
            std::fs::File::open(path).map_err(|e| Error::io(path, e))
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Other("network namespace thread panicked".into())))
    })
}

fn setup(p: &NsPlan) -> std::result::Result<(), String> {
    let Some(n) = &p.net else {
        return Ok(());
    };
    for d in &n.devices {
        let keep = libc::IFF_UP | libc::IFF_NOARP | libc::IFF_PROMISC | libc::IFF_ALLMULTI;
        let cur = netdev::get_flags(&d.name).map_err(|e| format!("net device {}: {e}", d.name))?;
        let want = (cur & !(keep as u32)) | (d.flags & keep as u32);
        if want != cur {
            netdev::set_flags(&d.name, want)
                .map_err(|e| format!("net device {} flags: {e}", d.name))?;
        }
    }
    Ok(())
}
