//! A small rtnetlink client (links only): list the links of the caller's
//! network namespace and create or change them, as CRIU's net.c does with
//! libnl. The socket works in the namespace of the thread that made it.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_SETLINK: u16 = 19;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_MULTI: u16 = 2;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_EXCL: u16 = 0x200;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_LINK: u16 = 5;
pub const IFLA_MASTER: u16 = 10;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_LINK_NETNSID: u16 = 37;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const VETH_INFO_PEER: u16 = 1;
pub const IFLA_MACVLAN_MODE: u16 = 1;
pub const IFLA_MACVLAN_FLAGS: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

pub const ARPHRD_LOOPBACK: u16 = 772;

/// `struct ifinfomsg` is 16 bytes; the header 16.
const HDR: usize = 16;
const IFI: usize = 16;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// An rtnetlink request being built: header, ifinfomsg, attributes.
pub struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    /// A link message (`ifi_family` AF_UNSPEC) for `index` with `flags`
    /// (all of them applied: `ifi_change` 0 means every flag).
    pub fn link(ty: u16, nl_flags: u16, index: i32, flags: u32) -> Msg {
        let mut m = Msg {
            buf: vec![0; HDR + IFI],
        };
        m.buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        m.buf[6..8].copy_from_slice(&(nl_flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.buf[HDR + 4..HDR + 8].copy_from_slice(&index.to_ne_bytes());
        m.buf[HDR + 8..HDR + 12].copy_from_slice(&flags.to_ne_bytes());
        m
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.attr(ty, &b)
    }

    /// Open a nested attribute; close it with [`Msg::end`].
    pub fn begin(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.attr(ty | NLA_F_NESTED, &[]);
        at
    }

    pub fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// Raw bytes inside the current nest (e.g. the peer's ifinfomsg).
    pub fn raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    fn finish(&mut self, seq: u32) -> &[u8] {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        &self.buf
    }
}

/// An `ifinfomsg` with only an index (the veth peer's).
pub fn ifinfo(index: i32) -> [u8; IFI] {
    let mut b = [0u8; IFI];
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b
}

/// Attributes of a message or nest: (type without flags, payload).
pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    out
}

fn find<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, d)| *d)
}

pub fn u32_of(d: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?))
}

fn str_of(d: &[u8]) -> String {
    let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
    String::from_utf8_lossy(&d[..end]).into_owned()
}

/// One link as RTM_GETLINK reports it.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub index: i32,
    /// ARPHRD_*.
    pub hw_type: u16,
    pub flags: u32,
    pub name: String,
    pub mtu: u32,
    pub address: Option<Vec<u8>>,
    /// IFLA_LINK: the veth peer's or macvlan lower device's index.
    pub link: Option<u32>,
    /// Set when that device is in another namespace.
    pub link_netnsid: Option<i32>,
    pub master: Option<u32>,
    pub kind: Option<String>,
    /// IFLA_INFO_DATA attributes (type, payload).
    pub info_data: Vec<(u16, Vec<u8>)>,
}

fn parse_link(m: &[u8]) -> Option<Link> {
    if m.len() < HDR + IFI {
        return None;
    }
    let ifi = &m[HDR..HDR + IFI];
    let mut l = Link {
        hw_type: u16::from_ne_bytes([ifi[2], ifi[3]]),
        index: i32::from_ne_bytes(ifi[4..8].try_into().ok()?),
        flags: u32::from_ne_bytes(ifi[8..12].try_into().ok()?),
        ..Default::default()
    };
    let a = attrs(&m[HDR + IFI..]);
    l.name = find(&a, IFLA_IFNAME).map(str_of).unwrap_or_default();
    l.mtu = find(&a, IFLA_MTU).and_then(u32_of).unwrap_or(0);
    l.address = find(&a, IFLA_ADDRESS).map(|d| d.to_vec());
    l.link = find(&a, IFLA_LINK).and_then(u32_of);
    l.link_netnsid = find(&a, IFLA_LINK_NETNSID)
        .and_then(u32_of)
        .map(|v| v as i32);
    l.master = find(&a, IFLA_MASTER).and_then(u32_of);
    if let Some(info) = find(&a, IFLA_LINKINFO) {
        let ia = attrs(info);
        l.kind = find(&ia, IFLA_INFO_KIND).map(str_of);
        if let Some(d) = find(&ia, IFLA_INFO_DATA) {
            l.info_data = attrs(d).into_iter().map(|(t, v)| (t, v.to_vec())).collect();
        }
    }
    Some(l)
}

/// A route netlink socket in the calling thread's network namespace.
pub struct Sock {
    fd: OwnedFd,
    seq: u32,
}

impl Sock {
    pub fn new() -> io::Result<Sock> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Sock { fd, seq: 1 })
    }

    fn send(&mut self, m: &mut Msg) -> io::Result<u32> {
        self.seq += 1;
        let seq = self.seq;
        let b = m.finish(seq);
        socket::sendto(
            self.fd.as_raw_fd(),
            b,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        Ok(seq)
    }

    /// Read replies to `seq`; each non-error message goes to `each`.
    /// Returns at the ack (requests) or NLMSG_DONE (dumps).
    fn replies(&mut self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut b = &buf[..n];
            while b.len() >= HDR {
                let len = u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize;
                if len < HDR || len > b.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink message",
                    ));
                }
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let flags = u16::from_ne_bytes([b[6], b[7]]);
                let mseq = u32::from_ne_bytes(b[8..12].try_into().unwrap());
                let m = &b[..len];
                b = &b[align4(len).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_ERROR => {
                        let e = m
                            .get(HDR..HDR + 4)
                            .map(|d| i32::from_ne_bytes(d.try_into().unwrap()))
                            .unwrap_or(-libc::EIO);
                        return if e == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-e))
                        };
                    }
                    NLMSG_DONE => return Ok(()),
                    _ => {
                        each(m);
                        if flags & NLM_F_MULTI == 0 {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Send a request and wait for its ack.
    pub fn request(&mut self, m: &mut Msg) -> io::Result<()> {
        let seq = self.send(m)?;
        self.replies(seq, |_| {})
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let mut m = Msg::link(RTM_GETLINK, NLM_F_DUMP, 0, 0);
        // A dump is acked by NLMSG_DONE, not by an error message.
        let f = u16::from_ne_bytes([m.buf[6], m.buf[7]]) & !NLM_F_ACK;
        m.buf[6..8].copy_from_slice(&f.to_ne_bytes());
        let seq = self.send(&mut m)?;
        let mut out = Vec::new();
        self.replies(seq, |b| {
            if u16::from_ne_bytes([b[4], b[5]]) == RTM_NEWLINK {
                if let Some(l) = parse_link(b) {
                    out.push(l);
                }
            }
        })?;
        Ok(out)
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses() {
        let mut m = Msg::link(RTM_NEWLINK, NLM_F_CREATE, 7, 1);
        m.attr_str(IFLA_IFNAME, "nl0").attr_u32(IFLA_MTU, 1400);
        let li = m.begin(IFLA_LINKINFO);
        m.attr(IFLA_INFO_KIND, b"veth");
        let d = m.begin(IFLA_INFO_DATA);
        m.attr_u32(IFLA_MACVLAN_MODE, 4);
        m.end(d);
        m.end(li);
        let b = m.finish(3).to_vec();
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        let l = parse_link(&b).unwrap();
        assert_eq!((l.index, l.flags, l.mtu), (7, 1, 1400));
        assert_eq!(l.name, "nl0");
        assert_eq!(l.kind.as_deref(), Some("veth"));
        assert_eq!(
            l.info_data,
            vec![(IFLA_MACVLAN_MODE, 4u32.to_ne_bytes().to_vec())]
        );
    }

    #[test]
    fn lists_own_links() {
        // Loopback is in every namespace; listing needs no privilege.
        let links = Sock::new().unwrap().links().unwrap();
        assert!(links
            .iter()
            .any(|l| l.hw_type == ARPHRD_LOOPBACK && l.name == "lo"));
    }
}
