//! The protocol shared by the `wl-*` workload programs.
//!
//! A workload is started as `wl-NAME STATEDIR [args]`. It sets up its state,
//! writes `STATEDIR/ready` (trees: every non-root process first writes
//! `ready.<role>`, the root waits for all of them before writing `ready`), each
//! file holding the writer's pid and written atomically (temporary file +
//! rename). Then every process loops doing light work until `STATEDIR/check`
//! exists, verifies its whole state without changing anything outside itself,
//! writes `STATEDIR/result.<role>` (`ok` or `fail: <what>`) and exits 0 or 1.
//! The root waits for its children and folds their exit statuses into its own
//! verdict.
//!
//! A workload's state is only what it sets up itself: its stdio must be files
//! or `/dev/null` (the harness, demo.sh and bench.sh do that; a pipe to the
//! launcher would be part of the checkpoint), and it closes every other
//! inherited descriptor at start-up ([`Ctx::from_args`]).

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Name of the file the root writes once the whole workload is set up.
pub const READY: &str = "ready";
/// Name of the file whose existence asks every process to verify itself.
pub const CHECK: &str = "check";
/// Role of the root process of every workload.
pub const ROOT: &str = "root";

/// Name of the ready file for `role` (`ready` for the root, `ready.<role>` otherwise).
pub fn ready_name(role: &str) -> String {
    if role == ROOT {
        READY.to_string()
    } else {
        format!("{READY}.{role}")
    }
}

/// Name of the result file for `role`.
pub fn result_name(role: &str) -> String {
    format!("result.{role}")
}

/// Writes `content` to `path` atomically: a temporary file in the same
/// directory, then `rename`. The temporary name has the time in it too: a
/// restored copy running beside its original has the same pids inside its
/// pid namespace.
pub fn write_atomic(path: &Path, content: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let tmp = path.with_file_name(format!(
        ".{}.tmp.{}.{nanos}",
        name.to_string_lossy(),
        std::process::id()
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
    }
    fs::rename(&tmp, path)
}

/// The per-process context of a workload: its state directory and arguments.
pub struct Ctx {
    /// `STATEDIR`.
    pub dir: PathBuf,
    /// The arguments after `STATEDIR`.
    pub args: Vec<String>,
    check: CString,
    /// Light work done while waiting: counts loop iterations.
    pub ticks: u64,
}

impl Ctx {
    /// Parses `wl-NAME STATEDIR [args]`; prints `usage` and exits 2 on error.
    ///
    /// Also closes every inherited descriptor above 2: whatever the launcher
    /// leaked (a CI runner's pipes, a shell's sockets) would otherwise become
    /// part of the checkpointed state, and workloads only hold files.
    pub fn from_args(usage: &str) -> Ctx {
        close_inherited_fds();
        let mut it = std::env::args_os().skip(1);
        let Some(dir) = it.next() else {
            eprintln!("usage: {usage}");
            std::process::exit(2);
        };
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            eprintln!("{}: state dir {} is not a directory", prog(), dir.display());
            std::process::exit(2);
        }
        let args = it.map(|a| a.to_string_lossy().into_owned()).collect();
        Ctx::new(dir, args)
    }

    /// A context for `dir` (used by tests of the protocol itself).
    pub fn new(dir: PathBuf, args: Vec<String>) -> Ctx {
        let check = CString::new(dir.join(CHECK).as_os_str().as_bytes())
            .expect("state dir path has no NUL byte");
        Ctx {
            dir,
            args,
            check,
            ticks: 0,
        }
    }

    /// `STATEDIR/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes the ready file of `role` with the caller's pid.
    pub fn write_ready(&self, role: &str) {
        let pid = std::process::id();
        if let Err(e) = write_atomic(&self.path(&ready_name(role)), &format!("{pid}\n")) {
            self.setup_failed(role, &format!("write {}: {e}", ready_name(role)));
        }
    }

    /// Waits until every role in `roles` wrote its ready file.
    pub fn wait_ready_of(&self, roles: &[&str], timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        for role in roles {
            let p = self.path(&ready_name(role));
            while !p.exists() {
                if Instant::now() > deadline {
                    return Err(format!("{} did not appear", ready_name(role)));
                }
                sleep_ns(2_000_000);
            }
        }
        Ok(())
    }

    /// Whether `STATEDIR/check` exists. Does not allocate.
    pub fn check_requested(&self) -> bool {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `check` is a valid NUL-terminated path and `st` is a valid
        // out-pointer for one `struct stat`.
        unsafe { libc::stat(self.check.as_ptr(), st.as_mut_ptr()) == 0 }
    }

    /// Loops (count a tick, call `work`, sleep 2 ms, stat `check`) until
    /// `check` exists. Does not allocate, so it cannot move the heap.
    pub fn wait_for_check(&mut self, mut work: impl FnMut()) {
        loop {
            self.ticks = self.ticks.wrapping_add(1);
            work();
            if self.check_requested() {
                return;
            }
            sleep_ns(2_000_000);
        }
    }

    /// Writes `result.<role>` from `verdict` and exits 0 (ok) or 1 (fail).
    pub fn finish(&self, role: &str, verdict: Verdict) -> ! {
        let line = verdict.line();
        let code = i32::from(!verdict.is_ok());
        if let Err(e) = write_atomic(&self.path(&result_name(role)), &format!("{line}\n")) {
            eprintln!("{}[{role}]: cannot write result: {e}", prog());
            std::process::exit(3);
        }
        if code != 0 {
            eprintln!("{}[{role}]: {line}", prog());
        }
        std::process::exit(code);
    }

    /// Reports a set-up failure: `result.<role>` says `fail: setup: ...`, exit 1.
    pub fn setup_failed(&self, role: &str, what: &str) -> ! {
        let mut v = Verdict::new();
        v.fail(format!("setup: {what}"));
        self.finish(role, v)
    }
}

/// Closes every descriptor above 2 (`close_range(3, ~0, 0)`).
pub fn close_inherited_fds() {
    // SAFETY: close_range only closes descriptors; nothing in this process
    // uses descriptors above 2 yet when it is called at start-up.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r != 0 {
        // Old kernel: close them one by one.
        if let Ok(dir) = fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect();
            for fd in fds {
                // SAFETY: closing an inherited descriptor nobody here uses
                // (the read_dir descriptor is already closed).
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// The program name, for messages.
pub fn prog() -> String {
    std::env::args()
        .next()
        .map(|a| {
            Path::new(&a)
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or(a)
        })
        .unwrap_or_else(|| "wl".to_string())
}

/// What a process must still have after a dump that left it running, or
/// after its restore: its mappings (but the heap's, which may grow), its
/// open fds and its number of threads. A dumper's leftovers (a scratch
/// mapping, an fd it passed in, a thread it started) show up here. Taken
/// when nothing maps, opens or starts anything any more until the check.
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    maps: Vec<String>,
    fds: Vec<String>,
    threads: usize,
}

impl Footprint {
    pub fn now() -> Footprint {
        let maps = std::fs::read_to_string("/proc/self/maps")
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.ends_with("[heap]"))
            .map(str::to_owned)
            .collect();
        let list = |dir: &str| -> Vec<String> {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        Footprint {
            maps,
            fds: list("/proc/self/fd"),
            threads: list("/proc/self/task").len(),
        }
    }

    /// Records in `v` how the process differs from `self` now.
    pub fn check(&self, v: &mut Verdict) {
        let now = Footprint::now();
        let diff = |a: &[String], b: &[String]| -> (Vec<String>, Vec<String>) {
            (
                a.iter().filter(|l| !b.contains(l)).cloned().collect(),
                b.iter().filter(|l| !a.contains(l)).cloned().collect(),
            )
        };
        let (gone, new) = diff(&self.maps, &now.maps);
        v.check(gone.is_empty() && new.is_empty(), || {
            format!("mappings changed: gone {gone:?}, new {new:?}")
        });
        let (gone, new) = diff(&self.fds, &now.fds);
        v.check(gone.is_empty() && new.is_empty(), || {
            format!("fds changed: gone {gone:?}, new {new:?}")
        });
        v.eq("threads", now.threads, self.threads);
    }
}

/// Collects the failed checks of one process.
#[derive(Debug, Default)]
pub struct Verdict {
    fails: Vec<String>,
}

impl Verdict {
    /// An empty (ok) verdict.
    pub fn new() -> Verdict {
        Verdict::default()
    }

    /// Records a failure.
    pub fn fail(&mut self, what: impl Into<String>) {
        self.fails.push(what.into());
    }

    /// Records a failure with `what` unless `cond` holds.
    pub fn check(&mut self, cond: bool, what: impl FnOnce() -> String) {
        if !cond {
            self.fail(what());
        }
    }

    /// Records a failure unless `got == want`.
    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.fail(format!("{what}: got {got:?}, want {want:?}"));
        }
    }

    /// Records a failure with `prefix` if `r` is an error.
    pub fn result(&mut self, prefix: &str, r: Result<(), String>) {
        if let Err(e) = r {
            self.fail(format!("{prefix}: {e}"));
        }
    }

    /// Whether no check failed.
    pub fn is_ok(&self) -> bool {
        self.fails.is_empty()
    }

    /// `ok` or `fail: a; b; ...` (one line, long lists shortened).
    pub fn line(&self) -> String {
        if self.fails.is_empty() {
            return "ok".to_string();
        }
        let mut s = String::from("fail: ");
        for (i, f) in self.fails.iter().enumerate() {
            if i == 12 {
                s.push_str(&format!("; ... and {} more", self.fails.len() - 12));
                break;
            }
            if i > 0 {
                s.push_str("; ");
            }
            s.push_str(&f.replace('\n', " "));
        }
        s
    }
}

/// splitmix64: a cheap, well-mixed position-dependent pattern.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Sleeps `ns` nanoseconds with `nanosleep`, resuming after signals.
pub fn sleep_ns(ns: u64) {
    let mut req = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        let mut rem = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: both pointers point to valid timespecs owned by this frame.
        let r = unsafe { libc::nanosleep(&req, &mut rem) };
        if r == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
        req = rem;
    }
}

/// The calling thread's kernel thread id.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// `fork()`. Only call it while the process is single-threaded.
pub fn fork() -> io::Result<i32> {
    // SAFETY: the workloads fork before starting any thread, so the child
    // may keep running ordinary Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// Describes a `waitpid` status word.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// Waits (up to `timeout`) for child `pid` to exit; `Ok` if it exited 0.
pub fn wait_child(pid: i32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                Ok(())
            } else {
                Err(format!("child {pid} {}", describe_status(status)))
            };
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(format!("waitpid({pid}): {e}"));
        }
        if Instant::now() > deadline {
            return Err(format!("child {pid} did not exit within {timeout:?}"));
        }
        sleep_ns(2_000_000);
    }
}

/// A line of `/proc/self/status` (or `/proc/self/task/TID/status`) by key.
pub fn proc_status_field(path: &str, key: &str) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim().to_string())
    })
}

/// Parses a hex mask such as `SigBlk:` or `CapEff:` values.
pub fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

/// A `sigset_t` as a 64-bit mask (bit `n-1` for signal `n`).
pub fn sigset_bits(set: &libc::sigset_t) -> u64 {
    let mut bits = 0u64;
    for sig in 1..=64 {
        // SAFETY: `set` is a valid, initialised sigset_t.
        if unsafe { libc::sigismember(set, sig) } == 1 {
            bits |= 1 << (sig - 1);
        }
    }
    bits
}

/// A `sigset_t` holding the signals in `sigs`.
pub fn sigset_of(sigs: &[i32]) -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset only touches it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in sigs {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// The calling thread's blocked-signal mask as bits.
pub fn thread_sigmask_bits() -> u64 {
    let mut old = sigset_of(&[]);
    // SAFETY: a null `set` only queries; `old` is a valid out-pointer.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut old) };
    sigset_bits(&old)
}

/// Bit of signal `sig` in a 64-bit signal mask.
pub fn sigbit(sig: i32) -> u64 {
    1u64 << (sig - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_line() {
        let mut v = Verdict::new();
        assert_eq!(v.line(), "ok");
        v.eq("x", 1, 2);
        v.fail("y\nz");
        assert_eq!(v.line(), "fail: x: got 1, want 2; y z");
    }

    #[test]
    fn splitmix_is_position_dependent() {
        assert_ne!(splitmix64(0), splitmix64(1));
        assert_eq!(splitmix64(7), splitmix64(7));
    }

    #[test]
    fn sigsets() {
        let s = sigset_of(&[libc::SIGUSR1, 40]);
        assert_eq!(sigset_bits(&s), sigbit(libc::SIGUSR1) | sigbit(40));
    }

    #[test]
    fn atomic_write_and_check() {
        let dir = std::env::temp_dir().join(format!("wl-proto-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let ctx = Ctx::new(dir.clone(), vec![]);
        assert!(!ctx.check_requested());
        write_atomic(&ctx.path(CHECK), "").unwrap();
        assert!(ctx.check_requested());
        write_atomic(&ctx.path("x"), "hello").unwrap();
        assert_eq!(fs::read_to_string(ctx.path("x")).unwrap(), "hello");
        fs::remove_dir_all(&dir).unwrap();
    }
}
