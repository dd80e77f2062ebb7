//! Trees in namespaces of their own: `wl-ns` as pid 1 of fresh pid, IPC
//! and UTS namespaces (plus time with clock offsets, net, cgroup, a mount
//! namespace with its own /proc, a nested pid namespace), dumped by
//! the host pid of the namespace's init and restored; the workload verifies
//! everything from inside (pids, hostname, SysV objects and their ids, IPC
//! sysctls, loopback, clocks not going back).
//!
//! Two scenarios each, as the harness does for plain workloads:
//! - `*_dump_restore`: dump (kills the tree), restore, verify;
//! - `*_leave_running`: dump with `-R`, the original verifies and exits
//!   (its pids and IPC ids must be free again), restore, verify again.
//!
//! And `*_beside_original`: restored from a `-R` dump while the original
//! still runs (their host pids differ, the pids inside match).
//!
//! With `shmat`, SysV segments stay attached in the tree's processes (see
//! wl-ns).
//!
//! And `user_ns_*`: the tree in a user namespace of its own (maps with
//! several extents written from outside, setgroups denied) plus pid,
//! mount (a tmpfs with owned files), IPC, UTS and time namespaces owned by
//! it; credentials, IPC owners, file owners and the maps verified inside.
//!
//! Also: a child in another UTS or user namespace than the root's is
//! refused with one clear line and the target keeps running.
//!
//! Root only (skipped otherwise); run with `--test-threads=1`.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stasis_integration::harness::{
    mentions, process_exists, read_pidfile, reap_zombie_children, try_reap, wait_for_file,
    wait_gone, Env, RESULT_TIMEOUT,
};
use stasis_integration::workload::{ready_name, result_name, write_atomic, CHECK};

const ROLES: [&str; 4] = ["root", "c1", "c2", "g"];

/// The `unshare` launcher and the namespace init it forked (host pid);
/// dropping it kills the init (and with it the whole pid namespace).
struct NsTree {
    dir: std::path::PathBuf,
    roles: &'static [&'static str],
    unshare: Option<Child>,
    init: i32,
}

impl NsTree {
    fn start(env: &Env, unshare_flags: &[&str], args: &[&str]) -> NsTree {
        let nested = args.contains(&"nested");
        let roles: &'static [&'static str] = if nested { &ROLES } else { &ROLES[..3] };
        NsTree::start_bin(env, unshare_flags, env!("CARGO_BIN_EXE_wl-ns"), args, roles)
    }

    fn start_bin(
        env: &Env,
        unshare_flags: &[&str],
        bin: &str,
        args: &[&str],
        roles: &'static [&'static str],
    ) -> NsTree {
        let dir = env.dir("wl-ns");
        let mut cmd = Command::new("unshare");
        cmd.args(unshare_flags).arg(bin).arg(&dir).args(args);
        NsTree::launch(dir, cmd, roles, |_| {})
    }

    /// The `user` variant: `unshare --user` first, whose maps we write from
    /// outside (several extents, setgroups denied, as a runtime would),
    /// then, as root of that namespace, `unshare FLAGS wl-ns DIR user`.
    /// `wl_args` follow `user` on wl-ns's command line.
    fn start_user(env: &Env, unshare_flags: &[&str], wl_args: &str) -> NsTree {
        let dir = env.dir("wl-ns");
        let mut cmd = Command::new("unshare");
        cmd.env("WL_NS_ARGS", wl_args)
            .arg("--user")
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg(
                "until [ -e \"$0/userns-go\" ]; do sleep 0.01; done; \
                 exec unshare \"$@\" \"$0\" user $WL_NS_ARGS",
            )
            .arg(&dir)
            .args(unshare_flags)
            .arg(env!("CARGO_BIN_EXE_wl-ns"));
        let go = dir.join("userns-go");
        NsTree::launch(dir, cmd, &ROLES[..3], |pid| {
            wait_ns_differs(pid, "user");
            for (f, v) in [
                ("uid_map", USER_UID_MAP),
                ("setgroups", "deny"),
                ("gid_map", USER_GID_MAP),
            ] {
                fs::write(format!("/proc/{pid}/{f}"), v)
                    .unwrap_or_else(|e| panic!("write {f} of {pid}: {e}"));
            }
            fs::write(&go, "").unwrap();
        })
    }

    fn launch(
        dir: std::path::PathBuf,
        mut cmd: Command,
        roles: &'static [&'static str],
        before_ready: impl FnOnce(i32),
    ) -> NsTree {
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout")).unwrap())
            .stderr(fs::File::create(dir.join("stderr")).unwrap());
        // SAFETY: setsid is async-signal-safe and touches no shared memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().expect("run unshare (util-linux)");
        let upid = child.id() as i32;
        before_ready(upid);
        let mut t = NsTree {
            roles,
            dir,
            unshare: Some(child),
            init: 0,
        };
        for role in t.roles {
            if let Err(e) = wait_for_file(&t.dir.join(ready_name(role)), RESULT_TIMEOUT) {
                panic!("wl-ns not ready: {e}\n{}", t.diag());
            }
        }
        let kids =
            fs::read_to_string(format!("/proc/{upid}/task/{upid}/children")).unwrap_or_default();
        t.init = kids
            .split_whitespace()
            .next()
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("unshare {upid} has no child\n{}", t.diag()));
        t
    }

    fn diag(&self) -> String {
        let mut s = format!("state dir {}\n", self.dir.display());
        for role in self.roles {
            let r = fs::read_to_string(self.dir.join(result_name(role))).unwrap_or_default();
            s.push_str(&format!("result.{role}: {}\n", r.trim()));
        }
        s.push_str(&format!(
            "stderr: {}\n",
            fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
        ));
        s
    }

    fn check(&self, when: &str) {
        write_atomic(&self.dir.join(CHECK), "").unwrap();
        let deadline = Instant::now() + RESULT_TIMEOUT;
        let mut bad = Vec::new();
        for role in self.roles {
            let f = self.dir.join(result_name(role));
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_for_file(&f, left) {
                Err(e) => bad.push(format!("{role}: {e}")),
                Ok(()) => {
                    let r = fs::read_to_string(&f).unwrap_or_default();
                    if r.trim() != "ok" {
                        bad.push(format!("{role}: {}", r.trim()));
                    }
                }
            }
        }
        assert!(
            bad.is_empty(),
            "{when}: {}\n{}",
            bad.join("\n"),
            self.diag()
        );
    }

    fn reset(&self) {
        let _ = fs::remove_file(self.dir.join(CHECK));
        for role in self.roles {
            let _ = fs::remove_file(self.dir.join(result_name(role)));
        }
    }

    /// The launcher exits with the init's status once the namespace is gone.
    fn wait_original(&mut self, want_ok: bool) {
        let mut c = self.unshare.take().expect("original launcher");
        let deadline = Instant::now() + Duration::from_secs(20);
        let st = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("unshare did not exit\n{}", self.diag());
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if want_ok {
            assert!(st.success(), "original exited with {st:?}\n{}", self.diag());
        }
        wait_gone(&[self.init], Duration::from_secs(10)).unwrap();
        reap_zombie_children(&[]);
    }

    /// Only the pids inside the tree's pid namespace are restored (the
    /// workload checks them); the host pid of the init is the kernel's
    /// choice, as with CRIU: it becomes `init`.
    fn restore(&mut self, env: &Env, img: &Path, extra: &[&str]) {
        let pidfile = env.path("restore.pid");
        let run = env.restore(img, &pidfile, extra);
        run.expect_success("restore");
        self.init = read_pidfile(&pidfile).unwrap();
    }

    /// The restored init is our child (subreaper): wait for its clean exit.
    fn wait_restored(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = try_reap(self.init) {
                assert!(
                    libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                    "restored init ended with status {st:#x}\n{}",
                    self.diag()
                );
                break;
            }
            assert!(
                process_exists(self.init) && Instant::now() < deadline,
                "restored init {} gone or stuck\n{}",
                self.init,
                self.diag()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.init = 0;
    }
}

impl Drop for NsTree {
    fn drop(&mut self) {
        if self.init > 0 && process_exists(self.init) {
            // SAFETY: kill takes plain integers; the init is ours.
            unsafe { libc::kill(self.init, libc::SIGKILL) };
            let _ = wait_gone(&[self.init], Duration::from_secs(5));
        }
        if let Some(mut c) = self.unshare.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        reap_zombie_children(&[]);
    }
}

fn dump_restore(name: &str, flags: &[&str], args: &[&str], restore: &[&str]) {
    let Some(env) = Env::setup(name) else { return };
    let mut t = NsTree::start(&env, flags, args);
    let img = env.dir("images");
    env.dump(t.init, &img, &[]).expect_success("dump");
    t.wait_original(false);
    t.restore(&env, &img, restore);
    t.check("after restore");
    t.wait_restored();
}

fn leave_running(name: &str, flags: &[&str], args: &[&str], restore: &[&str]) {
    let Some(env) = Env::setup(name) else { return };
    let mut t = NsTree::start(&env, flags, args);
    let img = env.dir("images");
    env.dump(t.init, &img, &["-R"]).expect_success("dump -R");
    t.check("original after dump -R");
    t.wait_original(true);
    t.reset();
    t.restore(&env, &img, restore);
    t.check("after restore");
    t.wait_restored();
}

const PID_IPC_UTS: &[&str] = &["--pid", "--fork", "--ipc", "--uts"];
const ALL: &[&str] = &[
    "--pid",
    "--fork",
    "--ipc",
    "--uts",
    "--net",
    "--cgroup",
    "--time",
    "--monotonic",
    "86400",
    "--boottime",
    "172800",
];

#[test]
fn pid_ipc_uts_dump_restore() {
    dump_restore("pid_ipc_uts_dump_restore", PID_IPC_UTS, &[], &[]);
}

#[test]
fn pid_ipc_uts_leave_running() {
    leave_running("pid_ipc_uts_leave_running", PID_IPC_UTS, &[], &[]);
}

/// SysV segments attached (shmat) in the root and its children, one split
/// by mprotect, one removed while attached: re-attached at their addresses
/// on restore, shared again, shm_nattch as before (the workload checks).
#[test]
fn shm_attached_dump_restore() {
    dump_restore("shm_attached_dump_restore", PID_IPC_UTS, &["shmat"], &[]);
}

#[test]
fn shm_attached_leave_running() {
    leave_running("shm_attached_leave_running", PID_IPC_UTS, &["shmat"], &[]);
}

/// The launcher: a private mount table with its own /proc too
/// (restored with `--root /`: its mounts come from the host's root).
const WITH_MOUNTS: &[&str] = &[
    "--pid",
    "--fork",
    "--mount-proc",
    "--mount",
    "--ipc",
    "--uts",
    "--net",
    "--cgroup",
    "--time",
    "--monotonic",
    "86400",
    "--boottime",
    "172800",
];

#[test]
fn with_mounts_dump_restore() {
    dump_restore(
        "with_mounts_dump_restore",
        WITH_MOUNTS,
        &["net", "nested"],
        &["--root", "/"],
    );
}

#[test]
fn with_mounts_leave_running() {
    leave_running(
        "with_mounts_leave_running",
        WITH_MOUNTS,
        &["net", "nested"],
        &["--root", "/"],
    );
}

#[test]
fn nested_pid_dump_restore() {
    dump_restore("nested_pid_dump_restore", PID_IPC_UTS, &["nested"], &[]);
}

#[test]
fn nested_pid_leave_running() {
    leave_running("nested_pid_leave_running", PID_IPC_UTS, &["nested"], &[]);
}

/// A container restored while its original still runs (dump `-R`): the
/// pids inside its pid namespaces (nested one included) are the dumped
/// ones, its host pids are new. Both trees verify themselves on the same
/// check and both finish cleanly (each process exits 0 only if all it
/// checked was right).
#[test]
fn pid_ns_restore_beside_original() {
    let Some(env) = Env::setup("pid_ns_restore_beside_original") else {
        return;
    };
    let mut t = NsTree::start(&env, PID_IPC_UTS, &["nested"]);
    let img = env.dir("images");
    env.dump(t.init, &img, &["-R"]).expect_success("dump -R");
    let original = t.init;
    t.restore(&env, &img, &[]);
    assert_ne!(t.init, original);
    assert!(
        process_exists(original),
        "the original is gone\n{}",
        t.diag()
    );
    t.check("original and restored side by side");
    t.wait_restored();
    t.init = original;
    t.wait_original(true);
}

/// A restore that fails in a task of a tree with its own pid namespace
/// names the task by its pid in the image and its new host pid, never by
/// the dumped host pid: here the segments the root had attached are missing
/// from the IPC namespace it is restored into (`--join-ns ipc:` of a fresh
/// one), so re-attaching them fails in the root (pid 1).
#[test]
fn restore_error_names_image_pid() {
    let Some(env) = Env::setup("restore_error_names_image_pid") else {
        return;
    };
    let mut t = NsTree::start(&env, PID_IPC_UTS, &["shmat"]);
    let original = t.init;
    let img = env.dir("images");
    env.dump(t.init, &img, &["-R"]).expect_success("dump -R");
    let mut other = spawn(&env, &["unshare", "--ipc", "sleep", "100"]);
    let opid = other.id() as i32;
    wait_ns_differs(opid, "ipc");
    let join = format!("ipc:{opid}");
    let pidfile = env.path("restore.pid");
    let run = env.restore(&img, &pidfile, &["--join-ns", &join]);
    let _ = other.kill();
    let _ = other.wait();
    run.expect_clear_failure("restore without the segments", &["shmat"]);
    let line = run.stderr.trim();
    assert!(line.contains(": pid 1 (host pid "), "{}", run.describe());
    assert!(!mentions(line, &original.to_string()), "{}", run.describe());
    t.check("original after the failed restore");
    t.wait_original(true);
}

#[test]
fn all_ns_dump_restore() {
    dump_restore("all_ns_dump_restore", ALL, &["net"], &[]);
}

#[test]
fn all_ns_leave_running() {
    leave_running("all_ns_leave_running", ALL, &["net"], &[]);
}

/// Maps of the user-namespace variant: root is root, other ids are
/// shifted, so every id written from outside must be translated.
const USER_UID_MAP: &str = "0 0 1\n1 100000 65535\n";
const USER_GID_MAP: &str = "0 0 1\n1 200000 65535\n";

/// The launcher in a user namespace of its own.
const USER_FLAGS: &[&str] = &[
    "--pid",
    "--fork",
    "--mount-proc",
    "--mount",
    "--ipc",
    "--uts",
    "--time",
    "--monotonic",
    "86400",
];

/// What the test sees of the restored tree from outside: its own user
/// namespace, with the maps written at start and setgroups denied.
fn check_userns_outside(pid: i32) {
    let mine = fs::read_link("/proc/self/ns/user").unwrap();
    assert_ne!(
        fs::read_link(format!("/proc/{pid}/ns/user")).unwrap(),
        mine,
        "the restored init {pid} is in our user namespace"
    );
    let norm = |s: String| {
        s.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rd = |f: &str| norm(fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap());
    assert_eq!(rd("uid_map"), USER_UID_MAP.trim_end());
    assert_eq!(rd("gid_map"), USER_GID_MAP.trim_end());
    assert_eq!(rd("setgroups"), "deny");
}

/// The restored network namespace belongs to the restored user namespace
/// (else the tree's root would not administer its own network).
fn check_netns_owner(pid: i32) {
    let ino = |k: &str| {
        let l = fs::read_link(format!("/proc/{pid}/ns/{k}")).unwrap();
        let l = l.to_string_lossy().into_owned();
        l.trim_start_matches(|c: char| !c.is_ascii_digit())
            .trim_end_matches(']')
            .to_string()
    };
    let (net, user) = (ino("net"), ino("user"));
    let out = Command::new("lsns")
        .args(["-n", "-t", "net", "-o", "NS,ONS"])
        .output()
        .expect("lsns");
    let table = String::from_utf8_lossy(&out.stdout);
    let owner = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&net.as_str()))
        .and_then(|f| f.get(1).map(|s| s.to_string()));
    assert_eq!(
        owner.as_deref(),
        Some(user.as_str()),
        "net namespace {net} of {pid} is not owned by its user namespace {user}:\n{table}"
    );
}

#[test]
fn user_ns_dump_restore() {
    let Some(env) = Env::setup("user_ns_dump_restore") else {
        return;
    };
    let mut t = NsTree::start_user(&env, USER_FLAGS, "");
    let img = env.dir("images");
    env.dump(t.init, &img, &[]).expect_success("dump");
    t.wait_original(false);
    t.restore(&env, &img, &["--root", "/"]);
    check_userns_outside(t.init);
    t.check("after restore");
    t.wait_restored();
}

#[test]
fn user_ns_leave_running() {
    let Some(env) = Env::setup("user_ns_leave_running") else {
        return;
    };
    // With a network namespace owned by the user namespace too.
    let flags: Vec<&str> = USER_FLAGS.iter().copied().chain(["--net"]).collect();
    let mut t = NsTree::start_user(&env, &flags, "net");
    let img = env.dir("images");
    env.dump(t.init, &img, &["-R"]).expect_success("dump -R");
    t.check("original after dump -R");
    t.wait_original(true);
    t.reset();
    t.restore(&env, &img, &["--root", "/"]);
    check_userns_outside(t.init);
    check_netns_owner(t.init);
    t.check("after restore");
    t.wait_restored();
}

/// Namespaces the restorer opens belong to its user namespace: with a
/// tree in its own, `--join-ns` is refused in one line naming the pid, and
/// the images still restore without it.
#[test]
fn user_ns_join_refused() {
    let Some(env) = Env::setup("user_ns_join_refused") else {
        return;
    };
    let mut t = NsTree::start_user(&env, USER_FLAGS, "");
    let img = env.dir("images");
    let dumped = t.init;
    env.dump(t.init, &img, &[]).expect_success("dump");
    t.wait_original(false);
    let run = env.restore(
        &img,
        &env.path("refused.pid"),
        &["--root", "/", "--join-ns", "net:/proc/self/ns/net"],
    );
    run.expect_clear_failure("restore with --join-ns", &["user namespace", "--join-ns"]);
    // Named by its pid in the images (the namespace's init), not by the
    // host pid it had when dumped.
    assert!(
        run.stderr.contains("pid 1:") && !run.stderr.contains(&dumped.to_string()),
        "{}",
        run.describe()
    );
    t.restore(&env, &img, &["--root", "/"]);
    t.check("after restore");
    t.wait_restored();
}

/// Starts `argv` in its own session; returns the child and its pid.
fn spawn(env: &Env, argv: &[&str]) -> Child {
    let out = fs::File::create(env.path("refused.out")).unwrap();
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // SAFETY: setsid is async-signal-safe and touches no shared memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().expect("spawn")
}

/// Waits until `pid`'s `ns/<kind>` link differs from ours (the launcher
/// has unshared and exec'd).
fn wait_ns_differs(pid: i32, kind: &str) {
    let mine = fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .ok()
        .as_ref()
        == Some(&mine)
    {
        assert!(Instant::now() < deadline, "{pid} never left our {kind} ns");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A child in a UTS namespace other than the root's is refused, naming the
/// child and the kind; the tree keeps running.
#[test]
fn nested_uts_refused() {
    nested_refused(
        "nested_uts_refused",
        "unshare --uts sleep 100 & wait",
        "uts",
    );
}

/// Likewise a child in a user namespace of its own below the tree root's
/// (only the root's user namespace is saved).
#[test]
fn nested_user_ns_refused() {
    nested_refused(
        "nested_user_ns_refused",
        "unshare --user --map-root-user sleep 100 & wait",
        "user",
    );
}

/// `sh -c script` forks a child into another `kind` namespace: the dump
/// is refused naming the child and the kind; the tree keeps running.
fn nested_refused(name: &str, script: &str, kind: &str) {
    let Some(env) = Env::setup(name) else {
        return;
    };
    let mut c = spawn(&env, &["sh", "-c", script]);
    let pid = c.id() as i32;
    let deadline = Instant::now() + Duration::from_secs(10);
    let child = loop {
        let kids =
            fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        if let Some(k) = kids
            .split_whitespace()
            .next()
            .and_then(|x| x.parse::<i32>().ok())
        {
            break k;
        }
        assert!(Instant::now() < deadline, "sh has no child");
        std::thread::sleep(Duration::from_millis(5));
    };
    wait_ns_differs(child, kind);
    let img = env.dir("images");
    let run = env.dump(pid, &img, &[]);
    run.expect_clear_failure(
        &format!("dump with a nested {kind} ns"),
        &[&format!("{kind} namespace")],
    );
    assert!(
        run.stderr.contains(&child.to_string()),
        "{}",
        run.describe()
    );
    assert!(c.try_wait().unwrap().is_none(), "the target died");
    // SAFETY: kill takes plain integers; both are ours.
    unsafe {
        libc::kill(child, libc::SIGKILL);
    }
    let _ = c.kill();
    let _ = c.wait();
    reap_zombie_children(&[]);
}

/// POSIX timers (one aimed at a thread by SIGEV_THREAD_ID) in a process
/// that is pid 1 of its own pid namespace: the thread is named by the id the
/// task sees, not the host's.
#[test]
fn timers_in_pid_ns_dump_restore() {
    let Some(env) = Env::setup("timers_in_pid_ns_dump_restore") else {
        return;
    };
    let mut t = NsTree::start_bin(
        &env,
        &["--pid", "--fork"],
        env!("CARGO_BIN_EXE_wl-timers"),
        &[],
        &["root"],
    );
    let img = env.dir("images");
    env.dump(t.init, &img, &[]).expect_success("dump");
    t.wait_original(false);
    t.restore(&env, &img, &[]);
    t.check("after restore");
    t.wait_restored();
}

/// Four threads in a process that is pid 1 of its own pid namespace (with
/// its own /proc), restored beside its still-running original: every
/// thread gets its dumped tid inside the namespace and a new one outside.
#[test]
fn threads_in_pid_ns_beside_original() {
    let Some(env) = Env::setup("threads_in_pid_ns_beside_original") else {
        return;
    };
    let mut t = NsTree::start_bin(
        &env,
        &["--pid", "--fork", "--mount-proc", "--mount"],
        env!("CARGO_BIN_EXE_wl-threads"),
        &[],
        &["root"],
    );
    let img = env.dir("images");
    env.dump(t.init, &img, &["-R"]).expect_success("dump -R");
    let original = t.init;
    t.restore(&env, &img, &["--root", "/"]);
    assert_ne!(t.init, original);
    t.check("original and restored side by side");
    t.wait_restored();
    t.init = original;
    t.wait_original(true);
}

/// 64 MiB in a process that is pid 1 of its own pid namespace, big enough
/// to write its own pages (engine/src/mem/selfwrite.rs): the tid of the
/// thread it clones for that is its namespace's, which the dumper must find
/// on the host to wait for it. Left running (dump -R) with no fd, mapping
/// or thread of the dump's (the workload checks its footprint), then
/// restored.
#[test]
fn memory_in_pid_ns_written_by_itself() {
    let Some(env) = Env::setup("memory_in_pid_ns_written_by_itself") else {
        return;
    };
    let mut t = NsTree::start_bin(
        &env,
        &["--pid", "--fork"],
        env!("CARGO_BIN_EXE_wl-memhog"),
        &["64", "threads"],
        &["root"],
    );
    let img = env.dir("images");
    env.dump(t.init, &img, &["-R"]).expect_success("dump -R");
    t.check("original after dump -R");
    t.wait_original(true);
    t.reset();
    t.restore(&env, &img, &[]);
    t.check("after restore");
    t.wait_restored();
}
