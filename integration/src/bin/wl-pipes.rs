//! wl-pipes STATEDIR: pipes and a FIFO with unread data, across processes.
//!
//! Roles `root` and `child` (forked after the shared objects exist):
//! - A (fd 10 write end in root, fd 11 read end in child): capacity grown to
//!   256 KiB, 200000 bytes queued; at check the root writes a trailer and
//!   closes its end, the child must read the 200000 bytes, the trailer, then
//!   end of file (so the pipe connects the two processes, and nobody else
//!   holds its write end);
//! - B (fd 12 write end in both, fd 13 read end in root): at check the child
//!   writes a line, the root must read it (one write end shared by both);
//! - FIFO `STATEDIR/fifo` (fd 15 O_WRONLY in root, fd 14 O_RDONLY|O_NONBLOCK
//!   in child): 10000 bytes queued; same trailer/EOF protocol as A; fd 14
//!   must still be that FIFO (same inode as the path);
//! - root only: C (fds 20/21) both ends in one process, capacity shrunk to
//!   8 KiB, 5000 bytes queued; D (fd 22) read end only, 3000 bytes then EOF;
//!   E (fd 23) write end only, O_NONBLOCK, 100 bytes queued: writing fails
//!   with EPIPE (SIGPIPE ignored); F (fd 24 read end O_NONBLOCK, fd 25 write
//!   end blocking) empty: read gives EAGAIN, then a round trip works.
//!
//! Every end also keeps its access mode and O_NONBLOCK (F_GETFL).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use stasis_integration::fdutil::*;
use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

const A_LEN: usize = 200_000;
const A_CAP: i32 = 256 << 10;
const FIFO_LEN: usize = 10_000;
const C_LEN: usize = 5000;
const C_CAP: i32 = 8192;
const D_LEN: usize = 3000;
const E_LEN: usize = 100;
const TRAILER: &[u8] = b"parent-trailer\n";
const FIFO_TRAILER: &[u8] = b"fifo-trailer\n";
const CHILD_LINE: &[u8] = b"child-was-here\n";
const WAIT: Duration = Duration::from_secs(10);

fn open_at(path: &std::path::Path, flags: i32, target: i32) -> R<()> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid path.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {}: {}", path.display(), errno()));
    }
    move_fd(fd, target, false)
}

fn setup_shared(ctx: &Ctx) -> R<()> {
    // A: root writes, child reads.
    pipe_at(11, 10, 0)?;
    set_pipe_size(10, A_CAP)?;
    setfl(10, libc::O_NONBLOCK)?;
    write_all(10, &pattern(1, A_LEN))?;
    setfl(10, 0)?;
    // B: both write, root reads.
    pipe_at(13, 12, 0)?;
    // FIFO: reader first (nonblocking open), then the writer.
    let fifo = ctx.path("fifo");
    let _ = std::fs::remove_file(&fifo);
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(format!("mkfifo: {}", errno()));
    }
    open_at(&fifo, libc::O_RDONLY | libc::O_NONBLOCK, 14)?;
    open_at(&fifo, libc::O_WRONLY, 15)?;
    setfl(15, libc::O_NONBLOCK)?;
    write_all(15, &pattern(2, FIFO_LEN))?;
    setfl(15, 0)?;
    Ok(())
}

fn setup_root() -> R<()> {
    // C: both ends here, small capacity.
    pipe_at(20, 21, 0)?;
    set_pipe_size(21, C_CAP)?;
    write_all(21, &pattern(3, C_LEN))?;
    // D: read end only.
    pipe_at(22, 30, 0)?;
    write_all(30, &pattern(4, D_LEN))?;
    close(30);
    // E: write end only, nonblocking.
    pipe_at(31, 23, 0)?;
    write_all(23, &pattern(5, E_LEN))?;
    close(31);
    setfl(23, libc::O_NONBLOCK)?;
    // F: empty, read end nonblocking.
    pipe_at(24, 25, 0)?;
    setfl(24, libc::O_NONBLOCK)?;
    // SAFETY: ignoring SIGPIPE changes only this process's disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

fn flags_are(v: &mut Verdict, fd: i32, want: i32) {
    match status_flags(fd) {
        Ok(f) => v.eq(&format!("fd {fd} status flags"), f, want),
        Err(e) => v.fail(e),
    }
}

/// Reads `want`, then expects end of file.
fn read_then_eof(v: &mut Verdict, what: &str, fd: i32, want: &[u8]) {
    match read_exact_timeout(fd, want.len(), WAIT) {
        Ok(got) => v.result(what, same_bytes("data", &got, want)),
        Err(e) => v.fail(format!("{what}: {e}")),
    }
    let mut b = [0u8; 16];
    let eof = poll_one(fd, libc::POLLIN, WAIT.as_millis() as i32)
        .and_then(|_| read_once(fd, &mut b).map_err(|e| format!("errno {e}")));
    v.check(eof == Ok(0), || {
        format!("{what}: expected end of file, got {eof:?}")
    });
}

fn check_child(ctx: &Ctx) -> Verdict {
    let mut v = Verdict::new();
    flags_are(&mut v, 11, libc::O_RDONLY);
    flags_are(&mut v, 12, libc::O_WRONLY);
    flags_are(&mut v, 14, libc::O_RDONLY | libc::O_NONBLOCK);
    match pipe_size(11) {
        Ok(n) => v.eq("pipe A capacity", n, A_CAP),
        Err(e) => v.fail(e),
    }
    // B: say hello to the root through the shared write end.
    v.result("pipe B write", write_all(12, CHILD_LINE));
    let mut want = pattern(1, A_LEN);
    want.extend_from_slice(TRAILER);
    read_then_eof(&mut v, "pipe A", 11, &want);
    let mut want = pattern(2, FIFO_LEN);
    want.extend_from_slice(FIFO_TRAILER);
    read_then_eof(&mut v, "fifo", 14, &want);
    match (fstat(14), std::fs::metadata(ctx.path("fifo"))) {
        (Ok(st), Ok(m)) => {
            use std::os::unix::fs::MetadataExt;
            v.eq("fifo inode", st.st_ino, m.ino());
            v.eq("fifo type", st.st_mode & libc::S_IFMT, libc::S_IFIFO);
        }
        (a, b) => v.fail(format!("fifo stat: {:?} / {:?}", a.err(), b.err())),
    }
    v
}

fn check_root() -> Verdict {
    let mut v = Verdict::new();
    flags_are(&mut v, 10, libc::O_WRONLY);
    flags_are(&mut v, 13, libc::O_RDONLY);
    flags_are(&mut v, 15, libc::O_WRONLY);
    flags_are(&mut v, 20, libc::O_RDONLY);
    flags_are(&mut v, 21, libc::O_WRONLY);
    flags_are(&mut v, 22, libc::O_RDONLY);
    flags_are(&mut v, 23, libc::O_WRONLY | libc::O_NONBLOCK);
    flags_are(&mut v, 24, libc::O_RDONLY | libc::O_NONBLOCK);
    flags_are(&mut v, 25, libc::O_WRONLY);
    // A and the FIFO: trailer, then our end goes away.
    v.result("pipe A trailer", write_all(10, TRAILER));
    close(10);
    v.result("fifo trailer", write_all(15, FIFO_TRAILER));
    close(15);
    // B: the child's line arrives through the shared pipe.
    match read_exact_timeout(13, CHILD_LINE.len(), WAIT) {
        Ok(got) => v.result("pipe B", same_bytes("child line", &got, CHILD_LINE)),
        Err(e) => v.fail(format!("pipe B: {e}")),
    }
    // C: self pipe.
    match pipe_size(20) {
        Ok(n) => v.eq("pipe C capacity", n, C_CAP),
        Err(e) => v.fail(e),
    }
    match fionread(20) {
        Ok(n) => v.eq("pipe C queued bytes", n as usize, C_LEN),
        Err(e) => v.fail(e),
    }
    match read_exact_timeout(20, C_LEN, WAIT) {
        Ok(got) => v.result("pipe C", same_bytes("data", &got, &pattern(3, C_LEN))),
        Err(e) => v.fail(format!("pipe C: {e}")),
    }
    v.result("pipe C round trip write", write_all(21, b"ping"));
    match read_exact_timeout(20, 4, WAIT) {
        Ok(got) => v.eq("pipe C round trip", got.as_slice(), b"ping".as_slice()),
        Err(e) => v.fail(format!("pipe C round trip: {e}")),
    }
    // D: read end only: data, then end of file.
    read_then_eof(&mut v, "pipe D", 22, &pattern(4, D_LEN));
    // E: write end only: no reader.
    // SAFETY: writing one byte from a static buffer.
    let r = unsafe { libc::write(23, b"x".as_ptr().cast(), 1) };
    let e = errno_num();
    v.check(r == -1 && e == libc::EPIPE, || {
        format!("pipe E: write without a reader gave {r} (errno {e}), want EPIPE")
    });
    // F: empty nonblocking read end.
    let mut b = [0u8; 8];
    let r = read_once(24, &mut b);
    v.check(r == Err(libc::EAGAIN), || {
        format!("pipe F: empty nonblocking read gave {r:?}, want EAGAIN")
    });
    v.result("pipe F write", write_all(25, b"pong"));
    match read_exact_timeout(24, 4, WAIT) {
        Ok(got) => v.eq("pipe F round trip", got.as_slice(), b"pong".as_slice()),
        Err(e) => v.fail(format!("pipe F: {e}")),
    }
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-pipes STATEDIR");
    if let Err(e) = setup_shared(&ctx) {
        ctx.setup_failed("root", &e);
    }
    let child = match fork() {
        Ok(0) => {
            close(10);
            close(13);
            close(15);
            ctx.write_ready("child");
            ctx.wait_for_check(|| {});
            let v = check_child(&ctx);
            ctx.finish("child", v);
        }
        Ok(pid) => pid,
        Err(e) => ctx.setup_failed("root", &format!("fork: {e}")),
    };
    close(11);
    close(14);
    if let Err(e) = setup_root() {
        ctx.setup_failed("root", &e);
    }
    if let Err(e) = ctx.wait_ready_of(&["child"], Duration::from_secs(10)) {
        ctx.setup_failed("root", &e);
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = check_root();
    v.result("child", wait_child(child, Duration::from_secs(20)));
    ctx.finish("root", v);
}
