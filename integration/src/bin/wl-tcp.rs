//! wl-tcp STATEDIR MODE HOST PORT: one TCP connection carrying a checked
//! byte stream each way, for established-connection checkpoints.
//!
//! MODE is `client` or `server` for the side that is dumped, `peer-client`
//! or `peer-server` for the other end (never dumped), or `pair`: a server
//! whose forked child (role `peer`) is its peer, both ends in the tree. The
//! connection is made in set-up (a server keeps its listener open as well).
//! `pair-netns` is `pair` in a network namespace of the tree's own;
//! `client-shut` is a client that shuts down for writing once its send
//! queue is full (half-closed: FIN_WAIT1, or FIN_WAIT2 once the peer read
//! it all), its total in `sent-before-dump`, which the test copies to the
//! peer's `expect-total`.
//!
//! - The dumped side sets TCP_NODELAY and keepalive (idle 123 s), sends its
//!   stream without waiting until the kernel takes no more (the peer is not
//!   reading yet, so its send queue is full), and waits until the peer's
//!   first burst has arrived, which it leaves unread. Ready: unread data in
//!   both directions. It then does nothing with the socket until `check`.
//! - The peer sends a first burst, is ready, and waits for `STATEDIR/go`
//!   before it reads anything.
//!
//! After `go` (peer) and `check` (dumped side), both finish the exchange:
//! every byte of the other's stream (`TOTAL` bytes, position-dependent
//! pattern) arrives exactly once and in order, then EOF; a reset or any
//! other error is a failure. The dumped side also checks its options and
//! that its listener (server mode) still accepts; with `STATEDIR/pending`,
//! it first accepts a client that connected while it was checkpointed,
//! reads `hello` and answers `world`.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

/// Bytes each side sends in all.
const TOTAL: u64 = 6 << 20;
/// The peer's first burst.
const PEER_BURST: u64 = 64 << 10;

fn byte(dir: u8, i: u64) -> u8 {
    (i ^ (i >> 8) ^ (i >> 17) ^ (dir as u64 * 0x5b)) as u8
}

fn getopt(fd: i32, level: i32, opt: i32) -> i32 {
    let mut v: i32 = 0;
    let mut len = 4u32;
    // SAFETY: v and len are valid for an int option.
    unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut len) };
    v
}

fn setopt(fd: i32, level: i32, opt: i32, v: i32) -> Result<(), String> {
    // SAFETY: v is a valid int the kernel reads.
    let r = unsafe { libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), 4) };
    if r < 0 {
        return Err(format!(
            "setsockopt {opt}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// One direction's progress.
struct Stream {
    sent: u64,
    got: u64,
    eof: bool,
}

/// Send our stream from `s.sent` as far as the socket takes it (stop at
/// `limit`).
fn push(c: &mut TcpStream, dir: u8, s: &mut Stream, limit: u64) -> Result<(), String> {
    let mut buf = [0u8; 16 << 10];
    while s.sent < limit {
        let n = ((limit - s.sent) as usize).min(buf.len());
        for (k, b) in buf[..n].iter_mut().enumerate() {
            *b = byte(dir, s.sent + k as u64);
        }
        match c.write(&buf[..n]) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(k) => s.sent += k as u64,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write at {}: {e}", s.sent)),
        }
    }
    Ok(())
}

/// Read what is there and check it against the other side's stream.
fn pull(c: &mut TcpStream, dir: u8, s: &mut Stream) -> Result<(), String> {
    let mut buf = [0u8; 64 << 10];
    loop {
        match c.read(&mut buf) {
            Ok(0) => {
                s.eof = true;
                return Ok(());
            }
            Ok(n) => {
                for (k, &b) in buf[..n].iter().enumerate() {
                    let at = s.got + k as u64;
                    if b != byte(dir, at) {
                        return Err(format!(
                            "byte {at} of the incoming stream is {b:#x}, expected {:#x}",
                            byte(dir, at)
                        ));
                    }
                }
                s.got += n as u64;
                if s.got > TOTAL {
                    return Err(format!("{} bytes received, more than {TOTAL}", s.got));
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read at {}: {e}", s.got)),
        }
    }
}

/// Finish both directions: send the rest and shut down, read all and EOF.
/// `mine`/`theirs`: the totals of the two streams; `shut`: we already shut
/// down for writing.
fn exchange(
    c: &mut TcpStream,
    me: u8,
    s: &mut Stream,
    mine: u64,
    theirs: u64,
    mut shut: bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(shut && s.eof) {
        if Instant::now() > deadline {
            return Err(format!(
                "exchange not done after 60 s: sent {} got {} eof {}",
                s.sent, s.got, s.eof
            ));
        }
        push(c, me, s, mine)?;
        if s.sent == mine && !shut {
            c.shutdown(Shutdown::Write)
                .map_err(|e| format!("shutdown: {e}"))?;
            shut = true;
        }
        pull(c, 1 - me, s)?;
        let mut p = [libc::pollfd {
            fd: c.as_raw_fd(),
            // After EOF the socket stays readable: wait for room only.
            events: if s.eof { 0 } else { libc::POLLIN } | if shut { 0 } else { libc::POLLOUT },
            revents: 0,
        }; 1];
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(p.as_mut_ptr(), 1, 100) };
    }
    if s.got != theirs {
        return Err(format!("EOF after {} of {theirs} bytes", s.got));
    }
    Ok(())
}

/// The dumped side after set-up: fill the way out, leave the peer's burst
/// unread, be ready, then at check finish the exchange and check options.
fn dumped_side(
    ctx: &mut Ctx,
    mut c: TcpStream,
    listener: Option<TcpListener>,
    shut_early: bool,
    before_ready: impl FnOnce(&Ctx),
) -> Verdict {
    let fd = c.as_raw_fd();
    let me = 0;
    let mut s = Stream {
        sent: 0,
        got: 0,
        eof: false,
    };
    let fail = |ctx: &Ctx, e: String| -> ! { ctx.setup_failed("root", &e) };
    for (level, opt, v) in [
        (libc::IPPROTO_TCP, libc::TCP_NODELAY, 1),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 123),
    ] {
        setopt(fd, level, opt, v).unwrap_or_else(|e| fail(ctx, e));
    }
    // Fill the way out (nobody reads yet), then wait for the peer's burst
    // without reading it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        push(&mut c, me, &mut s, TOTAL).unwrap_or_else(|e| fail(ctx, e));
        let mut avail: i32 = 0;
        // SAFETY: FIONREAD writes one int.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut avail) };
        if avail as u64 >= PEER_BURST && s.sent > 0 {
            break;
        }
        if Instant::now() > deadline {
            fail(ctx, format!("no peer burst: {avail} bytes waiting"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Settle: whatever the peer's kernel acknowledges has left our queue.
    std::thread::sleep(Duration::from_millis(200));
    push(&mut c, me, &mut s, TOTAL).unwrap_or_else(|e| fail(ctx, e));
    // Half-closed: our stream ends here (the FIN waits behind the data).
    let mine = if shut_early {
        c.shutdown(Shutdown::Write)
            .unwrap_or_else(|e| fail(ctx, format!("shutdown: {e}")));
        s.sent
    } else {
        TOTAL
    };
    let _ = stasis_integration::workload::write_atomic(
        &ctx.path("sent-before-dump"),
        &s.sent.to_string(),
    );
    before_ready(ctx);
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    v.eq(
        "TCP_NODELAY",
        getopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY),
        1,
    );
    v.eq(
        "SO_KEEPALIVE",
        getopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        1,
    );
    v.eq(
        "TCP_KEEPIDLE",
        getopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
        123,
    );
    let mut avail: i32 = 0;
    // SAFETY: FIONREAD writes one int.
    unsafe { libc::ioctl(fd, libc::FIONREAD, &mut avail) };
    v.check(avail as u64 >= PEER_BURST, || {
        format!("only {avail} unread bytes after restore, {PEER_BURST} were waiting")
    });
    v.result(
        "exchange",
        exchange(&mut c, me, &mut s, mine, TOTAL, shut_early),
    );
    if let (Some(l), true) = (&listener, ctx.path("pending").exists()) {
        // A client connected while we were checkpointed (the test says so):
        // its connection is the first one the restored listener gets.
        v.result(
            "pending connection",
            (|| -> Result<(), String> {
                let (mut y, from) = l.accept().map_err(|e| format!("accept: {e}"))?;
                y.set_nonblocking(false).map_err(|e| e.to_string())?;
                y.set_read_timeout(Some(Duration::from_secs(20)))
                    .map_err(|e| e.to_string())?;
                let mut b = [0u8; 5];
                y.read_exact(&mut b)
                    .map_err(|e| format!("read from {from}: {e}"))?;
                if &b != b"hello" {
                    return Err(format!("pending client {from} sent {b:?}"));
                }
                y.write_all(b"world").map_err(|e| e.to_string())
            })(),
        );
    }
    if let Some(l) = &listener {
        // The listener still takes connections.
        let a = l.local_addr().map_err(|e| e.to_string());
        v.result(
            "listener",
            a.and_then(|a| {
                let mut x = TcpStream::connect(a).map_err(|e| format!("connect: {e}"))?;
                let (mut y, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
                x.write_all(b"ping").map_err(|e| e.to_string())?;
                let mut b = [0u8; 4];
                y.set_nonblocking(false).map_err(|e| e.to_string())?;
                y.read_exact(&mut b).map_err(|e| e.to_string())?;
                if &b != b"ping" {
                    return Err("listener connection garbled".into());
                }
                Ok(())
            }),
        );
    }
    v
}

/// The peer: first burst, ready, then the exchange once `go` exists.
fn peer_side(ctx: &mut Ctx, mut c: TcpStream, role: &str) -> ! {
    let me = 1;
    let mut s = Stream {
        sent: 0,
        got: 0,
        eof: false,
    };
    if let Err(e) = push(&mut c, me, &mut s, PEER_BURST) {
        ctx.setup_failed(role, &e);
    }
    if s.sent < PEER_BURST {
        ctx.setup_failed(role, &format!("first burst: only {} bytes went", s.sent));
    }
    ctx.write_ready(role);
    let go = ctx.path("go");
    let expect = ctx.path("expect-total");
    let mut done: Option<Result<(), String>> = None;
    ctx.wait_for_check(|| {
        if done.is_none() && go.exists() {
            // A half-closed dumped side says how much it sent in all.
            let theirs = std::fs::read_to_string(&expect)
                .ok()
                .and_then(|t| t.trim().parse().ok())
                .unwrap_or(TOTAL);
            done = Some(exchange(&mut c, me, &mut s, TOTAL, theirs, false));
        }
    });
    let mut v = Verdict::new();
    match done {
        Some(r) => v.result("exchange", r),
        None => v.fail("check before go"),
    }
    ctx.finish(role, v);
}

/// Unshare the network namespace and bring its loopback up.
fn own_netns() -> Result<(), String> {
    let err = |w: &str| format!("{w}: {}", std::io::Error::last_os_error());
    // SAFETY: unshare takes a flag; the ioctls get a socket we own and an
    // ifreq-sized buffer.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(err("unshare(CLONE_NEWNET)"));
        }
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let mut ifr = [0u8; 40];
        ifr[..2].copy_from_slice(b"lo");
        if s < 0 || libc::ioctl(s, libc::SIOCGIFFLAGS, ifr.as_mut_ptr()) < 0 {
            return Err(err("SIOCGIFFLAGS lo"));
        }
        let f = i16::from_ne_bytes([ifr[16], ifr[17]]) | libc::IFF_UP as i16;
        ifr[16..18].copy_from_slice(&f.to_ne_bytes());
        let r = libc::ioctl(s, libc::SIOCSIFFLAGS, ifr.as_mut_ptr());
        libc::close(s);
        if r < 0 {
            return Err(err("SIOCSIFFLAGS lo"));
        }
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(c) => {
                c.set_nonblocking(true)
                    .map_err(|e| format!("nonblocking: {e}"))?;
                return Ok(c);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("connect {addr}: {e}")),
        }
    }
}

fn main() {
    let mut ctx = Ctx::from_args("wl-tcp STATEDIR MODE HOST PORT");
    let (mode, host, port) = match ctx.args.as_slice() {
        [m, h, p] => (m.clone(), h.clone(), p.clone()),
        _ => ctx.setup_failed("root", "usage: MODE HOST PORT"),
    };
    let addr = match (host.parse::<IpAddr>(), port.parse::<u16>()) {
        (Ok(h), Ok(p)) => SocketAddr::new(h, p),
        _ => ctx.setup_failed("root", "bad address"),
    };
    let fail = |ctx: &Ctx, e: String| -> ! { ctx.setup_failed("root", &e) };
    let accept = |ctx: &Ctx, l: &TcpListener| -> TcpStream {
        let (c, _) = l
            .accept()
            .unwrap_or_else(|e| fail(ctx, format!("accept: {e}")));
        c.set_nonblocking(true)
            .unwrap_or_else(|e| fail(ctx, format!("nonblocking: {e}")));
        c
    };
    // `pair-netns`: the same in a network namespace of the tree's own
    // (loopback only), which is then dumped and made anew on restore.
    let mode = if mode == "pair-netns" {
        if let Err(e) = own_netns() {
            fail(&ctx, e);
        }
        "pair".to_string()
    } else {
        mode
    };
    match mode.as_str() {
        "server" | "peer-server" | "pair" => {
            let l = TcpListener::bind(addr).unwrap_or_else(|e| fail(&ctx, format!("bind: {e}")));
            if mode == "pair" {
                // Both ends in the tree: a child connects and is the peer.
                match fork() {
                    Ok(0) => {
                        drop(l);
                        let c = connect(addr).unwrap_or_else(|e| ctx.setup_failed("peer", &e));
                        peer_side(&mut ctx, c, "peer");
                    }
                    Ok(child) => {
                        let c = accept(&ctx, &l);
                        let v = dumped_side(&mut ctx, c, Some(l), false, |ctx| {
                            if let Err(e) = ctx.wait_ready_of(&["peer"], Duration::from_secs(10)) {
                                ctx.setup_failed("root", &e);
                            }
                        });
                        let mut v = v;
                        v.result("peer", wait_child(child, Duration::from_secs(60)));
                        ctx.finish("root", v);
                    }
                    Err(e) => fail(&ctx, format!("fork: {e}")),
                }
            }
            let c = accept(&ctx, &l);
            if mode == "server" {
                let v = dumped_side(&mut ctx, c, Some(l), false, |_| {});
                ctx.finish("root", v);
            }
            peer_side(&mut ctx, c, "root");
        }
        "client" | "client-shut" | "peer-client" => {
            let c = connect(addr).unwrap_or_else(|e| fail(&ctx, e));
            if mode != "peer-client" {
                let v = dumped_side(&mut ctx, c, None, mode == "client-shut", |_| {});
                ctx.finish("root", v);
            }
            peer_side(&mut ctx, c, "root");
        }
        _ => fail(&ctx, format!("unknown mode {mode}")),
    }
}
