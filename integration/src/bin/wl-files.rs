//! wl-files STATEDIR: open files, offsets, flags, cwd, umask.
//!
//! Under `STATEDIR/files/`, at fixed descriptor numbers:
//! - 10 `rw.dat` O_RDWR at offset 12345; 11 is a `dup` of it (shared offset);
//! - 12 `ro.dat` O_RDONLY at offset 777;
//! - 13 `wo.dat` O_WRONLY, written up to offset 4101;
//! - 14 `append.log` O_WRONLY|O_APPEND after three appended lines;
//! - 15 `ghost.dat` O_RDWR, 100 KiB of pattern, then unlinked, at offset 4242;
//! - 16 the directory `dir/` (O_RDONLY|O_DIRECTORY), holding `inner.txt`;
//! - 17 `cloexec.dat` O_RDONLY|O_CLOEXEC;
//! - 18 `/dev/null` O_RDWR; 19 `/dev/zero` O_RDONLY;
//! - 20 `sparse.dat` O_RDONLY at offset 5 GiB + 3 (beyond EOF);
//! - cwd `files/sub`, umask 027.
//!
//! Verification (nothing outside the process is changed: `pread`, `fstat`,
//! `lseek(fd, 0, SEEK_CUR)`, `fcntl`, `openat` for reading): each fd refers
//! to the same file (device, inode, type; the unlinked file may come back as
//! another unlinked inode with the same content), has its offset, its status flags
//! (F_GETFL) and fd flags (F_GETFD); file contents are intact; the unlinked
//! file has its content and no link; 10 and 11 share one offset (moved on one,
//! seen on the other, put back); the directory fd works for `openat`; cwd and
//! umask (from `/proc/self/status`) are right. Role: `root`.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use stasis_integration::fdutil::{errno, fstat, pread};
use stasis_integration::workload::{proc_status_field, splitmix64, Ctx, Verdict};

const RW_LEN: usize = 64 << 10;
const RO_LEN: usize = 16 << 10;
const GHOST_LEN: usize = 100 << 10;
const SPARSE_OFF: i64 = (5 << 30) + 3;
const INNER: &str = "inner file content\n";

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|i| splitmix64(seed ^ i as u64).to_le_bytes())
        .take(len)
        .collect()
}

struct Fd {
    fd: i32,
    name: &'static str,
    flags: i32,
    cloexec: bool,
    offset: i64,
    dev: u64,
    ino: u64,
    rdev: u64,
    mode_fmt: u32,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// Opens `path` with `flags` and moves the descriptor to `target`.
fn open_at_fd(path: &Path, flags: i32, target: i32) -> Result<(), String> {
    let c = cstr(path);
    // SAFETY: `c` is a valid path; 0o644 is used only with O_CREAT.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644) };
    if fd < 0 {
        return Err(format!("open {}: {}", path.display(), errno()));
    }
    move_fd(fd, target, flags & libc::O_CLOEXEC != 0)
}

fn move_fd(fd: i32, target: i32, cloexec: bool) -> Result<(), String> {
    if fd == target {
        return Ok(());
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: dup3 onto a descriptor number we own; then close the original.
    unsafe {
        if libc::dup3(fd, target, flags) < 0 {
            return Err(format!("dup3 {fd}->{target}: {}", errno()));
        }
        libc::close(fd);
    }
    Ok(())
}

fn seek(fd: i32, off: i64, whence: i32) -> i64 {
    // SAFETY: lseek on a descriptor number; no memory involved.
    unsafe { libc::lseek(fd, off, whence) }
}

fn write_all(fd: i32, data: &[u8]) -> Result<(), String> {
    // SAFETY: `data` is a valid buffer of its length.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    if n != data.len() as isize {
        return Err(format!("write fd {fd}: {}", errno()));
    }
    Ok(())
}

fn describe(fd: i32, name: &'static str) -> Result<Fd, String> {
    let st = fstat(fd)?;
    // SAFETY: fcntl queries on a descriptor number.
    let (fl, fdfl) = unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    };
    Ok(Fd {
        fd,
        name,
        flags: fl,
        cloexec: fdfl & libc::FD_CLOEXEC != 0,
        offset: seek(fd, 0, libc::SEEK_CUR),
        dev: st.st_dev,
        ino: st.st_ino,
        rdev: st.st_rdev,
        mode_fmt: st.st_mode & libc::S_IFMT,
    })
}

fn setup(dir: &Path) -> Result<(Vec<Fd>, String), String> {
    let base = dir.join("files");
    let e = |what: &str, err: std::io::Error| format!("{what}: {err}");
    fs::create_dir_all(base.join("sub")).map_err(|x| e("mkdir sub", x))?;
    fs::create_dir_all(base.join("dir")).map_err(|x| e("mkdir dir", x))?;
    fs::write(base.join("dir/inner.txt"), INNER).map_err(|x| e("write inner", x))?;
    fs::write(base.join("rw.dat"), pattern(1, RW_LEN)).map_err(|x| e("write rw", x))?;
    fs::write(base.join("ro.dat"), pattern(2, RO_LEN)).map_err(|x| e("write ro", x))?;
    fs::write(base.join("cloexec.dat"), b"cloexec\n").map_err(|x| e("write cloexec", x))?;
    fs::write(base.join("sparse.dat"), b"").map_err(|x| e("write sparse", x))?;
    let _ = fs::remove_file(base.join("append.log"));
    let _ = fs::remove_file(base.join("wo.dat"));

    open_at_fd(&base.join("rw.dat"), libc::O_RDWR, 10)?;
    seek(10, 12345, libc::SEEK_SET);
    // SAFETY: duplicating our own descriptor onto a free number.
    if unsafe { libc::dup2(10, 11) } != 11 {
        return Err(format!("dup2: {}", errno()));
    }
    open_at_fd(&base.join("ro.dat"), libc::O_RDONLY, 12)?;
    seek(12, 777, libc::SEEK_SET);
    open_at_fd(
        &base.join("wo.dat"),
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        13,
    )?;
    write_all(13, &pattern(3, 4101))?;
    open_at_fd(
        &base.join("append.log"),
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
        14,
    )?;
    for l in ["one\n", "two\n", "three\n"] {
        write_all(14, l.as_bytes())?;
    }
    open_at_fd(
        &base.join("ghost.dat"),
        libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
        15,
    )?;
    write_all(15, &pattern(4, GHOST_LEN))?;
    seek(15, 4242, libc::SEEK_SET);
    fs::remove_file(base.join("ghost.dat")).map_err(|x| e("unlink ghost", x))?;
    open_at_fd(&base.join("dir"), libc::O_RDONLY | libc::O_DIRECTORY, 16)?;
    open_at_fd(
        &base.join("cloexec.dat"),
        libc::O_RDONLY | libc::O_CLOEXEC,
        17,
    )?;
    open_at_fd(Path::new("/dev/null"), libc::O_RDWR, 18)?;
    open_at_fd(Path::new("/dev/zero"), libc::O_RDONLY, 19)?;
    open_at_fd(&base.join("sparse.dat"), libc::O_RDONLY, 20)?;
    if seek(20, SPARSE_OFF, libc::SEEK_SET) != SPARSE_OFF {
        return Err(format!("lseek beyond EOF: {}", errno()));
    }
    std::env::set_current_dir(base.join("sub")).map_err(|x| e("chdir", x))?;
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o027) };
    let cwd = std::env::current_dir()
        .map_err(|x| e("getcwd", x))?
        .to_string_lossy()
        .into_owned();

    let fds = vec![
        describe(10, "rw.dat")?,
        describe(11, "rw.dat (dup)")?,
        describe(12, "ro.dat")?,
        describe(13, "wo.dat")?,
        describe(14, "append.log")?,
        describe(15, "ghost.dat (unlinked)")?,
        describe(16, "dir/")?,
        describe(17, "cloexec.dat")?,
        describe(18, "/dev/null")?,
        describe(19, "/dev/zero")?,
        describe(20, "sparse.dat")?,
    ];
    Ok((fds, cwd))
}

fn verify(v: &mut Verdict, fds: &[Fd], cwd: &str) {
    // Static expectations, independent of what setup recorded.
    let want_off: [(i32, i64); 9] = [
        (10, 12345),
        (11, 12345),
        (12, 777),
        (13, 4101),
        (14, 14),
        (15, 4242),
        (17, 0),
        (18, 0),
        (20, SPARSE_OFF),
    ];
    let acc = |fl: i32| fl & libc::O_ACCMODE;
    for f in fds {
        match describe(f.fd, f.name) {
            Err(e) => v.fail(format!("fd {} ({}): {e}", f.fd, f.name)),
            Ok(now) => {
                let what = |x: &str| format!("fd {} ({}) {x}", f.fd, f.name);
                // An unlinked file comes back as a new (also unlinked) inode
                // holding the same data; every other fd keeps its inode.
                if f.fd != 15 {
                    v.eq(&what("device"), now.dev, f.dev);
                    v.eq(&what("inode"), now.ino, f.ino);
                }
                v.eq(&what("file type"), now.mode_fmt, f.mode_fmt);
                v.eq(&what("rdev"), now.rdev, f.rdev);
                v.eq(
                    &what("F_GETFL"),
                    format!("{:#o}", now.flags),
                    format!("{:#o}", f.flags),
                );
                v.eq(&what("FD_CLOEXEC"), now.cloexec, f.cloexec);
                if f.mode_fmt != libc::S_IFDIR {
                    v.eq(&what("offset"), now.offset, f.offset);
                }
            }
        }
    }
    for (fd, off) in want_off {
        v.eq(&format!("fd {fd} offset"), seek(fd, 0, libc::SEEK_CUR), off);
    }
    // SAFETY: fcntl queries.
    let fl = |fd| unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: fcntl queries.
    let fdfl = |fd| unsafe { libc::fcntl(fd, libc::F_GETFD) };
    v.eq("fd 10 access mode", acc(fl(10)), libc::O_RDWR);
    v.eq("fd 12 access mode", acc(fl(12)), libc::O_RDONLY);
    v.eq("fd 13 access mode", acc(fl(13)), libc::O_WRONLY);
    v.check(fl(14) & libc::O_APPEND != 0, || {
        "fd 14 lost O_APPEND".into()
    });
    v.check(fl(10) & libc::O_APPEND == 0, || "fd 10 has O_APPEND".into());
    v.eq(
        "fd 17 FD_CLOEXEC",
        fdfl(17) & libc::FD_CLOEXEC,
        libc::FD_CLOEXEC,
    );
    v.eq("fd 10 FD_CLOEXEC", fdfl(10) & libc::FD_CLOEXEC, 0);

    // Contents.
    let content = |v: &mut Verdict, fd: i32, len: usize, want: &[u8], name: &str| match pread(
        fd,
        len + 16,
        0,
    ) {
        Ok(b) if b == want => {}
        Ok(b) => v.fail(format!("{name}: content differs ({} bytes read)", b.len())),
        Err(e) => v.fail(format!("{name}: {e}")),
    };
    content(v, 10, RW_LEN, &pattern(1, RW_LEN), "rw.dat");
    content(v, 12, RO_LEN, &pattern(2, RO_LEN), "ro.dat");
    content(v, 15, GHOST_LEN, &pattern(4, GHOST_LEN), "ghost.dat");
    match fstat(15) {
        Ok(st) => {
            v.eq("ghost.dat st_nlink", st.st_nlink, 0);
            v.eq("ghost.dat size", st.st_size, GHOST_LEN as i64);
        }
        Err(e) => v.fail(e),
    }
    match fstat(13) {
        Ok(st) => v.eq("wo.dat size", st.st_size, 4101),
        Err(e) => v.fail(e),
    }
    match fstat(14) {
        Ok(st) => v.eq("append.log size", st.st_size, 14),
        Err(e) => v.fail(e),
    }
    match pread(19, 64, 0) {
        Ok(b) => v.check(b.len() == 64 && b.iter().all(|&x| x == 0), || {
            "/dev/zero does not read zeros".into()
        }),
        Err(e) => v.fail(e),
    }
    match fstat(18) {
        Ok(st) => v.eq("/dev/null rdev", st.st_rdev, libc::makedev(1, 3)),
        Err(e) => v.fail(e),
    }

    // 10 and 11 share one open file description: move one, see the other.
    seek(11, 999, libc::SEEK_SET);
    v.eq(
        "offset of fd 10 after lseek on fd 11",
        seek(10, 0, libc::SEEK_CUR),
        999,
    );
    seek(10, 12345, libc::SEEK_SET);
    // 12 does not share with 10.
    v.eq("fd 12 offset unchanged", seek(12, 0, libc::SEEK_CUR), 777);

    // The directory fd.
    let inner = CString::new("inner.txt").expect("no NUL");
    // SAFETY: openat relative to our directory fd, read-only.
    let ifd = unsafe { libc::openat(16, inner.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if ifd < 0 {
        v.fail(format!("openat(dirfd, inner.txt): {}", errno()));
    } else {
        match pread(ifd, 64, 0) {
            Ok(b) => v.eq(
                "inner.txt via dirfd",
                String::from_utf8_lossy(&b).into_owned(),
                INNER.to_string(),
            ),
            Err(e) => v.fail(e),
        }
        // SAFETY: closing the descriptor opened just above.
        unsafe { libc::close(ifd) };
    }

    // cwd and umask.
    match std::env::current_dir() {
        Ok(p) => v.eq("cwd", p.to_string_lossy().into_owned(), cwd.to_string()),
        Err(e) => v.fail(format!("getcwd: {e}")),
    }
    match (fs::metadata("."), fs::metadata(cwd)) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            v.eq("cwd inode", a.ino(), b.ino());
        }
        _ => v.fail("stat cwd"),
    }
    v.eq(
        "umask",
        proc_status_field("/proc/self/status", "Umask"),
        Some("0027".to_string()),
    );
}

fn main() {
    let mut ctx = Ctx::from_args("wl-files STATEDIR");
    let dir = ctx.dir.canonicalize().unwrap_or_else(|_| ctx.dir.clone());
    let (fds, cwd) = setup(&dir).unwrap_or_else(|e| ctx.setup_failed("root", &e));
    // Paths are absolute from here on: cwd moved.
    ctx = Ctx::new(dir, ctx.args.clone());
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    verify(&mut v, &fds, &cwd);
    ctx.finish("root", v);
}
