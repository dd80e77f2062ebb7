//! wl-eventfd STATEDIR: eventfd counters, semaphore mode, sharing.
//!
//! - fd 10: counter 0x1_2345_6789 (above 32 bits), O_NONBLOCK: one read gives
//!   the whole count, the next EAGAIN;
//! - fd 11: EFD_SEMAPHORE with count 3, O_NONBLOCK: three reads of 1, then
//!   EAGAIN; after writing 2, two reads of 1 then EAGAIN; fdinfo says
//!   `eventfd-semaphore: 1`;
//! - fd 12: count 7, blocking, shared with the `child` role (forked after):
//!   at check the child adds 1, the root must read 8 in total (one eventfd);
//! - fd 13: count 0, O_NONBLOCK|FD_CLOEXEC: read gives EAGAIN.
//!
//! Before reading, the root checks the counts in fdinfo.

use std::time::{Duration, Instant};

use stasis_integration::fdutil::*;
use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

const BIG: u64 = 0x1_2345_6789;

fn eventfd_at(init: u32, flags: i32, target: i32) -> R<()> {
    // SAFETY: integer arguments only.
    let fd = unsafe { libc::eventfd(init, flags) };
    if fd < 0 {
        return Err(format!("eventfd: {}", errno()));
    }
    move_fd(fd, target, flags & libc::EFD_CLOEXEC != 0)
}

fn setup() -> R<()> {
    eventfd_at(0, libc::EFD_NONBLOCK, 10)?;
    write_all(10, &BIG.to_ne_bytes())?;
    eventfd_at(3, libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK, 11)?;
    eventfd_at(7, 0, 12)?;
    eventfd_at(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC, 13)?;
    Ok(())
}

fn read_count(fd: i32) -> Result<u64, i32> {
    let mut b = [0u8; 8];
    match read_once(fd, &mut b)? {
        8 => Ok(u64::from_ne_bytes(b)),
        _ => Err(libc::EIO),
    }
}

fn count_in_fdinfo(fd: i32) -> Option<u64> {
    u64::from_str_radix(&fdinfo_field(fd, "eventfd-count")?, 16).ok()
}

fn check_root() -> Verdict {
    let mut v = Verdict::new();
    v.eq("fd 10 fdinfo count", count_in_fdinfo(10), Some(BIG));
    v.eq("fd 11 fdinfo count", count_in_fdinfo(11), Some(3));
    v.eq(
        "fd 11 eventfd-semaphore",
        fdinfo_field(11, "eventfd-semaphore"),
        Some("1".to_string()),
    );
    v.eq(
        "fd 10 eventfd-semaphore",
        fdinfo_field(10, "eventfd-semaphore"),
        Some("0".to_string()),
    );
    for (fd, want) in [
        (10, libc::O_RDWR | libc::O_NONBLOCK),
        (11, libc::O_RDWR | libc::O_NONBLOCK),
        (12, libc::O_RDWR),
        (13, libc::O_RDWR | libc::O_NONBLOCK),
    ] {
        match status_flags(fd) {
            Ok(f) => v.eq(&format!("fd {fd} flags"), f, want),
            Err(e) => v.fail(e),
        }
    }
    v.eq("fd 13 FD_CLOEXEC", getfd(13).ok(), Some(libc::FD_CLOEXEC));
    v.eq("fd 12 FD_CLOEXEC", getfd(12).ok(), Some(0));
    // Counter.
    v.eq("fd 10 read", read_count(10), Ok(BIG));
    v.eq("fd 10 second read", read_count(10), Err(libc::EAGAIN));
    // Semaphore.
    for i in 0..3 {
        v.eq(&format!("fd 11 read {i}"), read_count(11), Ok(1));
    }
    v.eq("fd 11 read when empty", read_count(11), Err(libc::EAGAIN));
    v.result("fd 11 write", write_all(11, &2u64.to_ne_bytes()));
    v.eq("fd 11 read after write", read_count(11), Ok(1));
    v.eq("fd 11 second read after write", read_count(11), Ok(1));
    v.eq(
        "fd 11 third read after write",
        read_count(11),
        Err(libc::EAGAIN),
    );
    // Empty.
    v.eq("fd 13 read", read_count(13), Err(libc::EAGAIN));
    // Shared with the child: 7 + 1.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut total = 0u64;
    while total < 8 && Instant::now() < deadline {
        match poll_one(12, libc::POLLIN, 100) {
            Ok(true) => match read_count(12) {
                Ok(n) => total += n,
                Err(e) => {
                    v.fail(format!("fd 12 read: errno {e}"));
                    break;
                }
            },
            Ok(false) => {}
            Err(e) => {
                v.fail(e);
                break;
            }
        }
    }
    v.eq("fd 12 total (7 + 1 from the child)", total, 8);
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-eventfd STATEDIR");
    if let Err(e) = setup() {
        ctx.setup_failed("root", &e);
    }
    let child = match fork() {
        Ok(0) => {
            for fd in [10, 11, 13] {
                close(fd);
            }
            ctx.write_ready("child");
            ctx.wait_for_check(|| {});
            let mut v = Verdict::new();
            match status_flags(12) {
                Ok(f) => v.eq("fd 12 flags", f, libc::O_RDWR),
                Err(e) => v.fail(e),
            }
            v.result("fd 12 add 1", write_all(12, &1u64.to_ne_bytes()));
            ctx.finish("child", v);
        }
        Ok(pid) => pid,
        Err(e) => ctx.setup_failed("root", &format!("fork: {e}")),
    };
    if let Err(e) = ctx.wait_ready_of(&["child"], Duration::from_secs(10)) {
        ctx.setup_failed("root", &e);
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = check_root();
    v.result("child", wait_child(child, Duration::from_secs(20)));
    ctx.finish("root", v);
}
