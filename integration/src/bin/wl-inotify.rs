//! wl-inotify STATEDIR: inotify watches on directories and a file, with a
//! gap in the watch descriptors, and events arriving after restore.
//!
//! Set up before `ready`, at fixed descriptor numbers:
//! - 20 inotify instance I1 (IN_NONBLOCK):
//!   wd 1 on `STATEDIR/wdir` (IN_CREATE|IN_DELETE|IN_MOVED_TO),
//!   wd 2 on `STATEDIR/wfile` (IN_MODIFY|IN_CLOSE_WRITE),
//!   wd 3 on `STATEDIR/gone` (removed again, so wd 3 is a hole),
//!   wd 4 on `STATEDIR/wdir2` (IN_CREATE|IN_ONESHOT);
//! - 21 inotify instance I2 (blocking, close-on-exec): wd 1 on `wfile`
//!   (IN_ATTRIB).
//!
//! Verification: the watches (fdinfo: wd, inode, mask) and the file status
//! and fd flags are as before, nothing is queued; then a file created in
//! `wdir` gives I1 (wd 1, IN_CREATE, name), appending to `wfile` gives (wd 2,
//! IN_MODIFY) and (wd 2, IN_CLOSE_WRITE), a file created in `wdir2` gives
//! (wd 4, IN_CREATE, name) then (wd 4, IN_IGNORED) (one-shot), and a chmod of
//! `wfile` gives I2 (wd 1, IN_ATTRIB). The created files are removed
//! afterwards. Role: `root`.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stasis_integration::workload::{Ctx, Verdict};

const I1: i32 = 20;
const I2: i32 = 21;

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

fn move_fd(fd: i32, target: i32, cloexec: bool) -> Result<(), String> {
    if fd < 0 {
        return Err(format!("create fd {target}: {}", errno()));
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

fn add(fd: i32, p: &Path, mask: u32) -> Result<i32, String> {
    let c = cstr(p);
    // SAFETY: valid NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(fd, c.as_ptr(), mask) };
    if wd < 0 {
        return Err(format!("inotify_add_watch {}: {}", p.display(), errno()));
    }
    Ok(wd)
}

/// (wd, inode, mask) of every watch in the fdinfo of `fd`, sorted.
fn watches(fd: i32) -> Result<Vec<(i32, u64, u32)>, String> {
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .map_err(|e| format!("fdinfo of {fd}: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("inotify ")) {
        let get = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .ok_or_else(|| format!("no {k} in {line:?}"))
        };
        let wd = i32::from_str_radix(get("wd:")?, 16).map_err(|_| "bad wd")?;
        let ino = u64::from_str_radix(get("ino:")?, 16).map_err(|_| "bad ino")?;
        let mask = u32::from_str_radix(get("mask:")?, 16).map_err(|_| "bad mask")?;
        out.push((wd, ino, mask));
    }
    out.sort();
    Ok(out)
}

/// Events (wd, mask, name) read from `fd` within `timeout` until `want`
/// events came.
fn events(fd: i32, want: usize, timeout: Duration) -> Result<Vec<(i32, u32, String)>, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        if r < 0 && errno().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if r <= 0 {
            break;
        }
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(format!("read inotify {fd}: {}", errno()));
        }
        let mut off = 0usize;
        while off + 16 <= n as usize {
            let wd = i32::from_ne_bytes(buf[off..off + 4].try_into().unwrap());
            let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let raw = &buf[off + 16..off + 16 + len];
            let name = String::from_utf8_lossy(raw.split(|&b| b == 0).next().unwrap_or(&[]));
            out.push((wd, mask, name.into_owned()));
            off += 16 + len;
        }
    }
    Ok(out)
}

fn status_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFL on a descriptor number.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

fn fd_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFD on a descriptor number.
    unsafe { libc::fcntl(fd, libc::F_GETFD) }
}

fn setup(ctx: &Ctx) -> Result<(), String> {
    for d in ["wdir", "wdir2", "gone"] {
        fs::create_dir_all(ctx.path(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    fs::write(ctx.path("wfile"), b"watched\n").map_err(|e| format!("write wfile: {e}"))?;
    // SAFETY: plain syscalls creating descriptors, checked by move_fd.
    unsafe {
        move_fd(libc::inotify_init1(libc::IN_NONBLOCK), I1, false)?;
        move_fd(libc::inotify_init1(0), I2, true)?;
    }
    let wds = [
        add(
            I1,
            &ctx.path("wdir"),
            libc::IN_CREATE | libc::IN_DELETE | libc::IN_MOVED_TO,
        )?,
        add(
            I1,
            &ctx.path("wfile"),
            libc::IN_MODIFY | libc::IN_CLOSE_WRITE,
        )?,
        add(I1, &ctx.path("gone"), libc::IN_CREATE)?,
    ];
    // SAFETY: removing a watch we added.
    if unsafe { libc::inotify_rm_watch(I1, wds[2]) } != 0 {
        return Err(format!("inotify_rm_watch: {}", errno()));
    }
    let w4 = add(I1, &ctx.path("wdir2"), libc::IN_CREATE | libc::IN_ONESHOT)?;
    let a = add(I2, &ctx.path("wfile"), libc::IN_ATTRIB)?;
    if wds != [1, 2, 3] || w4 != 4 || a != 1 {
        return Err(format!("unexpected wds {wds:?} {w4} {a}"));
    }
    // Drop the IN_IGNORED of the removed watch.
    let ev = events(I1, 1, Duration::from_secs(1))?;
    if ev != [(3, libc::IN_IGNORED, String::new())] {
        return Err(format!("unexpected events at set-up: {ev:?}"));
    }
    Ok(())
}

fn verify(ctx: &Ctx, before: &[Vec<(i32, u64, u32)>; 2], flags: [(i32, i32); 2]) -> Verdict {
    let mut v = Verdict::new();
    for (i, fd) in [I1, I2].into_iter().enumerate() {
        match watches(fd) {
            Ok(w) => v.eq(&format!("watches of inotify fd {fd}"), w, before[i].clone()),
            Err(e) => v.fail(e),
        }
        v.eq(
            &format!("status and fd flags of inotify fd {fd}"),
            (status_flags(fd), fd_flags(fd)),
            flags[i],
        );
    }
    match events(I1, 1, Duration::ZERO) {
        Ok(e) => v.eq("events queued on I1 at check", e, vec![]),
        Err(e) => v.fail(e),
    }
    match events(I2, 1, Duration::ZERO) {
        Ok(e) => v.eq("events queued on I2 at check", e, vec![]),
        Err(e) => v.fail(e),
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n1 = format!("a-{nanos}");
    let n2 = format!("b-{nanos}");
    let created = [ctx.path("wdir").join(&n1), ctx.path("wdir2").join(&n2)];
    let t = Duration::from_secs(2);
    let mut step = |what: &str, r: std::io::Result<()>, fd: i32, want: Vec<(i32, u32, String)>| {
        if let Err(e) = r {
            v.fail(format!("{what}: {e}"));
            return;
        }
        match events(fd, want.len(), t) {
            Ok(got) => v.eq(&format!("events after {what}"), got, want),
            Err(e) => v.fail(e),
        }
    };
    step(
        "creating a file in wdir",
        fs::write(&created[0], b"1"),
        I1,
        vec![(1, libc::IN_CREATE, n1.clone())],
    );
    let append = || -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(ctx.path("wfile"))?;
        f.write_all(b"+")
    };
    step(
        "appending to wfile",
        append(),
        I1,
        vec![
            (2, libc::IN_MODIFY, String::new()),
            (2, libc::IN_CLOSE_WRITE, String::new()),
        ],
    );
    step(
        "creating a file in wdir2",
        fs::write(&created[1], b"2"),
        I1,
        vec![
            (4, libc::IN_CREATE, n2.clone()),
            (4, libc::IN_IGNORED, String::new()),
        ],
    );
    step(
        "chmod of wfile",
        fs::set_permissions(ctx.path("wfile"), fs::Permissions::from_mode(0o644)),
        I2,
        vec![(1, libc::IN_ATTRIB, String::new())],
    );
    for c in &created {
        let _ = fs::remove_file(c);
    }
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-inotify STATEDIR");
    if let Err(e) = setup(&ctx) {
        ctx.setup_failed("root", &e);
    }
    let before = [
        watches(I1).unwrap_or_else(|e| ctx.setup_failed("root", &e)),
        watches(I2).unwrap_or_else(|e| ctx.setup_failed("root", &e)),
    ];
    if before[0].iter().map(|w| w.0).collect::<Vec<_>>() != [1, 2, 4] || before[1].len() != 1 {
        ctx.setup_failed("root", &format!("unexpected watches {before:?}"));
    }
    let flags = [
        (status_flags(I1), fd_flags(I1)),
        (status_flags(I2), fd_flags(I2)),
    ];
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let v = verify(&ctx, &before, flags);
    ctx.finish("root", v);
}
