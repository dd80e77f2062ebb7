//! wl-unix STATEDIR [ext PATH]: unix sockets of every kind, in a parent and
//! a child.
//!
//! Set up (the parent `root`, the child `child`):
//! - a stream socketpair in the parent with unread data both ways; one end
//!   has SO_SNDBUF and SO_PASSCRED set, the other is O_NONBLOCK;
//! - a stream socketpair in the parent whose writer sent "last words" and
//!   shut down its write side;
//! - a listening stream socket bound to `STATEDIR/listen.sock` (mode 0600,
//!   SO_REUSEADDR, backlog 5) in the parent; the child connected to it
//!   twice: the first connection was accepted by the parent (data queued
//!   both ways, unread), the second is pending, never accepted, with data
//!   the child sent on it;
//! - a datagram socket bound to an abstract name in the parent, with two
//!   datagrams queued that the child sent through a socket connected to it;
//! - a seqpacket pair with one end in each process, two records queued for
//!   the child and one for the parent;
//! - a second pending connection, without data, from the parent itself
//!   (after the child's: accept order matters);
//! - a datagram socketpair with a datagram queued each way; a stream socket
//!   whose peer sent data and was closed; datagram sockets bound to a
//!   relative name (`rel.sock` from `STATEDIR`) and to a path that was
//!   unlinked since (`gone.sock`).
//!
//! Verification: every queue holds exactly its data (FIONREAD, record
//! boundaries, EOF after the shut-down writer's data), options and flags
//! are as set, the socket file has its mode and the sockets their names;
//! then more data goes both ways on every connection, the pending
//! connection is accepted with its data and answered, and a new connection
//! to the listener works.
//!
//! `ext PATH` (root only): a datagram socket connected to a socket bound at
//! PATH by someone outside the tree; it sends "ext-hello" at set-up and
//! "ext-after" when checked.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    accept, bind, connect, getsockname, getsockopt, listen, recv, send, setsockopt, shutdown,
    socket, socketpair, sockopt, AddressFamily, Backlog, MsgFlags, Shutdown, SockFlag, SockType,
    UnixAddr,
};
use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

const AB: &[u8] = b"socketpair: a to b, unread";
const BA: &[u8] = b"socketpair: b to a";
const LAST: &[u8] = b"last words";
const C2P: &[u8] = b"child to parent, unread";
const P2C: &[u8] = b"parent to child";
const PENDING: &[u8] = b"data on a pending connection";
const DG1: &[u8] = b"dgram-one";
const DG2: &[u8] = b"dgram-two, a longer one";
const SEQ1: &[u8] = b"seq-1";
const SEQ2: &[u8] = b"seq-2, longer";
const SEQ_C: &[u8] = b"seq from child";
const SNDBUF: usize = 65536;
const TIMEOUT: Duration = Duration::from_secs(10);

type R<T> = Result<T, String>;

fn fionread(fd: BorrowedFd<'_>) -> R<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 {
        return Err(format!("FIONREAD: {}", io::Error::last_os_error()));
    }
    Ok(n as usize)
}

fn readable(fd: BorrowedFd<'_>, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

fn wait_readable(fd: BorrowedFd<'_>, what: &str) -> R<()> {
    let deadline = Instant::now() + TIMEOUT;
    while !readable(fd, 10) {
        if Instant::now() > deadline {
            return Err(format!("{what}: nothing to read after {TIMEOUT:?}"));
        }
    }
    Ok(())
}

/// Read exactly `n` bytes from a stream socket (waiting up to TIMEOUT).
fn read_exact(fd: BorrowedFd<'_>, n: usize, what: &str) -> R<Vec<u8>> {
    let mut out = vec![0u8; n];
    let mut got = 0;
    while got < n {
        wait_readable(fd, what)?;
        match recv(fd.as_raw_fd(), &mut out[got..], MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Err(format!("{what}: EOF after {got} of {n} bytes")),
            Ok(k) => got += k,
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("{what}: read: {e}")),
        }
    }
    Ok(out)
}

fn expect_stream(v: &mut Verdict, fd: BorrowedFd<'_>, want: &[u8], what: &str) {
    match read_exact(fd, want.len(), what) {
        Ok(got) if got == want => {}
        Ok(got) => v.fail(format!(
            "{what}: read {:?}, want {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want)
        )),
        Err(e) => v.fail(e),
    }
}

/// Exactly `want` is queued on `fd`, and reads back.
fn expect_queued(v: &mut Verdict, fd: BorrowedFd<'_>, want: &[u8], what: &str) {
    match fionread(fd) {
        Ok(n) if n == want.len() => expect_stream(v, fd, want, what),
        Ok(n) => v.fail(format!("{what}: {n} bytes queued, want {}", want.len())),
        Err(e) => v.fail(format!("{what}: {e}")),
    }
}

/// One record (datagram or seqpacket), waiting up to TIMEOUT when `wait`.
fn recv_one(fd: BorrowedFd<'_>, wait: bool, what: &str) -> R<Option<Vec<u8>>> {
    if wait {
        wait_readable(fd, what)?;
    }
    let mut b = vec![0u8; 65536];
    match recv(fd.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT) {
        Ok(n) => Ok(Some(b[..n].to_vec())),
        Err(nix::errno::Errno::EAGAIN) => Ok(None),
        Err(e) => Err(format!("{what}: recv: {e}")),
    }
}

fn expect_record(v: &mut Verdict, fd: BorrowedFd<'_>, want: &[u8], wait: bool, what: &str) {
    match recv_one(fd, wait, what) {
        Ok(Some(got)) if got == want => {}
        Ok(Some(got)) => v.fail(format!(
            "{what}: got {:?}, want {:?}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(want)
        )),
        Ok(None) => v.fail(format!("{what}: nothing queued")),
        Err(e) => v.fail(e),
    }
}

fn expect_no_record(v: &mut Verdict, fd: BorrowedFd<'_>, what: &str) {
    match recv_one(fd, false, what) {
        Ok(None) => {}
        Ok(Some(got)) => v.fail(format!(
            "{what}: unexpected extra record {:?}",
            String::from_utf8_lossy(&got)
        )),
        Err(e) => v.fail(e),
    }
}

fn send_all(fd: BorrowedFd<'_>, data: &[u8], what: &str) -> R<()> {
    match send(fd.as_raw_fd(), data, MsgFlags::MSG_NOSIGNAL) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(n) => Err(format!("{what}: short send {n} of {}", data.len())),
        Err(e) => Err(format!("{what}: send: {e}")),
    }
}

fn stream() -> R<OwnedFd> {
    socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .map_err(|e| format!("socket: {e}"))
}

fn pair(t: SockType) -> R<(OwnedFd, OwnedFd)> {
    socketpair(AddressFamily::Unix, t, None, SockFlag::empty())
        .map_err(|e| format!("socketpair: {e}"))
}

fn abstract_name() -> String {
    // The parent's pid keeps runs apart; a restored parent has the same.
    format!("stasis-wl-unix-{}", std::process::id())
}

struct Parent {
    sp0: OwnedFd,
    sp1: OwnedFd,
    s2a: OwnedFd,
    s2b: OwnedFd,
    lsn: OwnedFd,
    dg: OwnedFd,
    q0: OwnedFd,
    a1: OwnedFd,
    sndbuf: usize,
    dg_name: String,
    dp0: OwnedFd,
    dp1: OwnedFd,
    orphan: OwnedFd,
    rel: OwnedFd,
    gone: OwnedFd,
    c4: Option<OwnedFd>,
}

struct Child {
    c1: OwnedFd,
    c2: OwnedFd,
    e: OwnedFd,
    q1: OwnedFd,
}

fn check_parent(ctx: &Ctx, p: &Parent, v: &mut Verdict) {
    let lpath = ctx.path("listen.sock");
    // The socketpair: unread data both ways, options, flags; then more.
    expect_queued(v, p.sp1.as_fd(), AB, "socketpair end b");
    expect_queued(v, p.sp0.as_fd(), BA, "socketpair end a");
    v.result(
        "socketpair a->b again",
        send_all(p.sp0.as_fd(), b"more a->b", "a"),
    );
    expect_stream(v, p.sp1.as_fd(), b"more a->b", "socketpair end b, new data");
    v.result(
        "socketpair b->a again",
        send_all(p.sp1.as_fd(), b"more b->a", "b"),
    );
    expect_stream(v, p.sp0.as_fd(), b"more b->a", "socketpair end a, new data");
    match getsockopt(&p.sp0, sockopt::SndBuf) {
        Ok(n) => v.eq("SO_SNDBUF of end a", n, p.sndbuf),
        Err(e) => v.fail(format!("SO_SNDBUF: {e}")),
    }
    match getsockopt(&p.sp0, sockopt::PassCred) {
        Ok(b) => v.eq("SO_PASSCRED of end a", b, true),
        Err(e) => v.fail(format!("SO_PASSCRED: {e}")),
    }
    let fl = nix::fcntl::fcntl(p.sp1.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0);
    v.check(fl & libc::O_NONBLOCK != 0, || {
        "socketpair end b lost O_NONBLOCK".into()
    });
    let fl = nix::fcntl::fcntl(p.sp0.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0);
    v.check(fl & libc::O_NONBLOCK == 0, || {
        "socketpair end a became O_NONBLOCK".into()
    });

    // Shut down writer: its data, then EOF; writing on it fails.
    expect_queued(v, p.s2b.as_fd(), LAST, "shut-down pair reader");
    match recv(p.s2b.as_raw_fd(), &mut [0u8; 8], MsgFlags::MSG_DONTWAIT) {
        Ok(0) => {}
        other => v.fail(format!("shut-down pair reader: want EOF, got {other:?}")),
    }
    match send(p.s2a.as_raw_fd(), b"x", MsgFlags::MSG_NOSIGNAL) {
        Err(nix::errno::Errno::EPIPE) => {}
        other => v.fail(format!("shut-down writer: want EPIPE, got {other:?}")),
    }

    // The listener: file, name, options.
    match std::fs::symlink_metadata(&lpath) {
        Ok(m) => {
            v.check(m.file_type().is_socket(), || {
                "listen.sock is not a socket".into()
            });
            v.eq(
                "mode of listen.sock",
                m.permissions().mode() & 0o7777,
                0o600,
            );
        }
        Err(e) => v.fail(format!("stat listen.sock: {e}")),
    }
    match getsockname::<UnixAddr>(p.lsn.as_raw_fd()) {
        Ok(a) => v.eq(
            "listener name",
            a.path().map(Path::to_path_buf),
            Some(lpath.clone()),
        ),
        Err(e) => v.fail(format!("getsockname(listener): {e}")),
    }
    v.eq(
        "listener SO_ACCEPTCONN",
        getsockopt(&p.lsn, sockopt::AcceptConn).ok(),
        Some(true),
    );
    v.eq(
        "listener SO_REUSEADDR",
        getsockopt(&p.lsn, sockopt::ReuseAddr).ok(),
        Some(true),
    );

    // The accepted connection: exactly the child's unread data.
    expect_queued(v, p.a1.as_fd(), C2P, "accepted connection");
    v.result(
        "accepted connection, parent to child",
        send_all(p.a1.as_fd(), b"more p2c", "a1"),
    );

    // Datagrams on the abstract name: two, boundaries kept, nothing more.
    expect_record(v, p.dg.as_fd(), DG1, false, "first datagram");
    expect_record(v, p.dg.as_fd(), DG2, false, "second datagram");
    expect_no_record(v, p.dg.as_fd(), "datagram socket");
    match getsockname::<UnixAddr>(p.dg.as_raw_fd()) {
        Ok(a) => v.eq(
            "datagram socket name",
            a.as_abstract().map(|b| b.to_vec()),
            Some(p.dg_name.as_bytes().to_vec()),
        ),
        Err(e) => v.fail(format!("getsockname(datagram): {e}")),
    }

    // Seqpacket: the child's record, nothing more; then answer.
    expect_record(v, p.q0.as_fd(), SEQ_C, false, "seqpacket from child");
    expect_no_record(v, p.q0.as_fd(), "seqpacket");
    v.result(
        "seqpacket reply",
        send_all(p.q0.as_fd(), b"seq-reply", "q0"),
    );

    // The pending connection: accept it, its data, answer it.
    match wait_readable(p.lsn.as_fd(), "listener").and_then(|_| {
        accept(p.lsn.as_raw_fd()).map_err(|e| format!("accept the pending connection: {e}"))
    }) {
        Ok(fd) => {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            let a2 = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            expect_queued(v, a2.as_fd(), PENDING, "pending connection");
            v.result(
                "answer the pending connection",
                send_all(a2.as_fd(), b"hello pending", "a2"),
            );
        }
        Err(e) => v.fail(e),
    }
    // The parent's own pending connection comes next, empty.
    match accept(p.lsn.as_raw_fd()) {
        Ok(fd) => {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            let a4 = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            v.eq(
                "second pending connection, queued",
                fionread(a4.as_fd()).ok(),
                Some(0),
            );
            if let Some(c4) = &p.c4 {
                v.result(
                    "second pending client",
                    send_all(c4.as_fd(), b"from c4", "c4"),
                );
                expect_stream(v, a4.as_fd(), b"from c4", "second pending connection");
                v.result(
                    "second pending answer",
                    send_all(a4.as_fd(), b"to c4", "a4"),
                );
                expect_stream(v, c4.as_fd(), b"to c4", "second pending client");
            }
        }
        Err(e) => v.fail(format!("accept the second pending connection: {e}")),
    }

    // Datagram socketpair, orphaned stream, relative and unlinked names.
    expect_record(
        v,
        p.dp1.as_fd(),
        b"dgram pair a->b",
        false,
        "datagram pair end b",
    );
    expect_no_record(v, p.dp1.as_fd(), "datagram pair end b");
    expect_record(
        v,
        p.dp0.as_fd(),
        b"dgram pair b->a",
        false,
        "datagram pair end a",
    );
    v.result(
        "datagram pair again",
        send_all(p.dp0.as_fd(), b"again", "dp0"),
    );
    expect_record(v, p.dp1.as_fd(), b"again", true, "datagram pair end b, new");
    expect_queued(
        v,
        p.orphan.as_fd(),
        b"peer is gone",
        "socket whose peer is gone",
    );
    match recv(p.orphan.as_raw_fd(), &mut [0u8; 8], MsgFlags::MSG_DONTWAIT) {
        Ok(0) => {}
        other => v.fail(format!(
            "socket whose peer is gone: want EOF, got {other:?}"
        )),
    }
    match getsockname::<UnixAddr>(p.rel.as_raw_fd()) {
        Ok(a) => v.eq(
            "relative name",
            a.path().map(Path::to_path_buf),
            Some("rel.sock".into()),
        ),
        Err(e) => v.fail(format!("getsockname(relative): {e}")),
    }
    let to_rel = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::empty(),
        None,
    )
    .map_err(|e| e.to_string())
    .and_then(|s| {
        let a = UnixAddr::new(&ctx.path("rel.sock")).map_err(|e| e.to_string())?;
        nix::sys::socket::sendto(s.as_raw_fd(), b"to rel", &a, MsgFlags::empty())
            .map_err(|e| format!("send to rel.sock: {e}"))
    });
    match to_rel {
        Ok(_) => expect_record(v, p.rel.as_fd(), b"to rel", true, "relative-named socket"),
        Err(e) => v.fail(e),
    }
    match getsockname::<UnixAddr>(p.gone.as_raw_fd()) {
        Ok(a) => v.eq(
            "unlinked name",
            a.path().map(Path::to_path_buf),
            Some(ctx.path("gone.sock")),
        ),
        Err(e) => v.fail(format!("getsockname(unlinked): {e}")),
    }
    v.check(
        std::fs::symlink_metadata(ctx.path("gone.sock")).is_err(),
        || "gone.sock exists again".into(),
    );

    // What the child sends once it has read everything.
    expect_stream(
        v,
        p.a1.as_fd(),
        b"more c2p",
        "accepted connection, new data",
    );
    expect_record(v, p.q0.as_fd(), b"seq-more", true, "seqpacket, new record");
    expect_record(v, p.dg.as_fd(), b"dgram-three", true, "datagram, new");
    match wait_readable(p.lsn.as_fd(), "listener").and_then(|_| {
        accept(p.lsn.as_raw_fd()).map_err(|e| format!("accept a new connection: {e}"))
    }) {
        Ok(fd) => {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            let a3 = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            expect_stream(v, a3.as_fd(), b"new connection", "new connection");
        }
        Err(e) => v.fail(e),
    }
}

fn check_child(ctx: &Ctx, c: &Child, v: &mut Verdict) {
    expect_stream(v, c.c1.as_fd(), P2C, "connection, parent's unread data");
    expect_stream(v, c.c1.as_fd(), b"more p2c", "connection, new data");
    match fionread(c.c1.as_fd()) {
        Ok(0) => {}
        Ok(n) => v.fail(format!("connection: {n} extra bytes")),
        Err(e) => v.fail(e),
    }
    v.result(
        "connection, child to parent",
        send_all(c.c1.as_fd(), b"more c2p", "c1"),
    );
    expect_record(v, c.q1.as_fd(), SEQ1, true, "first seqpacket record");
    expect_record(v, c.q1.as_fd(), SEQ2, true, "second seqpacket record");
    expect_record(v, c.q1.as_fd(), b"seq-reply", true, "seqpacket reply");
    v.result("seqpacket more", send_all(c.q1.as_fd(), b"seq-more", "q1"));
    v.result("datagram more", send_all(c.e.as_fd(), b"dgram-three", "e"));
    expect_stream(
        v,
        c.c2.as_fd(),
        b"hello pending",
        "pending connection's answer",
    );
    let r = stream().and_then(|s| {
        connect(
            s.as_raw_fd(),
            &UnixAddr::new(&ctx.path("listen.sock")).unwrap(),
        )
        .map_err(|e| format!("connect a new client: {e}"))?;
        send_all(s.as_fd(), b"new connection", "new client")
    });
    v.result("new connection", r);
}

fn setup_parent(ctx: &Ctx) -> R<(Parent, OwnedFd)> {
    let (sp0, sp1) = pair(SockType::Stream)?;
    setsockopt(&sp0, sockopt::SndBuf, &SNDBUF).map_err(|e| format!("SO_SNDBUF: {e}"))?;
    setsockopt(&sp0, sockopt::PassCred, &true).map_err(|e| format!("SO_PASSCRED: {e}"))?;
    let sndbuf = getsockopt(&sp0, sockopt::SndBuf).map_err(|e| format!("SO_SNDBUF: {e}"))?;
    nix::fcntl::fcntl(
        sp1.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| format!("O_NONBLOCK: {e}"))?;
    send_all(sp0.as_fd(), AB, "sp0")?;
    send_all(sp1.as_fd(), BA, "sp1")?;

    let (s2a, s2b) = pair(SockType::Stream)?;
    send_all(s2a.as_fd(), LAST, "s2a")?;
    shutdown(s2a.as_raw_fd(), Shutdown::Write).map_err(|e| format!("shutdown: {e}"))?;

    let lpath = ctx.path("listen.sock");
    let _ = std::fs::remove_file(&lpath);
    let lsn = stream()?;
    setsockopt(&lsn, sockopt::ReuseAddr, &true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    bind(
        lsn.as_raw_fd(),
        &UnixAddr::new(&lpath).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("bind {}: {e}", lpath.display()))?;
    std::fs::set_permissions(&lpath, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod: {e}"))?;
    listen(&lsn, Backlog::new(5).unwrap()).map_err(|e| format!("listen: {e}"))?;

    let dg_name = abstract_name();
    let dg = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::empty(),
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    bind(
        dg.as_raw_fd(),
        &UnixAddr::new_abstract(dg_name.as_bytes()).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("bind @{dg_name}: {e}"))?;

    let (q0, q1) = pair(SockType::SeqPacket)?;
    send_all(q0.as_fd(), SEQ1, "q0")?;
    send_all(q0.as_fd(), SEQ2, "q0")?;

    let (dp0, dp1) = pair(SockType::Datagram)?;
    send_all(dp0.as_fd(), b"dgram pair a->b", "dp0")?;
    send_all(dp1.as_fd(), b"dgram pair b->a", "dp1")?;
    let (orphan, peer) = pair(SockType::Stream)?;
    send_all(peer.as_fd(), b"peer is gone", "orphan's peer")?;
    drop(peer);
    let dgram = || {
        socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::empty(),
            None,
        )
        .map_err(|e| format!("socket: {e}"))
    };
    let rel = dgram()?;
    let cwd = std::env::current_dir().map_err(|e| format!("getcwd: {e}"))?;
    let _ = std::fs::remove_file(ctx.path("rel.sock"));
    std::env::set_current_dir(&ctx.dir).map_err(|e| format!("chdir: {e}"))?;
    let r = bind(rel.as_raw_fd(), &UnixAddr::new("rel.sock").unwrap());
    std::env::set_current_dir(&cwd).map_err(|e| format!("chdir back: {e}"))?;
    r.map_err(|e| format!("bind rel.sock: {e}"))?;
    let gone = dgram()?;
    let gpath = ctx.path("gone.sock");
    let _ = std::fs::remove_file(&gpath);
    bind(gone.as_raw_fd(), &UnixAddr::new(&gpath).unwrap())
        .map_err(|e| format!("bind gone.sock: {e}"))?;
    std::fs::remove_file(&gpath).map_err(|e| format!("unlink gone.sock: {e}"))?;
    // a1 is filled in once the child connected.
    let a1 = q0.try_clone().map_err(|e| e.to_string())?;
    Ok((
        Parent {
            sp0,
            sp1,
            s2a,
            s2b,
            lsn,
            dg,
            q0,
            a1,
            sndbuf,
            dg_name,
            dp0,
            dp1,
            orphan,
            rel,
            gone,
            c4: None,
        },
        q1,
    ))
}

fn setup_child(ctx: &Ctx, q1: OwnedFd, dg_name: &str) -> R<Child> {
    let lpath = UnixAddr::new(&ctx.path("listen.sock")).map_err(|e| e.to_string())?;
    let c1 = stream()?;
    connect(c1.as_raw_fd(), &lpath).map_err(|e| format!("connect: {e}"))?;
    send_all(c1.as_fd(), C2P, "c1")?;
    // Wait until the parent accepted us and wrote (without reading it).
    let deadline = Instant::now() + TIMEOUT;
    while fionread(c1.as_fd())? < P2C.len() {
        if Instant::now() > deadline {
            return Err("the parent did not answer the first connection".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let c2 = stream()?;
    connect(c2.as_raw_fd(), &lpath).map_err(|e| format!("connect a pending one: {e}"))?;
    send_all(c2.as_fd(), PENDING, "c2")?;
    let e = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::empty(),
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    connect(
        e.as_raw_fd(),
        &UnixAddr::new_abstract(dg_name.as_bytes()).map_err(|e| e.to_string())?,
    )
    .map_err(|x| format!("connect @{dg_name}: {x}"))?;
    send_all(e.as_fd(), DG1, "e")?;
    send_all(e.as_fd(), DG2, "e")?;
    send_all(q1.as_fd(), SEQ_C, "q1")?;
    Ok(Child { c1, c2, e, q1 })
}

fn ext_mode(mut ctx: Ctx, path: &str) -> ! {
    let r = (|| -> R<OwnedFd> {
        let s = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::empty(),
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        connect(
            s.as_raw_fd(),
            &UnixAddr::new(path).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("connect {path}: {e}"))?;
        send_all(s.as_fd(), b"ext-hello", "ext")?;
        Ok(s)
    })();
    let s = r.unwrap_or_else(|e| ctx.setup_failed("root", &e));
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    v.result(
        "send after restore",
        send_all(s.as_fd(), b"ext-after", "ext"),
    );
    ctx.finish("root", v)
}

fn main() {
    let mut ctx = Ctx::from_args("wl-unix STATEDIR [ext PATH]");
    if ctx.args.first().map(String::as_str) == Some("ext") {
        let path = ctx.args.get(1).cloned().unwrap_or_default();
        ext_mode(ctx, &path);
    }
    let (mut parent, q1) = setup_parent(&ctx).unwrap_or_else(|e| ctx.setup_failed("root", &e));
    let pid = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
    if pid == 0 {
        // The child keeps only its own sockets.
        let dg_name = parent.dg_name.clone();
        drop(parent);
        let child =
            setup_child(&ctx, q1, &dg_name).unwrap_or_else(|e| ctx.setup_failed("child", &e));
        ctx.write_ready("child");
        ctx.wait_for_check(|| {});
        let mut v = Verdict::new();
        check_child(&ctx, &child, &mut v);
        ctx.finish("child", v);
    }
    drop(q1);
    match accept(parent.lsn.as_raw_fd()) {
        Ok(fd) => {
            // SAFETY: accept returned a new descriptor that nothing else owns.
            parent.a1 = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        }
        Err(e) => ctx.setup_failed("root", &format!("accept: {e}")),
    }
    if let Err(e) = send_all(parent.a1.as_fd(), P2C, "a1") {
        ctx.setup_failed("root", &e);
    }
    if let Err(e) = ctx.wait_ready_of(&["child"], Duration::from_secs(20)) {
        ctx.setup_failed("root", &e);
    }
    // A second pending connection, after the child's, without data.
    let c4 = stream().and_then(|s| {
        connect(
            s.as_raw_fd(),
            &UnixAddr::new(&ctx.path("listen.sock")).unwrap(),
        )
        .map_err(|e| format!("connect: {e}"))?;
        Ok(s)
    });
    match c4 {
        Ok(s) => parent.c4 = Some(s),
        Err(e) => ctx.setup_failed("root", &e),
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    check_parent(&ctx, &parent, &mut v);
    v.result("child", wait_child(pid, Duration::from_secs(30)));
    ctx.finish("root", v)
}
