//! The forked side of `create` and `exec`: join and create namespaces, fork
//! the process that becomes the container's init (or the exec'd process),
//! prepare it, report to the runtime over the sync socket, then exec.
//!
//! Sync protocol (one line each, child -> runtime unless noted):
//! `userns` (runtime writes the id maps, answers `ok`), `pid N` (runtime
//! answers `go` to the new process), `hooks` (runtime runs prestart and
//! createRuntime hooks, answers `ok`), `ready`, or `error MESSAGE`.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use caps::{CapSet, Capability, CapsHashSet};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Process, Spec};

use crate::cgroup::Cgroup;
use crate::error::{bail, Error, IoCtx, Result, SysCtx};
use crate::sys::{self, ForkResult};
use crate::{hooks, mounts, seccomp, tty};

static READY: AtomicBool = AtomicBool::new(false);

pub enum Mode {
    /// A new container: namespaces from the spec.
    Init {
        fifo: File,
        no_pivot: bool,
        rootfs: PathBuf,
        state_json: String,
    },
    /// A process in the running container of this init pid.
    Exec { init_pid: i32 },
}

pub struct Config<'a> {
    pub spec: &'a Spec,
    pub process: &'a Process,
    pub cgroup: Option<&'a Cgroup>,
    pub console: Option<UnixStream>,
    pub preserve_fds: i32,
    /// Become stdin, stdout, stderr first thing in the child.
    pub stdio: Option<[RawFd; 3]>,
    pub mode: Mode,
}

pub fn send(s: &UnixStream, msg: &str) {
    let mut s = s;
    let _ = s.write_all(format!("{msg}\n").as_bytes());
}

/// One line from the socket (byte by byte: several processes share it).
pub fn recv(s: &UnixStream) -> Option<String> {
    let mut s = s;
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => {
                return if out.is_empty() {
                    None
                } else {
                    Some(String::from_utf8_lossy(&out).into_owned())
                }
            }
            Ok(_) if b[0] == b'\n' => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(_) => out.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

fn expect(s: &UnixStream, want: &str) -> Result<()> {
    match recv(s) {
        Some(l) if l == want => Ok(()),
        other => bail!("runtime answered {other:?} instead of {want:?}"),
    }
}

/// Entry of the forked helper; never returns.
pub fn child(cfg: Config<'_>, sock: UnixStream) -> ! {
    let r = stage1(&cfg, &sock);
    if let Err(e) = r {
        send(
            &sock,
            &format!("error {}", e.to_string().replace('\n', " ")),
        );
        sys::exit_now(1);
    }
    sys::exit_now(0)
}

fn ns_flag(t: LinuxNamespaceType) -> Result<CloneFlags> {
    Ok(match t {
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::User => CloneFlags::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Time => CloneFlags::from_bits_retain(libc::CLONE_NEWTIME),
    })
}

fn stage1(cfg: &Config<'_>, sock: &UnixStream) -> Result<()> {
    if let Some(fds) = cfg.stdio {
        for (to, from) in fds.into_iter().enumerate() {
            nix::unistd::dup2(from, to as RawFd).what("dup2 the stdio fds")?;
        }
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .what("sigprocmask")?;
    if let Some(cg) = cfg.cgroup {
        cg.add(std::process::id() as i32)?;
    }
    match &cfg.mode {
        Mode::Init { .. } => {
            let linux = cfg.spec.linux().as_ref().expect("validated");
            let nss = linux.namespaces().clone().unwrap_or_default();
            // Open every path first: joining the mount namespace changes
            // what the later paths resolve to.
            let mut join = Vec::new();
            let mut new = CloneFlags::empty();
            let mut new_user = false;
            for ns in &nss {
                let f = ns_flag(ns.typ())?;
                match ns.path() {
                    Some(p) => {
                        let fd = File::open(p).at(p)?;
                        join.push((ns.typ(), f, fd, p.clone()));
                    }
                    None if ns.typ() == LinuxNamespaceType::User => new_user = true,
                    None => new |= f,
                }
            }
            join.sort_by_key(|(t, ..)| {
                if *t == LinuxNamespaceType::User {
                    0
                } else if *t == LinuxNamespaceType::Mount {
                    2
                } else {
                    1
                }
            });
            for (_, f, fd, p) in &join {
                setns(fd.as_fd(), *f).what(format!("join namespace {}", p.display()))?;
            }
            if new_user {
                unshare(CloneFlags::CLONE_NEWUSER).what("unshare user namespace")?;
                send(sock, "userns");
                expect(sock, "ok")?;
                nix::unistd::setresgid(Gid::from_raw(0), Gid::from_raw(0), Gid::from_raw(0))
                    .what("setresgid 0 in the user namespace")?;
                nix::unistd::setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0))
                    .what("setresuid 0 in the user namespace")?;
            }
            unshare(new).what("unshare namespaces")?;
        }
        Mode::Exec { init_pid } => {
            for name in ["user", "ipc", "uts", "net", "pid", "mnt", "cgroup", "time"] {
                let theirs = format!("/proc/{init_pid}/ns/{name}");
                let mine = format!("/proc/self/ns/{name}");
                let (Ok(a), Ok(b)) = (std::fs::metadata(&theirs), std::fs::metadata(&mine)) else {
                    continue;
                };
                if a.ino() == b.ino() && a.dev() == b.dev() {
                    continue;
                }
                let fd = File::open(&theirs).at(&theirs)?;
                setns(fd.as_fd(), CloneFlags::empty()).what(format!("join namespace {theirs}"))?;
            }
        }
    }
    match sys::fork().what("fork the container process")? {
        ForkResult::Parent { child } => {
            send(sock, &format!("pid {child}"));
            Ok(())
        }
        ForkResult::Child => {
            let r = stage2(cfg, sock);
            match r {
                Ok(never) => match never {},
                Err(e) => {
                    if READY.load(Ordering::SeqCst) {
                        // The runtime stopped listening: the caller's stderr.
                        eprintln!("stasis: container process: {e}");
                    } else {
                        send(sock, &format!("error {}", e.to_string().replace('\n', " ")));
                    }
                    sys::exit_now(1);
                }
            }
        }
    }
}

fn rlimit_resource(t: PosixRlimitType) -> Option<Resource> {
    let name = serde_json::to_value(t).ok()?.as_str()?.to_string();
    Some(match name.as_str() {
        "RLIMIT_CPU" => Resource::RLIMIT_CPU,
        "RLIMIT_FSIZE" => Resource::RLIMIT_FSIZE,
        "RLIMIT_DATA" => Resource::RLIMIT_DATA,
        "RLIMIT_STACK" => Resource::RLIMIT_STACK,
        "RLIMIT_CORE" => Resource::RLIMIT_CORE,
        "RLIMIT_RSS" => Resource::RLIMIT_RSS,
        "RLIMIT_NPROC" => Resource::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => Resource::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => Resource::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => Resource::RLIMIT_AS,
        "RLIMIT_LOCKS" => Resource::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => Resource::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => Resource::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => Resource::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => Resource::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => Resource::RLIMIT_RTTIME,
        _ => return None,
    })
}

fn cap_set(s: &Option<oci_spec::runtime::Capabilities>) -> Result<CapsHashSet> {
    let mut out = CapsHashSet::new();
    for c in s.iter().flatten() {
        let n = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        match n.parse::<Capability>() {
            Ok(cap) => {
                out.insert(cap);
            }
            // Capabilities this kernel or crate does not know are skipped
            // with a warning, like runc.
            Err(_) => tracing::warn!("unknown capability {n:?} ignored"),
        }
    }
    Ok(out)
}

/// `args[0]` as an executable path, using the process's PATH.
fn lookup(arg0: &str, env: &[String], cwd: &Path) -> Result<PathBuf> {
    let ok = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0);
    if arg0.contains('/') {
        let p = if Path::new(arg0).is_absolute() {
            PathBuf::from(arg0)
        } else {
            cwd.join(arg0)
        };
        if ok(&p) {
            return Ok(PathBuf::from(arg0));
        }
        bail!("exec: {arg0:?}: no such executable file")
    }
    let path = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for d in path.split(':') {
        let p = Path::new(if d.is_empty() { "." } else { d }).join(arg0);
        if ok(&p) {
            return Ok(p);
        }
    }
    bail!("exec: {arg0:?}: executable file not found in $PATH")
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::msg(format!("{s:?}: contains a NUL byte")))
}

fn stage2(cfg: &Config<'_>, sock: &UnixStream) -> Result<std::convert::Infallible> {
    expect(sock, "go")?;
    let p = cfg.process;
    let terminal = p.terminal().unwrap_or(false);
    match &cfg.mode {
        Mode::Init {
            no_pivot,
            rootfs,
            state_json,
            ..
        } => {
            let spec = cfg.spec;
            mounts::prepare(spec, rootfs, cfg.cgroup.map(|c| c.dir.as_path()))?;
            send(sock, "hooks");
            expect(sock, "ok")?;
            let hk = spec.hooks().as_ref();
            hooks::run_all(
                "createContainer",
                hk.and_then(|h| h.create_container().as_ref()),
                state_json,
            )?;
            mounts::finish(spec, rootfs, *no_pivot)?;
            let linux = spec.linux().as_ref().expect("validated");
            let has_ns = |t| linux.namespaces().iter().flatten().any(|n| n.typ() == t);
            if let Some(h) = spec.hostname() {
                if has_ns(LinuxNamespaceType::Uts) {
                    nix::unistd::sethostname(h).what(format!("sethostname {h:?}"))?;
                }
            }
            if let Some(d) = spec.domainname() {
                if has_ns(LinuxNamespaceType::Uts) {
                    std::fs::write("/proc/sys/kernel/domainname", d)
                        .at("/proc/sys/kernel/domainname")?;
                }
            }
            for (k, v) in linux.sysctl().iter().flatten() {
                let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
                std::fs::write(&path, v).at(&path)?;
            }
            if !terminal {
                nix::unistd::setsid().what("setsid")?;
            }
        }
        Mode::Exec { .. } => {}
    }
    if terminal {
        let Some(c) = &cfg.console else {
            bail!("process.terminal is set but there is no console socket")
        };
        let size = p
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        tty::setup(c, size)?;
    }
    for r in p.rlimits().iter().flatten() {
        let Some(res) = rlimit_resource(r.typ()) else {
            bail!("rlimit {:?}: unknown type", r.typ())
        };
        setrlimit(res, r.soft(), r.hard()).what(format!("setrlimit {:?}", r.typ()))?;
    }
    if let Some(adj) = p.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .at("/proc/self/oom_score_adj")?;
    }
    let env: Vec<String> = p.env().clone().unwrap_or_default();
    let args = p.args().clone().unwrap_or_default();
    let exe = lookup(&args[0], &env, p.cwd())?;
    let filter = match cfg.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(s) => Some(seccomp::build(s)?),
        None => None,
    };
    let caps = p.capabilities().as_ref();
    let bounding = cap_set(&caps.and_then(|c| c.bounding().clone()))?;
    let effective = cap_set(&caps.and_then(|c| c.effective().clone()))?;
    let permitted = cap_set(&caps.and_then(|c| c.permitted().clone()))?;
    let inheritable = cap_set(&caps.and_then(|c| c.inheritable().clone()))?;
    let ambient = cap_set(&caps.and_then(|c| c.ambient().clone()))?;
    let c_args: Vec<CString> = args.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let c_env: Vec<CString> = env.iter().map(|a| cstr(a)).collect::<Result<_>>()?;
    let c_exe = cstr(&exe.to_string_lossy())?;
    send(sock, "ready");
    READY.store(true, Ordering::SeqCst);

    if let Mode::Init {
        fifo, state_json, ..
    } = &cfg.mode
    {
        // Blocks until `start` opens the other end.
        let path = format!("/proc/self/fd/{}", fifo.as_raw_fd());
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .at("exec fifo")?;
        w.write_all(b"0").at("exec fifo")?;
        drop(w);
        let hk = cfg.spec.hooks().as_ref();
        hooks::run_all(
            "startContainer",
            hk.and_then(|h| h.start_container().as_ref()),
            state_json,
        )?;
    }
    let nnp = p.no_new_privileges().unwrap_or(false);
    if let (Some(f), false) = (&filter, nnp) {
        // Without no_new_privs loading needs CAP_SYS_ADMIN: before the drop.
        seccomp::load(f)?;
    }
    // Privileges: bounding set first (needs CAP_SETPCAP), then the ids with
    // capabilities kept, then the exact sets.
    for c in caps::all() {
        if !bounding.contains(&c) && caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, c)
                .map_err(|e| Error::msg(format!("drop {c} from the bounding set: {e}")))?;
        }
    }
    let u = p.user();
    nix::sys::prctl::set_keepcaps(true).what("PR_SET_KEEPCAPS")?;
    let groups: Vec<Gid> = u
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    if let Err(e) = nix::unistd::setgroups(&groups) {
        // A user namespace with setgroups denied: only an empty list fails.
        if !groups.is_empty() {
            return Err(e).what("setgroups");
        }
    }
    let gid = Gid::from_raw(u.gid());
    let uid = Uid::from_raw(u.uid());
    nix::unistd::setresgid(gid, gid, gid).what(format!("setresgid {gid}"))?;
    nix::unistd::setresuid(uid, uid, uid).what(format!("setresuid {uid}"))?;
    nix::sys::prctl::set_keepcaps(false).what("PR_SET_KEEPCAPS")?;
    let ce = |w: &str, e: caps::errors::CapsError| Error::msg(format!("set {w} capabilities: {e}"));
    // Each capset must stay valid: inheritable and effective shrink while
    // the old permitted set still covers them, permitted last.
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(|e| ce("inheritable", e))?;
    caps::set(None, CapSet::Effective, &effective).map_err(|e| ce("effective", e))?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(|e| ce("permitted", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| ce("ambient", e))?;
    for c in &ambient {
        // The kernel needs it permitted and inheritable; runc ignores failures.
        let _ = caps::raise(None, CapSet::Ambient, *c);
    }
    if let Some(m) = u.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m));
    }
    nix::unistd::chdir(p.cwd()).what(format!("chdir {}", p.cwd().display()))?;
    if nnp {
        nix::sys::prctl::set_no_new_privs().what("PR_SET_NO_NEW_PRIVS")?;
        if let Some(f) = &filter {
            seccomp::load(f)?;
        }
    }
    close_extra_fds(3 + cfg.preserve_fds)?;
    let e = nix::unistd::execve(&c_exe, &c_args, &c_env).unwrap_err();
    bail!("exec {}: {e}", exe.display())
}

/// Everything from `first` up is closed at exec, except what the caller
/// asked to keep with --preserve-fds.
fn close_extra_fds(first: i32) -> Result<()> {
    let rd = std::fs::read_dir("/proc/self/fd").at("/proc/self/fd")?;
    let fds: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        if fd >= first {
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
    }
    Ok(())
}

/// The runtime's side of a user namespace: write the spec's id maps.
pub fn write_id_maps(spec: &Spec, pid: Pid) -> Result<()> {
    let linux = spec.linux().as_ref().expect("validated");
    let fmt = |m: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        m.iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let w = |f: &str, s: String| std::fs::write(dir.join(f), s).at(dir.join(f));
    w("uid_map", fmt(linux.uid_mappings()))?;
    w("gid_map", fmt(linux.gid_mappings()))?;
    Ok(())
}
