//! Running `stasis` commands and checking their outcome.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// A running `stasis` command.
pub struct StasisChild {
    /// The process.
    pub child: Child,
    pub(super) cmdline: String,
    pub(super) out: PathBuf,
    pub(super) err: PathBuf,
    pub(super) started: Instant,
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
