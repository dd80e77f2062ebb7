//! Small fd helpers shared by the workloads of kernel objects without a path
//! (wl-pipes, wl-eventfd, wl-signalfd, wl-timerfd, wl-memfd). Errors are
//! strings naming the call, ready for a [`Verdict`](crate::workload::Verdict).

use std::io;
use std::time::{Duration, Instant};

use crate::workload::splitmix64;

pub type R<T> = Result<T, String>;

/// The last OS error.
pub fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// The last OS error number.
pub fn errno_num() -> i32 {
    errno().raw_os_error().unwrap_or(0)
}

/// `len` bytes of a position-dependent pattern.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|i| splitmix64(seed.wrapping_mul(0x1000_0000) ^ i as u64).to_le_bytes())
        .take(len)
        .collect()
}

/// Moves `fd` to exactly `target` (closing `fd`), keeping O_CLOEXEC off
/// unless `cloexec`.
pub fn move_fd(fd: i32, target: i32, cloexec: bool) -> R<()> {
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

/// close(2).
pub fn close(fd: i32) {
    // SAFETY: closing a descriptor number we own.
    unsafe { libc::close(fd) };
}

/// pipe2(2) with the ends moved to `r` and `w`.
pub fn pipe_at(r: i32, w: i32, flags: i32) -> R<()> {
    let mut fds = [-1i32; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), flags) } != 0 {
        return Err(format!("pipe2: {}", errno()));
    }
    // Move to high temporaries first so the targets cannot collide.
    // SAFETY: F_DUPFD_CLOEXEC only creates descriptors.
    let (a, b) = unsafe {
        (
            libc::fcntl(fds[0], libc::F_DUPFD_CLOEXEC, 500),
            libc::fcntl(fds[1], libc::F_DUPFD_CLOEXEC, 500),
        )
    };
    close(fds[0]);
    close(fds[1]);
    move_fd(a, r, false)?;
    move_fd(b, w, false)
}

/// fcntl(F_GETFL).
pub fn getfl(fd: i32) -> R<i32> {
    // SAFETY: integer-only fcntl.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if r < 0 {
        return Err(format!("F_GETFL fd {fd}: {}", errno()));
    }
    Ok(r)
}

/// fcntl(F_SETFL).
pub fn setfl(fd: i32, flags: i32) -> R<()> {
    // SAFETY: integer-only fcntl.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(format!("F_SETFL fd {fd}: {}", errno()));
    }
    Ok(())
}

/// fcntl(F_GETFD).
pub fn getfd(fd: i32) -> R<i32> {
    // SAFETY: integer-only fcntl.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if r < 0 {
        return Err(format!("F_GETFD fd {fd}: {}", errno()));
    }
    Ok(r)
}

/// The status flags that matter for a comparison (no O_LARGEFILE).
pub fn status_flags(fd: i32) -> R<i32> {
    Ok(getfl(fd)? & !0o100000)
}

/// fcntl(F_GETPIPE_SZ).
pub fn pipe_size(fd: i32) -> R<i32> {
    // SAFETY: integer-only fcntl.
    let r = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if r < 0 {
        return Err(format!("F_GETPIPE_SZ fd {fd}: {}", errno()));
    }
    Ok(r)
}

/// fcntl(F_SETPIPE_SZ).
pub fn set_pipe_size(fd: i32, n: i32) -> R<()> {
    // SAFETY: integer-only fcntl.
    if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, n) } < 0 {
        return Err(format!("F_SETPIPE_SZ fd {fd}: {}", errno()));
    }
    Ok(())
}

/// ioctl(FIONREAD).
pub fn fionread(fd: i32) -> R<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } < 0 {
        return Err(format!("FIONREAD fd {fd}: {}", errno()));
    }
    Ok(n)
}

/// write(2) of all of `data` (the fd may be nonblocking only if it fits).
pub fn write_all(fd: i32, data: &[u8]) -> R<()> {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: the source lies inside `data`.
        let n = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        if n < 0 {
            if errno_num() == libc::EINTR {
                continue;
            }
            return Err(format!("write fd {fd}: {}", errno()));
        }
        off += n as usize;
    }
    Ok(())
}

/// One read(2): Ok(bytes) or Err(errno).
pub fn read_once(fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
    loop {
        // SAFETY: the destination is `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = errno_num();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// poll(2) one fd for `events`; true if ready within `ms`.
pub fn poll_one(fd: i32, events: i16, ms: i32) -> R<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            if errno_num() == libc::EINTR {
                continue;
            }
            return Err(format!("poll fd {fd}: {}", errno()));
        }
        return Ok(r > 0);
    }
}

/// Reads exactly `n` bytes, waiting with poll for at most `timeout` overall
/// (works for blocking and nonblocking fds).
pub fn read_exact_timeout(fd: i32, n: usize, timeout: Duration) -> R<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if !poll_one(fd, libc::POLLIN, left.as_millis() as i32)? {
            return Err(format!(
                "fd {fd}: only {got} of {n} bytes within {timeout:?}"
            ));
        }
        match read_once(fd, &mut buf[got..]) {
            Ok(0) => return Err(format!("fd {fd}: end of file after {got} of {n} bytes")),
            Ok(k) => got += k,
            Err(libc::EAGAIN) => continue,
            Err(e) => return Err(format!("read fd {fd}: {}", io::Error::from_raw_os_error(e))),
        }
    }
    Ok(buf)
}

/// `/proc/self/fdinfo/<fd>`.
pub fn fdinfo(fd: i32) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default()
}

/// The value of `key:` in `/proc/self/fdinfo/<fd>` (trimmed).
pub fn fdinfo_field(fd: i32, key: &str) -> Option<String> {
    fdinfo(fd).lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// The `/proc/self/fd/<fd>` link.
pub fn fd_link(fd: i32) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// fstat(2).
pub fn fstat(fd: i32) -> R<libc::stat> {
    // SAFETY: an all-zero stat is a valid out-value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(format!("fstat fd {fd}: {}", errno()));
    }
    Ok(st)
}

/// pread(2) of up to `len` bytes at `off`.
pub fn pread(fd: i32, len: usize, off: i64) -> R<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // SAFETY: the destination lies inside `buf`.
        let n = unsafe {
            libc::pread(
                fd,
                buf[done..].as_mut_ptr().cast(),
                len - done,
                off + done as i64,
            )
        };
        if n < 0 {
            return Err(format!("pread fd {fd}: {}", errno()));
        }
        if n == 0 {
            buf.truncate(done);
            break;
        }
        done += n as usize;
    }
    Ok(buf)
}

/// pwrite(2) of all of `data` at `off`; Err(errno) on failure.
pub fn pwrite(fd: i32, data: &[u8], off: i64) -> Result<(), i32> {
    // SAFETY: the source is `data`.
    let n = unsafe { libc::pwrite(fd, data.as_ptr().cast(), data.len(), off) };
    if n < 0 {
        return Err(errno_num());
    }
    if n as usize != data.len() {
        return Err(libc::EIO);
    }
    Ok(())
}

/// lseek(fd, 0, SEEK_CUR).
pub fn position(fd: i32) -> i64 {
    // SAFETY: lseek on a descriptor number.
    unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) }
}

/// The first index where `got` and `want` differ, for messages.
pub fn first_diff(got: &[u8], want: &[u8]) -> Option<usize> {
    if got.len() != want.len() {
        return Some(got.len().min(want.len()));
    }
    got.iter().zip(want).position(|(a, b)| a != b)
}

/// Compares bytes; `Err` says where they differ.
pub fn same_bytes(what: &str, got: &[u8], want: &[u8]) -> R<()> {
    match first_diff(got, want) {
        None => Ok(()),
        Some(i) => Err(format!(
            "{what}: differs at byte {i} (got {} bytes, want {})",
            got.len(),
            want.len()
        )),
    }
}
