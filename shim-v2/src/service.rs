//! The task service: containerd's Task API v2 on top of `stasis_oci::Runtime`.
//!
//! One shim serves one container (its init and its exec'd processes). The
//! shim is the subreaper of everything it starts: the crate's reaper thread
//! reaps children on SIGCHLD and a monitor thread here turns the exits into
//! process state, Wait answers and TaskExit events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim as shim;
use nix::sys::signal::Signal;
use shim::api;
use shim::protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO,
    TaskPaused, TaskResumed, TaskStart,
};
use shim::protos::protobuf::well_known_types::any::Any;
use shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use shim::protos::protobuf::{Message, MessageDyn, MessageField};
use shim::protos::shim::oci::CheckpointOptions;
use shim::protos::ttrpc::{self, Code};
use shim::publisher::RemotePublisher;
use shim::{ExitSignal, TtrpcContext, TtrpcResult};
use stasis_oci::{CreateOpts, ExecOpts, Runtime, Status};

use crate::io::{self, ProcIo};

/// Grace for a process's output to reach the FIFOs before its exit is
/// reported.
const IO_DRAIN: Duration = Duration::from_secs(3);

fn err(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

/// Library errors as containerd's errdefs expect them over ttrpc.
fn oci_err(what: &str, e: stasis_oci::Error) -> ttrpc::Error {
    match e {
        stasis_oci::Error::NotExist => err(Code::NOT_FOUND, format!("{what}: not found")),
        stasis_oci::Error::Exists => err(Code::ALREADY_EXISTS, format!("{what}: already exists")),
        e => err(Code::UNKNOWN, format!("{what}: {e}")),
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ttrpc::Error {
    err(Code::UNKNOWN, format!("{what}: {e:#}"))
}

fn now() -> Timestamp {
    shim::util::timestamp().unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum PState {
    Created,
    Running,
    Stopped,
}

struct Proc {
    pid: i32,
    state: PState,
    exit_status: u32,
    exited_at: Option<Timestamp>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    io: Option<ProcIo>,
    /// An exec's process (OCI Process JSON) until it is started.
    spec: Option<Vec<u8>>,
}

impl Proc {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Proc {
        Proc {
            pid: 0,
            state: PState::Created,
            exit_status: 0,
            exited_at: None,
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
            io: None,
            spec: None,
        }
    }

    fn io(&self) -> Result<ProcIo, ttrpc::Error> {
        if self.terminal {
            ProcIo::terminal(&self.stdin, &self.stdout)
        } else {
            ProcIo::pipes(&self.stdin, &self.stdout, &self.stderr)
        }
        .map_err(|e| internal("stdio", e))
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    /// Create from a checkpoint: the image dir, restored at Start (as
    /// runc's shim does).
    restore_from: Option<PathBuf>,
    init: Proc,
    execs: HashMap<String, Proc>,
}

#[derive(Default)]
struct Tasks {
    ctr: Option<Container>,
    /// Exits of pids not (yet) known: a process can exit before create or
    /// exec returns its pid.
    early: HashMap<i32, i32>,
}

pub struct Inner {
    ns: String,
    bundle: PathBuf,
    rt: Runtime,
    exit: Arc<ExitSignal>,
    publisher: RemotePublisher,
    tasks: Mutex<Tasks>,
    /// Signalled on every process exit (Wait).
    exited: Condvar,
}

#[derive(Clone)]
pub struct Service(Arc<Inner>);

impl Service {
    pub fn new(
        ns: String,
        bundle: PathBuf,
        exit: Arc<ExitSignal>,
        publisher: RemotePublisher,
    ) -> Service {
        let inner = Arc::new(Inner {
            ns,
            rt: Runtime::new(crate::runtime_root(&bundle)),
            bundle,
            exit,
            publisher,
            tasks: Mutex::new(Tasks::default()),
            exited: Condvar::new(),
        });
        let sub = shim::monitor::monitor_subscribe(shim::monitor::Topic::All)
            .expect("subscribe to process exits");
        let me = inner.clone();
        std::thread::spawn(move || {
            for ev in sub.rx.iter() {
                if let shim::monitor::Subject::Pid(pid) = ev.subject {
                    me.on_exit(pid, ev.exit_code);
                }
            }
        });
        Service(inner)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap()
    }

    fn publish(&self, topic: &str, ev: Box<dyn MessageDyn>) {
        if let Err(e) =
            self.publisher
                .publish(ttrpc::context::Context::default(), topic, &self.ns, ev)
        {
            shim::warn!("publish {topic}: {e}");
        }
    }

    /// A reaped child: if it is one of ours, record the exit once its
    /// output is drained, wake waiters and tell containerd.
    fn on_exit(self: &Arc<Self>, pid: i32, code: i32) {
        let mut t = self.lock();
        let Some(c) = t.ctr.as_mut() else {
            t.early.insert(pid, code);
            return;
        };
        let exec_id = if c.init.pid == pid && c.init.state != PState::Stopped {
            String::new()
        } else if let Some((k, _)) = c
            .execs
            .iter()
            .find(|(_, p)| p.pid == pid && p.state != PState::Stopped)
        {
            k.clone()
        } else {
            t.early.insert(pid, code);
            return;
        };
        let pending = {
            let p = if exec_id.is_empty() {
                &c.init
            } else {
                &c.execs[&exec_id]
            };
            p.io.as_ref().map(|io| io.pending.clone())
        };
        drop(t);
        let me = self.clone();
        std::thread::spawn(move || {
            if let Some(p) = pending {
                p.wait(IO_DRAIN);
            }
            me.finish(pid, &exec_id, code);
        });
    }

    fn finish(&self, pid: i32, exec_id: &str, code: i32) {
        let mut t = self.lock();
        let Some(c) = t.ctr.as_mut() else { return };
        let cid = c.id.clone();
        let p = if exec_id.is_empty() {
            &mut c.init
        } else {
            match c.execs.get_mut(exec_id) {
                Some(p) => p,
                None => return,
            }
        };
        let at = now();
        if let Some(io) = &p.io {
            io.close_stdin();
        }
        p.state = PState::Stopped;
        p.exit_status = code as u32;
        p.exited_at = Some(at.clone());
        if exec_id.is_empty() {
            // As runc's shim: the init's end ends the container; any
            // process left (no pid namespace of its own) is killed.
            if let Err(e) = self.rt.kill(&cid, Signal::SIGKILL, true) {
                shim::debug!("kill the rest of {cid}: {e}");
            }
        }
        let ev = TaskExit {
            container_id: cid.clone(),
            id: if exec_id.is_empty() {
                cid
            } else {
                exec_id.to_string()
            },
            pid: pid as u32,
            exit_status: code as u32,
            exited_at: MessageField::some(at),
            ..Default::default()
        };
        // Under the lock: the exit cannot overtake the start event.
        self.publish("/tasks/exit", Box::new(ev));
        drop(t);
        self.exited.notify_all();
    }

    /// A pid the library just started: it may already have exited.
    fn claim_early(t: &mut Tasks, pid: i32) -> Option<i32> {
        let code = t.early.remove(&pid)?;
        // A stale entry for a recycled pid when the process is still there.
        if Path::new(&format!("/proc/{pid}")).exists() {
            return None;
        }
        Some(code)
    }

    fn status_of(&self, c: &Container, p: &Proc, is_init: bool) -> api::Status {
        match p.state {
            PState::Stopped => return api::Status::STOPPED,
            PState::Created if !is_init => return api::Status::CREATED,
            _ => {}
        }
        match self.rt.load(&c.id) {
            Ok(st) => match st.status(&self.rt.root) {
                Status::Created if is_init => api::Status::CREATED,
                Status::Paused => api::Status::PAUSED,
                Status::Stopped if is_init => api::Status::STOPPED,
                _ => api::Status::RUNNING,
            },
            // Created from a checkpoint, not restored yet.
            Err(_) if p.state == PState::Created => api::Status::CREATED,
            Err(_) => api::Status::STOPPED,
        }
    }
}

fn get<'a>(t: &'a mut Tasks, id: &str) -> TtrpcResult<&'a mut Container> {
    match t.ctr.as_mut() {
        Some(c) if c.id == id => Ok(c),
        _ => Err(err(Code::NOT_FOUND, format!("container {id}: not found"))),
    }
}

fn process<'a>(c: &'a mut Container, exec_id: &str) -> TtrpcResult<&'a mut Proc> {
    if exec_id.is_empty() {
        return Ok(&mut c.init);
    }
    c.execs
        .get_mut(exec_id)
        .ok_or_else(|| err(Code::NOT_FOUND, format!("process {exec_id}: not found")))
}

fn any<M: Message>(type_url: &str, m: &M) -> TtrpcResult<Any> {
    Ok(Any {
        type_url: type_url.into(),
        value: m.write_to_bytes().map_err(|e| internal("encode", e))?,
        ..Default::default()
    })
}

impl shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let s = &self.0;
        let mut t = s.lock();
        if t.ctr.is_some() {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("container {}: already exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        io::mount_rootfs(&bundle, &req.rootfs).map_err(|e| internal("rootfs", e))?;
        let mut init = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        if !req.checkpoint.is_empty() {
            // The task stays CREATED with pid 0 until Start restores it.
            t.ctr = Some(Container {
                id: req.id.clone(),
                bundle: bundle.clone(),
                restore_from: Some(PathBuf::from(&req.checkpoint)),
                init,
                execs: HashMap::new(),
            });
            s.publish("/tasks/create", Box::new(create_event(&req, 0)));
            return Ok(api::CreateTaskResponse::new());
        }
        let mut pio = match init.io() {
            Ok(p) => p,
            Err(e) => {
                io::unmount_rootfs(&bundle);
                return Err(e);
            }
        };
        let o = CreateOpts {
            id: req.id.clone(),
            bundle: bundle.clone(),
            console_socket: pio.console_socket(),
            stdio: pio.child_fds(),
            ..Default::default()
        };
        let st = match s.rt.create(&o, None) {
            Ok(st) => st,
            Err(e) => {
                io::unmount_rootfs(&bundle);
                return Err(oci_err(&format!("create {}", req.id), e));
            }
        };
        if let Err(e) = pio.attach() {
            let _ = s.rt.delete(&req.id, true);
            io::unmount_rootfs(&bundle);
            return Err(internal("console", e));
        }
        init.pid = st.pid;
        init.io = Some(pio);
        let early = Inner::claim_early(&mut t, st.pid);
        t.ctr = Some(Container {
            id: req.id.clone(),
            bundle: bundle.clone(),
            restore_from: None,
            init,
            execs: HashMap::new(),
        });
        s.publish("/tasks/create", Box::new(create_event(&req, st.pid)));
        drop(t);
        if let Some(code) = early {
            s.on_exit(st.pid, code);
        }
        Ok(api::CreateTaskResponse {
            pid: st.pid as u32,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let s = &self.0;
        let mut t = s.lock();
        let c = get(&mut t, &req.id)?;
        if req.exec_id.is_empty() {
            if c.init.state != PState::Created {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("container {}: already started", req.id),
                ));
            }
            let mut early = None;
            if let Some(images) = c.restore_from.clone() {
                let pid = restore(&s.rt, c, &images)?;
                c.restore_from = None;
                c.init.pid = pid;
                early = Some(pid);
            } else {
                s.rt.start(&req.id)
                    .map_err(|e| oci_err(&format!("start {}", req.id), e))?;
            }
            c.init.state = PState::Running;
            let pid = c.init.pid;
            let early = early.and_then(|p| Inner::claim_early(&mut t, p));
            s.publish(
                "/tasks/start",
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            );
            drop(t);
            if let Some(code) = early {
                s.on_exit(pid, code);
            }
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }
        let p = process(c, &req.exec_id)?;
        if p.state != PState::Created {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("process {}: already started", req.exec_id),
            ));
        }
        let spec = p.spec.clone().unwrap_or_default();
        let dir = s.rt.root.join(&req.id);
        let spec_file = dir.join(format!("exec-{}.json", std::process::id()));
        let pid_file = dir.join(format!("exec-{}.pid", std::process::id()));
        std::fs::write(&spec_file, &spec).map_err(|e| internal("exec process spec", e))?;
        let mut pio = p.io()?;
        let o = ExecOpts {
            process: Some(spec_file.clone()),
            console_socket: pio.console_socket(),
            pid_file: Some(pid_file.clone()),
            detach: true,
            stdio: pio.child_fds(),
            ..Default::default()
        };
        let r = s.rt.exec(&req.id, &o);
        let _ = std::fs::remove_file(&spec_file);
        r.map_err(|e| oci_err(&format!("exec {} in {}", req.exec_id, req.id), e))?;
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| internal("exec", "no pid file"))?;
        let _ = std::fs::remove_file(&pid_file);
        pio.attach().map_err(|e| internal("console", e))?;
        p.pid = pid;
        p.state = PState::Running;
        p.io = Some(pio);
        let early = Inner::claim_early(&mut t, pid);
        s.publish(
            "/tasks/exec-started",
            Box::new(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            }),
        );
        drop(t);
        if let Some(code) = early {
            s.on_exit(pid, code);
        }
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let s = &self.0;
        let mut t = s.lock();
        let c = get(&mut t, &req.id)?;
        let is_init = req.exec_id.is_empty();
        let c: &Container = c;
        let p = if is_init {
            &c.init
        } else {
            c.execs.get(&req.exec_id).ok_or_else(|| {
                err(
                    Code::NOT_FOUND,
                    format!("process {}: not found", req.exec_id),
                )
            })?
        };
        let mut r = api::StateResponse {
            id: if is_init {
                req.id.clone()
            } else {
                req.exec_id.clone()
            },
            bundle: c.bundle.display().to_string(),
            pid: p.pid as u32,
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: p.exit_status,
            exited_at: p.exited_at.clone().into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        r.set_status(s.status_of(c, p, is_init));
        Ok(r)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let s = &self.0;
        let mut t = s.lock();
        let c = get(&mut t, &req.id)?;
        let pids =
            s.rt.pids(&req.id)
                .map_err(|e| oci_err(&format!("pids {}", req.id), e))?;
        let mut r = api::PidsResponse::new();
        for pid in pids {
            let mut info = shim::protos::types::task::ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            };
            if let Some((k, _)) = c.execs.iter().find(|(_, p)| p.pid == pid) {
                let d = shim::protos::shim::oci::ProcessDetails {
                    exec_id: k.clone(),
                    ..Default::default()
                };
                info.info = MessageField::some(any("containerd.runc.v1.ProcessDetails", &d)?);
            }
            r.processes.push(info);
        }
        Ok(r)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        let mut t = s.lock();
        get(&mut t, &req.id)?;
        s.rt.pause(&req.id)
            .map_err(|e| precondition(&format!("pause {}", req.id), e))?;
        s.publish(
            "/tasks/paused",
            Box::new(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        let mut t = s.lock();
        get(&mut t, &req.id)?;
        s.rt.resume(&req.id)
            .map_err(|e| precondition(&format!("resume {}", req.id), e))?;
        s.publish(
            "/tasks/resumed",
            Box::new(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        let mut t = s.lock();
        let c = get(&mut t, &req.id)?;
        let sig = Signal::try_from(req.signal as i32)
            .map_err(|_| err(Code::INVALID_ARGUMENT, format!("signal {}", req.signal)))?;
        if req.exec_id.is_empty() {
            if c.init.state == PState::Created && c.init.pid == 0 {
                // Created from a checkpoint and never (or not successfully)
                // restored: no process, so the kill ends it here, and
                // `ctr task rm -f` does not wait forever for an exit.
                let at = now();
                c.init.state = PState::Stopped;
                c.init.exit_status = 128 + sig as u32;
                c.init.exited_at = Some(at.clone());
                let ev = TaskExit {
                    container_id: req.id.clone(),
                    id: req.id.clone(),
                    pid: 0,
                    exit_status: c.init.exit_status,
                    exited_at: MessageField::some(at),
                    ..Default::default()
                };
                s.publish("/tasks/exit", Box::new(ev));
                drop(t);
                s.exited.notify_all();
                return Ok(api::Empty::new());
            }
            if c.init.state == PState::Stopped && !req.all {
                return Err(err(
                    Code::NOT_FOUND,
                    format!("container {}: process already finished", req.id),
                ));
            }
            s.rt.kill(&req.id, sig, req.all)
                .map_err(|e| precondition(&format!("kill {}", req.id), e))?;
            return Ok(api::Empty::new());
        }
        let p = process(c, &req.exec_id)?;
        if p.state != PState::Running {
            return Err(err(
                Code::NOT_FOUND,
                format!("process {}: not running", req.exec_id),
            ));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
            .map_err(|e| internal(&format!("kill {}", p.pid), e))?;
        Ok(api::Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        let mut t = s.lock();
        let c = get(&mut t, &req.id)?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("process {}: already exists", req.exec_id),
            ));
        }
        if c.init.state == PState::Stopped {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("container {}: not running", req.id),
            ));
        }
        let mut p = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        p.spec = Some(req.spec.value.clone());
        c.execs.insert(req.exec_id.clone(), p);
        s.publish(
            "/tasks/exec-added",
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        let mut t = s.lock();
        let p = process(get(&mut t, &req.id)?, &req.exec_id)?;
        if let Some(io) = &p.io {
            if io.console.is_some() {
                io.resize(req.width, req.height)
                    .map_err(|e| internal("resize", e))?;
            }
        }
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        let mut t = s.lock();
        let p = process(get(&mut t, &req.id)?, &req.exec_id)?;
        if req.stdin {
            if let Some(io) = &p.io {
                io.close_stdin();
            }
        }
        Ok(api::Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        let mut t = s.lock();
        get(&mut t, &req.id)?;
        // LinuxResources as JSON, like the spec itself.
        let res: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&req.resources.value)
                .map_err(|e| err(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        s.rt.update(&req.id, &res)
            .map_err(|e| precondition(&format!("update {}", req.id), e))?;
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let s = &self.0;
        let mut t = s.lock();
        loop {
            let p = process(get(&mut t, &req.id)?, &req.exec_id)?;
            if p.state == PState::Stopped {
                return Ok(api::WaitResponse {
                    exit_status: p.exit_status,
                    exited_at: p.exited_at.clone().into(),
                    ..Default::default()
                });
            }
            t = s.exited.wait(t).unwrap();
        }
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let s = &self.0;
        let mut t = s.lock();
        get(&mut t, &req.id)?;
        let st =
            s.rt.load(&req.id)
                .map_err(|e| oci_err(&format!("stats {}", req.id), e))?;
        let Some(cg) = st.cgroup else {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("container {}: no cgroup", req.id),
            ));
        };
        let m = crate::stats::metrics(&cg.dir);
        Ok(api::StatsResponse {
            stats: MessageField::some(any("io.containerd.cgroups.v2.Metrics", &m)?),
            ..Default::default()
        })
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        let mut t = s.lock();
        let c = get(&mut t, &req.id)?;
        if c.init.state != PState::Running {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("container {}: not running", req.id),
            ));
        }
        let opts = match req.options.as_ref() {
            Some(a) if !a.value.is_empty() => CheckpointOptions::parse_from_bytes(&a.value)
                .map_err(|e| err(Code::INVALID_ARGUMENT, format!("checkpoint options: {e}")))?,
            _ => CheckpointOptions::new(),
        };
        let image = if opts.image_path.is_empty() {
            PathBuf::from(&req.path)
        } else {
            PathBuf::from(&opts.image_path)
        };
        let work = if opts.work_path.is_empty() {
            c.bundle.join("work").join("criu-work")
        } else {
            PathBuf::from(&opts.work_path)
        };
        let o = stasis_oci::CheckpointOpts {
            image_path: image,
            work_path: Some(work),
            leave_running: !opts.exit,
            tcp_established: opts.open_tcp,
            ext_unix_sk: opts.external_unix_sockets,
            shell_job: opts.terminal,
            file_locks: opts.file_locks,
            empty_ns: opts.empty_namespaces.clone(),
            manage_cgroups_mode: Some(opts.cgroups_mode.clone()).filter(|m| !m.is_empty()),
            ..Default::default()
        };
        let rt = &s.rt;
        let id = req.id.clone();
        // A failed checkpoint leaves the container running (the library
        // thaws it); containerd sees a failed precondition.
        stasis_oci::util::in_child(|| rt.checkpoint(&id, &o).map(|_| String::new()))
            .map_err(|e| precondition(&format!("checkpoint {}", req.id), e))?;
        s.publish(
            "/tasks/checkpointed",
            Box::new(TaskCheckpointed {
                container_id: req.id.clone(),
                checkpoint: req.path.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let s = &self.0;
        let mut t = s.lock();
        let c = get(&mut t, &req.id)?;
        if !req.exec_id.is_empty() {
            let p = process(c, &req.exec_id)?;
            if p.state == PState::Running {
                return Err(err(
                    Code::FAILED_PRECONDITION,
                    format!("process {}: still running", req.exec_id),
                ));
            }
            let p = c.execs.remove(&req.exec_id).expect("looked up");
            return Ok(api::DeleteResponse {
                pid: p.pid as u32,
                exit_status: p.exit_status,
                exited_at: p.exited_at.into(),
                ..Default::default()
            });
        }
        if c.init.state == PState::Running {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("container {}: still running", req.id),
            ));
        }
        if let Err(e) = s.rt.delete(&req.id, true) {
            if !matches!(e, stasis_oci::Error::NotExist) {
                return Err(oci_err(&format!("delete {}", req.id), e));
            }
        }
        io::unmount_rootfs(&c.bundle);
        let c = t.ctr.take().expect("looked up");
        let at = c.init.exited_at.clone().unwrap_or_else(now);
        s.publish(
            "/tasks/delete",
            Box::new(TaskDelete {
                container_id: c.id.clone(),
                pid: c.init.pid as u32,
                exit_status: c.init.exit_status,
                exited_at: MessageField::some(at.clone()),
                id: c.id.clone(),
                ..Default::default()
            }),
        );
        drop(t);
        s.exited.notify_all();
        Ok(api::DeleteResponse {
            pid: c.init.pid as u32,
            exit_status: c.init.exit_status,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let s = &self.0;
        let mut t = s.lock();
        let c = get(&mut t, &req.id)?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: c.init.pid as u32,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let s = &self.0;
        // A shim with its container still there keeps serving.
        if s.lock().ctr.is_some() {
            return Ok(api::Empty::new());
        }
        let _ = &s.bundle;
        s.exit.signal();
        Ok(api::Empty::new())
    }
}

fn create_event(req: &api::CreateTaskRequest, pid: i32) -> TaskCreate {
    TaskCreate {
        container_id: req.id.clone(),
        bundle: req.bundle.clone(),
        rootfs: req.rootfs.clone(),
        io: MessageField::some(TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        }),
        checkpoint: req.checkpoint.clone(),
        pid: pid as u32,
        ..Default::default()
    }
}

/// Start of a task created from a checkpoint: restore it with this
/// process's stdio; on failure the task stays CREATED (pid 0), which
/// Delete removes at once.
fn restore(rt: &Runtime, c: &mut Container, images: &Path) -> TtrpcResult<i32> {
    let mut pio = c.init.io()?;
    let o = stasis_oci::RestoreOpts {
        image_path: images.to_path_buf(),
        work_path: Some(c.bundle.join("work")),
        console_socket: pio.console_socket(),
        detach: true,
        no_subreaper: true,
        stdio: pio.child_fds(),
        ..Default::default()
    };
    let id = c.id.clone();
    let bundle = c.bundle.clone();
    let pid = stasis_oci::util::in_child(|| {
        rt.restore(&id, &bundle, &o)
            .map(|r| r.state.pid.to_string())
    })
    .map_err(|e| precondition(&format!("restore {id}"), e))?;
    let pid: i32 = pid
        .parse()
        .map_err(|_| internal("restore", format!("bad pid {pid:?}")))?;
    pio.attach().map_err(|e| internal("console", e))?;
    c.init.io = Some(pio);
    Ok(pid)
}

/// Errors of operations refused in the container's current state.
fn precondition(what: &str, e: stasis_oci::Error) -> ttrpc::Error {
    match e {
        stasis_oci::Error::NotExist | stasis_oci::Error::Exists => oci_err(what, e),
        e => err(Code::FAILED_PRECONDITION, format!("{what}: {e}")),
    }
}
