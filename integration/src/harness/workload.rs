//! Workload control: spawning, dumping, restoring and checking workloads,
//! and the two standard scenarios.

use std::collections::BTreeMap;
use std::fs;
use std::io;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::workload::{ready_name, result_name, write_atomic, CHECK, ROOT};

use super::*;

/// A workload role that is expected to sit stopped (SIGSTOP) until checked.
pub const STOPPED_ROLE: &str = "stopped";

/// Options for starting a workload.
#[derive(Clone, Debug)]
pub struct Spawn {
    /// Start the root in a new session (`setsid`), so the tree is
    /// self-contained and needs no `--shell-job`. When false, the root gets
    /// its own process group inside the test's session.
    pub setsid: bool,
}

impl Default for Spawn {
    fn default() -> Self {
        Spawn { setsid: true }
    }
}

/// A running workload (original or restored) with its state directory.
///
/// Dropping it kills whatever is left of the tree (by the pids in its ready
/// files and the restore pid file, only while they still look like this
/// workload) and reaps it.
pub struct Workload {
    /// Program name (`wl-mem`, ...).
    pub name: String,
    /// `STATEDIR`.
    pub dir: PathBuf,
    /// Roles whose `result.<role>` is expected (`root` first).
    pub roles: Vec<String>,
    /// Pid of each role, from the ready files.
    pub pids: BTreeMap<String, i32>,
    bin: PathBuf,
    child: Option<Child>,
    /// Other pids to kill on drop (e.g. a restored root with an unexpected pid).
    extra: Vec<i32>,
}

impl Workload {
    /// Starts `BIN STATEDIR ARGS` in a new session, stdio on files in
    /// `STATEDIR`, and waits for its ready files.
    pub fn start(env: &Env, bin: &str, args: &[&str], roles: &[&str]) -> Workload {
        Workload::start_with(env, bin, args, roles, Spawn::default())
    }

    /// [`start`](Self::start) with options.
    pub fn start_with(
        env: &Env,
        bin: &str,
        args: &[&str],
        roles: &[&str],
        opts: Spawn,
    ) -> Workload {
        let bin = PathBuf::from(bin);
        let name = bin
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = env.dir(&format!("{name}.{n}"));
        let mut cmd = Command::new(&bin);
        cmd.arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.join("stdout")).expect("create stdout"))
            .stderr(fs::File::create(dir.join("stderr")).expect("create stderr"));
        if opts.setsid {
            // SAFETY: setsid is async-signal-safe and the closure touches no
            // memory shared with the parent.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        } else {
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut roles: Vec<String> = roles.iter().map(|s| s.to_string()).collect();
        if !roles.iter().any(|r| r == ROOT) {
            roles.insert(0, ROOT.to_string());
        }
        let mut wl = Workload {
            name,
            dir,
            roles,
            pids: BTreeMap::new(),
            bin,
            child: Some(child),
            extra: Vec::new(),
        };
        if let Err(e) = wl.wait_ready(RESULT_TIMEOUT) {
            panic!("{}: {e}\n{}", wl.name, wl.diagnostics());
        }
        wl
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let ready = self.dir.join(ready_name(ROOT));
        while !ready.exists() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    let st = describe_exit(&st);
                    self.child = None;
                    return Err(format!("exited before it was ready ({st})"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        for role in self.roles.clone() {
            let f = self.dir.join(ready_name(&role));
            let pid = read_pidfile(&f)?;
            self.pids.insert(role, pid);
        }
        let spawned = self.child.as_ref().map(|c| c.id() as i32);
        if let Some(sp) = spawned {
            if sp != self.root_pid() {
                return Err(format!(
                    "ready holds pid {} but the spawned process is {sp}",
                    self.root_pid()
                ));
            }
        }
        Ok(())
    }

    /// Pid of the root.
    pub fn root_pid(&self) -> i32 {
        self.pids[ROOT]
    }

    /// Pids of all roles.
    pub fn all_pids(&self) -> Vec<i32> {
        self.pids.values().copied().collect()
    }

    /// `STATEDIR/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Creates `STATEDIR/check`.
    pub fn request_check(&self) {
        write_atomic(&self.dir.join(CHECK), "").expect("create check file");
    }

    /// Removes `check` and all `result.*` files.
    pub fn reset(&self) {
        let _ = fs::remove_file(self.dir.join(CHECK));
        for role in &self.roles {
            let _ = fs::remove_file(self.dir.join(result_name(role)));
        }
    }

    /// Waits for every `result.<role>`; `Err` lists each role that is not `ok`.
    pub fn wait_results(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut bad = Vec::new();
        for role in &self.roles {
            let f = self.dir.join(result_name(role));
            let left = deadline.saturating_duration_since(Instant::now());
            match wait_for_file(&f, left) {
                Err(_) => bad.push(format!("{role}: no result after {timeout:?}")),
                Ok(()) => {
                    let r = fs::read_to_string(&f).unwrap_or_default();
                    if r.trim() != "ok" {
                        bad.push(format!("{role}: {}", r.trim()));
                    }
                }
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("\n"))
        }
    }

    /// Creates `check`, waits for all results and the root's exit (status 0),
    /// and reaps the whole tree. Panics with details on any failure.
    pub fn verify_and_finish(&mut self, when: &str) {
        self.request_check();
        if let Err(e) = self.wait_results(RESULT_TIMEOUT) {
            panic!(
                "{} {when}: verification failed:\n{e}\n{}",
                self.name,
                self.diagnostics()
            );
        }
        match self.wait_exit(Duration::from_secs(15)) {
            Ok(0) => {}
            Ok(code) => panic!(
                "{} {when}: root exited with {code}\n{}",
                self.name,
                self.diagnostics()
            ),
            Err(e) => panic!("{} {when}: {e}\n{}", self.name, self.diagnostics()),
        }
        if let Err(e) = wait_gone(&self.all_pids(), Duration::from_secs(10)) {
            panic!("{} {when}: tree did not go away: {e}", self.name);
        }
        reap_zombie_children(&[]);
    }

    /// Waits for the root to exit and returns its exit code (`Err` if it was
    /// killed by a signal, is not our child, or did not exit in time).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        let pid = self.root_pid();
        if let Some(mut c) = self.child.take() {
            loop {
                match c.try_wait() {
                    Ok(Some(st)) => {
                        return st
                            .code()
                            .ok_or_else(|| format!("root {pid} {}", describe_exit(&st)))
                    }
                    Ok(None) => {}
                    Err(e) => return Err(format!("wait for root {pid}: {e}")),
                }
                if Instant::now() > deadline {
                    self.child = Some(c);
                    return Err(format!("root {pid} did not exit within {timeout:?}"));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // A restored root: our child through the subreaper.
        loop {
            if let Some(status) = try_reap(pid) {
                return if libc::WIFEXITED(status) {
                    Ok(libc::WEXITSTATUS(status))
                } else {
                    Err(format!(
                        "root {pid} {}",
                        crate::workload::describe_status(status)
                    ))
                };
            }
            if !process_exists(pid) {
                return Err(format!(
                    "root {pid} vanished without being reaped by us (not our child?)"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("root {pid} did not exit within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// After a dump without `--leave-running`: waits for the original tree to
    /// die and reaps it completely so that its pids are free for restore.
    pub fn expect_killed_and_reap(&mut self) {
        let pid = self.root_pid();
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    self.child = Some(c);
                    panic!(
                        "{}: root {pid} still runs 10 s after a dump without --leave-running",
                        self.name
                    );
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Err(e) = wait_gone(&self.all_pids(), Duration::from_secs(10)) {
            panic!("{}: dumped tree not gone: {e}", self.name);
        }
        // Zombies of the tree (children it never reaped) are ours now; their
        // pids must be free for the restore.
        reap_zombie_children(&[]);
        // Processes of the tree that are not roles (a workload's helpers)
        // may still be exiting: they become our zombies only then.
        reap_exiting_children(Duration::from_secs(10));
    }

    /// Checks that every process of the tree is alive, untraced, not stopped
    /// (except the role named `stopped`, which must be stopped, untraced).
    pub fn expect_running(&self, when: &str) {
        for (role, &pid) in &self.pids {
            let res = if role == STOPPED_ROLE {
                expect_stopped(pid, Duration::from_secs(5))
            } else {
                expect_untraced(pid, Duration::from_secs(5))
            };
            if let Err(e) = res {
                panic!(
                    "{} {when}: {role} ({pid}) is not running freely: {e}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
        }
    }

    /// Restores the tree from `imgdir` (`restore -d`), checks the pid file
    /// holds the original root pid and that every process runs again.
    pub fn restore_from(&mut self, env: &Env, imgdir: &Path, extra: &[&str]) {
        let pidfile = env.path(&format!(
            "restore-{}.pid",
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let run = env.restore(imgdir, &pidfile, extra);
        run.expect_success(&format!("{}: restore", self.name));
        let pid = read_pidfile(&pidfile).unwrap_or_else(|e| panic!("{}: {e}", self.name));
        if pid != self.root_pid() {
            self.extra.push(pid);
        }
        assert_eq!(
            pid,
            self.root_pid(),
            "{}: restored root pid differs from the original",
            self.name
        );
        self.child = None;
        self.expect_running("after restore");
    }

    /// Whether `pid` still looks like a process of this workload.
    fn owns(&self, pid: i32) -> bool {
        let dir = self.dir.to_string_lossy();
        let c = comm(pid);
        cmdline(pid).contains(dir.as_ref())
            || fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == self.bin)
            || (!self.name.is_empty() && self.name.starts_with(&c) && !c.is_empty())
    }

    /// Kills and reaps whatever is left of the tree.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
        let mut pids = self.all_pids();
        pids.extend(self.extra.iter().copied());
        for &p in &pids {
            kill_tree(p, &|q| self.owns(q));
        }
        let _ = wait_gone(&pids, Duration::from_secs(5));
        reap_zombie_children(&[]);
    }

    /// Pids, results and the workload's stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut s = format!("state dir: {}\npids: {:?}\n", self.dir.display(), self.pids);
        for role in &self.roles {
            let r = fs::read_to_string(self.dir.join(result_name(role)))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "(no result)".to_string());
            s.push_str(&format!("result.{role}: {r}\n"));
        }
        for &p in self.pids.values() {
            if let Some(st) = proc_state(p) {
                s.push_str(&format!(
                    "process {p}: State {} TracerPid {} PPid {}\n",
                    st.state, st.tracer, st.ppid
                ));
            }
        }
        s.push_str(&format!(
            "--- workload stderr ---\n{}",
            tail(&self.dir.join("stderr"), 20)
        ));
        s
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the two standard scenarios need to know about a workload.
pub struct Scenario<'a> {
    /// Path of the workload binary (`env!("CARGO_BIN_EXE_wl-...")`).
    pub bin: &'a str,
    /// Arguments after `STATEDIR`.
    pub args: &'a [&'a str],
    /// Roles that write results (`root` is implied).
    pub roles: &'a [&'a str],
    /// Extra arguments for both dump and restore (e.g. `--file-locks`).
    pub flags: &'a [&'a str],
}

/// Scenario (a): dump (which kills the tree), reap the original, restore
/// with `-d`, verify, wait for a clean exit.
pub fn dump_restore(env: &Env, sc: &Scenario) {
    let mut wl = Workload::start(env, sc.bin, sc.args, sc.roles);
    let img = env.dir("images");
    let run = env.dump(wl.root_pid(), &img, sc.flags);
    run.expect_success(&format!("{}: dump", wl.name));
    wl.expect_killed_and_reap();
    wl.restore_from(env, &img, sc.flags);
    wl.verify_and_finish("after restore");
}

/// Scenario (b): dump with `-R`, verify the original still works, then
/// restore from the same images and verify again.
pub fn leave_running_then_restore(env: &Env, sc: &Scenario) {
    let mut wl = Workload::start(env, sc.bin, sc.args, sc.roles);
    let img = env.dir("images");
    let mut dump_args = vec!["-R"];
    dump_args.extend_from_slice(sc.flags);
    let run = env.dump(wl.root_pid(), &img, &dump_args);
    run.expect_success(&format!("{}: dump -R", wl.name));
    wl.expect_running("after dump -R");
    wl.verify_and_finish("original after dump -R");
    wl.reset();
    wl.restore_from(env, &img, sc.flags);
    wl.verify_and_finish("after restore");
}

/// The two standard tests of a workload: `workload_tests!(dump_test,
/// leave_running_test, "wl-name", [args], [roles])`, optionally followed by
/// `[flags]` passed to both dump and restore.
#[macro_export]
macro_rules! workload_tests {
    ($dump:ident, $leave:ident, $bin:literal, [$($arg:literal),*], [$($role:literal),*]) => {
        $crate::workload_tests!($dump, $leave, $bin, [$($arg),*], [$($role),*], []);
    };
    ($dump:ident, $leave:ident, $bin:literal, [$($arg:literal),*], [$($role:literal),*], [$($flag:literal),*]) => {
        #[test]
        fn $dump() {
            let Some(env) = $crate::harness::Env::setup(stringify!($dump)) else { return };
            $crate::harness::dump_restore(
                &env,
                &$crate::harness::Scenario {
                    bin: env!(concat!("CARGO_BIN_EXE_", $bin)),
                    args: &[$($arg),*],
                    roles: &[$($role),*],
                    flags: &[$($flag),*],
                },
            );
        }

        #[test]
        fn $leave() {
            let Some(env) = $crate::harness::Env::setup(stringify!($leave)) else { return };
            $crate::harness::leave_running_then_restore(
                &env,
                &$crate::harness::Scenario {
                    bin: env!(concat!("CARGO_BIN_EXE_", $bin)),
                    args: &[$($arg),*],
                    roles: &[$($role),*],
                    flags: &[$($flag),*],
                },
            );
        }
    };
}
