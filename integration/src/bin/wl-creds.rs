//! wl-creds STATEDIR: credentials, capabilities, limits, priority (run as root).
//!
//! Set up, in this order, starting as root:
//! - supplementary groups 1001, 1002, 2000;
//! - RLIMIT_NOFILE 200/300 and RLIMIT_CORE 4096/1 MiB (soft/hard, lowered);
//!   nice 5; personality ADDR_NO_RANDOMIZE | UNAME26;
//! - bounding set without SYS_MODULE, SYS_RAWIO, SYS_BOOT, MKNOD, AUDIT_WRITE;
//! - securebits NO_SETUID_FIXUP | NOROOT (so the uid change keeps the caps);
//! - gids 2000/2001/2002 and uids 1000/1001/1002 (real/effective/saved);
//! - effective {DAC_OVERRIDE, KILL, SETGID, SETUID, SETPCAP, NET_BIND_SERVICE},
//!   permitted = effective + {CHOWN, FOWNER, SYS_PTRACE}, inheritable
//!   {NET_BIND_SERVICE, CHOWN}, ambient {NET_BIND_SERVICE};
//! - no_new_privs.
//!
//! Verification reads all of them back through the syscalls (getresuid,
//! getresgid, getgroups, capget, PR_CAPBSET_READ, PR_CAP_AMBIENT_IS_SET,
//! PR_GET_SECUREBITS, PR_GET_NO_NEW_PRIVS, PR_GET_DUMPABLE, getpriority,
//! getrlimit, personality) and through `/proc/self/status`. CAP_DAC_OVERRIDE is kept so
//! that the process can still write its result into the root-owned state
//! directory. Role: `root`.

use stasis_integration::workload::{parse_hex, proc_status_field, Ctx, Verdict};

const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_FOWNER: u32 = 3;
const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;
const CAP_SETPCAP: u32 = 8;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_BOOT: u32 = 22;
const CAP_MKNOD: u32 = 27;
const CAP_AUDIT_WRITE: u32 = 29;

const GROUPS: [libc::gid_t; 3] = [1001, 1002, 2000];
const UIDS: (u32, u32, u32) = (1000, 1001, 1002);
const GIDS: (u32, u32, u32) = (2000, 2001, 2002);
const NOFILE: (u64, u64) = (200, 300);
const CORE: (u64, u64) = (4096, 1 << 20);
const NICE: i32 = 5;
/// ADDR_NO_RANDOMIZE | UNAME26: harmless to a process that execs nothing.
const PERSONA: i32 = 0x0040000 | 0x0020000;
const SECBITS: i32 = libc::SECBIT_NO_SETUID_FIXUP | libc::SECBIT_NOROOT;

fn bits(caps: &[u32]) -> u64 {
    caps.iter().fold(0, |m, &c| m | 1u64 << c)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;

/// (effective, permitted, inheritable) of the calling thread.
fn capget() -> Result<(u64, u64, u64), String> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and a two-element data array, as capget v3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) };
    if r != 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    let j = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    Ok((
        j(d[0].effective, d[1].effective),
        j(d[0].permitted, d[1].permitted),
        j(d[0].inheritable, d[1].inheritable),
    ))
}

fn capset(e: u64, p: u64, i: u64) -> Result<(), String> {
    let mut h = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let d = [
        CapData {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        CapData {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: header and a two-element data array, as capset v3 expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) };
    if r != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn prctl(op: i32, a: u64) -> i32 {
    // SAFETY: the prctl operations used here take integer arguments only.
    unsafe { libc::prctl(op, a, 0, 0, 0) }
}

fn prctl2(op: i32, a: u64, b: u64) -> i32 {
    // SAFETY: the prctl operations used here take integer arguments only.
    unsafe { libc::prctl(op, a, b, 0, 0) }
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

fn err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn setrlimit(res: libc::__rlimit_resource_t, (cur, max): (u64, u64)) -> Result<(), String> {
    let rl = libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: `rl` is a valid rlimit.
    if unsafe { libc::setrlimit(res, &rl) } != 0 {
        return Err(err("setrlimit"));
    }
    Ok(())
}

fn getrlimit(res: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `rl` is a valid out-pointer.
    unsafe { libc::getrlimit(res, &mut rl) };
    (rl.rlim_cur, rl.rlim_max)
}

/// What the final state must be.
struct Want {
    eff: u64,
    prm: u64,
    inh: u64,
    amb: u64,
    bnd: u64,
    dumpable: i32,
}

fn setup() -> Result<Want, String> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must be started as root".into());
    }
    let (_, p0, _) = capget()?;
    let last = last_cap();
    let all = if last >= 63 {
        u64::MAX
    } else {
        (1u64 << (last + 1)) - 1
    };
    let bnd0 = (0..=last).fold(0u64, |m, c| {
        if prctl(libc::PR_CAPBSET_READ, c.into()) == 1 {
            m | 1 << c
        } else {
            m
        }
    }) & all;

    // SAFETY: GROUPS is a valid array of its length.
    if unsafe { libc::setgroups(GROUPS.len(), GROUPS.as_ptr()) } != 0 {
        return Err(err("setgroups"));
    }
    setrlimit(libc::RLIMIT_NOFILE, NOFILE)?;
    setrlimit(libc::RLIMIT_CORE, CORE)?;
    // SAFETY: setpriority on ourselves.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) } != 0 {
        return Err(err("setpriority"));
    }
    // SAFETY: personality takes a plain integer.
    if unsafe { libc::personality(PERSONA as libc::c_ulong) } < 0 {
        return Err(err("personality"));
    }
    let dropped = bits(&[
        CAP_SYS_MODULE,
        CAP_SYS_RAWIO,
        CAP_SYS_BOOT,
        CAP_MKNOD,
        CAP_AUDIT_WRITE,
    ]);
    for c in 0..=last {
        if dropped & (1 << c) != 0 && prctl(libc::PR_CAPBSET_DROP, c.into()) != 0 {
            return Err(err("PR_CAPBSET_DROP"));
        }
    }
    if prctl(libc::PR_SET_SECUREBITS, SECBITS as u64) != 0 {
        return Err(err("PR_SET_SECUREBITS"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresgid(GIDS.0, GIDS.1, GIDS.2) } != 0 {
        return Err(err("setresgid"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresuid(UIDS.0, UIDS.1, UIDS.2) } != 0 {
        return Err(err("setresuid"));
    }
    let eff = bits(&[
        CAP_DAC_OVERRIDE,
        CAP_KILL,
        CAP_SETGID,
        CAP_SETUID,
        CAP_SETPCAP,
        CAP_NET_BIND_SERVICE,
    ]) & p0;
    let prm = eff | (bits(&[CAP_CHOWN, CAP_FOWNER, CAP_SYS_PTRACE]) & p0);
    let inh = bits(&[CAP_NET_BIND_SERVICE, CAP_CHOWN]) & prm;
    capset(eff, prm, inh)?;
    let amb = bits(&[CAP_NET_BIND_SERVICE]) & inh;
    if amb != 0
        && prctl2(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_RAISE as u64,
            CAP_NET_BIND_SERVICE.into(),
        ) != 0
    {
        return Err(err("PR_CAP_AMBIENT_RAISE"));
    }
    if prctl(libc::PR_SET_NO_NEW_PRIVS, 1) != 0 {
        return Err(err("PR_SET_NO_NEW_PRIVS"));
    }
    Ok(Want {
        eff,
        prm,
        inh,
        amb,
        bnd: bnd0 & !dropped,
        dumpable: prctl(libc::PR_GET_DUMPABLE, 0),
    })
}

fn hex(x: u64) -> String {
    format!("{x:016x}")
}

fn verify(v: &mut Verdict, w: &Want) {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three valid out-pointers.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    v.eq("uids (r, e, s)", (r, e, s), UIDS);
    // SAFETY: three valid out-pointers.
    unsafe { libc::getresgid(&mut r, &mut e, &mut s) };
    v.eq("gids (r, e, s)", (r, e, s), GIDS);
    let status = "/proc/self/status";
    v.eq(
        "Uid line",
        proc_status_field(status, "Uid"),
        Some(format!("{}\t{}\t{}\t{}", UIDS.0, UIDS.1, UIDS.2, UIDS.1)),
    );
    v.eq(
        "Gid line",
        proc_status_field(status, "Gid"),
        Some(format!("{}\t{}\t{}\t{}", GIDS.0, GIDS.1, GIDS.2, GIDS.1)),
    );
    let mut groups = [0 as libc::gid_t; 64];
    // SAFETY: `groups` holds 64 entries.
    let n = unsafe { libc::getgroups(64, groups.as_mut_ptr()) };
    let mut got: Vec<u32> = groups[..n.max(0) as usize].to_vec();
    got.sort_unstable();
    v.eq("supplementary groups", got, GROUPS.to_vec());

    match capget() {
        Ok((e, p, i)) => {
            v.eq("effective caps", hex(e), hex(w.eff));
            v.eq("permitted caps", hex(p), hex(w.prm));
            v.eq("inheritable caps", hex(i), hex(w.inh));
        }
        Err(e) => v.fail(e),
    }
    let last = last_cap();
    let bnd = (0..=last).fold(0u64, |m, c| {
        if prctl(libc::PR_CAPBSET_READ, c.into()) == 1 {
            m | 1 << c
        } else {
            m
        }
    });
    v.eq("bounding set", hex(bnd), hex(w.bnd));
    let amb = (0..=last).fold(0u64, |m, c| {
        if prctl2(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_IS_SET as u64,
            c.into(),
        ) == 1
        {
            m | 1 << c
        } else {
            m
        }
    });
    v.eq("ambient set", hex(amb), hex(w.amb));
    for (key, want) in [
        ("CapEff", w.eff),
        ("CapPrm", w.prm),
        ("CapInh", w.inh),
        ("CapBnd", w.bnd),
        ("CapAmb", w.amb),
    ] {
        v.eq(
            key,
            proc_status_field(status, key)
                .and_then(|s| parse_hex(&s))
                .map(hex),
            Some(hex(want)),
        );
    }
    v.eq("securebits", prctl(libc::PR_GET_SECUREBITS, 0), SECBITS);
    v.eq("no_new_privs", prctl(libc::PR_GET_NO_NEW_PRIVS, 0), 1);
    v.eq(
        "NoNewPrivs line",
        proc_status_field(status, "NoNewPrivs"),
        Some("1".to_string()),
    );
    v.eq("dumpable", prctl(libc::PR_GET_DUMPABLE, 0), w.dumpable);
    // SAFETY: errno is reset first because -1 is a valid priority.
    let nice = unsafe {
        *libc::__errno_location() = 0;
        libc::getpriority(libc::PRIO_PROCESS, 0)
    };
    v.eq("nice", nice, NICE);
    v.eq("RLIMIT_NOFILE", getrlimit(libc::RLIMIT_NOFILE), NOFILE);
    v.eq("RLIMIT_CORE", getrlimit(libc::RLIMIT_CORE), CORE);
    // SAFETY: 0xffffffff only queries the personality.
    v.eq(
        "personality",
        unsafe { libc::personality(0xffff_ffff) },
        PERSONA,
    );
}

fn main() {
    let mut ctx = Ctx::from_args("wl-creds STATEDIR");
    let want = setup().unwrap_or_else(|e| ctx.setup_failed("root", &e));
    // Before the checkpoint, the set-up must already read back right.
    let mut pre = Verdict::new();
    verify(&mut pre, &want);
    if !pre.is_ok() {
        ctx.setup_failed("root", &format!("before checkpoint: {}", pre.line()));
    }
    ctx.write_ready("root");
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    verify(&mut v, &want);
    ctx.finish("root", v);
}
