//! wl-fdtree STATEDIR [N [M]]: N processes (default 100) holding M
//! descriptors each (default 50, at least 12), for the "many processes ×
//! many fds" benchmark.
//!
//! The root forks N-1 children (a flat tree). Descriptors, from fd 10:
//! - 10/11: pipe S (read/write end) made by the root before forking, held
//!   by every process, 1000 bytes queued: each process checks that they are
//!   still queued (FIONREAD), the root reads them after its children exit;
//! - 12/13: a private pipe with 100+p bytes queued (p: process index, root
//!   0), read back at check;
//! - 14: an eventfd with counter 1000+p, read at check;
//! - 15/16: a stream socketpair, 50+p bytes sent from 15, read from 16;
//! - 17: /dev/null (O_RDWR);
//! - 18/19: `STATEDIR/data` opened by the root before forking (shared
//!   open file descriptions, offsets 111 and 222);
//! - 20..10+M: `STATEDIR/data` opened by each process at its own offset
//!   (every fifth one a dup of the previous: one description, two fds);
//!   every third one (shifted by p) close-on-exec, dups too.
//!
//! Each regular-file fd must still be the data file at its offset with its
//! content. Children report through their exit status (details on stderr);
//! only the root writes `ready` (once every child is set up) and
//! `result.root`. A child whose parent is no longer the root (it was killed)
//! exits with status 4 instead of waiting forever.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use stasis_integration::fdutil::*;
use stasis_integration::workload::{fork, sleep_ns, wait_child, Ctx, Verdict};

const SHARED_LEN: usize = 1000;
const DATA_LEN: usize = 64 << 10;
const FIRST_OWN: i32 = 20;
const SHARED_OFFS: [(i32, i64); 2] = [(18, 111), (19, 222)];

fn open_data(path: &CString, flags: i32) -> R<i32> {
    // SAFETY: `path` is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open data: {}", errno()));
    }
    Ok(fd)
}

fn seek(fd: i32, off: i64) -> R<()> {
    // SAFETY: lseek on a descriptor we own.
    if unsafe { libc::lseek(fd, off, libc::SEEK_SET) } != off {
        return Err(format!("lseek fd {fd}: {}", errno()));
    }
    Ok(())
}

fn own_off(p: usize, fd: i32) -> i64 {
    ((p * 131 + fd as usize * 17) % (DATA_LEN - 64)) as i64
}

/// Whether own fd `fd` of process `p` is close-on-exec.
fn own_cloexec(p: usize, fd: i32) -> bool {
    (p + fd as usize).is_multiple_of(3)
}

/// Whether `fd` (from FIRST_OWN) is a dup of `fd - 1`.
fn is_dup(fd: i32) -> bool {
    (fd - FIRST_OWN) % 5 == 4
}

fn setup_private(data: &CString, p: usize, m: i32) -> R<()> {
    pipe_at(12, 13, 0)?;
    write_all(13, &pattern(100 + p as u64, 100 + p))?;
    // SAFETY: eventfd takes plain integers.
    let efd = unsafe { libc::eventfd(1000 + p as u32, libc::EFD_CLOEXEC) };
    if efd < 0 {
        return Err(format!("eventfd: {}", errno()));
    }
    move_fd(efd, 14, false)?;
    let mut sp = [-1i32; 2];
    // SAFETY: `sp` has room for two descriptors.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sp.as_mut_ptr()) } != 0 {
        return Err(format!("socketpair: {}", errno()));
    }
    move_fd(sp[0], 100, false)?;
    move_fd(sp[1], 101, false)?;
    move_fd(100, 15, false)?;
    move_fd(101, 16, false)?;
    write_all(15, &pattern(200 + p as u64, 50 + p))?;
    let null = CString::new("/dev/null").unwrap();
    // SAFETY: valid path.
    let nfd = unsafe { libc::open(null.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if nfd < 0 {
        return Err(format!("open /dev/null: {}", errno()));
    }
    move_fd(nfd, 17, false)?;
    for fd in FIRST_OWN..10 + m {
        let cloexec = if own_cloexec(p, fd) {
            libc::O_CLOEXEC
        } else {
            0
        };
        if is_dup(fd) {
            // SAFETY: dup3 between descriptors we own.
            if unsafe { libc::dup3(fd - 1, fd, cloexec) } != fd {
                return Err(format!("dup3 {}: {}", fd - 1, errno()));
            }
            continue;
        }
        let flags = if fd % 2 == 0 {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        let f = open_data(data, flags)?;
        move_fd(f, fd, cloexec != 0)?;
        seek(fd, own_off(p, fd))?;
    }
    Ok(())
}

fn check_data_fd(v: &mut Verdict, fd: i32, off: i64, ino: u64, data: &[u8]) {
    match fstat(fd) {
        Ok(st) => v.eq(&format!("fd {fd} inode"), st.st_ino, ino),
        Err(e) => return v.fail(e),
    }
    v.eq(&format!("fd {fd} offset"), position(fd), off);
    match pread(fd, 32, off) {
        Ok(b) => v.result(
            &format!("fd {fd}"),
            same_bytes("data", &b, &data[off as usize..off as usize + 32]),
        ),
        Err(e) => v.fail(e),
    }
}

fn verify(p: usize, m: i32, ino: u64, data: &[u8]) -> Verdict {
    let mut v = Verdict::new();
    v.eq("pipe S queued", fionread(10), Ok(SHARED_LEN as i32));
    match fstat(11) {
        Ok(st) => v.check(st.st_mode & libc::S_IFMT == libc::S_IFIFO, || {
            "fd 11 not a pipe".into()
        }),
        Err(e) => v.fail(e),
    }
    let plen = 100 + p;
    v.eq("private pipe queued", fionread(12), Ok(plen as i32));
    match read_exact_timeout(12, plen, Duration::from_secs(5)) {
        Ok(b) => v.result(
            "private pipe",
            same_bytes("data", &b, &pattern(100 + p as u64, plen)),
        ),
        Err(e) => v.fail(e),
    }
    let mut cnt = [0u8; 8];
    match read_once(14, &mut cnt) {
        Ok(8) => v.eq("eventfd count", u64::from_ne_bytes(cnt), 1000 + p as u64),
        Ok(n) => v.fail(format!("eventfd read {n} bytes")),
        Err(e) => v.fail(format!("eventfd read: errno {e}")),
    }
    let slen = 50 + p;
    match read_exact_timeout(16, slen, Duration::from_secs(5)) {
        Ok(b) => v.result(
            "socketpair",
            same_bytes("data", &b, &pattern(200 + p as u64, slen)),
        ),
        Err(e) => v.fail(e),
    }
    match fstat(17) {
        Ok(st) => v.check(
            st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == libc::makedev(1, 3),
            || "fd 17 not /dev/null".into(),
        ),
        Err(e) => v.fail(e),
    }
    for (fd, off) in SHARED_OFFS {
        check_data_fd(&mut v, fd, off, ino, data);
    }
    for fd in FIRST_OWN..10 + m {
        let off = own_off(p, if is_dup(fd) { fd - 1 } else { fd });
        check_data_fd(&mut v, fd, off, ino, data);
        let want = if is_dup(fd) {
            getfl(fd - 1).unwrap_or(-1) & libc::O_ACCMODE
        } else if fd % 2 == 0 {
            libc::O_RDONLY
        } else {
            libc::O_RDWR
        };
        v.eq(
            &format!("fd {fd} access mode"),
            getfl(fd).map(|f| f & libc::O_ACCMODE),
            Ok(want),
        );
        let cloexec = if own_cloexec(p, fd) {
            libc::FD_CLOEXEC
        } else {
            0
        };
        v.eq(&format!("fd {fd} fd flags"), getfd(fd), Ok(cloexec));
    }
    v
}

/// Waits for `check`. Children (`parent`: the root's pid) give up when the
/// root is gone (a failed test killed it), so they never linger.
fn wait_check(ctx: &Ctx, parent: Option<i32>) {
    while !ctx.check_requested() {
        // SAFETY: getppid takes no arguments.
        if parent.is_some_and(|p| unsafe { libc::getppid() } != p) {
            std::process::exit(4);
        }
        sleep_ns(20_000_000);
    }
}

fn main() {
    let ctx = Ctx::from_args("wl-fdtree STATEDIR [N [M]]");
    let n: usize = ctx.args.first().and_then(|s| s.parse().ok()).unwrap_or(100);
    let m: i32 = ctx.args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50);
    if n < 1 || !(12..=1000).contains(&m) {
        ctx.setup_failed("root", "need N >= 1 and 12 <= M <= 1000");
    }
    let data = pattern(7, DATA_LEN);
    let dpath = ctx.path("data");
    if let Err(e) = std::fs::write(&dpath, &data) {
        ctx.setup_failed("root", &format!("write data: {e}"));
    }
    let cpath = CString::new(dpath.as_os_str().as_bytes()).unwrap();
    let ino = match fstat_path(&cpath) {
        Ok(i) => i,
        Err(e) => ctx.setup_failed("root", &e),
    };
    let shared = || -> R<()> {
        pipe_at(10, 11, 0)?;
        write_all(11, &pattern(1, SHARED_LEN))?;
        for (fd, off) in SHARED_OFFS {
            let f = open_data(&cpath, libc::O_RDONLY)?;
            move_fd(f, fd, false)?;
            seek(fd, off)?;
        }
        Ok(())
    };
    if let Err(e) = shared() {
        ctx.setup_failed("root", &e);
    }
    // Children say "set up" with one byte each on this pipe (close-on-exec,
    // closed by everyone before the checkpoint).
    let mut sync = [-1i32; 2];
    // SAFETY: `sync` has room for two descriptors.
    if unsafe { libc::pipe2(sync.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        ctx.setup_failed("root", &format!("pipe2: {}", errno()));
    }
    let root = std::process::id() as i32;
    let mut kids = Vec::with_capacity(n - 1);
    for p in 1..n {
        let pid = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
        if pid == 0 {
            close(sync[0]);
            if let Err(e) = setup_private(&cpath, p, m) {
                eprintln!("wl-fdtree[child {p}]: setup: {e}");
                std::process::exit(1);
            }
            let _ = write_all(sync[1], b"x");
            close(sync[1]);
            wait_check(&ctx, Some(root));
            let v = verify(p, m, ino, &data);
            if !v.is_ok() {
                eprintln!("wl-fdtree[child {p}]: {}", v.line());
                std::process::exit(1);
            }
            std::process::exit(0);
        }
        kids.push((p, pid));
    }
    close(sync[1]);
    let mut got = 0;
    let mut b = [0u8; 256];
    while got < n - 1 {
        match read_once(sync[0], &mut b) {
            Ok(0) => ctx.setup_failed("root", "a child died during set-up"),
            Ok(k) => got += k,
            Err(libc::EINTR) => {}
            Err(e) => ctx.setup_failed("root", &format!("read sync: errno {e}")),
        }
    }
    close(sync[0]);
    if let Err(e) = setup_private(&cpath, 0, m) {
        ctx.setup_failed("root", &format!("setup: {e}"));
    }
    ctx.write_ready("root");
    wait_check(&ctx, None);
    let mut v = verify(0, m, ino, &data);
    for (p, pid) in kids {
        v.result(
            &format!("child {p}"),
            wait_child(pid, Duration::from_secs(60)),
        );
    }
    // Nobody else holds pipe S now: its data must be intact.
    match read_exact_timeout(10, SHARED_LEN, Duration::from_secs(5)) {
        Ok(b) => v.result("pipe S", same_bytes("data", &b, &pattern(1, SHARED_LEN))),
        Err(e) => v.fail(e),
    }
    ctx.finish("root", v)
}

fn fstat_path(path: &CString) -> R<u64> {
    let fd = open_data(path, libc::O_RDONLY)?;
    let st = fstat(fd);
    close(fd);
    Ok(st?.st_ino)
}
