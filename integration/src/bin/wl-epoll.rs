//! wl-epoll STATEDIR [pipes]: epoll instances, nested epoll, targets of
//! several kinds, events arriving after restore.
//!
//! Set up before `ready`, at fixed descriptor numbers:
//! - 20 an inotify instance (IN_NONBLOCK) watching `STATEDIR/watched` for
//!   IN_CREATE;
//! - 21 `/dev/random` (O_RDONLY; always readable once the kernel's RNG is up);
//! - 30 the inner epoll E2 (no flags): target 20 (EPOLLIN, data 0x1111);
//! - 31 the outer epoll E1 (EPOLL_CLOEXEC): target 30 (EPOLLIN, data
//!   0xe2e2, nested epoll) and 21 (EPOLLIN, data 0xd0d0);
//! - 32 a dup of 31 (one epoll, two fds);
//! - 33 an epoll with no target;
//! - with `pipes`: 22/23 a pipe (read/write end) and 24 an eventfd; E2 also
//!   watches 22 (EPOLLIN, data 0x3333) and 24 (EPOLLIN|EPOLLET, data
//!   0x2222); E1 also watches 23 (EPOLLOUT, data 0x4444);
//! - then a child (role `child`) is forked: it shares every one of these
//!   files, epolls included, with the root.
//!
//! Verification: the targets of every epoll (fdinfo `tfd:` lines: fd,
//! events, data) and the fd flags are as before; E1 reports exactly the
//! always-ready targets (/dev/random, the pipe's write end) and E2 nothing.
//! Then events must arrive through the restored objects: a file created in
//! `watched` makes E2 report 0x1111 and E1 report 0xe2e2, and the inotify
//! instance yields IN_CREATE with that name; with `pipes`, writing the
//! eventfd and the pipe makes E2 report 0x2222 and 0x3333 and the data reads
//! back. The created file is removed again. The child checks that it sees
//! the same targets through its own fds (one epoll, shared) and exits.
//! Roles: `root`, `child`.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

const INO: i32 = 20;
const RANDOM: i32 = 21;
const PIPE_R: i32 = 22;
const PIPE_W: i32 = 23;
const EFD: i32 = 24;
const E2: i32 = 30;
const E1: i32 = 31;
const E1_DUP: i32 = 32;
const EMPTY: i32 = 33;

const D_INO: u64 = 0x1111;
const D_EFD: u64 = 0x2222;
const D_PIPE_R: u64 = 0x3333;
const D_PIPE_W: u64 = 0x4444;
const D_E2: u64 = 0xe2e2;
const D_RANDOM: u64 = 0xd0d0;

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// Moves `fd` to `target` (close-on-exec as asked).
fn move_fd(fd: i32, target: i32, cloexec: bool) -> Result<(), String> {
    if fd < 0 {
        return Err(format!("create fd {target}: {}", errno()));
    }
    if fd == target {
        return Ok(());
    }
    let fl = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 onto a descriptor number this program owns, then close
    // the original.
    let r = unsafe { libc::dup3(fd, target, fl) };
    // SAFETY: `fd` is ours and no longer needed.
    unsafe { libc::close(fd) };
    if r < 0 {
        return Err(format!("dup3 to {target}: {}", errno()));
    }
    Ok(())
}

fn epoll_add(ep: i32, fd: i32, events: u32, data: u64) -> Result<(), String> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: valid fds and a valid event for EPOLL_CTL_ADD.
    if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
        return Err(format!("epoll_ctl({ep}, ADD, {fd}): {}", errno()));
    }
    Ok(())
}

/// (data, events) reported by `epoll_wait(ep, timeout_ms)`.
fn wait(ep: i32, timeout_ms: i32) -> Result<BTreeSet<(u64, u32)>, String> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
    loop {
        // SAFETY: `evs` has room for 16 events.
        let n = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 16, timeout_ms) };
        if n < 0 {
            if errno().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("epoll_wait({ep}): {}", errno()));
        }
        return Ok(evs[..n as usize]
            .iter()
            .map(|e| {
                let (d, ev) = (e.u64, e.events);
                (d, ev)
            })
            .collect());
    }
}

/// Waits up to 2 s for `ep` to report `data`.
fn wait_for(ep: i32, data: u64) -> Result<u32, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let got = wait(ep, 100)?;
        if let Some(&(_, ev)) = got.iter().find(|(d, _)| *d == data) {
            return Ok(ev);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "epoll {ep}: no event with data {data:#x} within 2 s (got {got:x?})"
            ));
        }
    }
}

/// The (tfd, events, data) of the `tfd:` lines of an epoll's fdinfo.
fn targets(ep: i32) -> Result<Vec<(i32, u32, u64)>, String> {
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{ep}"))
        .map_err(|e| format!("fdinfo of {ep}: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("tfd:")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let get = |k: &str| {
            w.iter()
                .position(|x| *x == k)
                .and_then(|i| w.get(i + 1))
                .copied()
                .ok_or_else(|| format!("fdinfo of {ep}: no {k} in {line:?}"))
        };
        let tfd = get("tfd:")?
            .parse()
            .map_err(|_| format!("bad tfd in {line:?}"))?;
        let ev = u32::from_str_radix(get("events:")?, 16).map_err(|_| "bad events")?;
        let data = u64::from_str_radix(get("data:")?, 16).map_err(|_| "bad data")?;
        out.push((tfd, ev, data));
    }
    out.sort();
    Ok(out)
}

fn fd_cloexec(fd: i32) -> bool {
    // SAFETY: F_GETFD on a descriptor number.
    unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
}

fn setup(ctx: &Ctx, pipes: bool) -> Result<(), String> {
    let watched = ctx.path("watched");
    fs::create_dir_all(&watched).map_err(|e| format!("mkdir watched: {e}"))?;
    // SAFETY: plain syscalls creating new descriptors, checked by move_fd.
    unsafe {
        let ino = libc::inotify_init1(libc::IN_NONBLOCK);
        move_fd(ino, INO, false)?;
        let w = cstr(&watched);
        if libc::inotify_add_watch(INO, w.as_ptr(), libc::IN_CREATE) < 0 {
            return Err(format!("inotify_add_watch: {}", errno()));
        }
        let r = cstr(Path::new("/dev/random"));
        move_fd(libc::open(r.as_ptr(), libc::O_RDONLY), RANDOM, false)?;
        if pipes {
            let mut p = [0i32; 2];
            if libc::pipe(p.as_mut_ptr()) != 0 {
                return Err(format!("pipe: {}", errno()));
            }
            move_fd(p[0], PIPE_R, false)?;
            move_fd(p[1], PIPE_W, false)?;
            move_fd(libc::eventfd(0, 0), EFD, false)?;
        }
        move_fd(libc::epoll_create1(0), E2, false)?;
        move_fd(libc::epoll_create1(libc::EPOLL_CLOEXEC), E1, true)?;
        move_fd(libc::epoll_create1(0), EMPTY, false)?;
    }
    epoll_add(E2, INO, libc::EPOLLIN as u32, D_INO)?;
    epoll_add(E1, E2, libc::EPOLLIN as u32, D_E2)?;
    epoll_add(E1, RANDOM, libc::EPOLLIN as u32, D_RANDOM)?;
    if pipes {
        epoll_add(E2, PIPE_R, libc::EPOLLIN as u32, D_PIPE_R)?;
        epoll_add(E2, EFD, (libc::EPOLLIN | libc::EPOLLET) as u32, D_EFD)?;
        epoll_add(E1, PIPE_W, libc::EPOLLOUT as u32, D_PIPE_W)?;
    }
    // SAFETY: dup onto a free descriptor number.
    if unsafe { libc::dup2(E1, E1_DUP) } != E1_DUP {
        return Err(format!("dup2 epoll: {}", errno()));
    }
    // The readiness of /dev/random is what verification relies on.
    if !wait(E1, 0)?.contains(&(D_RANDOM, libc::EPOLLIN as u32)) {
        return Err("/dev/random is not readable (RNG not ready?)".into());
    }
    Ok(())
}

fn read_inotify_names() -> Result<Vec<(u32, String)>, String> {
    let mut buf = [0u8; 4096];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(INO, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(format!("read inotify: {}", errno()));
    }
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 16 <= n as usize {
        let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
        let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
        let name = &buf[off + 16..off + 16 + len];
        let name = String::from_utf8_lossy(name.split(|&b| b == 0).next().unwrap_or(&[]));
        out.push((mask, name.into_owned()));
        off += 16 + len;
    }
    Ok(out)
}

fn verify(ctx: &Ctx, pipes: bool, before: &[Vec<(i32, u32, u64)>]) -> Verdict {
    let mut v = Verdict::new();
    for (i, &ep) in [E2, E1, E1_DUP, EMPTY].iter().enumerate() {
        match targets(ep) {
            Ok(t) => v.eq(&format!("targets of epoll fd {ep}"), t, before[i].clone()),
            Err(e) => v.fail(e),
        }
    }
    v.eq("FD_CLOEXEC of E1", fd_cloexec(E1), true);
    v.eq("FD_CLOEXEC of E2", fd_cloexec(E2), false);
    v.eq("FD_CLOEXEC of the dup of E1", fd_cloexec(E1_DUP), false);
    let mut ready = BTreeSet::from([(D_RANDOM, libc::EPOLLIN as u32)]);
    if pipes {
        ready.insert((D_PIPE_W, libc::EPOLLOUT as u32));
    }
    match wait(E1, 0) {
        Ok(got) => v.eq("ready targets of E1", got, ready.clone()),
        Err(e) => v.fail(e),
    }
    match wait(E1_DUP, 0) {
        Ok(got) => v.eq("ready targets of E1 through its dup", got, ready),
        Err(e) => v.fail(e),
    }
    match wait(E2, 0) {
        Ok(got) => v.eq("ready targets of E2", got, BTreeSet::new()),
        Err(e) => v.fail(e),
    }
    match wait(EMPTY, 0) {
        Ok(got) => v.eq("ready targets of the empty epoll", got, BTreeSet::new()),
        Err(e) => v.fail(e),
    }

    // Events through the restored inotify, nested epoll and epoll.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("ev-{nanos}");
    let file = ctx.path("watched").join(&name);
    if let Err(e) = fs::write(&file, b"x") {
        v.fail(format!("create {}: {e}", file.display()));
        return v;
    }
    match wait_for(E2, D_INO) {
        Ok(ev) => v.eq("E2 event for the inotify target", ev, libc::EPOLLIN as u32),
        Err(e) => v.fail(e),
    }
    match wait_for(E1, D_E2) {
        Ok(ev) => v.eq("E1 event for the nested E2", ev, libc::EPOLLIN as u32),
        Err(e) => v.fail(e),
    }
    match read_inotify_names() {
        Ok(got) => v.eq("inotify events", got, vec![(libc::IN_CREATE, name)]),
        Err(e) => v.fail(e),
    }
    let _ = fs::remove_file(&file);
    if pipes {
        let one = 5u64.to_ne_bytes();
        // SAFETY: writing 8 bytes from a valid buffer.
        if unsafe { libc::write(EFD, one.as_ptr().cast(), 8) } != 8 {
            v.fail(format!("write eventfd: {}", errno()));
        }
        match wait_for(E2, D_EFD) {
            Ok(ev) => v.eq("E2 event for the eventfd", ev, libc::EPOLLIN as u32),
            Err(e) => v.fail(e),
        }
        // SAFETY: writing 5 bytes from a valid buffer.
        if unsafe { libc::write(PIPE_W, b"hello".as_ptr().cast(), 5) } != 5 {
            v.fail(format!("write pipe: {}", errno()));
        }
        match wait_for(E2, D_PIPE_R) {
            Ok(ev) => v.eq("E2 event for the pipe", ev, libc::EPOLLIN as u32),
            Err(e) => v.fail(e),
        }
        let mut b = [0u8; 16];
        // SAFETY: reading into a valid buffer.
        let n = unsafe { libc::read(PIPE_R, b.as_mut_ptr().cast(), b.len()) };
        v.eq("pipe data", &b[..n.max(0) as usize], b"hello".as_slice());
        let mut c = [0u8; 8];
        // SAFETY: reading 8 bytes into a valid buffer.
        let n = unsafe { libc::read(EFD, c.as_mut_ptr().cast(), 8) };
        v.eq("eventfd read", (n, u64::from_ne_bytes(c)), (8, 5));
    }
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-epoll STATEDIR [pipes]");
    let pipes = ctx.args.first().is_some_and(|a| a == "pipes");
    if let Err(e) = setup(&ctx, pipes) {
        ctx.setup_failed("root", &e);
    }
    let mut before = Vec::new();
    for ep in [E2, E1, E1_DUP, EMPTY] {
        match targets(ep) {
            Ok(t) => before.push(t),
            Err(e) => ctx.setup_failed("root", &e),
        }
    }
    let want_e2 = if pipes { 3 } else { 1 };
    let want_e1 = if pipes { 3 } else { 2 };
    if before[0].len() != want_e2 || before[1].len() != want_e1 || !before[3].is_empty() {
        ctx.setup_failed("root", &format!("unexpected fdinfo targets {before:?}"));
    }
    let child = match fork() {
        Ok(0) => {
            ctx.write_ready("child");
            ctx.wait_for_check(|| {});
            let mut v = Verdict::new();
            for (i, &ep) in [E2, E1, E1_DUP, EMPTY].iter().enumerate() {
                match targets(ep) {
                    Ok(t) => v.eq(&format!("targets of epoll fd {ep}"), t, before[i].clone()),
                    Err(e) => v.fail(e),
                }
            }
            ctx.finish("child", v);
        }
        Ok(pid) => pid,
        Err(e) => ctx.setup_failed("root", &format!("fork: {e}")),
    };
    if let Err(e) = ctx.wait_ready_of(&["child"], std::time::Duration::from_secs(10)) {
        ctx.setup_failed("root", &e);
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = verify(&ctx, pipes, &before);
    v.result(
        "child",
        wait_child(child, std::time::Duration::from_secs(20)),
    );
    ctx.finish("root", v);
}
