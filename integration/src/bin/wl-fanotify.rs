//! wl-fanotify STATEDIR [MOUNTDIR]: a fanotify group with inode marks, an
//! ignore mark and (with MOUNTDIR, a mount of its own) a mount mark.
//!
//! Set up before `ready`: fd 20 is fanotify_init(FAN_CLASS_NOTIF |
//! FAN_NONBLOCK, O_RDONLY) with marks
//! - `STATEDIR/ffile`: FAN_MODIFY;
//! - `STATEDIR/fdir`: FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD;
//! - `STATEDIR/fdir/quiet`: ignored mask FAN_CLOSE_WRITE (surviving
//!   modification);
//! - MOUNTDIR (FAN_MARK_MOUNT): FAN_CLOSE_WRITE.
//!
//! Verification: the group's fdinfo (init flags, event flags, every mark
//! with its inode, masks and handle, or mount id) is as before and nothing is
//! queued; then writing `fdir/quiet` gives no event, appending to `ffile`
//! gives FAN_MODIFY on it, writing `fdir/new-*` gives FAN_CLOSE_WRITE on it,
//! and writing `MOUNTDIR/x-*` gives FAN_CLOSE_WRITE on it (each event's fd
//! must name the file). Created files are removed afterwards. Role: `root`.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stasis_integration::workload::{Ctx, Verdict};

const FAN: i32 = 20;

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn mark(flags: u32, mask: u64, p: &Path) -> Result<(), String> {
    let c = CString::new(p.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: valid fd and NUL-terminated path.
    let r = unsafe {
        libc::fanotify_mark(
            FAN,
            libc::FAN_MARK_ADD | flags,
            mask,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r != 0 {
        return Err(format!("fanotify_mark {}: {}", p.display(), errno()));
    }
    Ok(())
}

fn setup(ctx: &Ctx, mnt: Option<&Path>) -> Result<(), String> {
    fs::create_dir_all(ctx.path("fdir")).map_err(|e| format!("mkdir fdir: {e}"))?;
    fs::write(ctx.path("ffile"), b"f\n").map_err(|e| format!("write ffile: {e}"))?;
    fs::write(ctx.path("fdir/quiet"), b"q\n").map_err(|e| format!("write quiet: {e}"))?;
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe {
        libc::fanotify_init(
            libc::FAN_CLASS_NOTIF | libc::FAN_NONBLOCK,
            libc::O_RDONLY as u32,
        )
    };
    if fd < 0 {
        return Err(format!("fanotify_init: {}", errno()));
    }
    // SAFETY: dup onto a free number we own, then close the original.
    let r = unsafe { libc::dup2(fd, FAN) };
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    if r != FAN {
        return Err(format!("dup2: {}", errno()));
    }
    mark(0, libc::FAN_MODIFY, &ctx.path("ffile"))?;
    mark(
        0,
        libc::FAN_CLOSE_WRITE | libc::FAN_EVENT_ON_CHILD,
        &ctx.path("fdir"),
    )?;
    mark(
        libc::FAN_MARK_IGNORED_MASK | libc::FAN_MARK_IGNORED_SURV_MODIFY,
        libc::FAN_CLOSE_WRITE,
        &ctx.path("fdir/quiet"),
    )?;
    if let Some(m) = mnt {
        mark(libc::FAN_MARK_MOUNT, libc::FAN_CLOSE_WRITE, m)?;
    }
    Ok(())
}

fn fdinfo_lines() -> Vec<String> {
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{FAN}")).unwrap_or_default();
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("fanotify "))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Events (mask, path of the event fd) read within `timeout`, until `want`
/// came (or the time is up).
fn events(want: usize, timeout: Duration) -> Result<Vec<(u64, PathBuf)>, String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::read(FAN, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = errno();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(format!("read fanotify: {e}"));
            }
        }
        let mut off = 0usize;
        while n > 0 && off + 24 <= n as usize {
            // struct fanotify_event_metadata: u32 len, u8 vers, u8 reserved,
            // u16 metadata_len, u64 mask, i32 fd, i32 pid.
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let mask = u64::from_ne_bytes(buf[off + 8..off + 16].try_into().unwrap());
            let fd = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
            let path = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            if fd >= 0 {
                // SAFETY: the event fd is ours to close.
                unsafe { libc::close(fd) };
            }
            out.push((mask, path));
            off += len.max(24);
        }
        if out.len() >= want || Instant::now() > deadline {
            return Ok(out);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn verify(ctx: &Ctx, mnt: Option<&Path>, before: &[String], flags: i32) -> Verdict {
    let mut v = Verdict::new();
    v.eq("fanotify fdinfo", fdinfo_lines(), before.to_vec());
    // SAFETY: F_GETFL on a descriptor number.
    v.eq(
        "status flags",
        unsafe { libc::fcntl(FAN, libc::F_GETFL) },
        flags,
    );
    match events(1, Duration::ZERO) {
        Ok(e) => v.eq("events queued at check", e, vec![]),
        Err(e) => v.fail(e),
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let new = ctx.path(&format!("fdir/new-{nanos}"));
    let mut want = vec![
        (libc::FAN_MODIFY, ctx.path("ffile")),
        (libc::FAN_CLOSE_WRITE, new.clone()),
    ];
    let mut created = vec![new.clone()];
    let mut r = fs::write(ctx.path("fdir/quiet"), b"still quiet\n");
    r = r.and_then(|_| {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(ctx.path("ffile"))?;
        f.write_all(b"+")
    });
    r = r.and_then(|_| fs::write(&new, b"n"));
    if let Some(m) = mnt {
        let x = m.join(format!("x-{nanos}"));
        want.push((libc::FAN_CLOSE_WRITE, x.clone()));
        created.push(x.clone());
        r = r.and_then(|_| fs::write(&x, b"x"));
    }
    if let Err(e) = r {
        v.fail(format!("writing the watched files: {e}"));
    }
    match events(want.len(), Duration::from_secs(2)) {
        Ok(mut got) => {
            got.sort();
            want.sort();
            v.eq("events", got, want);
        }
        Err(e) => v.fail(e),
    }
    for c in created {
        let _ = fs::remove_file(c);
    }
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-fanotify STATEDIR [MOUNTDIR]");
    let mnt = ctx.args.first().map(PathBuf::from);
    if let Err(e) = setup(&ctx, mnt.as_deref()) {
        ctx.setup_failed("root", &e);
    }
    let before = fdinfo_lines();
    let want = 4 + usize::from(mnt.is_some());
    if before.len() != want {
        ctx.setup_failed("root", &format!("unexpected fdinfo {before:?}"));
    }
    // SAFETY: F_GETFL on a descriptor number.
    let flags = unsafe { libc::fcntl(FAN, libc::F_GETFL) };
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let v = verify(&ctx, mnt.as_deref(), &before, flags);
    ctx.finish("root", v);
}
