//! What the tests against real container stacks share: bounded runs of
//! external commands, the busybox-static rootfs and its OCI image, and
//! private podman and containerd set-ups (CONTAINER-LAB.md) that clean up
//! after themselves.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::os::fd::{FromRawFd, RawFd};

use crate::harness::{say, Env, StasisRun};

/// The cgroup2 mount on our machines (hybrid hierarchy).
pub const CG2: &str = "/sys/fs/cgroup/unified";

/// The container workload: a counter written to /tmp/tick five times a
/// second, so a restore that resets it is seen.
pub const TICKER: &str = "i=0; while true; do i=$((i+1)); echo $i >/tmp/tick; sleep 0.2; done";

/// Runs `cmd` with stdin from /dev/null, capturing its output; a hang past
/// `timeout` kills it and fails the test naming `what`.
pub fn output_within(cmd: &mut Command, what: &str, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{what} hung for {timeout:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`output_within`] with a minute: no external tool may hang a test.
pub fn output(cmd: &mut Command) -> Output {
    let what = cmd.get_program().to_string_lossy().into_owned();
    output_within(cmd, &what, Duration::from_secs(60))
}

/// Status, stdout and stderr of `o`, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a shell script (`sh -ec`, two minutes at most) that must succeed;
/// returns its stdout.
pub fn sh(what: &str, script: &str) -> String {
    let out = output_within(
        Command::new("sh").args(["-ec", script]),
        what,
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{what} failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `bin` is on PATH.
pub fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// True (skip) when one of `bins` is missing; a failure instead when the
/// tests are required (CI).
pub fn skip_without(test: &str, bins: &[&str]) -> bool {
    for b in bins {
        if !have(b) {
            if std::env::var_os("STASIS_TESTS_REQUIRED").is_some() {
                panic!("{test}: {b} is not installed (hack/setup.sh installs it)");
            }
            say(&format!("{test}: skipped: {b} not installed"));
            return true;
        }
    }
    false
}

/// A name unique to this test run.
pub fn uniq(name: &str) -> String {
    format!("stasis-it-{name}-{}", std::process::id())
}

/// Fills `rootfs` with busybox-static and its applet links.
pub fn busybox_rootfs(rootfs: &Path) {
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "root"] {
        fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copy /bin/busybox (busybox-static)");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for a in String::from_utf8_lossy(&list.stdout).lines() {
        if a != "busybox" && !a.is_empty() {
            let _ = symlink("busybox", rootfs.join("bin").join(a));
        }
    }
}

/// Applies a jq filter to a JSON file in place.
pub fn jq(file: &Path, filter: &str) {
    let out = Command::new("jq")
        .arg(filter)
        .arg(file)
        .output()
        .expect("jq");
    assert!(
        out.status.success(),
        "jq {filter}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(file, out.stdout).expect("write jq output");
}

/// The counter's current value in a rootfs (0 before the first tick).
pub fn tick(rootfs: &Path) -> u64 {
    read_tick(|| fs::read_to_string(rootfs.join("tmp/tick")).unwrap_or_default())
}

/// The counter from `read` (the tick file's text), 0 if none. The
/// [`TICKER`]'s `echo $i >/tmp/tick` truncates before it writes, so the
/// file can be empty for a moment (also right after a restore, when the
/// dump caught the shell in between): read again then.
pub fn read_tick(mut read: impl FnMut() -> String) -> u64 {
    for _ in 0..25 {
        let s = read();
        if !s.trim().is_empty() {
            return s.trim().parse().unwrap_or(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    0
}

/// Waits until `f` holds, failing the test after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An OCI image layout tar (umoci) of `rootfs` whose command is the
/// [`TICKER`], named `localhost/busybox:busybox` by `ctr images import
/// --base-name localhost/busybox` and `localhost/busybox:latest` by
/// `podman load`.
pub fn oci_image(env: &Env, rootfs: &Path) -> PathBuf {
    let d = env.dir("img");
    let tar = d.join("busybox-oci.tar");
    sh(
        "umoci image",
        &format!(
            "cd {d}; umoci init --layout oci-layout; umoci new --image oci-layout:busybox; umoci unpack --image oci-layout:busybox bb;
             cp -a {r}/. bb/rootfs/; umoci repack --image oci-layout:busybox bb;
             umoci config --image oci-layout:busybox --config.cmd sh --config.cmd -c --config.cmd '{TICKER}' --config.env PATH=/bin --architecture amd64 --os linux;
             umoci gc --layout oci-layout; tar -C oci-layout -cf {tar} oci-layout index.json blobs",
            d = d.display(),
            r = rootfs.display(),
            tar = tar.display()
        ),
    );
    tar
}

/// How a private podman runs its containers.
pub enum PodmanRuntime<'a> {
    /// `--runtime <stasis>` with the runtime's state under the test dir,
    /// and `<stasis>` as the `criu` first on PATH (podman's version probe).
    Stasis(&'a Path),
    /// Stock runc, with `<stasis>` as the `criu` first on PATH.
    RuncWithCriu(&'a Path),
}

/// podman with its own containers.conf, storage (vfs) and runtime state in
/// the test's directory; removes its containers and images when dropped.
pub struct Podman {
    pub dir: PathBuf,
    path: String,
    runtime_args: Vec<String>,
}

impl Podman {
    /// None (skipped) when podman or its helpers are missing.
    pub fn new(env: &Env, test: &str, runtime: PodmanRuntime) -> Option<Podman> {
        if skip_without(test, &["podman", "conmon", "umoci"]) {
            return None;
        }
        let dir = env.dir("podman");
        fs::create_dir_all(dir.join("tmp")).expect("mkdir tmp");
        let (runtime_line, runtime_args, path_head) = match runtime {
            PodmanRuntime::Stasis(bin) => {
                // podman asks the `criu` on PATH for its version before a
                // checkpoint: stasis answers that probe too.
                let cbin = env.dir("criu-bin");
                symlink(bin, cbin.join("criu")).expect("symlink criu");
                (
                    String::new(),
                    vec![
                        "--runtime".to_string(),
                        bin.display().to_string(),
                        "--runtime-flag".to_string(),
                        format!("root={}", dir.join("rt").display()),
                    ],
                    Some(cbin),
                )
            }
            PodmanRuntime::RuncWithCriu(bin) => {
                let cbin = env.dir("criu-bin");
                symlink(bin, cbin.join("criu")).expect("symlink criu");
                (
                    "runtime = \"runc\"\n".to_string(),
                    vec![
                        "--runtime-flag".to_string(),
                        format!("root={}", dir.join("runc-root").display()),
                    ],
                    Some(cbin),
                )
            }
        };
        fs::write(
            dir.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
                 netns = \"none\"\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 {runtime_line}tmp_dir = \"{}\"\n",
                dir.join("tmp").display()
            ),
        )
        .expect("containers.conf");
        fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("root").display(),
                dir.join("runroot").display()
            ),
        )
        .expect("storage.conf");
        let sys_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        let path = match path_head {
            Some(h) => format!("{}:{sys_path}", h.display()),
            None => sys_path,
        };
        Some(Podman {
            dir,
            path,
            runtime_args,
        })
    }

    /// `podman` with this set-up's environment and runtime flags.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("PATH", &self.path)
            .args(&self.runtime_args);
        c
    }

    /// Runs `podman ARGS` (two minutes at most), which must succeed;
    /// returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let what = format!("podman {}", args.join(" "));
        let o = output_within(self.cmd().args(args), &what, Duration::from_secs(120));
        assert!(o.status.success(), "{what}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `podman inspect -f {{.State.Status}}`.
    pub fn status(&self, name: &str) -> String {
        self.ok(&["inspect", "-f", "{{.State.Status}}", name])
            .trim()
            .to_string()
    }

    /// The [`TICKER`]'s current value inside container `name` (0 before the
    /// first tick).
    pub fn tick(&self, name: &str) -> u64 {
        read_tick(|| {
            let o = output(self.cmd().args(["exec", name, "cat", "/tmp/tick"]));
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
    }

    /// The `Seccomp:` mode of the container's init, as it sees itself.
    pub fn init_seccomp(&self, name: &str) -> String {
        self.ok(&["exec", name, "sh", "-c", "grep Seccomp: /proc/1/status"])
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// Loads the busybox [`oci_image`] as `localhost/busybox:latest`.
    pub fn load_busybox(&self, env: &Env, rootfs: &Path) -> &'static str {
        let tar = oci_image(env, rootfs);
        self.ok(&["load", "-i", tar.to_str().expect("utf-8 path")]);
        "localhost/busybox:latest"
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = output(self.cmd().args(["rm", "-af", "-t", "0"]));
        let _ = output(self.cmd().args(["rmi", "-af"]));
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!("find {CG2}/libpod_parent -depth -type d -empty -exec rmdir {{}} \\; 2>/dev/null; true"),
            ])
            .status();
    }
}

/// A private containerd 1.6 (own root, state, sockets and opt dir, no CRI)
/// and a unique namespace; killed, with its containers, when dropped.
pub struct Containerd {
    pub dir: PathBuf,
    /// The ctr prefix: `ctr --address … -n NS`.
    pub ctr: String,
    pub ns: String,
    daemon: Child,
    ids: Vec<String>,
}

impl Containerd {
    /// None (skipped) when containerd, ctr or umoci are missing.
    pub fn start(env: &Env, test: &str, name: &str) -> Option<Containerd> {
        if skip_without(test, &["containerd", "ctr", "umoci"]) {
            return None;
        }
        let d = env.dir(name);
        let dd = d.display();
        fs::write(
            d.join("config.toml"),
            format!(
                "version = 2\nroot = \"{dd}/root\"\nstate = \"{dd}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = \"{dd}/containerd.sock\"\n\n[ttrpc]\n  address = \"{dd}/containerd.sock.ttrpc\"\n\n[debug]\n  address = \"{dd}/debug.sock\"\n\n[metrics]\n  address = \"\"\n\n[plugins]\n  [plugins.\"io.containerd.internal.v1.opt\"]\n    path = \"{dd}/opt\"\n"
            ),
        )
        .expect("containerd config");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(fs::File::create(d.join("containerd.log")).expect("containerd.log"))
            .stderr(fs::File::create(d.join("containerd.err")).expect("containerd.err"))
            .spawn()
            .expect("start containerd");
        let ns = uniq(name);
        let ctr = format!("ctr --address {dd}/containerd.sock -n {ns}");
        let c = Containerd {
            dir: d.clone(),
            ctr,
            ns,
            daemon,
            ids: Vec::new(),
        };
        wait_until("containerd's socket", Duration::from_secs(30), || {
            d.join("containerd.sock").exists()
        });
        Some(c)
    }

    /// A container id, cleaned up when this containerd is dropped.
    pub fn id(&mut self, what: &str) -> String {
        let id = uniq(what);
        self.ids.push(id.clone());
        id
    }

    /// Links `bin` into containerd's opt bin dir as `name`: that dir comes
    /// first on the PATH of shims (and so of the runc they run).
    fn link_opt_bin(&self, bin: &Path, name: &std::ffi::OsStr) {
        let d = self.dir.join("opt/bin");
        fs::create_dir_all(&d).expect("mkdir opt/bin");
        let _ = fs::remove_file(d.join(name));
        symlink(bin, d.join(name)).expect("symlink into opt/bin");
    }

    /// `<stasis>` as the `criu` that the runc shim's runc finds.
    pub fn use_criu(&self, bin: &Path) {
        self.link_opt_bin(bin, "criu".as_ref());
    }

    /// Puts a shim binary where `--runtime io.containerd.NAME.v2` finds it.
    pub fn install_shim(&self, shim: &Path) {
        self.link_opt_bin(shim, shim.file_name().expect("shim file name"));
    }

    /// The mounted rootfs of container `id`'s running task (its bundle's).
    pub fn task_rootfs(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.ns)
            .join(id)
            .join("rootfs")
    }

    /// Runs a script with `$C` set to the ctr prefix; returns stdout.
    pub fn sh(&self, what: &str, script: &str) -> String {
        sh(what, &format!("C='{}'; {script}", self.ctr))
    }

    /// Imports the busybox [`oci_image`] as `localhost/busybox:busybox`.
    pub fn import_busybox(&self, env: &Env, rootfs: &Path) -> &'static str {
        let tar = oci_image(env, rootfs);
        self.sh(
            "ctr images import",
            &format!(
                "$C images import --base-name localhost/busybox {}",
                tar.display()
            ),
        );
        "localhost/busybox:busybox"
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let (c, ns) = (&self.ctr, &self.ns);
        for id in &self.ids {
            let _ = output(Command::new("sh").args([
                "-c",
                &format!("{c} task kill -s KILL {id}; sleep 0.5; {c} task rm -f {id}; {c} c rm {id}; {c} snapshots rm {id}; true"),
            ]));
        }
        let _ = output(Command::new("sh").args([
            "-c",
            &format!("for i in $({c} images ls -q); do {c} images rm $i; done; rm -rf /run/containerd/runc/{ns}; find {CG2}/{ns} -depth -type d -exec rmdir {{}} \\; 2>/dev/null; true"),
        ]));
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

// ---- a runc-compatible `stasis` on busybox bundles ----

/// The container's process: the counter.
pub const TICKER_ARGS: &[&str] = &["sh", "-c", TICKER];

/// A bundle whose rootfs is busybox-static; `args` is the process.
pub fn bundle(env: &Env, name: &str, args: &[&str]) -> PathBuf {
    let b = env.dir(name);
    busybox_rootfs(&b.join("rootfs"));
    let r = env.stasis(&["spec", "--bundle", b.to_str().unwrap()]);
    r.expect_success("stasis spec");
    let args_json = format!(
        "[{}]",
        args.iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    jq(
        &b.join("config.json"),
        &format!(".process.terminal=false | .root.readonly=false | .process.args={args_json}"),
    );
    b
}

/// A busybox bundle whose process is `sh -c SCRIPT`.
pub fn sh_bundle(env: &Env, name: &str, script: &str) -> PathBuf {
    bundle(env, name, &["sh", "-c", script])
}

/// `stasis --root <test dir>/state …`; deletes whatever is left when dropped.
pub struct Rt<'a> {
    pub env: &'a Env,
    pub root: PathBuf,
}

impl<'a> Rt<'a> {
    pub fn new(env: &'a Env) -> Rt<'a> {
        Rt {
            env,
            root: env.path("state"),
        }
    }
    pub fn run(&self, args: &[&str]) -> StasisRun {
        let mut a = vec!["--root", self.root.to_str().unwrap()];
        a.extend_from_slice(args);
        self.env.stasis(&a)
    }
    pub fn ok(&self, args: &[&str]) -> StasisRun {
        let r = self.run(args);
        r.expect_success(&format!("stasis {}", args.join(" ")));
        r
    }
    pub fn status(&self, id: &str) -> String {
        let r = self.ok(&["state", id]);
        let l = r
            .stdout
            .lines()
            .find(|l| l.contains("\"status\""))
            .unwrap_or_default()
            .to_string();
        l.split('"').nth(3).unwrap_or_default().to_string()
    }
    /// `r` failed with one short stderr line naming every word of `words`,
    /// and left nothing of container `id` behind (no state dir, cgroup,
    /// mount or process).
    pub fn expect_clean_failure(&self, r: &StasisRun, id: &str, words: &[&str]) {
        assert!(!r.success(), "should fail: {}", r.describe());
        for w in words {
            assert!(
                r.stderr.contains(w),
                "error should mention {w:?}: {}",
                r.describe()
            );
        }
        assert!(
            r.stderr.lines().count() <= 2,
            "one clear line expected: {}",
            r.describe()
        );
        no_leftovers(id, 0);
        assert!(!self.root.join(id).exists(), "state dir left for {id}");
    }
}

impl Drop for Rt<'_> {
    fn drop(&mut self) {
        // Whatever a failed test left: kill and delete it.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.run(&["delete", "--force", &id]);
            }
        }
    }
}

/// No cgroup, mount or process of container `id` (init `pid`) is left.
pub fn no_leftovers(id: &str, pid: i32) {
    assert!(
        !Path::new(CG2).join(id).exists(),
        "cgroup {CG2}/{id} left behind"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(id),
        "a mount naming {id} is left: {mounts}"
    );
    if pid > 0 {
        // Processes exec'd into the container re-parent to this test (a
        // subreaper); their zombies hold the pid namespace's init until
        // reaped.
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            while let Ok(st) =
                nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
            {
                if st == nix::sys::wait::WaitStatus::StillAlive {
                    break;
                }
            }
            if std::fs::read_to_string(format!("/proc/{pid}/stat")).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let alive =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"));
        assert!(!alive, "container process {pid} still runs");
    }
}

/// The fd sent with SCM_RIGHTS (runc's console protocol).
pub fn recv_fd(s: &std::os::unix::net::UnixStream) -> std::fs::File {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    s.set_nonblocking(false).unwrap();
    let mut name = [0u8; 256];
    let mut iov = [std::io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty())
        .expect("recvmsg on the console socket");
    for c in msg.cmsgs().expect("cmsgs") {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: the kernel just installed this fd for us; nothing else owns it.
            return unsafe { std::fs::File::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd on the console socket")
}
