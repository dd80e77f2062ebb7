//! The test environment: locating the binary, root/skip policy, the per-test
//! [`Env`], temporary directories and tmpfs mounts.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;
use std::time::Instant;

use super::*;

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
