//! wl-memfd STATEDIR: memfds held by fds and mapped, with seals.
//!
//! - fd 10 `memfd:stasis-m1` (sealing allowed): 3 pages + 100 bytes of
//!   pattern, seals SHRINK|GROW, position 777; also mapped MAP_PRIVATE with
//!   its first byte changed (copy on write: the file keeps the original);
//! - fd 11 `memfd:stasis-shared`, 64 KiB, mapped MAP_SHARED read-write in
//!   the root and (inherited) in the `child`; 60 KiB of pattern written half
//!   through the mapping, half with pwrite, the last 4 KiB a hole. At check
//!   the child writes a marker through its mapping; the root must see it in
//!   its mapping and through fd 11 (one inode for both processes, fd and
//!   mappings);
//! - `memfd:stasis-maponly` (no fd left), 16 KiB of pattern, mapped twice
//!   MAP_SHARED: a write through one mapping shows in the other;
//! - fd 12 `memfd:stasis-sealed`: 5000 bytes, seals WRITE|SEAL: pwrite and
//!   adding a seal fail with EPERM;
//! - fd 13 `memfd:stasis-fw`: 8 KiB mapped MAP_SHARED read-write, then
//!   sealed FUTURE_WRITE: the old mapping still writes (seen through the fd),
//!   pwrite fails with EPERM;
//! - fd 14: O_RDONLY reopen of `memfd:stasis-noseal` (sealing not allowed):
//!   seals read F_SEAL_SEAL, 4096 bytes of pattern.
//!
//! Names come from /proc/self/fd links and /proc/self/maps; sizes from fstat.

use std::ffi::CString;
use std::time::{Duration, Instant};

use stasis_integration::fdutil::*;
use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

const PAGE: usize = 4096;
const M1_LEN: usize = 3 * PAGE + 100;
const M2_LEN: usize = 64 << 10;
const M2_DATA: usize = 60 << 10;
const M3_LEN: usize = 16 << 10;
const M4_LEN: usize = 5000;
const M5_LEN: usize = 8192;
const M7_LEN: usize = 4096;
const MARK_OFF: usize = 3 * PAGE;
const MARK: u64 = 0xC0FF_EE00_1234_5678;

fn memfd_at(name: &str, flags: u32, target: i32) -> R<()> {
    let c = CString::new(name).unwrap();
    // SAFETY: `c` is a valid C string.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), flags) };
    if fd < 0 {
        return Err(format!("memfd_create {name}: {}", errno()));
    }
    move_fd(fd, target, false)
}

fn map(fd: i32, len: usize, prot: i32, flags: i32) -> R<*mut u8> {
    // SAFETY: a new mapping chosen by the kernel; nothing is replaced.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap fd {fd}: {}", errno()));
    }
    Ok(p as *mut u8)
}

fn add_seals(fd: i32, seals: i32) -> Result<(), i32> {
    // SAFETY: integer-only fcntl.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } != 0 {
        return Err(errno_num());
    }
    Ok(())
}

fn get_seals(fd: i32) -> R<i32> {
    // SAFETY: integer-only fcntl.
    let r = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if r < 0 {
        return Err(format!("F_GET_SEALS fd {fd}: {}", errno()));
    }
    Ok(r)
}

fn ftruncate(fd: i32, len: usize) -> R<()> {
    // SAFETY: integer arguments only.
    if unsafe { libc::ftruncate(fd, len as i64) } != 0 {
        return Err(format!("ftruncate fd {fd}: {}", errno()));
    }
    Ok(())
}

/// A view of `len` bytes at `p` (a live mapping of ours).
fn view<'a>(p: *mut u8, len: usize) -> &'a mut [u8] {
    // SAFETY: every pointer passed here is a live read-write (or private)
    // mapping of at least `len` bytes that stays mapped for the process's
    // life; no other Rust reference to it is alive at the same time.
    unsafe { std::slice::from_raw_parts_mut(p, len) }
}

struct State {
    m1_priv: *mut u8,
    m2: *mut u8,
    m3a: *mut u8,
    m3b: *mut u8,
    m5: *mut u8,
}

fn setup() -> R<State> {
    let seal = libc::MFD_ALLOW_SEALING;
    // M1.
    memfd_at("stasis-m1", seal, 10)?;
    write_all(10, &pattern(1, M1_LEN))?;
    add_seals(10, libc::F_SEAL_SHRINK | libc::F_SEAL_GROW)
        .map_err(|e| format!("seal m1: errno {e}"))?;
    // SAFETY: lseek on our descriptor.
    unsafe { libc::lseek(10, 777, libc::SEEK_SET) };
    let m1_priv = map(
        10,
        4 * PAGE,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
    )?;
    view(m1_priv, 1)[0] ^= 0xff;
    // M2, shared with the child.
    memfd_at("stasis-shared", 0, 11)?;
    ftruncate(11, M2_LEN)?;
    let m2 = map(
        11,
        M2_LEN,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_SHARED,
    )?;
    let data = pattern(2, M2_DATA);
    view(m2, M2_DATA / 2).copy_from_slice(&data[..M2_DATA / 2]);
    pwrite(11, &data[M2_DATA / 2..], (M2_DATA / 2) as i64)
        .map_err(|e| format!("pwrite m2: errno {e}"))?;
    // M3, mappings only.
    memfd_at("stasis-maponly", 0, 30)?;
    ftruncate(30, M3_LEN)?;
    pwrite(30, &pattern(3, M3_LEN), 0).map_err(|e| format!("pwrite m3: errno {e}"))?;
    let rw = libc::PROT_READ | libc::PROT_WRITE;
    let m3a = map(30, M3_LEN, rw, libc::MAP_SHARED)?;
    let m3b = map(30, M3_LEN, rw, libc::MAP_SHARED)?;
    close(30);
    // M4, write-sealed.
    memfd_at("stasis-sealed", seal, 12)?;
    write_all(12, &pattern(4, M4_LEN))?;
    add_seals(12, libc::F_SEAL_WRITE | libc::F_SEAL_SEAL)
        .map_err(|e| format!("seal m4: errno {e}"))?;
    // M5, future-write-sealed with a writable mapping from before.
    memfd_at("stasis-fw", seal, 13)?;
    write_all(13, &pattern(5, M5_LEN))?;
    let m5 = map(13, M5_LEN, rw, libc::MAP_SHARED)?;
    add_seals(13, libc::F_SEAL_FUTURE_WRITE).map_err(|e| format!("seal m5: errno {e}"))?;
    // M7, no sealing, held read-only.
    memfd_at("stasis-noseal", 0, 31)?;
    write_all(31, &pattern(7, M7_LEN))?;
    let c = CString::new("/proc/self/fd/31").unwrap();
    // SAFETY: `c` is a valid path.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(format!("reopen m7: {}", errno()));
    }
    move_fd(fd, 14, false)?;
    close(31);
    Ok(State {
        m1_priv,
        m2,
        m3a,
        m3b,
        m5,
    })
}

fn mapped_name_at(addr: *mut u8) -> Option<String> {
    let a = addr as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines().find_map(|l| {
        let range = l.split_whitespace().next()?;
        let (s, e) = range.split_once('-')?;
        let (s, e) = (
            u64::from_str_radix(s, 16).ok()?,
            u64::from_str_radix(e, 16).ok()?,
        );
        if s <= a && a < e {
            Some(l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
        } else {
            None
        }
    })
}

fn size_of(fd: i32) -> Option<i64> {
    fstat(fd).ok().map(|s| s.st_size)
}

fn check_root(st: &State) -> Verdict {
    let mut v = Verdict::new();
    // Names.
    for (fd, name) in [
        (10, "stasis-m1"),
        (11, "stasis-shared"),
        (12, "stasis-sealed"),
        (13, "stasis-fw"),
        (14, "stasis-noseal"),
    ] {
        v.eq(
            &format!("fd {fd} link"),
            fd_link(fd),
            format!("/memfd:{name} (deleted)"),
        );
    }
    for (p, name) in [
        (st.m1_priv, "stasis-m1"),
        (st.m2, "stasis-shared"),
        (st.m3a, "stasis-maponly"),
        (st.m3b, "stasis-maponly"),
        (st.m5, "stasis-fw"),
    ] {
        v.eq(
            &format!("mapping {p:?}"),
            mapped_name_at(p),
            Some(format!("/memfd:{name} (deleted)")),
        );
    }
    // M1: content, size, seals, position, private copy.
    v.eq("m1 size", size_of(10), Some(M1_LEN as i64));
    v.eq("m1 position", position(10), 777);
    v.eq(
        "m1 seals",
        get_seals(10).ok(),
        Some(libc::F_SEAL_SHRINK | libc::F_SEAL_GROW),
    );
    let want1 = pattern(1, M1_LEN);
    match pread(10, M1_LEN + 10, 0) {
        Ok(got) => v.result("m1 content", same_bytes("m1", &got, &want1)),
        Err(e) => v.fail(e),
    }
    let p = view(st.m1_priv, PAGE);
    v.eq("m1 private first byte", p[0], want1[0] ^ 0xff);
    v.result(
        "m1 private rest",
        same_bytes("m1 map", &p[1..], &want1[1..PAGE]),
    );
    v.eq("m1 flags", status_flags(10).ok(), Some(libc::O_RDWR));
    // M2: content through the mapping and the fd; the hole.
    v.eq("m2 size", size_of(11), Some(M2_LEN as i64));
    let mut want2 = pattern(2, M2_DATA);
    want2.resize(M2_LEN, 0);
    let mut got = view(st.m2, M2_LEN).to_vec();
    // The child may already have written its marker.
    got[MARK_OFF..MARK_OFF + 8].copy_from_slice(&want2[MARK_OFF..MARK_OFF + 8]);
    v.result("m2 mapping", same_bytes("m2 map", &got, &want2));
    match pread(11, M2_LEN, 0) {
        Ok(mut got) => {
            if got.len() == M2_LEN {
                got[MARK_OFF..MARK_OFF + 8].copy_from_slice(&want2[MARK_OFF..MARK_OFF + 8]);
            }
            v.result("m2 fd", same_bytes("m2 fd", &got, &want2))
        }
        Err(e) => v.fail(e),
    }
    // M3: two mappings of one memfd.
    let a = view(st.m3a, M3_LEN);
    v.result("m3 content", same_bytes("m3", a, &pattern(3, M3_LEN)));
    a[100] ^= 0x5a;
    let seen = view(st.m3b, M3_LEN)[100];
    v.eq("m3 write seen through the other mapping", seen, a[100]);
    // M4: write-sealed.
    v.eq(
        "m4 seals",
        get_seals(12).ok(),
        Some(libc::F_SEAL_WRITE | libc::F_SEAL_SEAL),
    );
    match pread(12, M4_LEN + 10, 0) {
        Ok(got) => v.result("m4 content", same_bytes("m4", &got, &pattern(4, M4_LEN))),
        Err(e) => v.fail(e),
    }
    v.eq("m4 pwrite", pwrite(12, b"x", 0), Err(libc::EPERM));
    v.eq(
        "m4 add seal",
        add_seals(12, libc::F_SEAL_GROW),
        Err(libc::EPERM),
    );
    // M5: future-write-sealed, old mapping still writable.
    v.eq(
        "m5 seals",
        get_seals(13).ok(),
        Some(libc::F_SEAL_FUTURE_WRITE),
    );
    let m5 = view(st.m5, M5_LEN);
    v.result("m5 content", same_bytes("m5", m5, &pattern(5, M5_LEN)));
    m5[5000] = m5[5000].wrapping_add(1);
    let want = m5[5000];
    v.eq(
        "m5 write through the old mapping",
        pread(13, 1, 5000).ok(),
        Some(vec![want]),
    );
    v.eq("m5 pwrite", pwrite(13, b"x", 0), Err(libc::EPERM));
    // M7: no sealing, read-only fd.
    v.eq("m7 seals", get_seals(14).ok(), Some(libc::F_SEAL_SEAL));
    v.eq("m7 flags", status_flags(14).ok(), Some(libc::O_RDONLY));
    match pread(14, M7_LEN, 0) {
        Ok(got) => v.result("m7 content", same_bytes("m7", &got, &pattern(7, M7_LEN))),
        Err(e) => v.fail(e),
    }
    // The child's marker, through our mapping and our fd.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mark_at = |p: *mut u8| {
        let b = &view(p, M2_LEN)[MARK_OFF..MARK_OFF + 8];
        // SAFETY: volatile read of 8 bytes inside the live mapping; another
        // process writes them.
        unsafe { std::ptr::read_volatile(b.as_ptr() as *const u64) }
    };
    while mark_at(st.m2) != MARK && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    v.eq("m2 marker from the child (mapping)", mark_at(st.m2), MARK);
    v.eq(
        "m2 marker from the child (fd)",
        pread(11, 8, MARK_OFF as i64).ok(),
        Some(MARK.to_ne_bytes().to_vec()),
    );
    v
}

fn main() {
    let mut ctx = Ctx::from_args("wl-memfd STATEDIR");
    let st = match setup() {
        Ok(s) => s,
        Err(e) => ctx.setup_failed("root", &e),
    };
    let child = match fork() {
        Ok(0) => {
            for fd in [10, 12, 13, 14] {
                close(fd);
            }
            ctx.write_ready("child");
            ctx.wait_for_check(|| {});
            let mut v = Verdict::new();
            let want = pattern(2, M2_DATA);
            let m = view(st.m2, M2_LEN);
            v.result(
                "m2 content in the child",
                same_bytes("m2", &m[..PAGE], &want[..PAGE]),
            );
            m[MARK_OFF..MARK_OFF + 8].copy_from_slice(&MARK.to_ne_bytes());
            v.eq(
                "m2 marker through the child's fd",
                pread(11, 8, MARK_OFF as i64).ok(),
                Some(MARK.to_ne_bytes().to_vec()),
            );
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
    let mut v = check_root(&st);
    v.result("child", wait_child(child, Duration::from_secs(20)));
    ctx.finish("root", v);
}
