//! The CRIU-compatible command line: `stasis criu ACTION [OPTIONS]`, or the
//! binary started as `criu`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use stasis_engine::{check, dump, restore};

use crate::logging;

/// CRIU's options, in CRIU's spelling. Options may come before or after the
/// action, as with CRIU's getopt.
#[derive(Parser, Debug, Default)]
#[command(
    name = "criu",
    about = "CRIU-compatible checkpoint/restore",
    version = "4.2"
)]
pub struct CriuCli {
    /// check, dump, restore
    action: String,

    /// PID of the root of the tree to dump.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    tree: Option<i32>,
    /// Directory with the images.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Directory for logs and other work files (default: the images dir).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Log file, relative to the work dir; "-" is stderr.
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Verbosity 0..4 (-v alone is 4).
    #[arg(short = 'v', long = "verbosity", num_args = 0..=1, default_missing_value = "4", value_name = "N")]
    verbosity: Option<u8>,
    /// Leave the tree running after a dump.
    #[arg(short = 'R', long = "leave-running")]
    leave_running: bool,
    /// The tree is a job of this shell (terminals and session are the caller's).
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Dump (and restore) the file locks the tree holds.
    #[arg(long = "file-locks")]
    file_locks: bool,
    /// Allow unix sockets connected to processes outside the tree: dumped
    /// as external, connected to the peer's address again on restore.
    #[arg(short = 'x', long = "ext-unix-sk")]
    ext_unix_sk: bool,
    /// Return once the restored tree runs, detached from us.
    #[arg(short = 'd', long = "restore-detached")]
    restore_detached: bool,
    /// Write the restored root's PID here.
    #[arg(long = "pidfile", value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Print statistics after the operation.
    #[arg(long = "display-stats")]
    display_stats: bool,
    /// Do not read CRIU configuration files (we never do).
    #[arg(long = "no-default-config")]
    no_default_config: bool,
    /// Show a progress bar on a terminal (default when stderr is a terminal).
    #[arg(long = "no-progress")]
    no_progress: bool,
    /// Restore: the directory that becomes the root of the rebuilt mount
    /// namespace (`/` for a tree whose mounts came from the host's root).
    #[arg(short = 'r', long = "root", value_name = "DIR")]
    root: Option<PathBuf>,
    /// External resources: `mnt[PATH]:KEY` on dump marks the mount at PATH
    /// as the caller's; `mnt[KEY]:DIR` on restore binds DIR there.
    #[arg(long = "external", alias = "ext-mount-map", value_name = "RES")]
    external: Vec<String>,
    /// Freeze this cgroup (v2 or v1 freezer) while seizing the tree.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    freeze_cgroup: Option<PathBuf>,
    /// Restore cgroups: none, props, soft (default), full, strict, ignore.
    #[arg(long = "manage-cgroups", num_args = 0..=1, default_missing_value = "soft", value_name = "MODE")]
    manage_cgroups: Option<String>,
    /// Alias of --manage-cgroups=MODE.
    #[arg(long = "manage-cgroups-mode", value_name = "MODE")]
    manage_cgroups_mode: Option<String>,
    /// Restore: `[CTRL:]PATH` replaces the root task's cgroup.
    #[arg(long = "cgroup-root", value_name = "[CTRL:]PATH")]
    cgroup_root: Vec<String>,
    /// Restore: `NS:PATH` (net, uts, ipc, pid, mnt, time, user, cgroup)
    /// joins an existing namespace instead of creating one.
    #[arg(short = 'J', long = "join-ns", value_name = "NS:PATH")]
    join_ns: Vec<String>,
    /// Restore: `fd[N]:KEY` gives the file with image key KEY (e.g.
    /// `pipe:[1234]` or a path) our fd N.
    #[arg(long = "inherit-fd", value_name = "fd[N]:KEY")]
    inherit_fd: Vec<String>,
}

/// `fd[N]:KEY` (CRIU's form).
fn parse_inherit_fd(s: &str) -> Result<(i32, String)> {
    let bad = || anyhow!("--inherit-fd {s:?}: expected fd[N]:KEY");
    let rest = s.strip_prefix("fd[").ok_or_else(bad)?;
    let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
    let n: i32 = n.parse().map_err(|_| bad())?;
    if key.is_empty() {
        return Err(bad());
    }
    Ok((n, key.to_string()))
}

impl CriuCli {
    pub fn run(self) -> Result<ExitCode> {
        // Ctrl-C and friends stop at a safe point and undo, never mid-way.
        stasis_engine::sys::sig::catch_termination()?;
        match self.action.as_str() {
            "check" => self.check(),
            "dump" => self.dump(),
            "restore" => self.restore(),
            other => bail!("unknown action '{other}' (expected check, dump or restore)"),
        }
    }

    fn images_dir(&self) -> Result<&Path> {
        self.images_dir
            .as_deref()
            .ok_or_else(|| anyhow!("-D/--images-dir is required"))
    }

    /// Logs go to -o relative to the work dir (default: the images dir).
    fn init_log(&self, default_name: &str) -> Result<()> {
        let v = self.verbosity.unwrap_or(2);
        let Some(base) = self.work_dir.as_deref().or(self.images_dir.as_deref()) else {
            return logging::init(None, v);
        };
        let name = self.log_file.clone().unwrap_or_else(|| default_name.into());
        if name == Path::new("-") {
            return logging::init(Some(&name), v);
        }
        let path = if name.is_absolute() {
            name
        } else {
            base.join(name)
        };
        // A missing images dir is reported by the engine, naming the dir.
        if path.parent().is_some_and(|p| p.is_dir()) {
            logging::init(Some(&path), v)
        } else {
            logging::init(None, v)
        }
    }

    /// Progress bars when stderr is a terminal, unless --no-progress.
    fn progress(&self) -> bool {
        !self.no_progress && std::io::IsTerminal::is_terminal(&std::io::stderr())
    }

    fn check(&self) -> Result<ExitCode> {
        logging::init(None, self.verbosity.unwrap_or(2))?;
        let feats = check::probe();
        let mut bad = false;
        for f in &feats {
            if !f.ok {
                let kind = if f.required { "Error" } else { "Warn" };
                println!("{kind} ({}): {}", f.name, f.detail);
                bad |= f.required;
            }
        }
        if bad {
            return Ok(ExitCode::from(1));
        }
        println!("Looks good.");
        Ok(ExitCode::SUCCESS)
    }

    fn dump(&self) -> Result<ExitCode> {
        self.init_log("dump.log")?;
        let pid = self
            .tree
            .ok_or_else(|| anyhow!("-t/--tree PID is required for dump"))?;
        let dir = self.images_dir()?.to_path_buf();
        let opts = dump::DumpOptions {
            pid,
            images_dir: dir,
            leave_running: self.leave_running,
            shell_job: self.shell_job,
            file_locks: self.file_locks,
            progress: self.progress(),
            ext_unix_sk: self.ext_unix_sk,
            external: self.external.clone(),
            freeze_cgroup: self.freeze_cgroup.clone(),
        };
        let st = dump::dump(&opts).with_context(|| format!("dump of pid {pid} failed"))?;
        if self.display_stats {
            println!("{st}");
        }
        Ok(ExitCode::SUCCESS)
    }

    fn restore(&self) -> Result<ExitCode> {
        self.init_log("restore.log")?;
        let dir = self.images_dir()?.to_path_buf();
        let opts = restore::RestoreOptions {
            images_dir: dir,
            detach: self.restore_detached,
            shell_job: self.shell_job,
            pidfile: self.pidfile.clone(),
            file_locks: self.file_locks,
            progress: self.progress(),
            ext_unix_sk: self.ext_unix_sk,
            root: self.root.clone(),
            external: self.external.clone(),
            manage_cgroups: self
                .manage_cgroups_mode
                .as_deref()
                .or(self.manage_cgroups.as_deref())
                .map(|m| m.parse().map_err(|e: String| anyhow!(e)))
                .transpose()?,
            cgroup_root: self.cgroup_root.clone(),
            inherit_fd: self
                .inherit_fd
                .iter()
                .map(|s| parse_inherit_fd(s))
                .collect::<Result<_>>()?,
            join_ns: self.join_ns.clone(),
        };
        let done = restore::restore(&opts).context("restore failed")?;
        if self.display_stats {
            println!("{}", done.stats);
        }
        if self.restore_detached {
            return Ok(ExitCode::SUCCESS);
        }
        // Like CRIU without -d: wait for the root and pass on its status.
        let code = restore::wait_root(done.root_pid)?;
        Ok(ExitCode::from(code as u8))
    }
}
