//! `criu swrk FD`: CRIU's RPC protocol on an inherited SOCK_SEQPACKET socket
//! (runc, podman's version probe, go-criu, libcriu).
//!
//! One `criu_req` or `criu_resp` per datagram. During DUMP and RESTORE the
//! server sends `NOTIFY` responses at CRIU's action-script points and waits
//! for the client's ack before going on. Fds named in the request
//! (`images_dir_fd`, `work_dir_fd`) are the client's: they are opened
//! through `/proc/<client pid>/fd/N`, the pid taken from SO_PEERCRED.

use std::fs::File;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::socket::{self, sockopt, ControlMessage, MsgFlags};
use prost::Message;
use stasis_engine::check;
use stasis_engine::hook::FdHook;
use stasis_proto::criu::{
    CriuDumpResp, CriuFeatures, CriuNotify, CriuOpts, CriuReq, CriuReqType, CriuResp,
    CriuRestoreResp, CriuVersion,
};
use tracing::{error, info, warn};

use super::actions::{self, Notify};
use super::opts::{self, CgMode, InheritFd, Opts};
use crate::logging;

/// The CRIU release whose behaviour we follow; clients check minimums
/// against major*10000 + minor*100 (podman 31100, crun 31500, runc 3.16
/// for lsm_mount_context).
pub const VERSION_MAJOR: i32 = 4;
pub const VERSION_MINOR: i32 = 2;

/// Lazy pages need a page server and a uffd fault handler; the engine has
/// neither, so FEATURE_CHECK answers false whatever the kernel offers.
const ENGINE_LAZY_PAGES: bool = false;

/// Stay well under the 2×4096-byte buffers of go-criu clients.
const MAX_ERRMSG: usize = 4000;

type Sock = Arc<OwnedFd>;

pub fn serve(fd: i32) -> Result<ExitCode> {
    // Our own descriptor for the inherited socket (close-on-exec).
    let sock: Sock = Arc::new(
        stasis_engine::sys::fdctl::with_raw(fd, |b| b.try_clone_to_owned())
            .with_context(|| format!("swrk: fd {fd} is not open"))?,
    );
    let _ = nix::unistd::close(fd);
    let peer = socket::getsockopt(&*sock, sockopt::PeerCredentials)
        .context("swrk: SO_PEERCRED")?
        .pid();
    let srv = Server { sock, peer };
    loop {
        let Some(req) = srv.recv()? else {
            return Ok(ExitCode::SUCCESS);
        };
        let keep_open = req.keep_open();
        let resp = srv.handle(req);
        logging::close();
        srv.send(&resp, None)?;
        if !keep_open {
            return Ok(ExitCode::SUCCESS);
        }
    }
}

struct Server {
    sock: Sock,
    peer: i32,
}

/// A directory of the client, opened here, and the path the engine uses.
struct Dir {
    _file: File,
    path: PathBuf,
}

fn recv_req(sock: &OwnedFd) -> Result<Option<CriuReq>> {
    let fd = sock.as_raw_fd();
    let len = loop {
        match socket::recv(fd, &mut [], MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC) {
            Ok(n) => break n,
            Err(Errno::EINTR) if !stasis_engine::sys::sig::interrupted() => continue,
            Err(e) => return Err(anyhow!("swrk: receive a request: {e}")),
        }
    };
    if len == 0 {
        // SEQPACKET end of file: the client is gone.
        let _ = socket::recv(fd, &mut [0u8; 1], MsgFlags::empty());
        return Ok(None);
    }
    let mut buf = vec![0u8; len];
    let n = loop {
        match socket::recv(fd, &mut buf, MsgFlags::empty()) {
            Ok(n) => break n,
            Err(Errno::EINTR) if !stasis_engine::sys::sig::interrupted() => continue,
            Err(e) => return Err(anyhow!("swrk: receive a request: {e}")),
        }
    };
    let req = CriuReq::decode(&buf[..n]).context("swrk: bad criu_req")?;
    Ok(Some(req))
}

fn send_resp(sock: &OwnedFd, resp: &CriuResp, fd: Option<BorrowedFd<'_>>) -> Result<()> {
    let buf = resp.encode_to_vec();
    let iov = [IoSlice::new(&buf)];
    let fds;
    let cmsgs: &[ControlMessage<'_>] = match fd {
        Some(f) => {
            fds = [f.as_raw_fd()];
            &[ControlMessage::ScmRights(&fds)]
        }
        None => &[],
    };
    socket::sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
        .context("swrk: send a response")?;
    Ok(())
}

/// One action-script notification and the client's ack. `pid` goes only
/// with setup-namespaces and post-restore, as CRIU sends it. The answer is
/// what the ack's `opts.external` lists (query-ext-files).
fn notify(
    sock: &OwnedFd,
    script: &str,
    pid: Option<i32>,
    fd: Option<BorrowedFd<'_>>,
) -> Result<Vec<String>, String> {
    info!(script, ?pid, "notify");
    let resp = CriuResp {
        r#type: CriuReqType::Notify as i32,
        success: true,
        notify: Some(CriuNotify {
            script: Some(script.to_string()),
            pid,
        }),
        ..Default::default()
    };
    send_resp(sock, &resp, fd).map_err(|e| format!("{e:#}"))?;
    match recv_req(sock) {
        Ok(Some(r)) if r.r#type() == CriuReqType::Notify && r.notify_success() => {
            Ok(r.opts.map(|o| o.external).unwrap_or_default())
        }
        Ok(Some(_)) => Err(format!("RPC client reported script error ({script})")),
        Ok(None) => Err(format!("RPC client went away during {script}")),
        Err(e) => Err(format!("{e:#}")),
    }
}

fn first_line(e: &anyhow::Error) -> String {
    let mut s = format!("{e:#}").replace('\n', " ");
    if s.len() > MAX_ERRMSG {
        let mut cut = MAX_ERRMSG;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn errno_of(e: &anyhow::Error) -> Option<i32> {
    e.chain().find_map(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
    })
}

impl Server {
    fn recv(&self) -> Result<Option<CriuReq>> {
        recv_req(&self.sock)
    }

    fn send(&self, resp: &CriuResp, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        send_resp(&self.sock, resp, fd)
    }

    fn handle(&self, req: CriuReq) -> CriuResp {
        let ty = CriuReqType::try_from(req.r#type).ok();
        let reply_ty = ty.unwrap_or(CriuReqType::Empty);
        let r = match ty {
            Some(CriuReqType::Version) => Ok(self.version()),
            Some(CriuReqType::Check) => self.check(),
            Some(CriuReqType::FeatureCheck) => Ok(self.feature_check(&req)),
            Some(CriuReqType::Dump) => self.dump(&req),
            Some(CriuReqType::Restore) => self.restore(&req),
            Some(CriuReqType::PreDump | CriuReqType::SinglePreDump) => self.dump(&req),
            Some(CriuReqType::PageServer | CriuReqType::PageServerChld) => Err(anyhow!(
                "page server is not supported: stasis writes images locally"
            )),
            Some(CriuReqType::CpuinfoDump | CriuReqType::CpuinfoCheck) => {
                Err(anyhow!("cpuinfo images are not supported"))
            }
            Some(CriuReqType::WaitPid) => self.wait_pid(&req),
            Some(CriuReqType::Notify) => Err(anyhow!("unexpected NOTIFY outside an operation")),
            Some(CriuReqType::Empty) | None => Err(anyhow!("unknown request type {}", req.r#type)),
        };
        match r {
            Ok(mut resp) => {
                resp.r#type = reply_ty as i32;
                resp.success = true;
                resp
            }
            Err(e) => {
                error!("{e:#}");
                CriuResp {
                    r#type: if ty.is_some() && reply_ty != CriuReqType::Notify {
                        reply_ty as i32
                    } else {
                        CriuReqType::Empty as i32
                    },
                    success: false,
                    cr_errno: errno_of(&e),
                    cr_errmsg: Some(first_line(&e)),
                    ..Default::default()
                }
            }
        }
    }

    fn version(&self) -> CriuResp {
        CriuResp {
            version: Some(CriuVersion {
                major_number: VERSION_MAJOR,
                minor_number: VERSION_MINOR,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn check(&self) -> Result<CriuResp> {
        let missing: Vec<String> = check::probe()
            .into_iter()
            .filter(|f| f.required && !f.ok)
            .map(|f| format!("{}: {}", f.name, f.detail))
            .collect();
        if !missing.is_empty() {
            bail!("check failed: {}", missing.join("; "));
        }
        Ok(CriuResp::default())
    }

    /// Mirror the asked features, each answered truthfully for the engine.
    fn feature_check(&self, req: &CriuReq) -> CriuResp {
        let asked = req.features.unwrap_or_default();
        let feats = check::probe();
        let ok = |n: &str| feats.iter().any(|f| f.name == n && f.ok);
        CriuResp {
            features: Some(CriuFeatures {
                // Pre-dumps track memory with uffd write-protection.
                mem_track: asked.mem_track.map(|_| true),
                lazy_pages: asked.lazy_pages.map(|_| ENGINE_LAZY_PAGES && ok("uffd")),
                pidfd_store: asked.pidfd_store.map(|_| ok("pidfd")),
            }),
            ..Default::default()
        }
    }

    fn wait_pid(&self, req: &CriuReq) -> Result<CriuResp> {
        use nix::sys::wait::{waitpid, WaitStatus};
        let pid = req.pid.ok_or_else(|| anyhow!("WAIT_PID without a pid"))? as i32;
        let st = loop {
            match waitpid(nix::unistd::Pid::from_raw(pid), None) {
                Ok(WaitStatus::Exited(_, c)) => break c << 8,
                Ok(WaitStatus::Signaled(_, s, _)) => break s as i32,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => bail!("wait for pid {pid}: {e}"),
            }
        };
        Ok(CriuResp {
            status: Some(st),
            ..Default::default()
        })
    }

    /// A directory the client named by one of its fds.
    fn client_dir(&self, fd: i32, what: &str) -> Result<Dir> {
        let link = format!("/proc/{}/fd/{fd}", self.peer);
        let file = File::open(&link)
            .with_context(|| format!("{what} fd {fd} of pid {}: {link}", self.peer))?;
        let md = file.metadata().with_context(|| format!("{link}: stat"))?;
        if !md.is_dir() {
            bail!("{what} fd {fd} of pid {} is not a directory", self.peer);
        }
        // Its real path when we see the same directory there (readable
        // logs and errors), else our own fd of it.
        let path = std::fs::read_link(&link)
            .ok()
            .filter(|p| {
                std::fs::metadata(p).is_ok_and(|m| m.dev() == md.dev() && m.ino() == md.ino())
            })
            .unwrap_or_else(|| {
                PathBuf::from(format!(
                    "/proc/{}/fd/{}",
                    std::process::id(),
                    file.as_raw_fd()
                ))
            });
        Ok(Dir { _file: file, path })
    }

    /// Images dir, work dir (default: the images dir) and the log.
    fn dirs(&self, o: &CriuOpts, default_log: &str) -> Result<(Dir, Dir)> {
        let images = if o.images_dir_fd >= 0 {
            self.client_dir(o.images_dir_fd, "images_dir")?
        } else if let Some(p) = &o.images_dir {
            let file = File::open(p).with_context(|| format!("images_dir {p}"))?;
            Dir {
                _file: file,
                path: p.into(),
            }
        } else {
            bail!("neither images_dir_fd nor images_dir given");
        };
        let work = match o.work_dir_fd {
            Some(fd) if fd >= 0 => self.client_dir(fd, "work_dir")?,
            _ => Dir {
                _file: File::open(&images.path)
                    .with_context(|| format!("{}", images.path.display()))?,
                path: images.path.clone(),
            },
        };
        let log = o.log_file.as_deref().unwrap_or(default_log);
        if log.contains('/') {
            bail!("No subdirs are allowed in log_file name: {log}");
        }
        let level = o.log_level().clamp(0, 4) as u8;
        if o.log_to_stderr() {
            logging::init(Some(Path::new("-")), level)?;
        } else {
            logging::init(Some(&work.path.join(log)), level)?;
        }
        if let Some(cf) = o.config_file.as_deref().filter(|p| Path::new(p).exists()) {
            warn!("config file {cf} is not read: stasis takes its options from the request only");
        }
        Ok((images, work))
    }

    fn opts(o: &CriuOpts, images: &Path) -> Opts {
        let mut external = o.external.clone();
        external.extend(
            o.ext_mnt
                .iter()
                .map(|m| format!("mnt[{}]:{}", m.key, m.val)),
        );
        external.extend(o.unix_sk_ino.iter().map(|u| format!("unix[{}]", u.inode)));
        let manage_cgroups = match o.manage_cgroups_mode {
            Some(m) => Some(CgMode::from_rpc(m)),
            None if o.manage_cgroups() => Some(CgMode::Soft),
            None => None,
        };
        Opts {
            pid: o.pid,
            images_dir: images.to_path_buf(),
            leave_running: o.leave_running(),
            shell_job: o.shell_job(),
            file_locks: o.file_locks(),
            ext_unix_sk: o.ext_unix_sk(),
            tcp_established: o.tcp_established(),
            tcp_close: o.tcp_close(),
            tcp_skip_in_flight: o.tcp_skip_in_flight(),
            link_remap: o.link_remap(),
            evasive_devices: o.evasive_devices(),
            restore_sibling: o.rst_sibling(),
            ext_mnt_candidates: true,
            // The client gets the pid and reaps (or we do with WAIT_PID).
            detach: true,
            pidfile: None,
            progress: false,
            root: o.root.as_ref().map(PathBuf::from),
            external,
            inherit_fd: o
                .inherit_fd
                .iter()
                .map(|i| InheritFd {
                    fd: i.fd,
                    key: i.key.clone(),
                })
                .collect(),
            cg_root: o
                .cg_root
                .iter()
                .map(|c| (c.ctrl.clone().unwrap_or_default(), c.path.clone()))
                .collect(),
            manage_cgroups,
            freeze_cgroup: o.freeze_cgroup.clone(),
            empty_ns: o.empty_ns(),
            join_ns: o
                .join_ns
                .iter()
                .map(|j| format!("{}:{}", j.ns, j.ns_file))
                .collect(),
            timeout: o.timeout,
            pre_dump_mode: o
                .pre_dump_mode
                .map(|m| if m == 2 { "read" } else { "splice" }.to_string()),
            orphan_pts_master: o.orphan_pts_master(),
            lsm_profile: o.lsm_profile.clone(),
            lsm_mount_context: o.lsm_mount_context.clone(),
            track_mem: o.track_mem(),
            parent_img: o.parent_img.clone().filter(|p| !p.is_empty()),
            pre_dump: false,
            lazy_pages: o.lazy_pages(),
            page_server: o
                .ps
                .as_ref()
                .is_some_and(|ps| ps.address.is_some() || ps.port.is_some() || ps.fd.is_some()),
            leave_stopped: o.leave_stopped(),
            exec_cmd: o.exec_cmd.clone(),
            veths: o
                .veths
                .iter()
                .map(|v| format!("{}={}", v.if_in, v.if_out))
                .collect(),
        }
    }

    /// NOTIFY messages when the client asked for them.
    fn notifier(&self, on: bool) -> Notify {
        if !on {
            return actions::silent();
        }
        let sock = self.sock.clone();
        Arc::new(move |script: &str, pid: Option<i32>| notify(&sock, script, pid, None))
    }

    fn dump(&self, req: &CriuReq) -> Result<CriuResp> {
        let o = req
            .opts
            .clone()
            .ok_or_else(|| anyhow!("DUMP without opts"))?;
        let (images, work) = self.dirs(&o, "dump.log")?;
        let mut opts = Self::opts(&o, &images.path);
        opts.pre_dump = matches!(
            CriuReqType::try_from(req.r#type),
            Ok(CriuReqType::PreDump | CriuReqType::SinglePreDump)
        );
        // Without a pid CRIU dumps the client itself.
        let pid = opts.pid.unwrap_or(self.peer);
        info!(pid, images = %images.path.display(), "swrk dump");
        let st = actions::dump(&opts, pid, self.notifier(o.notify_scripts()))?;
        opts::stats_to_work_dir(&images.path, &work.path, "stats-dump");
        info!("{st}");
        Ok(CriuResp {
            dump: Some(CriuDumpResp {
                restored: Some(false),
            }),
            ..Default::default()
        })
    }

    fn restore(&self, req: &CriuReq) -> Result<CriuResp> {
        let o = req
            .opts
            .clone()
            .ok_or_else(|| anyhow!("RESTORE without opts"))?;
        let (images, work) = self.dirs(&o, "restore.log")?;
        let opts = Self::opts(&o, &images.path);
        info!(images = %images.path.display(), sibling = opts.restore_sibling, "swrk restore");
        // The new master of an orphan pty slave goes to the client, with
        // the fd attached (runc hands it to its console socket).
        let orphan = opts.orphan_pts_master.then(|| {
            let sock = self.sock.clone();
            FdHook::new(move |fd| notify(&sock, "orphan-pts-master", None, Some(fd)).map(drop))
        });
        let done = actions::restore(&opts, self.notifier(o.notify_scripts()), orphan)?;
        opts::stats_to_work_dir(&images.path, &work.path, "stats-restore");
        info!(pid = done.root_pid, "{}", done.stats);
        Ok(CriuResp {
            restore: Some(CriuRestoreResp { pid: done.root_pid }),
            ..Default::default()
        })
    }
}
