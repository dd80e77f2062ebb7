//! wl-ns STATEDIR [net] [mnt]: the init of fresh namespaces, started as
//! `unshare --pid --fork --ipc --uts [--net] [--time ...] wl-ns STATEDIR`.
//!
//! Must be pid 1 of its pid namespace. Sets a hostname and domainname,
//! IPC sysctls, creates SysV objects with content (a keyed and a private
//! shm segment, a semaphore set with values and a changed owner and mode, a
//! message queue with three messages), forks two children (pids 2 and 3
//! inside), and remembers CLOCK_MONOTONIC and CLOCK_BOOTTIME.
//! On `check`, each process verifies from inside: its pid, the UTS names,
//! every IPC object (same ids, keys, modes, owners, contents, values, every
//! message, read with MSG_COPY so a second check sees them again), the
//! sysctls, loopback up (with `net`), and that the clocks did not go back.
//! With `nested`, c2 unshares a pid namespace and forks `g`, pid 1 of that
//! nested namespace, which verifies its pids too.
//! With `shmat`, SysV segments stay attached across the dump: a keyed one
//! attached by the root before it forks (its last page made read-only,
//! so two VMAs), inherited by c1, re-attached elsewhere by c2; and one
//! removed (IPC_RMID) while attached, inherited by both. Each process
//! marks its slot; on `check` each one sees every slot through its own
//! address, marks again and waits for the others' marks (sharing still
//! works), and the root compares shm_nattch with what it was before.
//! With `user` (started inside a user namespace whose maps the test wrote,
//! and a mount namespace): the root mounts a tmpfs with files, one owned
//! by in-namespace ids; c1 switches to effective uid 5 / gid 6 (real, saved
//! and fs ids 0, so no effective capabilities); each process checks that its
//! ids and capability sets as /proc/self/status shows them inside, and the
//! maps and setgroups of the namespace, are what they were; the root also
//! holds an unlinked file and a memfd owned by in-namespace ids, and checks
//! their owners and contents.
//! Roles: `root`, `c1`, `c2` (and `g`).

use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};
use std::time::Duration;

const HOST: &str = "stasis-ns-test";
const DOMAIN: &str = "stasis.example";
const SHM_KEY: i32 = 0x5a5a_0001;
const SEM_KEY: i32 = 0x5a5a_0002;
const MSG_KEY: i32 = 0x5a5a_0003;
const SHM_SIZE: usize = 3 * 4096 + 100;
const MSGS: [(i64, &str); 3] = [(1, "first message"), (7, "second"), (2, "")];
const SYSCTLS: [(&str, &str); 3] = [
    ("/proc/sys/kernel/msgmnb", "32768"),
    ("/proc/sys/kernel/shmmni", "2048"),
    ("/proc/sys/fs/mqueue/queues_max", "300"),
];

fn pattern(i: usize) -> u8 {
    (i * 7 + i / 251) as u8
}

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// The kernel's `ipc64_perm` (x86_64) at the start of every `*64_ds`.
fn perm(b: &[u8]) -> (i32, u32, u32, u32) {
    let u = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap());
    (u(0) as i32, u(4), u(8), u(20) & 0o777)
}

struct Objs {
    shm: i32,
    shm_private: i32,
    sem: i32,
    msg: i32,
}

fn setup() -> Result<Objs, String> {
    // SAFETY: (whole block) SysV IPC syscalls on objects we create, with
    // buffers we own that are as large as the kernel structures (128 bytes).
    unsafe {
        let shm = libc::shmget(SHM_KEY, SHM_SIZE, libc::IPC_CREAT | 0o640);
        if shm < 0 {
            return Err(err("shmget"));
        }
        let p = libc::shmat(shm, std::ptr::null(), 0) as *mut u8;
        if p as isize == -1 {
            return Err(err("shmat"));
        }
        for i in 0..SHM_SIZE {
            *p.add(i) = pattern(i);
        }
        libc::shmdt(p as *const libc::c_void);
        let shm_private = libc::shmget(libc::IPC_PRIVATE, 4096, 0o600);
        let p = libc::shmat(shm_private, std::ptr::null(), 0) as *mut u8;
        if shm_private < 0 || p as isize == -1 {
            return Err(err("private shm"));
        }
        std::ptr::copy_nonoverlapping(b"private!".as_ptr(), p, 8);
        libc::shmdt(p as *const libc::c_void);

        let sem = libc::semget(SEM_KEY, 3, libc::IPC_CREAT | 0o600);
        let mut vals: [u16; 3] = [5, 6, 7];
        if sem < 0 || libc::semctl(sem, 0, libc::SETALL, vals.as_mut_ptr()) < 0 {
            return Err(err("sem"));
        }
        let mut ds = [0u8; 128];
        if libc::semctl(sem, 0, libc::IPC_STAT, ds.as_mut_ptr()) < 0 {
            return Err(err("sem stat"));
        }
        ds[4..8].copy_from_slice(&1234u32.to_ne_bytes());
        ds[8..12].copy_from_slice(&2345u32.to_ne_bytes());
        ds[20..24].copy_from_slice(&0o644u32.to_ne_bytes());
        if libc::semctl(sem, 0, libc::IPC_SET, ds.as_mut_ptr()) < 0 {
            return Err(err("sem set"));
        }

        let msg = libc::msgget(MSG_KEY, libc::IPC_CREAT | 0o620);
        if msg < 0 {
            return Err(err("msgget"));
        }
        for (t, text) in MSGS {
            let mut b = t.to_ne_bytes().to_vec();
            b.extend_from_slice(text.as_bytes());
            if libc::msgsnd(msg, b.as_ptr() as *const _, text.len(), 0) < 0 {
                return Err(err("msgsnd"));
            }
        }
        Ok(Objs {
            shm,
            shm_private,
            sem,
            msg,
        })
    }
}

fn check_ipc(o: &Objs, v: &mut Verdict) {
    // SAFETY: (whole block) as in setup; shm segments are attached read-only
    // and only read within their size.
    unsafe {
        let mut ds = [0u8; 128];
        if libc::shmctl(o.shm, libc::IPC_STAT, ds.as_mut_ptr() as *mut _) < 0 {
            return v.fail(err("shm stat"));
        }
        v.eq("shm perm", perm(&ds), (SHM_KEY, 0, 0, 0o640));
        v.eq(
            "shm size",
            u64::from_ne_bytes(ds[48..56].try_into().unwrap()),
            SHM_SIZE as u64,
        );
        let p = libc::shmat(o.shm, std::ptr::null(), libc::SHM_RDONLY) as *const u8;
        if p as isize == -1 {
            return v.fail(err("shmat"));
        }
        if let Some(i) = (0..SHM_SIZE).find(|&i| *p.add(i) != pattern(i)) {
            v.fail(format!("shm byte {i} is {}", *p.add(i)));
        }
        libc::shmdt(p as *const libc::c_void);
        let p = libc::shmat(o.shm_private, std::ptr::null(), libc::SHM_RDONLY) as *const u8;
        if p as isize == -1 {
            return v.fail(err("private shmat"));
        }
        v.eq("private shm", std::slice::from_raw_parts(p, 8), b"private!");
        libc::shmdt(p as *const libc::c_void);

        if libc::semctl(o.sem, 0, libc::IPC_STAT, ds.as_mut_ptr()) < 0 {
            return v.fail(err("sem stat"));
        }
        v.eq("sem perm", perm(&ds), (SEM_KEY, 1234, 2345, 0o644));
        let mut vals = [0u16; 3];
        libc::semctl(o.sem, 0, libc::GETALL, vals.as_mut_ptr());
        v.eq("sem values", vals, [5, 6, 7]);

        if libc::msgctl(o.msg, libc::IPC_STAT, ds.as_mut_ptr() as *mut _) < 0 {
            return v.fail(err("msg stat"));
        }
        v.eq("msg perm", perm(&ds), (MSG_KEY, 0, 0, 0o620));
        v.eq(
            "msg qnum",
            u64::from_ne_bytes(ds[80..88].try_into().unwrap()),
            3,
        );
        v.eq(
            "msg qbytes",
            u64::from_ne_bytes(ds[88..96].try_into().unwrap()),
            32768,
        );
        for (i, (t, text)) in MSGS.iter().enumerate() {
            let mut b = [0u8; 8 + 256];
            let n = libc::msgrcv(
                o.msg,
                b.as_mut_ptr() as *mut _,
                256,
                i as i64,
                0o40000 | libc::IPC_NOWAIT,
            );
            if n < 0 {
                v.fail(err(&format!("MSG_COPY of message {i}")));
                continue;
            }
            let got_t = i64::from_ne_bytes(b[..8].try_into().unwrap());
            v.eq(
                &format!("message {i}"),
                (got_t, &b[8..8 + n as usize]),
                (*t, text.as_bytes()),
            );
        }
    }
    // The ids are what the objects had: look them up by key again.
    // SAFETY: lookups of existing keys, no creation.
    let ids = unsafe {
        (
            libc::shmget(SHM_KEY, 0, 0),
            libc::semget(SEM_KEY, 0, 0),
            libc::msgget(MSG_KEY, 0),
        )
    };
    v.eq("ids by key", ids, (o.shm, o.sem, o.msg));
}

fn lo_up() -> Result<bool, String> {
    // SAFETY: a socket we own and an ifreq-sized buffer for SIOCGIFFLAGS.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if s < 0 {
            return Err(err("socket"));
        }
        let mut ifr = [0u8; 40];
        ifr[..2].copy_from_slice(b"lo");
        let r = libc::ioctl(s, libc::SIOCGIFFLAGS, ifr.as_mut_ptr());
        libc::close(s);
        if r < 0 {
            return Err(err("SIOCGIFFLAGS lo"));
        }
        let flags = i16::from_ne_bytes([ifr[16], ifr[17]]);
        Ok(flags as i32 & libc::IFF_UP != 0)
    }
}

fn set_lo_up() -> Result<(), String> {
    // SAFETY: a socket we own and an ifreq-sized buffer for the flag ioctls.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        let mut ifr = [0u8; 40];
        ifr[..2].copy_from_slice(b"lo");
        if s < 0 || libc::ioctl(s, libc::SIOCGIFFLAGS, ifr.as_mut_ptr()) < 0 {
            return Err(err("SIOCGIFFLAGS lo"));
        }
        let f = i16::from_ne_bytes([ifr[16], ifr[17]]) | libc::IFF_UP as i16;
        ifr[16..18].copy_from_slice(&f.to_ne_bytes());
        let r = libc::ioctl(s, libc::SIOCSIFFLAGS, ifr.as_mut_ptr());
        libc::close(s);
        if r < 0 {
            return Err(err("SIOCSIFFLAGS lo"));
        }
        Ok(())
    }
}

/// Unshare a pid namespace and fork its init, role `g`; returns its pid
/// (as the caller sees it).
fn nested_init(ctx: &mut Ctx) -> i32 {
    // SAFETY: unshare takes a flag; affects only our future children.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        ctx.setup_failed("c2", &err("unshare(CLONE_NEWPID)"));
    }
    match fork() {
        Ok(0) => {
            let mut v = Verdict::new();
            ctx.write_ready("g");
            ctx.wait_for_check(|| {});
            v.eq("pid in the nested namespace", std::process::id(), 1);
            v.eq("ppid (outside)", nix::unistd::getppid().as_raw(), 0);
            v.eq(
                "hostname",
                read("/proc/sys/kernel/hostname"),
                HOST.to_string(),
            );
            ctx.finish("g", v);
        }
        Ok(pid) => pid,
        Err(e) => ctx.setup_failed("c2", &format!("fork: {e}")),
    }
}

const ATT_KEY: i32 = 0x5a5a_0004;
const ATT_SIZE: usize = 2 * 4096 + 100;
/// Bytes per process slot in the attached segments: [mark, after-mark].
const SLOT: usize = 64;
/// Offset of the byte the root sets once it has read shm_nattch.
const DONE: usize = 1024;

/// The attached segments, as one process sees them.
struct Att {
    att: i32,
    dest: i32,
    /// Where this process has them.
    p: *mut u8,
    d: *mut u8,
    /// The last page of `p` is read-only (not in c2's own attachment).
    split: bool,
    /// shm_nattch of both, read by the root once every process attached.
    nattch: (u64, u64),
}

fn nattch(id: i32) -> Result<u64, String> {
    let mut ds = [0u8; 128];
    // SAFETY: IPC_STAT writes one shmid64_ds (112 bytes) into our buffer.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, ds.as_mut_ptr() as *mut _) } < 0 {
        return Err(err("shm stat"));
    }
    // shm_nattch of struct shmid64_ds (x86_64).
    Ok(u64::from_ne_bytes(ds[88..96].try_into().unwrap()))
}

fn shm_mode_key(id: i32) -> Result<(u32, i32), String> {
    let mut ds = [0u8; 128];
    // SAFETY: as in nattch.
    if unsafe { libc::shmctl(id, libc::IPC_STAT, ds.as_mut_ptr() as *mut _) } < 0 {
        return Err(err("shm stat"));
    }
    let (key, _, _, _) = perm(&ds);
    Ok((u32::from_ne_bytes(ds[20..24].try_into().unwrap()), key))
}

/// Root, before it forks: both segments attached, its marks written.
fn attach_setup() -> Result<Att, String> {
    // SAFETY: (whole block) shmat/mprotect on segments we create; the
    // writes stay inside the attached sizes.
    unsafe {
        let att = libc::shmget(ATT_KEY, ATT_SIZE, libc::IPC_CREAT | 0o600);
        let p = libc::shmat(att, std::ptr::null(), 0) as *mut u8;
        if att < 0 || p as isize == -1 {
            return Err(err("attached shm"));
        }
        for i in 2 * 4096..ATT_SIZE {
            *p.add(i) = pattern(i);
        }
        if libc::mprotect(p.add(2 * 4096) as *mut _, 4096, libc::PROT_READ) < 0 {
            return Err(err("mprotect attached shm"));
        }
        let dest = libc::shmget(libc::IPC_PRIVATE, 4096, 0o600);
        let d = libc::shmat(dest, std::ptr::null(), 0) as *mut u8;
        if dest < 0
            || d as isize == -1
            || libc::shmctl(dest, libc::IPC_RMID, std::ptr::null_mut()) < 0
        {
            return Err(err("removed shm"));
        }
        Ok(Att {
            att,
            dest,
            p,
            d,
            split: true,
            nattch: (0, 0),
        })
    }
}

/// Slot `k`'s mark byte in both segments.
fn mark(a: &Att, k: usize, at: usize, val: u8) {
    // SAFETY: slots lie within the first page of both segments, writable.
    unsafe {
        std::ptr::write_volatile(a.p.add(k * SLOT + at), val);
        std::ptr::write_volatile(a.d.add(k * SLOT + at), val);
    }
}

fn marked(a: &Att, k: usize, at: usize, val: u8) -> bool {
    // SAFETY: as in mark, read only.
    unsafe {
        std::ptr::read_volatile(a.p.add(k * SLOT + at)) == val
            && std::ptr::read_volatile(a.d.add(k * SLOT + at)) == val
    }
}

/// c2's own attachment of the keyed segment, elsewhere than the inherited one.
fn reattach(a: &mut Att) -> Result<(), String> {
    // SAFETY: detach what fork gave us, attach again where the kernel says.
    unsafe {
        libc::shmdt(a.p as *const _);
        let p = libc::shmat(a.att, std::ptr::null(), 0) as *mut u8;
        if p as isize == -1 {
            return Err(err("c2 shmat"));
        }
        a.p = p;
        a.split = false;
    }
    Ok(())
}

/// Run on `check` by process `k` of 3: its old marks and the others' are
/// there, the read-only page still is, the removed segment still is; marks
/// again and waits for every other process's mark. The root (k = 0) then
/// compares shm_nattch and releases the others, who wait for that.
fn check_att(a: &Att, k: usize, v: &mut Verdict) {
    for j in 0..3 {
        v.check(marked(a, j, 0, 0x40 + j as u8), || {
            format!("slot {j} mark missing through {:p}/{:p}", a.p, a.d)
        });
    }
    // SAFETY: the read-only page is mapped readable.
    let tail_ok = (2 * 4096..ATT_SIZE).all(|i| unsafe { *a.p.add(i) } == pattern(i));
    v.check(tail_ok, || {
        "read-only page of the attached segment changed".into()
    });
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let (at, perms) = if a.split {
        (a.p as usize + 2 * 4096, " r--s ")
    } else {
        (a.p as usize, " rw-s ")
    };
    let at = format!("{at:x}-");
    let line = maps.lines().find(|l| l.starts_with(&at)).unwrap_or("");
    v.check(line.contains(perms) && line.contains("/SYSV"), || {
        format!("attachment at {at}: {line:?}")
    });
    match shm_mode_key(a.dest) {
        Ok((mode, key)) => v.check(mode & 0o1000 != 0 && key == 0, || {
            format!("removed segment: mode {mode:o} key {key:#x}")
        }),
        Err(e) => v.fail(e),
    }
    mark(a, k, 1, 0x80 + k as u8);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(0..3).all(|j| marked(a, j, 1, 0x80 + j as u8)) {
        if std::time::Instant::now() > deadline {
            v.fail("the others' marks after restore never showed");
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if k == 0 {
        match (nattch(a.att), nattch(a.dest)) {
            (Ok(x), Ok(y)) => v.eq("shm_nattch (attached, removed)", (x, y), a.nattch),
            (Err(e), _) | (_, Err(e)) => v.fail(e),
        }
        // SAFETY: within the first page of the segment.
        unsafe { std::ptr::write_volatile(a.p.add(DONE), 1) };
    } else {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // SAFETY: as above, read only.
        while unsafe { std::ptr::read_volatile(a.p.add(DONE)) } != 1 {
            if std::time::Instant::now() > deadline {
                v.fail("the root never read shm_nattch");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The lines of /proc/self/status that hold credentials (in-namespace
/// values: the reader is in the namespace).
fn creds() -> String {
    read("/proc/self/status")
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "Cap"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The user namespace's maps and setgroups, as the tasks see them.
fn userns_state() -> String {
    ["uid_map", "gid_map", "setgroups"]
        .iter()
        .map(|f| read(&format!("/proc/self/{f}")))
        .collect::<Vec<_>>()
        .join("\n")
}

const TMPFS_FILES: [(&str, &str, u32, u32, u32); 2] = [
    ("plain", "tmpfs contents\n", 0, 0, 0o644),
    ("owned", "owned by 1234:2345 inside\n", 1234, 2345, 0o600),
];

fn setup_tmpfs(dir: &std::path::Path) -> Result<(), String> {
    let t = dir.join("tmpfs");
    std::fs::create_dir_all(&t).map_err(|e| format!("mkdir {}: {e}", t.display()))?;
    nix::mount::mount(
        Some("tmpfs"),
        &t,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .map_err(|e| format!("mount tmpfs at {}: {e}", t.display()))?;
    for (name, text, uid, gid, mode) in TMPFS_FILES {
        let f = t.join(name);
        std::fs::write(&f, text).map_err(|e| format!("write {}: {e}", f.display()))?;
        std::os::unix::fs::chown(&f, Some(uid), Some(gid))
            .map_err(|e| format!("chown {}: {e}", f.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", f.display()))?;
    }
    Ok(())
}

fn check_tmpfs(dir: &std::path::Path, v: &mut Verdict) {
    use std::os::unix::fs::MetadataExt;
    for (name, text, uid, gid, mode) in TMPFS_FILES {
        let f = dir.join("tmpfs").join(name);
        match std::fs::metadata(&f) {
            Ok(m) => v.eq(
                &format!("tmpfs {name} owner and mode"),
                (m.uid(), m.gid(), m.mode() & 0o7777),
                (uid, gid, mode),
            ),
            Err(e) => v.fail(format!("stat {}: {e}", f.display())),
        }
        v.eq(
            &format!("tmpfs {name} contents"),
            std::fs::read_to_string(&f).unwrap_or_default(),
            text.to_string(),
        );
    }
}

/// With `user`: an unlinked file and a memfd, each owned by in-namespace ids
/// (saved as the tree sees them, written back through the maps).
const OWNED_FD: (&str, u32, u32) = ("held by an fd, owned inside\n", 1234, 2345);

fn setup_owned_fds(dir: &std::path::Path) -> Result<Vec<std::fs::File>, String> {
    use std::io::Write;
    let (text, uid, gid) = OWNED_FD;
    let p = dir.join("unlinked-owned");
    let mut f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .map_err(|e| format!("create {}: {e}", p.display()))?;
    std::fs::remove_file(&p).map_err(|e| format!("unlink {}: {e}", p.display()))?;
    let m = nix::sys::memfd::memfd_create(c"owned", nix::sys::memfd::MemFdCreateFlag::empty())
        .map_err(|e| format!("memfd_create: {e}"))?;
    let mut m = std::fs::File::from(m);
    for (what, f) in [("unlinked file", &mut f), ("memfd", &mut m)] {
        f.write_all(text.as_bytes())
            .map_err(|e| format!("write {what}: {e}"))?;
        std::os::unix::fs::fchown(&*f, Some(uid), Some(gid))
            .map_err(|e| format!("fchown {what}: {e}"))?;
    }
    Ok(vec![f, m])
}

fn check_owned_fds(fds: &[std::fs::File], v: &mut Verdict) {
    use std::os::unix::fs::{FileExt, MetadataExt};
    let (text, uid, gid) = OWNED_FD;
    for (what, f) in ["unlinked file", "memfd"].into_iter().zip(fds) {
        match f.metadata() {
            Ok(m) => v.eq(&format!("{what} owner"), (m.uid(), m.gid()), (uid, gid)),
            Err(e) => v.fail(format!("fstat {what}: {e}")),
        }
        let mut buf = vec![0u8; text.len() + 8];
        let n = f.read_at(&mut buf, 0).unwrap_or(0);
        v.eq(
            &format!("{what} contents"),
            String::from_utf8_lossy(&buf[..n]).into_owned(),
            text.to_string(),
        );
    }
}

/// c1 with `user`: effective ids 5/6 (real, saved and fs ids stay 0).
fn drop_effective() -> Result<(), String> {
    // SAFETY: (whole block) id syscalls with plain integers.
    unsafe {
        if libc::setresgid(0, 6, 0) != 0 || libc::setresuid(0, 5, 0) != 0 {
            return Err(err("setres[ug]id to effective 5/6"));
        }
        // Allowed without capabilities: 0 is the real id.
        libc::setfsuid(0);
        libc::setfsgid(0);
    }
    Ok(())
}

/// Back to effective root (the saved ids are 0) for the IPC checks.
fn regain_effective() -> Result<(), String> {
    // SAFETY: (whole block) id syscalls with plain integers.
    unsafe {
        if libc::setresuid(u32::MAX, 0, u32::MAX) != 0
            || libc::setresgid(u32::MAX, 0, u32::MAX) != 0
        {
            return Err(err("back to effective 0"));
        }
    }
    Ok(())
}

fn main() {
    let mut ctx = Ctx::from_args("wl-ns STATEDIR [net]");
    let net = ctx.args.iter().any(|a| a == "net");
    let nested = ctx.args.iter().any(|a| a == "nested");
    let shmat = ctx.args.iter().any(|a| a == "shmat");
    let user = ctx.args.iter().any(|a| a == "user");
    let ns_state = userns_state();
    if std::process::id() != 1 {
        ctx.setup_failed("root", "not pid 1: start me with unshare --pid --fork");
    }
    // Own session, so the tree does not depend on the launcher's.
    // SAFETY: setsid takes no arguments.
    unsafe { libc::setsid() };
    if let Err(e) = std::fs::write("/proc/sys/kernel/hostname", HOST) {
        ctx.setup_failed("root", &format!("hostname: {e}"));
    }
    if let Err(e) = std::fs::write("/proc/sys/kernel/domainname", DOMAIN) {
        ctx.setup_failed("root", &format!("domainname: {e}"));
    }
    for (p, val) in SYSCTLS {
        if let Err(e) = std::fs::write(p, val) {
            ctx.setup_failed("root", &format!("{p}: {e}"));
        }
    }
    if net {
        if let Err(e) = set_lo_up() {
            ctx.setup_failed("root", &e);
        }
    }
    let owned = if user {
        if let Err(e) = setup_tmpfs(&ctx.dir) {
            ctx.setup_failed("root", &e);
        }
        match setup_owned_fds(&ctx.dir) {
            Ok(f) => f,
            Err(e) => ctx.setup_failed("root", &e),
        }
    } else {
        Vec::new()
    };
    let objs = match setup() {
        Ok(o) => o,
        Err(e) => ctx.setup_failed("root", &e),
    };
    let mut att = if shmat {
        match attach_setup() {
            Ok(a) => Some(a),
            Err(e) => ctx.setup_failed("root", &e),
        }
    } else {
        None
    };
    let mut kids = Vec::new();
    for (k, role) in ["c1", "c2"].into_iter().enumerate() {
        match fork() {
            Ok(0) => {
                let mut v = Verdict::new();
                let g = if nested && k == 1 {
                    Some(nested_init(&mut ctx))
                } else {
                    None
                };
                if let Some(a) = att.as_mut() {
                    if k == 1 {
                        if let Err(e) = reattach(a) {
                            ctx.setup_failed(role, &e);
                        }
                    }
                    mark(a, k + 1, 0, 0x41 + k as u8);
                }
                if user && k == 0 {
                    if let Err(e) = drop_effective() {
                        ctx.setup_failed(role, &e);
                    }
                }
                let my_creds = creds();
                ctx.write_ready(role);
                let mono = now(libc::CLOCK_MONOTONIC);
                ctx.wait_for_check(|| {});
                v.eq("credentials", creds(), my_creds);
                if user {
                    v.eq("user namespace maps", userns_state(), ns_state.clone());
                    if k == 0 {
                        if let Err(e) = regain_effective() {
                            v.fail(e);
                        }
                    }
                }
                v.eq("pid", std::process::id(), k as u32 + 2);
                v.eq("ppid", nix::unistd::getppid().as_raw(), 1);
                v.eq(
                    "hostname",
                    read("/proc/sys/kernel/hostname"),
                    HOST.to_string(),
                );
                v.check(now(libc::CLOCK_MONOTONIC) >= mono, || {
                    "CLOCK_MONOTONIC went back".into()
                });
                check_ipc(&objs, &mut v);
                if let Some(a) = &att {
                    check_att(a, k + 1, &mut v);
                }
                if let Some(g) = g {
                    let l = |n: &str| std::fs::read_link(format!("/proc/self/ns/{n}")).ok();
                    v.check(l("pid_for_children") != l("pid"), || {
                        "pid_for_children is not the nested namespace".into()
                    });
                    if let Err(e) = wait_child(g, Duration::from_secs(20)) {
                        v.fail(format!("nested init: {e}"));
                    }
                }
                ctx.finish(role, v);
            }
            Ok(pid) => kids.push(pid),
            Err(e) => ctx.setup_failed("root", &format!("fork: {e}")),
        }
    }
    if let Err(e) = ctx.wait_ready_of(&["c1", "c2"], Duration::from_secs(10)) {
        ctx.setup_failed("root", &e);
    }
    if let Some(a) = att.as_mut() {
        mark(a, 0, 0, 0x40);
        match (nattch(a.att), nattch(a.dest)) {
            (Ok(x), Ok(y)) => a.nattch = (x, y),
            (Err(e), _) | (_, Err(e)) => ctx.setup_failed("root", &e),
        }
    }
    let mono = now(libc::CLOCK_MONOTONIC);
    let boot = now(libc::CLOCK_BOOTTIME);
    let my_creds = creds();
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    v.eq("credentials", creds(), my_creds);
    if user {
        v.eq("user namespace maps", userns_state(), ns_state.clone());
        v.check(ns_state.lines().count() > 2, || {
            format!("no user namespace maps: {ns_state:?}")
        });
        check_tmpfs(&ctx.dir, &mut v);
        check_owned_fds(&owned, &mut v);
    }
    v.eq("pid", std::process::id(), 1);
    v.eq(
        "hostname",
        read("/proc/sys/kernel/hostname"),
        HOST.to_string(),
    );
    v.eq(
        "domainname",
        read("/proc/sys/kernel/domainname"),
        DOMAIN.to_string(),
    );
    for (p, val) in SYSCTLS {
        v.eq(p, read(p), val.to_string());
    }
    let (m2, b2) = (now(libc::CLOCK_MONOTONIC), now(libc::CLOCK_BOOTTIME));
    v.check(m2 >= mono, || {
        format!("CLOCK_MONOTONIC went back by {} ns", mono - m2)
    });
    v.check(b2 >= boot, || {
        format!("CLOCK_BOOTTIME went back by {} ns", boot - b2)
    });
    if net {
        match lo_up() {
            Ok(up) => v.check(up, || "lo is down".into()),
            Err(e) => v.fail(e),
        }
    }
    check_ipc(&objs, &mut v);
    if let Some(a) = &att {
        check_att(a, 0, &mut v);
    }
    for pid in kids {
        if let Err(e) = wait_child(pid, Duration::from_secs(20)) {
            v.fail(format!("child {pid}: {e}"));
        }
    }
    ctx.finish("root", v);
}
