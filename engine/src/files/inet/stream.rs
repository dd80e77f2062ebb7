//! Established TCP connections through repair mode (sys::tcp; measured
//! recipe in KERNEL-NOTES §7).
//!
//! `tcp-stream-<ino hex>.img` is CRIU's: one `tcp_stream_entry` (sequence
//! numbers, queue lengths, negotiated options, window state, timestamp)
//! followed by the receive queue bytes (`inq_len`) and the send queue bytes
//! (`outq_len`, of which the last `unsq_len` were never sent).
//!
//! Half-closed by us (FIN_WAIT1, FIN_WAIT2): rebuilt as established, then
//! shut down for writing, which sends the FIN again with its old sequence
//! number (the peer takes it, or acknowledges a duplicate). Half-closed by
//! the peer (CLOSE_WAIT, LAST_ACK, CLOSING) would need its FIN put back in
//! the receive path, which repair mode cannot do: refused.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::RwLock;

use nix::sys::socket::{MsgFlags, SockaddrStorage};
use stasis_proto::criu::{InetSkEntry, TcpStreamEntry};
use stasis_proto::image::magic;
use tracing::debug;

use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::sys::{sock, tcp};

pub fn image_name(ino: u32) -> String {
    format!("tcp-stream-{ino:x}.img")
}

/// Read the queue selected in repair mode: exactly `len` bytes.
fn peek(fd: BorrowedFd<'_>, q: tcp::Queue, len: usize) -> std::result::Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    if len == 0 {
        return Ok(buf);
    }
    let n = nix::sys::socket::recv(
        fd.as_raw_fd(),
        &mut buf,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(|e| format!("peek at the {q:?} queue ({len} bytes): {e}"))?;
    if n != len {
        return Err(format!("peeked {n} of the {len} bytes of the {q:?} queue"));
    }
    Ok(buf)
}

/// Save the connection of `fd` (in repair mode) to its tcp-stream image.
/// `state`: the TCP state; in FIN_WAIT1 our FIN is still unacknowledged
/// and counted by SIOCOUTQ (and by SIOCOUTQNSD while unsent) though it is
/// no queued byte; the image keeps the data only, with write_seq as the
/// kernel has it (FIN included, see [`restore`]).
pub fn dump(
    dir: &ImageDir,
    fd: BorrowedFd<'_>,
    ino: u32,
    state: u32,
) -> std::result::Result<(), String> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    tcp::set_queue(fd, tcp::Queue::Recv).map_err(io("select the receive queue"))?;
    let inq_seq = tcp::queue_seq(fd).map_err(io("receive sequence"))?;
    let inq_len = sock::inq(fd).map_err(io("SIOCINQ"))? as usize;
    let inq = peek(fd, tcp::Queue::Recv, inq_len)?;
    tcp::set_queue(fd, tcp::Queue::Send).map_err(io("select the send queue"))?;
    let outq_seq = tcp::queue_seq(fd).map_err(io("send sequence"))?;
    let mut outq_len = tcp::outq(fd).map_err(io("SIOCOUTQ"))? as usize;
    let mut unsq_len = tcp::outq_unsent(fd).map_err(io("SIOCOUTQNSD"))?;
    if state == super::TCP_FIN_WAIT1 {
        // The FIN is last in sequence: unsent if anything is.
        outq_len = outq_len.saturating_sub(1);
        unsq_len = unsq_len.saturating_sub(1);
    }
    let outq = peek(fd, tcp::Queue::Send, outq_len)?;
    tcp::set_queue(fd, tcp::Queue::None).map_err(io("leave the queues"))?;
    // In repair mode TCP_MAXSEG reads the MSS clamp.
    let mss = sock::getsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)
        .map_err(io("TCP_MAXSEG"))? as u32;
    let info = tcp::info(fd).map_err(io("TCP_INFO"))?;
    let opt = info.options as u32;
    let ts = tcp::timestamp(fd).map_err(io("TCP_TIMESTAMP"))?;
    let w = tcp::window(fd).map_err(io("TCP_REPAIR_WINDOW"))?;
    let e = TcpStreamEntry {
        inq_len: inq_len as u32,
        inq_seq,
        outq_len: outq_len as u32,
        outq_seq,
        opt_mask: opt,
        snd_wscale: info.snd_wscale as u32,
        mss_clamp: mss,
        rcv_wscale: Some(info.rcv_wscale as u32),
        timestamp: Some(ts),
        cork: None,
        nodelay: None,
        unsq_len: Some(unsq_len),
        snd_wl1: Some(w.snd_wl1),
        snd_wnd: Some(w.snd_wnd),
        max_window: Some(w.max_window),
        rcv_wnd: Some(w.rcv_wnd),
        rcv_wup: Some(w.rcv_wup),
    };
    debug!(ino, inq_len, outq_len, unsq_len, opt, mss, "tcp stream");
    let name = image_name(ino);
    let wr = || -> Result<()> {
        let mut w = dir.writer(&name, common(magic::TCP_STREAM))?;
        dir.put(&mut w, &name, &e)?;
        for q in [&inq, &outq] {
            w.write_payload(q)
                .map_err(|e| Error::io(dir.file(&name), e))?;
        }
        dir.finish(w, &name)
    };
    wr().map_err(|e| e.to_string())
}

/// A connection's saved state.
#[derive(Debug, Clone)]
pub struct Stream {
    pub e: TcpStreamEntry,
    pub inq: Vec<u8>,
    pub outq: Vec<u8>,
}

/// tcp-stream images of the current restore by inode, read once by the
/// restorer before it forks (the stubs may not see the images any more).
static STREAMS: RwLock<Option<HashMap<u32, Stream>>> = RwLock::new(None);

fn read_one(dir: &ImageDir, ino: u32) -> Result<Stream> {
    let name = image_name(ino);
    let mut r = dir.reader(&name, common(magic::TCP_STREAM))?;
    let e: TcpStreamEntry = r
        .read_entry()?
        .ok_or_else(|| Error::bad_image(&name, "no entry"))?;
    if e.unsq_len.unwrap_or(0) > e.outq_len {
        return Err(Error::bad_image(
            &name,
            "unsent part longer than the send queue",
        ));
    }
    let inq = r.read_payload(e.inq_len as usize)?;
    let outq = r.read_payload(e.outq_len as usize)?;
    Ok(Stream { e, inq, outq })
}

/// Read the streams of every established TCP entry in `files`.
pub fn preload<'a>(dir: &ImageDir, entries: impl Iterator<Item = &'a InetSkEntry>) -> Result<()> {
    let mut m = HashMap::new();
    for e in entries {
        if e.proto as i32 == libc::IPPROTO_TCP && super::connected(e.state) {
            m.insert(e.ino, read_one(dir, e.ino)?);
        }
    }
    *STREAMS.write().unwrap_or_else(|e| e.into_inner()) = Some(m);
    Ok(())
}

fn stream_of(ino: u32) -> std::result::Result<Stream, String> {
    let g = STREAMS.read().unwrap_or_else(|e| e.into_inner());
    g.as_ref()
        .and_then(|m| m.get(&ino).cloned())
        .ok_or_else(|| format!("no {} was read", image_name(ino)))
}

/// Write `data` into the queue selected in repair mode, in chunks the
/// kernel takes in one go (it answers ENOMEM for too large a chunk).
fn fill(fd: BorrowedFd<'_>, data: &[u8], flags: MsgFlags) -> std::result::Result<(), String> {
    let mut chunk = 256 << 10;
    let mut off = 0;
    while off < data.len() {
        let end = (off + chunk).min(data.len());
        match nix::sys::socket::send(fd.as_raw_fd(), &data[off..end], flags) {
            Ok(n) => off += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::ENOMEM | nix::errno::Errno::EAGAIN) if chunk > 1024 => {
                chunk /= 2
            }
            Err(e) => return Err(format!("write {} queued bytes at {off}: {e}", data.len())),
        }
    }
    Ok(())
}

/// Rebuild the connection `e` on the fresh socket `fd` (options that
/// matter for bind already set): repair mode, sequence numbers, bind and
/// connect (no SYN), negotiated options, queues, window, then out of
/// repair mode and the unsent tail sent as ordinary data.
pub fn restore(
    fd: BorrowedFd<'_>,
    e: &InetSkEntry,
    local: SockaddrStorage,
    peer: SockaddrStorage,
) -> std::result::Result<(), String> {
    let s = stream_of(e.ino)?;
    let t = &s.e;
    let io = |what: &'static str| move |e: std::io::Error| format!("{what}: {e}");
    tcp::set_repair(fd, true).map_err(io("enter repair mode"))?;
    tcp::set_queue(fd, tcp::Queue::Recv).map_err(io("select the receive queue"))?;
    tcp::set_queue_seq(fd, t.inq_seq.wrapping_sub(t.inq_len)).map_err(io("receive sequence"))?;
    tcp::set_queue(fd, tcp::Queue::Send).map_err(io("select the send queue"))?;
    // A half-closed connection's write_seq counts its FIN, which is sent
    // again (same sequence number) by shutdown() at the end.
    let fin = super::fin_sent(e.state);
    let send_seq = t.outq_seq.wrapping_sub(t.outq_len).wrapping_sub(fin as u32);
    tcp::set_queue_seq(fd, send_seq).map_err(io("send sequence"))?;
    nix::sys::socket::bind(fd.as_raw_fd(), &local).map_err(|err| format!("bind {local}: {err}"))?;
    nix::sys::socket::connect(fd.as_raw_fd(), &peer)
        .map_err(|err| format!("connect {peer} in repair mode: {err}"))?;
    let mut opts = vec![(tcp::TCPOPT_MAXSEG, t.mss_clamp)];
    if t.opt_mask & tcp::TCPI_OPT_WSCALE != 0 {
        opts.push((
            tcp::TCPOPT_WINDOW,
            t.snd_wscale | (t.rcv_wscale.unwrap_or(0) << 16),
        ));
    }
    if t.opt_mask & tcp::TCPI_OPT_SACK != 0 {
        opts.push((tcp::TCPOPT_SACK_PERM, 0));
    }
    if t.opt_mask & tcp::TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((tcp::TCPOPT_TIMESTAMP, 0));
    }
    tcp::set_options(fd, &opts).map_err(io("TCP_REPAIR_OPTIONS"))?;
    if let Some(ts) = t.timestamp {
        tcp::set_timestamp(fd, ts).map_err(io("TCP_TIMESTAMP"))?;
    }
    // Room for the queues whatever the dumped buffer sizes (set back by
    // the caller afterwards).
    for o in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
        let need = (s.inq.len().max(s.outq.len()) as i32).saturating_add(1 << 20);
        sock::setsockopt_int(fd, libc::SOL_SOCKET, o, need).map_err(io("grow the buffers"))?;
    }
    tcp::set_queue(fd, tcp::Queue::Recv).map_err(io("select the receive queue"))?;
    fill(fd, &s.inq, MsgFlags::empty()).map_err(|e| format!("receive queue: {e}"))?;
    if let (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) =
        (t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup)
    {
        tcp::set_window(
            fd,
            &tcp::Window {
                snd_wl1,
                snd_wnd,
                max_window,
                rcv_wnd,
                rcv_wup,
            },
        )
        .map_err(io("TCP_REPAIR_WINDOW"))?;
    }
    let unsent = t.unsq_len.unwrap_or(0) as usize;
    let sent = s.outq.len() - unsent;
    tcp::set_queue(fd, tcp::Queue::Send).map_err(io("select the send queue"))?;
    fill(fd, &s.outq[..sent], MsgFlags::empty()).map_err(|e| format!("send queue: {e}"))?;
    tcp::set_queue(fd, tcp::Queue::None).map_err(io("leave the queues"))?;
    tcp::set_repair(fd, false).map_err(io("leave repair mode"))?;
    // Queued in repair mode counts as transmitted: the never-sent tail goes
    // as new data.
    fill(
        fd,
        &s.outq[sent..],
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    )
    .map_err(|e| format!("unsent data: {e}"))?;
    if fin {
        nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write)
            .map_err(|e| format!("shut down for writing again: {e}"))?;
    }
    debug!(
        ino = e.ino,
        inq = s.inq.len(),
        outq = s.outq.len(),
        unsent,
        "tcp stream restored"
    );
    Ok(())
}
