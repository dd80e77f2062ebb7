//! wl-locks STATEDIR: flock, POSIX and OFD locks stay held.
//!
//! Set up before `ready`, on 200-byte files under STATEDIR, at fixed
//! descriptor numbers:
//! - 20 `flock.dat`: flock(LOCK_EX);
//! - 21 `shared.dat`: flock(LOCK_SH);
//! - 22 `posix.dat`: POSIX write lock on bytes 10-29 and read lock on bytes
//!   100-EOF;
//! - 23 `ofd.dat`: OFD write lock on bytes 0-99;
//! - then a child (role `child`) is forked: it shares the open files of 20,
//!   21 and 23, so it shares their flock and OFD locks (not the POSIX ones).
//!
//! Verification, root: the `lock:` lines of every fd's fdinfo are as before
//! (POSIX ones owned by the root's pid); a helper process (forked now, so
//! outside the checkpointed tree) opens the files itself and must fail to
//! take any conflicting lock (flock, F_SETLK, F_OFD_SETLK; F_GETLK names the
//! root as POSIX owner) while compatible ones succeed. After the child has
//! verified itself and exited, the root releases everything and a second
//! helper must now get every lock. Child: its fdinfo shows the shared flock
//! and OFD locks on 20, 21 and 23.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

const FLOCK: i32 = 20;
const SHARED: i32 = 21;
const POSIX: i32 = 22;
const OFD: i32 = 23;
const FILES: [(i32, &str); 4] = [
    (FLOCK, "flock.dat"),
    (SHARED, "shared.dat"),
    (POSIX, "posix.dat"),
    (OFD, "ofd.dat"),
];

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn open_rw(p: &Path) -> Result<i32, String> {
    let c = CString::new(p.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: valid NUL-terminated path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {}: {}", p.display(), errno()));
    }
    Ok(fd)
}

fn flock(fd: i32, op: i32) -> Result<(), i32> {
    // SAFETY: plain integer arguments.
    if unsafe { libc::flock(fd, op) } != 0 {
        return Err(errno().raw_os_error().unwrap_or(0));
    }
    Ok(())
}

fn fl(ty: i32, start: i64, len: i64) -> libc::flock {
    libc::flock {
        l_type: ty as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start,
        l_len: len,
        l_pid: 0,
    }
}

/// fcntl lock command; the struct is updated for GET commands.
fn lock(fd: i32, cmd: i32, l: &mut libc::flock) -> Result<(), i32> {
    // SAFETY: `l` is a valid struct flock.
    if unsafe { libc::fcntl(fd, cmd, l as *mut libc::flock) } != 0 {
        return Err(errno().raw_os_error().unwrap_or(0));
    }
    Ok(())
}

/// The `lock:` lines of an fd's fdinfo without their ordinal and pid
/// (class, mode, type, dev:ino, range) plus the pid column.
fn lock_lines(fd: i32) -> Vec<(String, i32)> {
    let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let mut out: Vec<(String, i32)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("lock:"))
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            // 1: CLASS MODE TYPE PID DEV:INO START END
            let pid = w.get(4).and_then(|p| p.parse().ok()).unwrap_or(0);
            let mut rest: Vec<&str> = w.iter().skip(1).copied().collect();
            if rest.len() > 3 {
                rest.remove(3);
            }
            (rest.join(" "), pid)
        })
        .collect();
    out.sort();
    out
}

fn setup(ctx: &Ctx) -> Result<(), String> {
    for (target, name) in FILES {
        let p = ctx.path(name);
        fs::write(&p, vec![b'.'; 200]).map_err(|e| format!("write {name}: {e}"))?;
        let fd = open_rw(&p)?;
        // SAFETY: dup3 onto a descriptor number we own, then close the original.
        let r = unsafe { libc::dup3(fd, target, 0) };
        // SAFETY: `fd` is ours.
        unsafe { libc::close(fd) };
        if r < 0 {
            return Err(format!("dup3 {name}: {}", errno()));
        }
    }
    let e = |what: &str, r: Result<(), i32>| {
        r.map_err(|n| format!("{what}: {}", std::io::Error::from_raw_os_error(n)))
    };
    e("flock LOCK_EX", flock(FLOCK, libc::LOCK_EX | libc::LOCK_NB))?;
    e(
        "flock LOCK_SH",
        flock(SHARED, libc::LOCK_SH | libc::LOCK_NB),
    )?;
    e(
        "F_SETLK write 10-29",
        lock(POSIX, libc::F_SETLK, &mut fl(libc::F_WRLCK, 10, 20)),
    )?;
    e(
        "F_SETLK read 100-EOF",
        lock(POSIX, libc::F_SETLK, &mut fl(libc::F_RDLCK, 100, 0)),
    )?;
    e(
        "F_OFD_SETLK write 0-99",
        lock(OFD, libc::F_OFD_SETLK, &mut fl(libc::F_WRLCK, 0, 100)),
    )?;
    Ok(())
}

/// What a process outside the tree gets: with the locks held (`held`) every
/// conflicting request must fail and compatible ones succeed; after release
/// everything must succeed. Exit 0 if so; failures go to `STATEDIR/helper.N`.
fn helper(ctx: &Ctx, held: bool, owner: i32) -> ! {
    let mut v = Verdict::new();
    let open = |name: &str| open_rw(&ctx.path(name));
    fn check(v: &mut Verdict, held: bool, what: &str, r: Result<(), i32>, conflicting: bool) {
        let blocked = matches!(r, Err(e) if e == libc::EAGAIN || e == libc::EACCES);
        let want_blocked = held && conflicting;
        if want_blocked != blocked || (!want_blocked && r.is_err()) {
            let want = if want_blocked { "blocked" } else { "ok" };
            v.fail(format!("{what}: got {r:?}, want {want}"));
        }
    }
    match (
        open("flock.dat"),
        open("shared.dat"),
        open("posix.dat"),
        open("ofd.dat"),
    ) {
        (Ok(f), Ok(s), Ok(p), Ok(o)) => {
            check(
                &mut v,
                held,
                "flock LOCK_EX flock.dat",
                flock(f, libc::LOCK_EX | libc::LOCK_NB),
                true,
            );
            check(
                &mut v,
                held,
                "flock LOCK_SH shared.dat",
                flock(s, libc::LOCK_SH | libc::LOCK_NB),
                false,
            );
            let _ = flock(s, libc::LOCK_UN);
            check(
                &mut v,
                held,
                "flock LOCK_EX shared.dat",
                flock(s, libc::LOCK_EX | libc::LOCK_NB),
                true,
            );
            let mut g = fl(libc::F_WRLCK, 15, 2);
            match lock(p, libc::F_GETLK, &mut g) {
                Ok(()) if held => v.eq(
                    "F_GETLK on posix.dat 15-16 (type, owner)",
                    (g.l_type as i32, g.l_pid),
                    (libc::F_WRLCK, owner),
                ),
                Ok(()) => v.eq("F_GETLK after release", g.l_type as i32, libc::F_UNLCK),
                Err(e) => v.fail(format!("F_GETLK: errno {e}")),
            }
            check(
                &mut v,
                held,
                "F_SETLK write 15-16",
                lock(p, libc::F_SETLK, &mut fl(libc::F_WRLCK, 15, 2)),
                true,
            );
            check(
                &mut v,
                held,
                "F_SETLK read 150-150",
                lock(p, libc::F_SETLK, &mut fl(libc::F_RDLCK, 150, 1)),
                false,
            );
            check(
                &mut v,
                held,
                "F_SETLK write 160-160",
                lock(p, libc::F_SETLK, &mut fl(libc::F_WRLCK, 160, 1)),
                true,
            );
            check(
                &mut v,
                held,
                "F_SETLK write 50-59",
                lock(p, libc::F_SETLK, &mut fl(libc::F_WRLCK, 50, 10)),
                false,
            );
            let mut g = fl(libc::F_RDLCK, 50, 1);
            match lock(o, libc::F_OFD_GETLK, &mut g) {
                Ok(()) if held => v.eq(
                    "F_OFD_GETLK on ofd.dat 50 (type, pid)",
                    (g.l_type as i32, g.l_pid),
                    (libc::F_WRLCK, -1),
                ),
                Ok(()) => v.eq("F_OFD_GETLK after release", g.l_type as i32, libc::F_UNLCK),
                Err(e) => v.fail(format!("F_OFD_GETLK: errno {e}")),
            }
            check(
                &mut v,
                held,
                "F_OFD_SETLK read 50",
                lock(o, libc::F_OFD_SETLK, &mut fl(libc::F_RDLCK, 50, 1)),
                true,
            );
            check(
                &mut v,
                held,
                "F_OFD_SETLK write 150",
                lock(o, libc::F_OFD_SETLK, &mut fl(libc::F_WRLCK, 150, 1)),
                false,
            );
        }
        (a, b, c, d) => v.fail(format!("open: {a:?} {b:?} {c:?} {d:?}")),
    }
    let name = format!("helper.{}", u8::from(held));
    let _ = fs::write(ctx.path(&name), v.line());
    std::process::exit(i32::from(!v.is_ok()));
}

fn run_helper(ctx: &Ctx, held: bool, owner: i32) -> Result<(), String> {
    match fork() {
        Ok(0) => helper(ctx, held, owner),
        Ok(pid) => wait_child(pid, Duration::from_secs(10)).map_err(|e| {
            let name = format!("helper.{}", u8::from(held));
            let why = fs::read_to_string(ctx.path(&name)).unwrap_or_default();
            format!(
                "helper ({}): {e}: {}",
                if held { "locks held" } else { "released" },
                why.trim()
            )
        }),
        Err(e) => Err(format!("fork helper: {e}")),
    }
}

fn release() -> Result<(), String> {
    let e = |what: &str, r: Result<(), i32>| {
        r.map_err(|n| format!("{what}: {}", std::io::Error::from_raw_os_error(n)))
    };
    e("flock LOCK_UN", flock(FLOCK, libc::LOCK_UN))?;
    e("flock LOCK_UN shared", flock(SHARED, libc::LOCK_UN))?;
    e(
        "F_UNLCK posix",
        lock(POSIX, libc::F_SETLK, &mut fl(libc::F_UNLCK, 0, 0)),
    )?;
    e(
        "F_UNLCK ofd",
        lock(OFD, libc::F_OFD_SETLK, &mut fl(libc::F_UNLCK, 0, 0)),
    )?;
    Ok(())
}

fn main() {
    let mut ctx = Ctx::from_args("wl-locks STATEDIR");
    if let Err(e) = setup(&ctx) {
        ctx.setup_failed("root", &e);
    }
    let root = std::process::id() as i32;
    let before: Vec<Vec<(String, i32)>> = FILES.iter().map(|&(fd, _)| lock_lines(fd)).collect();
    let child = match fork() {
        Ok(0) => {
            // SAFETY: the POSIX locks are the parent's; closing our copy of
            // posix.dat would not drop them, but the child has no use for it.
            unsafe { libc::close(POSIX) };
            let mine: Vec<Vec<(String, i32)>> = [FLOCK, SHARED, OFD]
                .iter()
                .map(|&fd| lock_lines(fd))
                .collect();
            ctx.write_ready("child");
            ctx.wait_for_check(|| {});
            let mut v = Verdict::new();
            for (i, &fd) in [FLOCK, SHARED, OFD].iter().enumerate() {
                let got = lock_lines(fd);
                v.check(!got.is_empty(), || format!("fd {fd}: no lock in fdinfo"));
                v.eq(&format!("locks seen on fd {fd}"), got, mine[i].clone());
            }
            ctx.finish("child", v);
        }
        Ok(pid) => pid,
        Err(e) => ctx.setup_failed("root", &format!("fork: {e}")),
    };
    if let Err(e) = ctx.wait_ready_of(&["child"], Duration::from_secs(10)) {
        ctx.setup_failed("root", &e);
    }
    let n: Vec<usize> = before.iter().map(|b| b.len()).collect();
    if n != [1, 1, 2, 1] || before[2].iter().any(|(_, p)| *p != root) {
        ctx.setup_failed("root", &format!("unexpected lock lines {before:?}"));
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});

    let mut v = Verdict::new();
    for (i, &(fd, name)) in FILES.iter().enumerate() {
        let mut got = lock_lines(fd);
        let mut want = before[i].clone();
        // flock and OFD lines carry the pid that took the lock (or -1): only
        // POSIX owners must match exactly.
        if fd != POSIX {
            got.iter_mut().for_each(|l| l.1 = 0);
            want.iter_mut().for_each(|l| l.1 = 0);
        }
        v.eq(&format!("locks of {name}"), got, want);
    }
    v.result("while held", run_helper(&ctx, true, root));
    v.result("child", wait_child(child, Duration::from_secs(20)));
    match release() {
        Ok(()) => v.result("after release", run_helper(&ctx, false, root)),
        Err(e) => v.fail(format!("release: {e}")),
    }
    ctx.finish("root", v);
}
