//! Helpers for the root-only end-to-end tests in `tests/`.
//!
//! Every test starts with [`Env::setup`], which skips (returns `None`) when not
//! root or when the `stasis` binary is missing, serialises the tests of one
//! test binary (they reap each other's children otherwise), and makes the test
//! process a child subreaper so that restored trees, which the restorer leaves
//! behind, are re-parented to it and can be reaped.
//!
//! Set `STASIS_TESTS_REQUIRED=1` to turn the two skips into failures (CI as
//! root), and `STASIS_KEEP=1` to keep temporary directories (they are always
//! kept when a test fails; the path is printed).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::workload::{ready_name, result_name, write_atomic, CHECK, ROOT};

/// How long a workload may take to report its results.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `stasis` command may run before the harness kills it.
pub const STASIS_TIMEOUT: Duration = Duration::from_secs(120);

static LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The workspace root (parent of `integration/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// The `stasis` binary: `$STASIS_BIN`, else `<target>/release/stasis`, else
/// `<target>/debug/stasis` (`<target>` is `$CARGO_TARGET_DIR` or
/// `<workspace>/target`). `Err` names what was looked for.
pub fn stasis_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("STASIS_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("STASIS_BIN={} does not exist", p.display()))
        };
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let candidates = [target.join("release/stasis"), target.join("debug/stasis")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            format!(
                "no stasis binary ({} or {}; set STASIS_BIN)",
                candidates[0].display(),
                candidates[1].display()
            )
        })
}

/// Prints a line on the real stderr, past the test harness's output capture
/// (so that skips are visible in a normal `cargo test` run).
pub fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(io::stderr().lock(), "{msg}");
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn required() -> bool {
    std::env::var_os("STASIS_TESTS_REQUIRED").is_some_and(|v| v != "0" && !v.is_empty())
}

/// The environment of one root test: the binary, a temporary directory, and
/// the lock serialising the tests of this binary.
pub struct Env {
    /// The `stasis` binary.
    pub bin: PathBuf,
    /// A fresh temporary directory for this test.
    pub tmp: TempDir,
    _lock: MutexGuard<'static, ()>,
}

impl Env {
    /// Prepares a root test, or prints why it is skipped and returns `None`.
    pub fn setup(test: &str) -> Option<Env> {
        if !is_root() {
            if required() {
                panic!("{test}: needs root (STASIS_TESTS_REQUIRED is set)");
            }
            say(&format!("{test}: skipped: needs root"));
            return None;
        }
        let bin = match stasis_bin() {
            Ok(b) => b,
            Err(e) => {
                if required() {
                    panic!("{test}: {e} (STASIS_TESTS_REQUIRED is set)");
                }
                say(&format!("{test}: skipped: {e}"));
                return None;
            }
        };
        let lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        set_child_subreaper();
        reap_zombie_children(&[]);
        let tmp = TempDir::new(test);
        Some(Env {
            bin,
            tmp,
            _lock: lock,
        })
    }

    /// A new empty directory under this test's temporary directory.
    pub fn dir(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join(name);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        p
    }

    /// A path under this test's temporary directory (not created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Starts `stasis ARGS` with stdout/stderr going to files (never pipes:
    /// a restored tree must not hold our pipes open).
    pub fn spawn_stasis<S: AsRef<OsStr>>(&self, args: &[S]) -> StasisChild {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let out = self.path(&format!("stasis-{n}.stdout"));
        let err = self.path(&format!("stasis-{n}.stderr"));
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("create stdout file"))
            .stderr(fs::File::create(&err).expect("create stderr file"));
        let cmdline = format!(
            "{} {}",
            self.bin.display(),
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        StasisChild {
            child,
            cmdline,
            out,
            err,
            started: Instant::now(),
        }
    }

    /// Runs `stasis ARGS` to completion (killed after [`STASIS_TIMEOUT`]).
    pub fn stasis<S: AsRef<OsStr>>(&self, args: &[S]) -> StasisRun {
        self.spawn_stasis(args).wait(STASIS_TIMEOUT)
    }

    /// `stasis criu dump -t PID -D IMGDIR -o LOG -v4 EXTRA...`.
    pub fn dump(&self, pid: i32, imgdir: &Path, extra: &[&str]) -> StasisRun {
        let pid = pid.to_string();
        self.criu(
            "dump",
            &[
                "-t".as_ref(),
                pid.as_ref(),
                "-D".as_ref(),
                imgdir.as_os_str(),
            ],
            extra,
        )
    }

    /// `stasis criu pre-dump -t PID -D IMGDIR -o LOG -v4 EXTRA...`.
    pub fn pre_dump(&self, pid: i32, imgdir: &Path, extra: &[&str]) -> StasisRun {
        let pid = pid.to_string();
        self.criu(
            "pre-dump",
            &[
                "-t".as_ref(),
                pid.as_ref(),
                "-D".as_ref(),
                imgdir.as_os_str(),
            ],
            extra,
        )
    }

    /// `stasis criu restore -D IMGDIR -d --pidfile PIDFILE -o LOG -v4 EXTRA...`.
    pub fn restore(&self, imgdir: &Path, pidfile: &Path, extra: &[&str]) -> StasisRun {
        self.criu(
            "restore",
            &[
                "-D".as_ref(),
                imgdir.as_os_str(),
                "-d".as_ref(),
                "--pidfile".as_ref(),
                pidfile.as_os_str(),
            ],
            extra,
        )
    }

    /// `stasis criu ACTION ARGS -o LOG -v4 EXTRA...`, keeping the log's path.
    fn criu(&self, action: &str, args: &[&OsStr], extra: &[&str]) -> StasisRun {
        let log = self.log_path(action);
        let mut all: Vec<OsString> = vec!["criu".into(), action.into()];
        all.extend(args.iter().map(|a| a.to_os_string()));
        all.extend(["-o".into(), log.clone().into_os_string(), "-v4".into()]);
        all.extend(extra.iter().map(OsString::from));
        let mut run = self.stasis(&all);
        run.log = Some(log);
        run
    }

    fn log_path(&self, what: &str) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        self.path(&format!("{what}-{n}.log"))
    }
}

/// A running `stasis` command.
pub struct StasisChild {
    /// The process.
    pub child: Child,
    cmdline: String,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
}

impl StasisChild {
    /// Waits for the command (killing it after `timeout`) and collects its output.
    pub fn wait(mut self, timeout: Duration) -> StasisRun {
        let deadline = self.started + timeout;
        let mut timed_out = false;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) => {}
                Err(e) => panic!("waiting for stasis: {e}"),
            }
            if Instant::now() > deadline {
                timed_out = true;
                let _ = self.child.kill();
                break self.child.wait().expect("wait for killed stasis");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let elapsed = self.started.elapsed();
        StasisRun {
            cmdline: self.cmdline,
            status,
            stdout: fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: fs::read_to_string(&self.err).unwrap_or_default(),
            elapsed,
            timed_out,
            log: None,
        }
    }

    /// Sends SIGKILL and collects what the command wrote.
    pub fn kill(self) -> StasisRun {
        self.signal(libc::SIGKILL)
    }

    /// Sends `sig` and waits for stasis to end.
    pub fn signal(self, sig: i32) -> StasisRun {
        // SAFETY: kill takes plain integers; the child is ours and not reaped.
        unsafe { libc::kill(self.child.id() as i32, sig) };
        self.wait(Duration::from_secs(10))
    }
}

/// The outcome of one `stasis` command.
pub struct StasisRun {
    /// What was run.
    pub cmdline: String,
    /// Its exit status.
    pub status: ExitStatus,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
    /// Wall-clock time.
    pub elapsed: Duration,
    /// Whether the harness had to kill it.
    pub timed_out: bool,
    /// The `-o` log file, if one was given.
    pub log: Option<PathBuf>,
}

impl StasisRun {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status.success() && !self.timed_out
    }

    /// Everything useful to show when the command did not do what was expected.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "`{}` {} after {:?}{}\n--- stderr ---\n{}",
            self.cmdline,
            describe_exit(&self.status),
            self.elapsed,
            if self.timed_out {
                " (timed out, killed)"
            } else {
                ""
            },
            self.stderr.trim_end()
        );
        if !self.stdout.trim().is_empty() {
            s.push_str(&format!("\n--- stdout ---\n{}", self.stdout.trim_end()));
        }
        if let Some(log) = &self.log {
            s.push_str(&format!(
                "\n--- last lines of {} ---\n{}",
                log.display(),
                tail(log, 40)
            ));
        }
        s
    }

    /// Panics with [`describe`](Self::describe) unless the command succeeded.
    pub fn expect_success(&self, what: &str) {
        if !self.success() {
            panic!("{what} failed: {}", self.describe());
        }
    }

    /// Asserts a clean failure: a non-zero exit (not a crash, not a timeout)
    /// and exactly one non-empty line on stderr that contains at least one of
    /// `names` (a whole-number token when the name is a number, e.g. a pid).
    pub fn expect_clear_failure(&self, what: &str, names: &[&str]) {
        let d = self.describe();
        assert!(!self.timed_out, "{what}: stasis hung: {d}");
        assert!(
            self.status.signal().is_none(),
            "{what}: stasis crashed: {d}"
        );
        assert!(
            !self.status.success(),
            "{what}: stasis exited 0 but should have failed: {d}"
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: expected exactly one error line on stderr: {d}"
        );
        assert!(
            names.iter().any(|n| mentions(lines[0], n)),
            "{what}: the error line should name one of {names:?}: {d}"
        );
    }
}

/// Whether `line` names `name`: as a whole number token when `name` is a
/// number, else as a substring.
pub fn mentions(line: &str, name: &str) -> bool {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        line.split(|c: char| !c.is_ascii_digit()).any(|t| t == name)
    } else {
        line.contains(name)
    }
}

/// "exited with N" / "killed by signal N".
pub fn describe_exit(st: &ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st:?}"),
    }
}

/// The last `n` lines of a text file (or why it cannot be read).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(b) => {
            let s = String::from_utf8_lossy(&b);
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("({e})"),
    }
}

/// A temporary directory, removed on drop unless the test failed or
/// `STASIS_KEEP` is set.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$STASIS_TEST_TMPDIR` (or the system temp dir)
    /// `/stasis-it.TEST.PID.N`.
    pub fn new(test: &str) -> TempDir {
        let base = std::env::var_os("STASIS_TEST_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("stasis-it.{test}.{}.{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("STASIS_KEEP").is_some() {
            say(&format!("kept {}", self.path.display()));
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Makes this process a child subreaper (idempotent).
pub fn set_child_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        r,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        io::Error::last_os_error()
    );
}

/// Polls for `path` to exist.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not appear within {timeout:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Reads a pid file (a decimal pid, optional whitespace).
pub fn read_pidfile(path: &Path) -> Result<i32, String> {
    let s = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    s.trim()
        .parse::<i32>()
        .map_err(|e| format!("{}: bad pid {:?}: {e}", path.display(), s.trim()))
}

/// Whether `/proc/PID` exists (zombies included: their pid is still taken).
pub fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// State letter and tracer of a task, from `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// `R`, `S`, `D`, `T`, `t`, `Z`, ...
    pub state: char,
    /// `TracerPid`.
    pub tracer: i32,
    /// `PPid`.
    pub ppid: i32,
}

impl TaskState {
    /// Running or sleeping, not stopped, traced, dead or a zombie.
    pub fn is_free(&self) -> bool {
        self.tracer == 0 && matches!(self.state, 'R' | 'S' | 'D' | 'I')
    }
}

/// Reads `/proc/PID/status` (or `/proc/PID/task/TID/status`).
pub fn task_state(status_path: &str) -> Option<TaskState> {
    let s = fs::read_to_string(status_path).ok()?;
    let mut state = None;
    let mut tracer = None;
    let mut ppid = None;
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("State:") {
            state = v.trim().chars().next();
        } else if let Some(v) = l.strip_prefix("TracerPid:") {
            tracer = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        }
    }
    Some(TaskState {
        state: state?,
        tracer: tracer?,
        ppid: ppid?,
    })
}

/// State of process `pid`.
pub fn proc_state(pid: i32) -> Option<TaskState> {
    task_state(&format!("/proc/{pid}/status"))
}

/// Thread ids of process `pid`.
pub fn threads_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Checks that every thread of `pid` is running freely (not traced, not
/// stopped), waiting up to `timeout` for that to become true.
pub fn expect_untraced(pid: i32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut bad = Vec::new();
        let tids = threads_of(pid);
        if tids.is_empty() {
            return Err(format!("process {pid} is gone"));
        }
        for tid in tids {
            match task_state(&format!("/proc/{pid}/task/{tid}/status")) {
                Some(st) if st.is_free() => {}
                Some(st) => bad.push(format!(
                    "task {tid}: State {} TracerPid {}",
                    st.state, st.tracer
                )),
                None => {}
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(bad.join(", "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// All pids in `/proc`.
pub fn all_pids() -> BTreeSet<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `/proc/PID/cmdline` with NULs as spaces.
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// `/proc/PID/comm`.
pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether `pid` descends from this process (walks `PPid`).
pub fn is_descendant(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    for _ in 0..64 {
        match proc_state(p) {
            Some(st) if st.ppid == me => return true,
            Some(st) if st.ppid > 1 => p = st.ppid,
            _ => return false,
        }
    }
    false
}

/// Live (not zombie) processes that exist now but not in `before`, and that
/// descend from us or whose command line contains `marker`. Zombie children
/// of ours are reaped on the way.
pub fn new_processes(before: &BTreeSet<i32>, marker: &str) -> Vec<String> {
    reap_zombie_children(&[]);
    all_pids()
        .difference(before)
        .filter(|&&p| is_descendant(p) || (!marker.is_empty() && cmdline(p).contains(marker)))
        .filter_map(|&p| {
            let st = proc_state(p)?;
            if matches!(st.state, 'Z' | 'X') {
                return None;
            }
            Some(format!(
                "{p} ({}) state {} ppid {}: {}",
                comm(p),
                st.state,
                st.ppid,
                cmdline(p)
            ))
        })
        .collect()
}

/// A workload role that is expected to sit stopped (SIGSTOP) until checked.
pub const STOPPED_ROLE: &str = "stopped";

/// Waits until `pid` is in group-stop (State T) and untraced.
pub fn expect_stopped(pid: i32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match proc_state(pid) {
            Some(st) if st.state == 'T' && st.tracer == 0 => return Ok(()),
            Some(st) if Instant::now() > deadline => {
                return Err(format!(
                    "task {pid}: State {} TracerPid {}, want a stopped, untraced task",
                    st.state, st.tracer
                ))
            }
            None => return Err(format!("task {pid} is gone")),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Non-blocking `waitpid(pid)`: `Some(status)` once reaped.
pub fn try_reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
    (r == pid).then_some(status)
}

/// Reaps every zombie child of ours except `keep` (pids whose `Child`
/// handle someone else will wait for).
pub fn reap_zombie_children(keep: &[i32]) {
    let me = std::process::id() as i32;
    for p in all_pids() {
        if keep.contains(&p) {
            continue;
        }
        if let Some(st) = proc_state(p) {
            if st.ppid == me && st.state == 'Z' {
                try_reap(p);
            }
        }
    }
}

/// Reaps our zombie children until none of our children is running or in
/// uninterruptible sleep (a killed process on its way out), for at most
/// `timeout`. Children that sleep or are stopped (live workloads) are left.
pub fn reap_exiting_children(timeout: Duration) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + timeout;
    loop {
        let mut busy = false;
        for p in all_pids() {
            let Some(st) = proc_state(p) else { continue };
            if st.ppid != me {
                continue;
            }
            match st.state {
                'Z' => {
                    try_reap(p);
                }
                'R' | 'D' | 'X' => busy = true,
                _ => {}
            }
        }
        if !busy || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until every pid in `pids` is gone (reaping those that are our
/// children, directly or through the subreaper).
pub fn wait_gone(pids: &[i32], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&p| {
                try_reap(p);
                process_exists(p)
            })
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let desc: Vec<String> = left
                .iter()
                .map(|&p| match proc_state(p) {
                    Some(st) => format!("{p} (State {}, PPid {})", st.state, st.ppid),
                    None => p.to_string(),
                })
                .collect();
            return Err(format!(
                "still there after {timeout:?}: {}",
                desc.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends SIGKILL to `pid` and all its descendants (via
/// `/proc/PID/task/*/children`), only if `owned(pid)` says it is ours.
pub fn kill_tree(pid: i32, owned: &dyn Fn(i32) -> bool) {
    let mut todo = vec![pid];
    let mut seen = BTreeSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) || !process_exists(p) || !owned(p) {
            continue;
        }
        for tid in threads_of(p) {
            if let Ok(s) = fs::read_to_string(format!("/proc/{p}/task/{tid}/children")) {
                todo.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}

/// A tmpfs mounted for one test, unmounted (lazily) on drop.
pub struct Mount {
    target: PathBuf,
}

impl Mount {
    /// `mount -t tmpfs -o OPTIONS tmpfs TARGET` (with `MS_RDONLY` if `ro`).
    pub fn tmpfs(target: &Path, options: &str, ro: bool) -> Result<Mount, String> {
        fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
        let src = CString::new("tmpfs").expect("no NUL");
        let tgt = CString::new(target.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        let data = CString::new(options).map_err(|e| e.to_string())?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | if ro { libc::MS_RDONLY } else { 0 };
        // SAFETY: all strings are valid NUL-terminated C strings that outlive
        // the call.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                src.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if r != 0 {
            return Err(format!(
                "mount tmpfs on {}: {}",
                target.display(),
                io::Error::last_os_error()
            ));
        }
        Ok(Mount {
            target: target.to_path_buf(),
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(t) = CString::new(self.target.as_os_str().as_bytes()) {
            // SAFETY: `t` is a valid NUL-terminated path.
            unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

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
