//! The runtime's side of each command (`Runtime`), working on the state
//! directory `<root>/<id>`.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, LinuxResources, Process, Spec};
use tracing::{debug, warn};

use crate::cgroup::Cgroup;
use crate::error::{bail, Error, IoCtx, Result, SysCtx};
use crate::init::{self, Mode};
use crate::state::{State, Status};
use crate::sys::{self, ForkResult};
use crate::{hooks, spec, tty, util};

pub struct Runtime {
    pub root: PathBuf,
}

#[derive(Default, Debug, Clone)]
pub struct CreateOpts {
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub no_pivot: bool,
    pub preserve_fds: i32,
    /// `run` in the foreground: the caller waits for the init, so it must
    /// become the init's (sub)reaper before the fork.
    pub foreground: bool,
    /// fds (in the caller) that become the process's stdin, stdout and
    /// stderr; None inherits the caller's. Used by the containerd shim.
    pub stdio: Option<[RawFd; 3]>,
}

#[derive(Default, Debug, Clone)]
pub struct ExecOpts {
    /// A process.json (OCI Process); else the container's process with
    /// these overrides.
    pub process: Option<PathBuf>,
    pub args: Vec<String>,
    pub tty: bool,
    pub env: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privs: bool,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: i32,
    /// As [`CreateOpts::stdio`].
    pub stdio: Option<[RawFd; 3]>,
}

/// Signals the foreground `run`/`exec` forwards to the container process.
const FORWARDED: [Signal; 10] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
    Signal::SIGPWR,
];

/// Blocks the forwarded signals and SIGCHLD (before the fork, so none is
/// lost) and waits for one process, passing signals on.
pub struct Waiter {
    sfd: SignalFd,
}

impl Waiter {
    /// A waiter that is also the child subreaper (runc's default), so the
    /// container's orphans re-parent to it and are reaped.
    pub fn new() -> Result<Waiter> {
        Self::with_subreaper(true)
    }

    /// `subreaper` false: runc's `--no-subreaper` (the container's process
    /// must then be our own child).
    pub fn with_subreaper(subreaper: bool) -> Result<Waiter> {
        let mut set = SigSet::empty();
        for s in FORWARDED {
            set.add(s);
        }
        set.add(Signal::SIGCHLD);
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
            .what("sigprocmask")?;
        if subreaper {
            nix::sys::prctl::set_child_subreaper(true).what("PR_SET_CHILD_SUBREAPER")?;
        }
        let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .what("signalfd")?;
        Ok(Waiter { sfd })
    }

    /// Exit code of `pid` (128+N when killed by signal N), reaping any
    /// orphan that reparents to us on the way.
    pub fn wait(&mut self, pid: i32) -> Result<i32> {
        loop {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::Exited(p, c)) if p.as_raw() == pid => return Ok(c),
                    Ok(WaitStatus::Signaled(p, s, _)) if p.as_raw() == pid => {
                        return Ok(128 + s as i32)
                    }
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
            let mut fds = [nix::poll::PollFd::new(
                self.sfd.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
            while let Ok(Some(si)) = self.sfd.read_signal() {
                let sig = si.ssi_signo as i32;
                if sig != Signal::SIGCHLD as i32 {
                    if let Ok(s) = Signal::try_from(sig) {
                        let _ = kill(Pid::from_raw(pid), s);
                    }
                }
            }
        }
    }
}

pub(crate) fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id == "." || id == ".." || id.contains('/') || id.len() > 1024 {
        bail!("invalid container id {id:?}")
    }
    Ok(())
}

/// Undo a half-made container on failure.
pub(crate) struct Undo {
    pub(crate) dir: Option<PathBuf>,
    pub(crate) cgroup: Option<Cgroup>,
    pub(crate) pid: i32,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.pid > 0 {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.kill_all();
            wait_empty(cg, Duration::from_secs(5));
            cg.remove();
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub(crate) fn wait_empty(cg: &Cgroup, max: Duration) {
    let deadline = Instant::now() + max;
    while cg.populated() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub(crate) fn write_pid_file(p: &Path, pid: i32) -> Result<()> {
    // runc writes it atomically, without a newline.
    let tmp = p.with_extension("stasis-tmp");
    std::fs::write(&tmp, pid.to_string()).at(&tmp)?;
    std::fs::rename(&tmp, p).at(p)
}

fn has_ns(spec: &Spec, t: LinuxNamespaceType) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|v| v.iter().any(|n| n.typ() == t))
}

impl Runtime {
    /// Claim the state dir of a new container `id` (`Exists` if taken)
    /// and create its cgroup with the spec's resources; the returned
    /// `Undo` removes both unless disarmed.
    pub(crate) fn claim(&self, id: &str, spec: &Spec) -> Result<(PathBuf, Undo, Cgroup)> {
        std::fs::create_dir_all(&self.root).at(&self.root)?;
        let _ = std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711));
        let dir = State::dir(&self.root, id);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Error::Exists),
            Err(e) => return Err(e).at(&dir),
        }
        let mut undo = Undo {
            dir: Some(dir.clone()),
            cgroup: None,
            pid: 0,
        };
        let linux = spec.linux().as_ref().expect("validated");
        let cg = Cgroup::create(linux.cgroups_path().as_deref(), id)?;
        undo.cgroup = Some(cg.clone());
        if let Some(res) = linux.resources() {
            cg.apply(res)?;
        }
        Ok((dir, undo, cg))
    }

    pub fn new(root: impl Into<PathBuf>) -> Runtime {
        Runtime { root: root.into() }
    }

    pub fn load(&self, id: &str) -> Result<State> {
        check_id(id).map_err(|_| Error::NotExist)?;
        State::load(&self.root, id)
    }

    /// Phase one: a container whose init waits on the exec fifo.
    pub fn create(&self, o: &CreateOpts, waiter: Option<&mut Waiter>) -> Result<State> {
        let _ = waiter;
        check_id(&o.id)?;
        let bundle = std::fs::canonicalize(&o.bundle)
            .map_err(|e| Error::msg(format!("bundle {}: {e}", o.bundle.display())))?;
        let spec = spec::load(&bundle)?;
        let rootfs = spec::rootfs(&bundle, &spec)?;
        let process = spec.process().clone().expect("validated");
        if !has_ns(&spec, LinuxNamespaceType::Mount) {
            bail!("config.json: invalid field linux.namespaces: a mount namespace is required")
        }
        let terminal = process.terminal().unwrap_or(false);
        if terminal && o.console_socket.is_none() {
            bail!("cannot allocate tty if runc will detach without setting console socket")
        }
        if !terminal && o.console_socket.is_some() {
            bail!("cannot use console socket if runc will not detach or allocate tty")
        }
        let (dir, mut undo, cg) = self.claim(&o.id, &spec)?;
        let fifo_path = dir.join("exec.fifo");
        nix::unistd::mkfifo(&fifo_path, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .what(format!("mkfifo {}", fifo_path.display()))?;
        std::fs::set_permissions(&fifo_path, std::fs::Permissions::from_mode(0o622))
            .at(&fifo_path)?;
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&fifo_path)
            .at(&fifo_path)?;
        let console = o.console_socket.as_deref().map(tty::connect).transpose()?;
        let annotations: BTreeMap<String, String> = spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect();
        let mut st = State {
            id: o.id.clone(),
            pid: 0,
            start_time: 0,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: util::rfc3339_nano(SystemTime::now()),
            owner: nix::unistd::geteuid().as_raw(),
            annotations,
            cgroup: Some(cg.clone()),
            spec: spec.clone(),
        };
        let cfg = init::Config {
            spec: &spec,
            process: &process,
            cgroup: Some(&cg),
            console,
            preserve_fds: o.preserve_fds,
            stdio: o.stdio,
            mode: Mode::Init {
                fifo,
                no_pivot: o.no_pivot,
                rootfs: rootfs.clone(),
                state_json: String::new(),
            },
        };
        let pid = self.spawn(cfg, &spec, &mut st)?;
        undo.pid = pid;
        st.pid = pid;
        st.start_time = util::proc_stat(pid).map(|s| s.1).unwrap_or(0);
        st.save(&self.root)?;
        if let Some(p) = &o.pid_file {
            write_pid_file(p, pid)?;
        }
        std::mem::forget(undo);
        Ok(st)
    }

    /// Fork the helper and drive the sync protocol; returns the container
    /// process's pid once it is ready.
    fn spawn(&self, mut cfg: init::Config<'_>, spec: &Spec, st: &mut State) -> Result<i32> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| Error::msg(format!("socketpair: {e}")))?;
        if let Mode::Init { state_json, .. } = &mut cfg.mode {
            // Filled with the real pid by the hook message; the container
            // side only needs it for createContainer/startContainer hooks,
            // which runc also gives status "created".
            *state_json = st.hook_state("created");
        }
        let helper = match sys::fork().what("fork")? {
            ForkResult::Child => {
                drop(ours);
                init::child(cfg, theirs)
            }
            ForkResult::Parent { child } => child,
        };
        drop(cfg);
        drop(theirs);
        let mut pid = 0;
        let res = (|| -> Result<()> {
            loop {
                let Some(line) = init::recv(&ours) else {
                    bail!("container process exited before it was ready")
                };
                let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match cmd {
                    "userns" => {
                        init::write_id_maps(spec, helper)?;
                        init::send(&ours, "ok");
                    }
                    "pid" => {
                        pid = arg
                            .parse()
                            .map_err(|_| Error::msg(format!("bad pid message {line:?}")))?;
                        st.pid = pid;
                        init::send(&ours, "go");
                    }
                    "hooks" => {
                        let hk = spec.hooks().as_ref();
                        let state = st.hook_state("creating");
                        hooks::run_all("prestart", hk.and_then(|h| h.prestart().as_ref()), &state)?;
                        hooks::run_all(
                            "createRuntime",
                            hk.and_then(|h| h.create_runtime().as_ref()),
                            &state,
                        )?;
                        init::send(&ours, "ok");
                    }
                    "ready" => return Ok(()),
                    "error" => bail!("{arg}"),
                    _ => bail!("unexpected message {line:?} from the container process"),
                }
            }
        })();
        let _ = waitpid(helper, None);
        if let Err(e) = res {
            if pid > 0 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            return Err(e);
        }
        Ok(pid)
    }

    /// Phase two: let the init exec the program.
    pub fn start(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        match st.status(&self.root) {
            Status::Created => {}
            Status::Stopped => bail!("cannot start a container that has stopped"),
            _ => bail!("cannot start an already running container"),
        }
        let fifo = st.fifo(&self.root);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .at(&fifo)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 1];
        loop {
            use std::io::Read;
            match f.read(&mut buf) {
                Ok(1) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).at(&fifo),
            }
            if !util::alive(st.pid, st.start_time) {
                bail!("cannot start a container that has stopped")
            }
            if Instant::now() > deadline {
                bail!("container init did not take the exec fifo within 30s")
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = std::fs::remove_file(&fifo);
        let hk = st.spec.hooks().as_ref();
        if let Err(e) = hooks::run_all(
            "poststart",
            hk.and_then(|h| h.poststart().as_ref()),
            &st.hook_state("running"),
        ) {
            warn!("{e}");
            return Err(e);
        }
        Ok(())
    }

    /// `run`: create and start; with `waiter`, wait for the exit, delete the
    /// container and return the exit code.
    pub fn run(&self, o: &CreateOpts, detach: bool, keep: bool) -> Result<i32> {
        let mut waiter = if detach { None } else { Some(Waiter::new()?) };
        let st = self.create(o, waiter.as_mut())?;
        if let Err(e) = self.start(&o.id) {
            let _ = self.delete(&o.id, true);
            return Err(e);
        }
        let Some(w) = waiter.as_mut() else {
            return Ok(0);
        };
        let code = w.wait(st.pid)?;
        if !keep {
            self.delete(&o.id, true)?;
        }
        Ok(code)
    }

    pub fn state_json(&self, id: &str) -> Result<String> {
        let st = self.load(id)?;
        let v = st.oci(st.status(&self.root), "");
        serde_json::to_string_pretty(&v).map_err(Error::msg)
    }

    pub fn list(&self) -> Result<Vec<(State, Status)>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&self.root),
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            match State::load(&self.root, &n) {
                Ok(st) => {
                    let s = st.status(&self.root);
                    out.push((st, s));
                }
                Err(e) => debug!("{n}: {e}"),
            }
        }
        Ok(out)
    }

    pub fn kill(&self, id: &str, sig: Signal, all: bool) -> Result<()> {
        let st = self.load(id)?;
        let status = st.status(&self.root);
        if status == Status::Stopped && !(all && st.cgroup.as_ref().is_some_and(|c| c.populated()))
        {
            bail!("container not running")
        }
        if all {
            if let Some(cg) = &st.cgroup {
                if sig == Signal::SIGKILL {
                    return cg.kill_all();
                }
                cg.signal_all(sig)?;
                if status == Status::Paused && sig != Signal::SIGKILL {
                    debug!("signal {sig} queued for the frozen processes of {id}");
                }
                return Ok(());
            }
        }
        kill(Pid::from_raw(st.pid), sig).what(format!("kill {} {sig}", st.pid))
    }

    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        let st = match self.load(id) {
            Ok(s) => s,
            Err(Error::NotExist) if check_id(id).is_ok() => {
                // A state dir without state.json: an aborted create.
                let d = State::dir(&self.root, id);
                if d.is_dir() {
                    let _ = std::fs::remove_dir_all(&d);
                    return Ok(());
                }
                if force {
                    return Ok(());
                }
                return Err(Error::NotExist);
            }
            Err(e) => return Err(e),
        };
        let status = st.status(&self.root);
        match status {
            Status::Stopped | Status::Created => {}
            s if !force => bail!("cannot delete container {id} that is not stopped: {s}"),
            _ => {}
        }
        if status != Status::Stopped {
            let _ = kill(Pid::from_raw(st.pid), Signal::SIGKILL);
        }
        if let Some(cg) = &st.cgroup {
            if cg.populated() {
                cg.kill_all()?;
            }
            wait_empty(cg, Duration::from_secs(10));
            cg.remove();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while util::alive(st.pid, st.start_time) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let hk = st.spec.hooks().as_ref();
        if let Err(e) = hooks::run_all(
            "poststop",
            hk.and_then(|h| h.poststop().as_ref()),
            &st.hook_state("stopped"),
        ) {
            warn!("{e}");
        }
        let d = State::dir(&self.root, id);
        std::fs::remove_dir_all(&d).at(&d)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        match st.status(&self.root) {
            Status::Running | Status::Created => {}
            _ => bail!("container not running"),
        }
        let Some(cg) = &st.cgroup else {
            bail!("container {id} has no cgroup")
        };
        cg.freeze(true)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        let st = self.load(id)?;
        if st.status(&self.root) != Status::Paused {
            bail!("container not paused")
        }
        let Some(cg) = &st.cgroup else {
            bail!("container {id} has no cgroup")
        };
        cg.freeze(false)
    }

    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let st = self.load(id)?;
        Ok(st.cgroup.as_ref().map(|c| c.procs()).unwrap_or_default())
    }

    pub fn update(&self, id: &str, res: &LinuxResources) -> Result<Vec<String>> {
        let st = self.load(id)?;
        if st.status(&self.root) == Status::Stopped {
            bail!("container not running")
        }
        let Some(cg) = &st.cgroup else {
            bail!("container {id} has no cgroup")
        };
        cg.apply(res)
    }

    pub fn stats(&self, id: &str) -> Result<serde_json::Value> {
        let st = self.load(id)?;
        if st.status(&self.root) == Status::Stopped {
            bail!("container not running")
        }
        let data = st.cgroup.as_ref().map(|c| c.stats()).unwrap_or_default();
        Ok(serde_json::json!({"type": "stats", "id": id, "data": data}))
    }

    /// A new process in the running container; returns its exit code
    /// (foreground) or 0 once it runs (detached).
    pub fn exec(&self, id: &str, o: &ExecOpts) -> Result<i32> {
        let st = self.load(id)?;
        match st.status(&self.root) {
            Status::Running | Status::Created => {}
            Status::Paused => bail!("cannot exec in a paused container"),
            Status::Stopped => bail!("cannot exec in a stopped container"),
        }
        let process = self.exec_process(&st, o)?;
        let terminal = process.terminal().unwrap_or(false);
        if terminal && o.console_socket.is_none() {
            bail!("cannot allocate tty if runc will detach without setting console socket")
        }
        let console = o.console_socket.as_deref().map(tty::connect).transpose()?;
        let mut waiter = if o.detach { None } else { Some(Waiter::new()?) };
        let cfg = init::Config {
            spec: &st.spec,
            process: &process,
            cgroup: st.cgroup.as_ref(),
            console,
            preserve_fds: o.preserve_fds,
            stdio: o.stdio,
            mode: Mode::Exec { init_pid: st.pid },
        };
        let mut tmp = st.clone();
        let pid = self.spawn(cfg, &st.spec.clone(), &mut tmp)?;
        if let Some(p) = &o.pid_file {
            write_pid_file(p, pid)?;
        }
        match waiter.as_mut() {
            Some(w) => w.wait(pid),
            None => Ok(0),
        }
    }

    fn exec_process(&self, st: &State, o: &ExecOpts) -> Result<Process> {
        if let Some(p) = &o.process {
            let text = std::fs::read_to_string(p).at(p)?;
            let pr: Process = spec::parse(&p.display().to_string(), &text)?;
            spec::check_process(&pr, "process.json: invalid field")?;
            return Ok(pr);
        }
        let mut pr = st.spec.process().clone().expect("validated");
        if o.args.is_empty() {
            bail!("exec: no command given (args or --process)")
        }
        pr.set_args(Some(o.args.clone()));
        pr.set_terminal(Some(o.tty));
        let mut env = pr.env().clone().unwrap_or_default();
        env.extend(o.env.iter().cloned());
        pr.set_env(Some(env));
        if let Some(c) = &o.cwd {
            pr.set_cwd(c.clone());
        }
        if let Some(u) = &o.user {
            let (uid, gid) = u.split_once(':').unwrap_or((u.as_str(), "0"));
            let uid: u32 = uid
                .parse()
                .map_err(|_| Error::msg(format!("--user {u:?}: expected UID[:GID]")))?;
            let gid: u32 = gid
                .parse()
                .map_err(|_| Error::msg(format!("--user {u:?}: expected UID[:GID]")))?;
            let mut user = pr.user().clone();
            user.set_uid(uid);
            user.set_gid(gid);
            pr.set_user(user);
        }
        if !o.additional_gids.is_empty() {
            let mut user = pr.user().clone();
            user.set_additional_gids(Some(o.additional_gids.clone()));
            pr.set_user(user);
        }
        if o.no_new_privs {
            pr.set_no_new_privileges(Some(true));
        }
        if !o.caps.is_empty() {
            let mut c = pr.capabilities().clone().unwrap_or_default();
            for name in &o.caps {
                let cap: oci_spec::runtime::Capability =
                    serde_json::from_value(serde_json::Value::String(name.clone()))
                        .map_err(|_| Error::msg(format!("--cap {name:?}: unknown capability")))?;
                let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                    let mut s = s.clone().unwrap_or_default();
                    s.insert(cap);
                    Some(s)
                };
                let (b, e, p, a) = (
                    add(c.bounding()),
                    add(c.effective()),
                    add(c.permitted()),
                    add(c.ambient()),
                );
                c.set_bounding(b)
                    .set_effective(e)
                    .set_permitted(p)
                    .set_ambient(a);
            }
            pr.set_capabilities(Some(c));
        }
        Ok(pr)
    }
}

/// `stasis state`-style status for a state that failed to load.
pub fn open_file(p: &Path) -> Result<File> {
    File::open(p).at(p)
}
