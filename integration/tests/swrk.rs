//! `stasis criu swrk FD`: CRIU's RPC protocol, driven the way runc does:
//! a SOCK_SEQPACKET socketpair, the server end at fd 3 of `criu swrk 3`,
//! one protobuf message per datagram, image and work dirs passed as fd
//! numbers of the client, action-script notifications acked one by one.
//! Also the CRIU command-line options the runtimes and zdtm use.

use std::fs::{self, File};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, send, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use prost::Message;
use stasis_integration::harness::{proc_state, Env, Workload};
use stasis_proto::criu::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp, InheritFd};

/// A `criu swrk` server and our end of its socket.
struct Swrk {
    sock: OwnedFd,
    child: Child,
}

/// What came back for one request: the notifications (script, pid, whether
/// an fd came with it) in order, then the final response.
struct Reply {
    notes: Vec<(String, Option<i32>, bool)>,
    /// The fds that came with notifications, in order.
    fds: Vec<OwnedFd>,
    resp: CriuResp,
}

impl Swrk {
    /// `stasis criu swrk FD` with the server end of a fresh socketpair at
    /// `fd` (runc uses 3 for dump/restore, other numbers for VERSION).
    fn start(env: &Env, fd: i32) -> Swrk {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let raw = theirs.as_raw_fd();
        let mut cmd = Command::new(&env.bin);
        cmd.args(["criu", "swrk", &fd.to_string()])
            .stdin(Stdio::null())
            .stdout(File::create(env.path("swrk.stdout")).expect("swrk stdout"))
            .stderr(File::create(env.path("swrk.stderr")).expect("swrk stderr"));
        // SAFETY: dup2 and fcntl are async-signal-safe; the closure only
        // touches the two fd numbers copied into it.
        unsafe {
            cmd.pre_exec(move || {
                if raw == fd {
                    // Same number: just keep it across exec.
                    if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(raw, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start stasis criu swrk");
        drop(theirs);
        Swrk { sock: ours, child }
    }

    fn send(&self, req: &CriuReq) {
        send(
            self.sock.as_raw_fd(),
            &req.encode_to_vec(),
            MsgFlags::empty(),
        )
        .expect("send criu_req");
    }

    /// One response (runc's buffer size), and the fd passed with it.
    fn recv(&self) -> (CriuResp, Option<OwnedFd>) {
        let mut buf = vec![0u8; 10 * 4096];
        let mut cbuf = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let (n, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cbuf),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .expect("recv criu_resp");
            let mut fd = None;
            for c in msg.cmsgs().expect("cmsgs") {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    fd = fds.first().copied();
                }
            }
            (msg.bytes, fd)
        };
        assert!(n > 0, "swrk closed the socket instead of answering");
        assert!(n < buf.len(), "response fills runc's whole buffer");
        let resp = CriuResp::decode(&buf[..n]).expect("decode criu_resp");
        let fd = fd.map(|f| {
            // SAFETY: the kernel just installed this fd for us; nothing
            // else owns it.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(f) }
        });
        (resp, fd)
    }

    /// Send `req`, ack every notification with `ack(script)`, return all.
    fn call(&self, req: &CriuReq, ack: impl Fn(&str) -> bool) -> Reply {
        self.call_ext(req, |s| (ack(s), Vec::new()))
    }

    /// [`call`](Self::call) whose acks may also carry `opts.external`.
    fn call_ext(&self, req: &CriuReq, ack: impl Fn(&str) -> (bool, Vec<String>)) -> Reply {
        self.send(req);
        let mut notes = Vec::new();
        let mut fds = Vec::new();
        loop {
            let (resp, fd) = self.recv();
            if resp.r#type() != CriuReqType::Notify {
                return Reply { notes, fds, resp };
            }
            let n = resp.notify.clone().unwrap_or_default();
            let script = n.script.clone().unwrap_or_default();
            notes.push((script.clone(), n.pid, fd.is_some()));
            fds.extend(fd);
            let (ok, external) = ack(&script);
            self.send(&CriuReq {
                r#type: CriuReqType::Notify as i32,
                notify_success: Some(ok),
                opts: (!external.is_empty()).then(|| CriuOpts {
                    images_dir_fd: -1,
                    external,
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
    }

    /// The server must exit 0 by itself (after a request without keep_open).
    fn expect_exit(mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait swrk") {
                assert!(st.success(), "swrk exited with {st}");
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("swrk still runs 10 s after its last request");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Swrk {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn req(ty: CriuReqType, opts: Option<CriuOpts>, keep_open: bool) -> CriuReq {
    CriuReq {
        r#type: ty as i32,
        opts,
        keep_open: Some(keep_open),
        ..Default::default()
    }
}

/// Options as runc 1.1.5 fills them for a dump (images and work dir as our
/// fds, log_level 4, notify_scripts, explicit falses, ext_mnt pairs).
fn runc_like_opts(images: &File, work: &File) -> CriuOpts {
    CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        work_dir_fd: Some(work.as_raw_fd()),
        log_level: Some(4),
        notify_scripts: Some(true),
        ext_unix_sk: Some(false),
        tcp_established: Some(false),
        shell_job: Some(false),
        file_locks: Some(false),
        auto_dedup: Some(false),
        lazy_pages: Some(false),
        manage_cgroups: Some(true),
        orphan_pts_master: Some(true),
        config_file: Some("/etc/criu/runc.conf".into()),
        ext_mnt: vec![stasis_proto::criu::ExtMountMap {
            key: "/dev/null".into(),
            val: "/dev/null".into(),
        }],
        ..Default::default()
    }
}

fn scripts(r: &Reply) -> Vec<&str> {
    r.notes.iter().map(|(s, _, _)| s.as_str()).collect()
}

#[test]
fn swrk_version_check_features_keep_open() {
    let Some(env) = Env::setup("swrk_version_check_features_keep_open") else {
        return;
    };
    // Not fd 3: runc's VERSION probe inherits the socket at 8 or 9.
    let s = Swrk::start(&env, 9);
    let v = s
        .call(&req(CriuReqType::Version, None, true), |_| true)
        .resp;
    assert!(v.success && v.r#type() == CriuReqType::Version, "{v:?}");
    let ver = v.version.expect("version in the reply");
    let num = ver.major_number * 10000 + ver.minor_number * 100 + ver.sublevel.unwrap_or(0);
    assert!(
        ver.gitid.is_none() && num >= 31600,
        "version {num} must pass podman's and crun's minimums"
    );

    let c = s.call(&req(CriuReqType::Check, None, true), |_| true).resp;
    assert!(c.success && c.r#type() == CriuReqType::Check, "{c:?}");

    let mut f = req(CriuReqType::FeatureCheck, None, true);
    f.features = Some(CriuFeatures {
        mem_track: Some(true),
        lazy_pages: Some(true),
        pidfd_store: Some(true),
    });
    let f = s.call(&f, |_| true).resp;
    assert!(
        f.success && f.r#type() == CriuReqType::FeatureCheck,
        "{f:?}"
    );
    let feats = f.features.expect("features in the reply");
    assert_eq!(feats.mem_track, Some(true), "uffd write-protect tracking");
    assert_eq!(feats.lazy_pages, Some(false), "no lazy pages in stasis");
    assert_eq!(feats.pidfd_store, Some(true), "pidfd_open/getfd exist");
    // Only what was asked is answered.
    let mut f2 = req(CriuReqType::FeatureCheck, None, true);
    f2.features = Some(CriuFeatures {
        mem_track: Some(true),
        ..Default::default()
    });
    let f2 = s.call(&f2, |_| true).resp.features.expect("features");
    assert_eq!(
        (f2.mem_track, f2.lazy_pages, f2.pidfd_store),
        (Some(true), None, None)
    );

    let ty = CriuReqType::PageServer;
    let r = s
        .call(&req(ty, Some(CriuOpts::default()), true), |_| true)
        .resp;
    assert!(!r.success && r.r#type() == ty, "{ty:?} must fail: {r:?}");
    let msg = r.cr_errmsg.unwrap_or_default();
    assert!(
        msg.contains("page server") && msg.contains("not supported"),
        "{ty:?}: {msg}"
    );
    // An unknown request type: EMPTY, unsuccessful.
    let u = s
        .call(
            &CriuReq {
                r#type: 99,
                keep_open: Some(true),
                ..Default::default()
            },
            |_| true,
        )
        .resp;
    assert!(!u.success && u.r#type() == CriuReqType::Empty, "{u:?}");

    // Last request without keep_open: answered, then the server exits.
    let v = s
        .call(&req(CriuReqType::Version, None, false), |_| true)
        .resp;
    assert!(v.success);
    s.expect_exit();
}

#[test]
fn swrk_dump_and_sibling_restore_with_notifications() {
    let Some(env) = Env::setup("swrk_dump_and_sibling_restore_with_notifications") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-counter"), &[], &[]);
    let pid = wl.root_pid();
    std::thread::sleep(Duration::from_millis(300));
    let img_path = env.dir("images");
    let work_path = env.dir("work");
    let images = File::open(&img_path).expect("open images dir");
    let work = File::open(&work_path).expect("open work dir");

    let s = Swrk::start(&env, 3);
    let mut o = runc_like_opts(&images, &work);
    o.pid = Some(pid);
    o.log_file = Some("dump.log".into());
    o.freeze_cgroup = Some("/sys/fs/cgroup/freezer/nonexistent-but-harmless".into());
    o.timeout = Some(10);
    let d = s.call(&req(CriuReqType::Dump, Some(o), false), |_| true);
    assert!(
        d.resp.success,
        "dump failed: {:?}\nlog: {}",
        d.resp.cr_errmsg,
        fs::read_to_string(work_path.join("dump.log")).unwrap_or_default()
    );
    assert_eq!(d.resp.r#type(), CriuReqType::Dump);
    assert_eq!(d.resp.dump.and_then(|x| x.restored), Some(false));
    // Same net namespace as ours: no network-lock/unlock, as CRIU.
    assert_eq!(scripts(&d), ["pre-dump", "query-ext-files", "post-dump"]);
    assert!(
        d.notes.iter().all(|(_, p, fd)| p.is_none() && !fd),
        "{:?}",
        d.notes
    );
    s.expect_exit();
    assert!(
        work_path.join("dump.log").exists(),
        "log_file goes into the work dir"
    );
    assert!(
        work_path.join("stats-dump").exists(),
        "stats-dump goes into the work dir"
    );
    assert!(
        img_path.join("inventory.img").exists(),
        "images go to images_dir_fd"
    );
    wl.expect_killed_and_reap();

    // Restore as runc does: rst_sibling, its usual extra options, and an
    // inherit_fd whose key no file of the images has.
    let s = Swrk::start(&env, 3);
    let mut o = runc_like_opts(&images, &work);
    o.log_file = Some("restore.log".into());
    o.rst_sibling = Some(true);
    o.evasive_devices = Some(true);
    o.root = Some("/".into());
    o.inherit_fd = vec![InheritFd {
        key: "pipe:[1]".into(),
        fd: 0,
    }];
    o.cg_root = vec![stasis_proto::criu::CgroupRoot {
        ctrl: Some(String::new()),
        path: "/".into(),
    }];
    let r = s.call(&req(CriuReqType::Restore, Some(o), false), |_| true);
    assert!(
        r.resp.success,
        "restore failed: {:?}\nlog: {}",
        r.resp.cr_errmsg,
        fs::read_to_string(work_path.join("restore.log")).unwrap_or_default()
    );
    let rpid = r.resp.restore.map(|x| x.pid).unwrap_or(-1);
    assert_eq!(rpid, pid, "the restore reply carries the root's pid");
    assert_eq!(
        scripts(&r),
        [
            "pre-restore",
            "setup-namespaces",
            "post-setup-namespaces",
            "post-restore",
            "pre-resume",
            "post-resume"
        ]
    );
    for (sc, p, _) in &r.notes {
        let want = matches!(sc.as_str(), "setup-namespaces" | "post-restore").then_some(pid);
        assert_eq!(*p, want, "pid of the {sc} notification");
    }
    s.expect_exit();
    assert!(work_path.join("restore.log").exists());
    assert!(work_path.join("stats-restore").exists());
    // rst_sibling: the restored root is our child, not swrk's.
    let ppid = proc_state(pid).map(|s| s.ppid).unwrap_or(-1);
    assert_eq!(ppid, std::process::id() as i32, "restored root's parent");
    wl.expect_running("after swrk restore");
    wl.verify_and_finish("after swrk restore");
}

#[test]
fn swrk_refused_post_dump_keeps_the_tree_running() {
    let Some(env) = Env::setup("swrk_refused_post_dump_keeps_the_tree_running") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-counter"), &[], &[]);
    let img_path = env.dir("images");
    let images = File::open(&img_path).expect("open images dir");
    let s = Swrk::start(&env, 3);
    let mut o = runc_like_opts(&images, &images);
    o.pid = Some(wl.root_pid());
    let d = s.call(&req(CriuReqType::Dump, Some(o), false), |sc| {
        sc != "post-dump"
    });
    assert!(!d.resp.success, "a refused post-dump must fail the dump");
    let msg = d.resp.cr_errmsg.clone().unwrap_or_default();
    assert!(msg.contains("script error"), "cr_errmsg: {msg}");
    assert_eq!(scripts(&d), ["pre-dump", "query-ext-files", "post-dump"]);
    s.expect_exit();
    wl.expect_running("after a refused post-dump");
    wl.verify_and_finish("after a refused post-dump");
}

#[test]
fn swrk_errors_carry_cr_errmsg() {
    let Some(env) = Env::setup("swrk_errors_carry_cr_errmsg") else {
        return;
    };
    let img_path = env.dir("empty");
    let images = File::open(&img_path).expect("open images dir");
    let s = Swrk::start(&env, 5);

    // A pid that does not exist.
    let mut o = runc_like_opts(&images, &images);
    o.pid = Some(0x3fff_fff0);
    let d = s.call(&req(CriuReqType::Dump, Some(o), true), |_| true);
    assert!(!d.resp.success && d.resp.r#type() == CriuReqType::Dump);
    let msg = d.resp.cr_errmsg.clone().unwrap_or_default();
    assert!(
        msg.contains(&0x3fff_fff0.to_string()),
        "names the pid: {msg}"
    );
    assert!(
        img_path.join("dump.log").exists(),
        "default log in the images dir"
    );

    // Restore from a directory without images.
    let r = s.call(
        &req(
            CriuReqType::Restore,
            Some(runc_like_opts(&images, &images)),
            true,
        ),
        |_| true,
    );
    assert!(!r.resp.success && r.resp.r#type() == CriuReqType::Restore);
    let msg = r.resp.cr_errmsg.unwrap_or_default();
    assert!(
        msg.contains("inventory") || msg.contains(&*img_path.to_string_lossy()),
        "{msg}"
    );

    // Options the engine cannot honour yet: refused by name.
    let mut o = runc_like_opts(&images, &images);
    o.empty_ns = Some(libc::CLONE_NEWUTS as u32);
    let r = s
        .call(&req(CriuReqType::Restore, Some(o), true), |_| true)
        .resp;
    let msg = r.cr_errmsg.unwrap_or_default();
    assert!(
        !r.success && msg.contains("empty namespaces") && msg.contains("not supported yet"),
        "{msg}"
    );

    let mut o = runc_like_opts(&images, &images);
    o.log_file = Some("../escape.log".into());
    let r = s
        .call(&req(CriuReqType::Dump, Some(o), true), |_| true)
        .resp;
    assert!(!r.success && r.cr_errmsg.unwrap_or_default().contains("subdirs"));

    // query-ext-files: what the ack adds is checked like the request's own
    // externals (a file[] external is not supported yet); nothing frozen.
    let mut sleeper = Command::new("sleep").arg("100").spawn().expect("sleep");
    let mut o = runc_like_opts(&images, &images);
    o.pid = Some(sleeper.id() as i32);
    let d = s.call_ext(&req(CriuReqType::Dump, Some(o), true), |sc| {
        (
            true,
            if sc == "query-ext-files" {
                vec!["file[1:2]".into()]
            } else {
                vec![]
            },
        )
    });
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let msg = d.resp.cr_errmsg.clone().unwrap_or_default();
    assert!(
        !d.resp.success && msg.contains("file[1:2]") && msg.contains("not supported yet"),
        "{msg}"
    );
    assert_eq!(scripts(&d), ["pre-dump", "query-ext-files"]);

    // A work_dir_fd that is not a directory of ours.
    let f = File::open("/proc/self/status").expect("open a file");
    let mut o = runc_like_opts(&images, &f);
    o.pid = Some(1);
    let r = s
        .call(&req(CriuReqType::Dump, Some(o), false), |_| true)
        .resp;
    assert!(!r.success && r.cr_errmsg.unwrap_or_default().contains("not a directory"));
    s.expect_exit();
}

#[test]
fn criu_cli_runtime_options() {
    let Some(env) = Env::setup("criu_cli_runtime_options") else {
        return;
    };
    // Unknown options: CRIU's getopt wording.
    let r = env.stasis(&["criu", "dump", "--no-such-option"]);
    assert!(
        !r.success() && r.stderr.contains("unrecognized option '--no-such-option'"),
        "{}",
        r.describe()
    );
    // check --feature as zdtm calls it.
    let r = env.stasis(&[
        "criu",
        "check",
        "--no-default-config",
        "-verbosity=0",
        "--feature",
        "pidfd_store",
    ]);
    r.expect_success("check --feature pidfd_store");
    let r = env.stasis(&["criu", "check", "--feature", "mem_dirty_track"]);
    r.expect_success("check --feature mem_dirty_track (uffd write-protect)");
    let r = env.stasis(&["criu", "check", "--feature", "no_such_feature"]);
    assert!(
        !r.success() && r.stderr.contains("Unknown feature"),
        "{}",
        r.describe()
    );

    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-counter"), &[], &[]);
    let pid = wl.root_pid().to_string();
    let img = env.dir("img");
    let work = env.dir("work");
    let (img_s, work_s) = (
        img.to_string_lossy().into_owned(),
        work.to_string_lossy().into_owned(),
    );
    // The options runc/zdtm pass, all harmless for this tree.
    let r = env.stasis(&[
        "criu",
        "dump",
        "-t",
        &pid,
        "-D",
        &img_s,
        "-W",
        &work_s,
        "-o",
        "d.log",
        "-v4",
        "--external",
        "mnt[/proc/keys]:/dev/null",
        "--external",
        "net[4026531840]:extRootNetNS",
        "--timeout",
        "10",
        "--link-remap",
        "--manage-cgroups=soft",
        "--freeze-cgroup",
        "/sys/fs/cgroup/freezer/x",
        "--tcp-established",
        "--file-locks",
        "--ext-unix-sk",
        "--pre-dump-mode",
        "splice",
        "--root",
        "/",
    ]);
    r.expect_success("dump with runtime options");
    assert!(work.join("d.log").exists(), "--log-file is relative to -W");
    assert!(
        work.join("stats-dump").exists(),
        "stats-dump in the work dir"
    );
    wl.expect_killed_and_reap();

    // A root for a tree that has no mount namespace of its own is refused.
    let r = env.stasis(&[
        "criu", "restore", "-D", &img_s, "-W", &work_s, "-d", "--root", "/tmp",
    ]);
    assert!(
        !r.success() && r.stderr.contains("no mount namespace"),
        "{}",
        r.describe()
    );

    let r = env.stasis(&[
        "criu",
        "restore",
        "-D",
        &img_s,
        "-W",
        &work_s,
        "-o",
        "r.log",
        "--restore-sibling",
        "--pidfile",
        "restore.pid",
        "--inherit-fd",
        "fd[1]:pipe:[12345]",
        "--manage-cgroups",
        "--cgroup-root",
        "/",
        "--evasive-devices",
        "--file-locks",
    ]);
    r.expect_success("restore --restore-sibling");
    assert!(work.join("r.log").exists());
    let got: i32 = fs::read_to_string(work.join("restore.pid"))
        .expect("--pidfile relative to the work dir")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(got, wl.root_pid());
    let ppid = proc_state(got).map(|s| s.ppid).unwrap_or(-1);
    assert_eq!(
        ppid,
        std::process::id() as i32,
        "--restore-sibling: our child"
    );
    wl.verify_and_finish("after --restore-sibling");
}

#[test]
fn criu_cli_action_scripts() {
    let Some(env) = Env::setup("criu_cli_action_scripts") else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let trace = env.path("actions.txt");
    let script = env.path("action.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$CRTOOLS_SCRIPT_ACTION ${{CRTOOLS_INIT_PID:-none}} ${{CRTOOLS_IMAGE_DIR:+dir}}\" >>{}\n\
             [ \"$CRTOOLS_SCRIPT_ACTION\" != \"$FAIL_AT\" ]\n",
            trace.display()
        ),
    )
    .expect("write script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let script_s = script.to_string_lossy().into_owned();
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-counter"), &[], &[]);
    let pid = wl.root_pid();
    let img = env.dir("img");
    let r = env.dump(pid, &img, &["--action-script", &script_s]);
    r.expect_success("dump with --action-script");
    wl.expect_killed_and_reap();
    let p = pid.to_string();
    let want_dump = format!("pre-dump {p} dir\npost-dump {p} dir\n");
    assert_eq!(fs::read_to_string(&trace).unwrap_or_default(), want_dump);
    fs::remove_file(&trace).expect("rm trace");

    wl.restore_from(&env, &img, &["--action-script", &script_s]);
    let want_restore = format!(
        "pre-restore none dir\nsetup-namespaces {p} dir\npost-setup-namespaces {p} dir\n\
         post-restore {p} dir\npre-resume {p} dir\npost-resume {p} dir\n"
    );
    assert_eq!(fs::read_to_string(&trace).unwrap_or_default(), want_restore);
    wl.verify_and_finish("after restore with action scripts");
}

#[test]
fn criu_cli_failing_post_dump_script_keeps_the_tree_running() {
    let Some(env) = Env::setup("criu_cli_failing_post_dump_script_keeps_the_tree_running") else {
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let script = env.path("fail.sh");
    fs::write(
        &script,
        "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" != post-dump ]\n",
    )
    .expect("write");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-counter"), &[], &[]);
    let img = env.dir("img");
    let r = env.dump(
        wl.root_pid(),
        &img,
        &["--action-script", &script.to_string_lossy()],
    );
    r.expect_clear_failure("dump with a failing post-dump script", &["post-dump"]);
    wl.expect_running("after a failed post-dump script");
    wl.verify_and_finish("after a failed post-dump script");
}

/// The last complete `count N` line read so far from a nonblocking pipe.
fn read_counts(fd: &OwnedFd, acc: &mut String) -> Option<u64> {
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(fd.as_raw_fd(), &mut buf) {
        if n == 0 {
            break;
        }
        acc.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let complete = acc.rfind('\n').map_or("", |i| &acc[..i]);
    complete
        .lines()
        .last()
        .and_then(|l| l.trim_end_matches('\r').strip_prefix("count "))
        .and_then(|n| n.parse().ok())
}

fn pipe_nb() -> (OwnedFd, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    nix::fcntl::fcntl(
        r.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("nonblock");
    (r, w)
}

/// runc's restore: the container's stdout pipe of the dump is named by
/// `--inherit-fd fd[N]:pipe:[INO]`, and the restored tree writes into the
/// new pipe we pass as fd N.
#[test]
fn criu_cli_inherit_fd_replaces_a_pipe() {
    let Some(env) = Env::setup("criu_cli_inherit_fd_replaces_a_pipe") else {
        return;
    };
    let state = env.dir("state");
    let (old_r, old_w) = pipe_nb();
    let ino = nix::sys::stat::fstat(old_w.as_raw_fd())
        .expect("fstat")
        .st_ino;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wl-counter"));
    cmd.arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::from(old_w))
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start wl-counter on a pipe");
    let pid = child.id() as i32;
    let mut acc = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_counts(&old_r, &mut acc).unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "no counts on the pipe: {acc:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let img = env.dir("img");
    env.dump(pid, &img, &[])
        .expect_success("dump a counter writing to a pipe");
    let _ = child.wait();
    let last = read_counts(&old_r, &mut acc).expect("counts before the dump");
    drop(old_r);

    let (new_r, new_w) = pipe_nb();
    let raw = new_w.as_raw_fd();
    let pidfile = env.path("restore.pid");
    let mut cmd = Command::new(&env.bin);
    cmd.args(["criu", "restore", "-d", "-v4", "-o"])
        .arg(env.path("restore.log"))
        .arg("-D")
        .arg(&img)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--inherit-fd")
        .arg(format!("fd[7]:pipe:[{ino}]"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(env.path("restore.err")).expect("stderr file"));
    // SAFETY: dup2 is async-signal-safe; only the copied fd number is used.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = cmd.status().expect("run restore");
    drop(new_w);
    assert!(
        st.success(),
        "restore with --inherit-fd: {}\n{}",
        fs::read_to_string(env.path("restore.err")).unwrap_or_default(),
        fs::read_to_string(env.path("restore.log")).unwrap_or_default()
    );
    let rpid: i32 = fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(rpid, pid);
    let mut acc2 = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        if let Some(n) = read_counts(&new_r, &mut acc2).filter(|&n| n >= last + 3) {
            break n;
        }
        if Instant::now() > deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(rpid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("restored counter wrote nothing new into the inherited pipe: {acc2:?} (last {last})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let first: u64 = acc2
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("count "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rpid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while stasis_integration::harness::try_reap(rpid).is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        first > last && first <= last + 2,
        "the count goes on: dumped at {last}, then {first}..{got}"
    );
}

/// runc's terminal containers: the tree's stdout is a pty slave whose
/// master is outside the tree. Dumped with orphan_pts_master, restored with
/// a new pty whose master comes to the client with the orphan-pts-master
/// notification (SCM_RIGHTS), before post-restore.
#[test]
fn swrk_orphan_pts_master_passes_the_new_master() {
    let Some(env) = Env::setup("swrk_orphan_pts_master_passes_the_new_master") else {
        return;
    };
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let master = pty.master;
    nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("nonblock");
    let state = env.dir("state");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wl-counter"));
    cmd.arg(&state)
        .stdin(Stdio::null())
        .stdout(Stdio::from(pty.slave))
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start wl-counter on a pty");
    drop(cmd);
    let pid = child.id() as i32;
    let mut acc = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_counts(&master, &mut acc).unwrap_or(0) < 3 {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no counts on the pty: {acc:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let img_path = env.dir("images");
    let images = File::open(&img_path).expect("open images dir");
    let s = Swrk::start(&env, 3);
    let mut o = runc_like_opts(&images, &images);
    o.pid = Some(pid);
    let d = s.call(&req(CriuReqType::Dump, Some(o), false), |_| true);
    let dlog = fs::read_to_string(img_path.join("dump.log")).unwrap_or_default();
    if !d.resp.success {
        let _ = child.kill();
        let _ = child.wait();
        panic!("dump: {:?}\n{dlog}", d.resp.cr_errmsg);
    }
    s.expect_exit();
    let _ = child.wait();
    let last = read_counts(&master, &mut acc).expect("counts before the dump");
    drop(master);

    let s = Swrk::start(&env, 3);
    let mut o = runc_like_opts(&images, &images);
    o.rst_sibling = Some(true);
    let r = s.call(&req(CriuReqType::Restore, Some(o), false), |_| true);
    assert!(
        r.resp.success,
        "restore: {:?}\n{}",
        r.resp.cr_errmsg,
        fs::read_to_string(img_path.join("restore.log")).unwrap_or_default()
    );
    s.expect_exit();
    let rpid = r.resp.restore.map(|x| x.pid).unwrap_or(-1);
    let kill = || {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(rpid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while stasis_integration::harness::try_reap(rpid).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let order = scripts(&r);
    let with_fd: Vec<&str> = r
        .notes
        .iter()
        .filter(|(_, _, fd)| *fd)
        .map(|(s, _, _)| s.as_str())
        .collect();
    if order
        != [
            "pre-restore",
            "setup-namespaces",
            "post-setup-namespaces",
            "orphan-pts-master",
            "post-restore",
            "pre-resume",
            "post-resume",
        ]
        || with_fd != ["orphan-pts-master"]
        || r.fds.len() != 1
    {
        kill();
        panic!("notifications {:?}", r.notes);
    }
    let new_master = r.fds.into_iter().next().expect("the master");
    nix::fcntl::fcntl(
        new_master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .expect("nonblock");
    let mut acc2 = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        if let Some(n) = read_counts(&new_master, &mut acc2).filter(|&n| n > last + 2) {
            break n;
        }
        if Instant::now() > deadline {
            kill();
            panic!("nothing new on the passed master: {acc2:?} (dumped at {last})");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    kill();
    println!("counted on: {last} -> {got}");
}
