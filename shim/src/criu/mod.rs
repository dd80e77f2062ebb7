//! The CRIU-compatible command line: `stasis criu ACTION [OPTIONS]`, or the
//! binary started as `criu`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use clap::Parser;
use stasis_engine::{check, restore};

use crate::logging;

mod actions;
mod opts;
pub mod swrk;

pub use opts::{CgMode, InheritFd, Opts};

/// CRIU's options, in CRIU's spelling. Options may come before or after the
/// action, as with CRIU's getopt.
#[derive(Parser, Debug, Default)]
#[command(
    name = "criu",
    about = "CRIU-compatible checkpoint/restore",
    disable_version_flag = true
)]
pub struct CriuCli {
    /// check, dump, pre-dump, restore, swrk
    action: String,
    /// Arguments of the action (`swrk FD`).
    args: Vec<String>,

    /// Print the CRIU version this is compatible with.
    #[arg(short = 'V', long = "version")]
    version: bool,
    /// PID of the root of the tree to dump.
    #[arg(short = 't', long = "tree", value_name = "PID")]
    tree: Option<i32>,
    /// Directory with the images.
    #[arg(short = 'D', long = "images-dir", value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// Directory for logs, the pidfile and stats (default: the images dir).
    #[arg(short = 'W', long = "work-dir", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Log file, relative to the work dir; "-" is stderr.
    #[arg(short = 'o', long = "log-file", value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Verbosity 0..4: -v4, -v alone (4), -vvv (count + 1).
    #[arg(short = 'v', long = "verbosity", num_args = 0..=1, default_missing_value = "v",
          value_name = "N", allow_hyphen_values = false)]
    verbosity: Option<String>,
    /// Leave the tree running after a dump.
    #[arg(short = 'R', long = "leave-running")]
    leave_running: bool,
    /// Leave the tree stopped after the operation (not supported yet).
    #[arg(short = 's', long = "leave-stopped")]
    leave_stopped: bool,
    /// The tree is a job of this shell (terminals and session are the caller's).
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Dump (and restore) the file locks the tree holds.
    #[arg(short = 'l', long = "file-locks")]
    file_locks: bool,
    /// Allow unix sockets connected to processes outside the tree: dumped
    /// as external, connected to the peer's address again on restore.
    #[arg(short = 'x', long = "ext-unix-sk", num_args = 0..=1, require_equals = true,
          default_missing_value = "", value_name = "INO")]
    ext_unix_sk: Option<String>,
    /// Allow established TCP connections.
    #[arg(long = "tcp-established")]
    tcp_established: bool,
    /// Restore TCP connections closed.
    #[arg(long = "tcp-close")]
    tcp_close: bool,
    /// Skip in-flight TCP connections.
    #[arg(long = "tcp-skip-in-flight", alias = "skip-in-flight")]
    skip_in_flight: bool,
    /// Allow linking unlinked files back (link remap).
    #[arg(long = "link-remap")]
    link_remap: bool,
    /// Ghost file size limit.
    #[arg(long = "ghost-limit", value_name = "SIZE")]
    ghost_limit: Option<String>,
    /// Return once the restored tree runs, detached from us.
    #[arg(short = 'd', long = "restore-detached")]
    restore_detached: bool,
    /// Restore the root as a sibling of ours (child of our parent).
    #[arg(long = "restore-sibling")]
    restore_sibling: bool,
    /// Write the restored root's PID here (relative to the work dir).
    #[arg(long = "pidfile", value_name = "FILE")]
    pidfile: Option<PathBuf>,
    /// Print statistics after the operation.
    #[arg(long = "display-stats")]
    display_stats: bool,
    /// Do not read CRIU configuration files (we never do).
    #[arg(long = "no-default-config")]
    no_default_config: bool,
    /// A CRIU configuration file (not read: stasis takes options only from
    /// its command line).
    #[arg(long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Show a progress bar on a terminal (default when stderr is a terminal).
    #[arg(long = "no-progress")]
    no_progress: bool,
    /// Root of the restored tree's mount namespace.
    #[arg(short = 'r', long = "root", value_name = "PATH")]
    root: Option<PathBuf>,
    /// A resource outside the tree: mnt[KEY]:VAL, dev[..]:VAL, unix[INO],
    /// net[INO]:KEY, pid[INO]:KEY ...
    #[arg(long = "external", value_name = "RES")]
    external: Vec<String>,
    /// Legacy form of --external mnt[KEY]:VAL.
    #[arg(short = 'M', long = "ext-mount-map", value_name = "KEY:VAL")]
    ext_mount_map: Vec<String>,
    /// fd[N]:KEY: the file KEY of the images is our fd N.
    #[arg(long = "inherit-fd", value_name = "fd[N]:KEY")]
    inherit_fd: Vec<String>,
    /// Seconds to wait for the tree to freeze.
    #[arg(long = "timeout", value_name = "SEC")]
    timeout: Option<u32>,
    /// splice or read (pre-dump only).
    #[arg(long = "pre-dump-mode", value_name = "MODE")]
    pre_dump_mode: Option<String>,
    /// Track memory changes (pre-dump).
    #[arg(long = "track-mem")]
    track_mem: bool,
    /// Images of a previous pre-dump.
    #[arg(long = "prev-images-dir", value_name = "DIR")]
    prev_images_dir: Option<String>,
    /// Deduplicate pages against the parent images.
    #[arg(long = "auto-dedup")]
    auto_dedup: bool,
    /// Lazy pages migration.
    #[arg(long = "lazy-pages")]
    lazy_pages: bool,
    /// Send pages to a page server.
    #[arg(long = "page-server")]
    page_server: bool,
    /// Page server address.
    #[arg(long = "address", value_name = "ADDR")]
    address: Option<String>,
    /// Page server port.
    #[arg(long = "port", value_name = "PORT")]
    port: Option<u16>,
    /// none, props, soft, full, strict or ignore (default soft).
    #[arg(long = "manage-cgroups", num_args = 0..=1, require_equals = true,
          default_missing_value = "soft", value_name = "MODE")]
    manage_cgroups: Option<String>,
    /// Freeze the tree with this freezer cgroup.
    #[arg(long = "freeze-cgroup", value_name = "PATH")]
    freeze_cgroup: Option<String>,
    /// [CTRL:]PATH: where the restored tree's cgroups go.
    #[arg(long = "cgroup-root", value_name = "[CTRL:]PATH")]
    cgroup_root: Vec<String>,
    /// Cgroup properties to restore.
    #[arg(long = "cgroup-props", value_name = "STR")]
    cgroup_props: Option<String>,
    #[arg(long = "cgroup-props-file", value_name = "FILE")]
    cgroup_props_file: Option<String>,
    #[arg(long = "cgroup-dump-controller", value_name = "NAME")]
    cgroup_dump_controller: Vec<String>,
    #[arg(long = "cgroup-yard", value_name = "PATH")]
    cgroup_yard: Option<String>,
    /// Namespaces to create empty on restore (net).
    #[arg(long = "empty-ns", value_name = "NS")]
    empty_ns: Vec<String>,
    /// NS:FILE[,OPTS]: join this namespace on restore.
    #[arg(short = 'J', long = "join-ns", value_name = "NS:FILE")]
    join_ns: Vec<String>,
    /// Open devices by path when their device number changed.
    #[arg(long = "evasive-devices")]
    evasive_devices: bool,
    /// LSM profile for the restored tasks.
    #[arg(long = "lsm-profile", value_name = "TYPE:NAME")]
    lsm_profile: Option<String>,
    #[arg(long = "lsm-mount-context", value_name = "CTX")]
    lsm_mount_context: Option<String>,
    /// Network locking method: iptables, nftables, skip/none.
    #[arg(long = "network-lock", value_name = "METHOD")]
    network_lock: Option<String>,
    #[arg(long = "veth-pair", value_name = "IN=OUT")]
    veth_pair: Vec<String>,
    #[arg(long = "exec-cmd")]
    exec_cmd: bool,
    /// Mount-related options accepted for compatibility (mounts are not
    /// dumped yet).
    #[arg(long = "auto-ext-mnt")]
    auto_ext_mnt: bool,
    #[arg(long = "ext-sharing")]
    ext_sharing: bool,
    #[arg(long = "ext-masters")]
    ext_masters: bool,
    #[arg(long = "skip-mnt", value_name = "PATH")]
    skip_mnt: Vec<String>,
    #[arg(long = "enable-fs", value_name = "FS")]
    enable_fs: Vec<String>,
    #[arg(long = "mntns-compat-mode")]
    mntns_compat_mode: bool,
    #[arg(long = "weak-sysctls")]
    weak_sysctls: bool,
    #[arg(long = "force-irmap")]
    force_irmap: bool,
    #[arg(long = "irmap-scan-path", value_name = "PATH")]
    irmap_scan_path: Vec<String>,
    #[arg(long = "cpu-cap", num_args = 0..=1, require_equals = true, default_missing_value = "all")]
    cpu_cap: Option<String>,
    #[arg(long = "skip-file-rwx-check")]
    skip_file_rwx_check: bool,
    #[arg(long = "unprivileged")]
    unprivileged: bool,
    #[arg(long = "log-pid")]
    log_pid: bool,
    #[arg(long = "status-fd", value_name = "FD")]
    status_fd: Option<i32>,
    /// Run this program at each action-script point (CRTOOLS_SCRIPT_ACTION).
    #[arg(long = "action-script", value_name = "PATH")]
    action_script: Vec<PathBuf>,
    /// check: the one feature to test.
    #[arg(long = "feature", value_name = "NAME")]
    feature: Option<String>,
    /// check: also optional features.
    #[arg(long = "all", alias = "extra", alias = "experimental")]
    all: bool,
}

/// CRIU's usage text after an option error.
const USAGE: &str = "
Usage:
  criu dump|pre-dump -t PID [<options>]
  criu restore [<options>]
  criu check [--feature FEAT]
  criu swrk <fd>

Try -h|--help for more info";

/// Parse `argv` the way CRIU does; on a bad option print CRIU's words and
/// the usage, and exit 1.
pub fn parse_or_exit(argv: Vec<std::ffi::OsString>) -> CriuCli {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if argv.iter().skip(1).any(|a| a == "-V" || a == "--version") {
        println!("Version: {}.{}", swrk::VERSION_MAJOR, swrk::VERSION_MINOR);
        std::process::exit(0);
    }
    match CriuCli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
            ErrorKind::UnknownArgument => {
                let arg = match e.get(ContextKind::InvalidArg) {
                    Some(ContextValue::String(s)) => s.clone(),
                    _ => String::new(),
                };
                if let Some(long) = arg.strip_prefix("--") {
                    let name = long.split('=').next().unwrap_or(long);
                    eprintln!("criu: unrecognized option '--{name}'");
                } else {
                    let c = arg.trim_start_matches('-').chars().next().unwrap_or('?');
                    eprintln!("criu: invalid option -- '{c}'");
                }
                eprintln!("{USAGE}");
                std::process::exit(1)
            }
            ErrorKind::MissingRequiredArgument => {
                eprintln!("Error: command is required{USAGE}");
                std::process::exit(1)
            }
            _ => {
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or_default();
                eprintln!("criu: {}", first.trim_start_matches("error: "));
                eprintln!("{USAGE}");
                std::process::exit(1)
            }
        },
    }
}

/// CRIU's -v: "-v" is 4, "-vvv" counts, "-v3" is 3; anything else is atoi.
fn verbosity(v: &Option<String>) -> u8 {
    match v.as_deref() {
        None => 2,
        Some(s) if s.chars().all(|c| c == 'v') => (s.len() as u8 + 3).min(4),
        Some(s) => {
            let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse().unwrap_or(0)
        }
    }
}

impl CriuCli {
    pub fn run(self) -> Result<ExitCode> {
        if self.version {
            println!("Version: {}.{}", swrk::VERSION_MAJOR, swrk::VERSION_MINOR);
            return Ok(ExitCode::SUCCESS);
        }
        // Ctrl-C and friends stop at a safe point and undo, never mid-way.
        stasis_engine::sys::sig::catch_termination()?;
        match self.action.as_str() {
            "check" => self.check(),
            "dump" => self.dump(),
            "pre-dump" => self.dump(),
            "restore" => self.restore(),
            "swrk" => {
                let Some(fd) = self.args.first().and_then(|a| a.parse::<i32>().ok()) else {
                    eprintln!("Usage: criu swrk <fd>");
                    return Ok(ExitCode::from(1));
                };
                swrk::serve(fd)
            }
            "page-server" | "lazy-pages" | "service" | "dedup" | "cpuinfo" | "exec" | "show" => {
                bail!("{} is not supported by stasis", self.action)
            }
            other => {
                eprintln!("Error: unknown command: {other}{USAGE}");
                Ok(ExitCode::from(1))
            }
        }
    }

    fn images_dir(&self) -> Result<&Path> {
        self.images_dir
            .as_deref()
            .ok_or_else(|| anyhow!("-D/--images-dir is required"))
    }

    /// The work dir: -W, else the images dir, else the current dir.
    fn work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .or_else(|| self.images_dir.clone())
            .unwrap_or_else(|| ".".into())
    }

    /// Logs go to -o relative to the work dir (default: the images dir).
    fn init_log(&self, default_name: &str) -> Result<()> {
        let v = verbosity(&self.verbosity);
        if self.work_dir.is_none() && self.images_dir.is_none() {
            return logging::init(None, v);
        }
        let name = self.log_file.clone().unwrap_or_else(|| default_name.into());
        if name == Path::new("-") {
            return logging::init(Some(&name), v);
        }
        let path = self.work_dir().join(name);
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

    /// The options shared with swrk requests.
    fn opts(&self) -> Result<Opts> {
        let mut external = self.external.clone();
        external.extend(self.ext_mount_map.iter().map(|m| match m.split_once(':') {
            Some((k, v)) => format!("mnt[{k}]:{v}"),
            None => format!("mnt[{m}]"),
        }));
        if let Some(ino) = self.ext_unix_sk.as_deref().filter(|s| !s.is_empty()) {
            external.push(format!("unix[{ino}]"));
        }
        let mut empty_ns = 0u32;
        for ns in &self.empty_ns {
            match ns.as_str() {
                "net" => empty_ns |= libc::CLONE_NEWNET as u32,
                _ => bail!("invalid argument for --empty-ns: {ns}"),
            }
        }
        let cg_root = self
            .cgroup_root
            .iter()
            .map(|c| match c.split_once(':') {
                Some((ctrl, path)) => (ctrl.to_string(), path.to_string()),
                None => (String::new(), c.clone()),
            })
            .collect();
        let work = self.work_dir();
        Ok(Opts {
            ext_mnt_candidates: false,
            pid: self.tree,
            images_dir: self.images_dir()?.to_path_buf(),
            leave_running: self.leave_running,
            shell_job: self.shell_job,
            file_locks: self.file_locks,
            ext_unix_sk: self.ext_unix_sk.is_some(),
            tcp_established: self.tcp_established,
            tcp_close: self.tcp_close,
            tcp_skip_in_flight: self.skip_in_flight,
            link_remap: self.link_remap,
            evasive_devices: self.evasive_devices,
            restore_sibling: self.restore_sibling,
            detach: self.restore_detached || self.restore_sibling,
            // Relative to the work dir, as CRIU runs there.
            pidfile: self.pidfile.as_ref().map(|p| work.join(p)),
            progress: self.progress(),
            root: self.root.clone(),
            external,
            inherit_fd: self
                .inherit_fd
                .iter()
                .map(|s| InheritFd::parse(s))
                .collect::<Result<_>>()?,
            cg_root,
            manage_cgroups: self
                .manage_cgroups
                .as_deref()
                .map(CgMode::parse)
                .transpose()?,
            freeze_cgroup: self.freeze_cgroup.clone(),
            empty_ns,
            join_ns: self.join_ns.clone(),
            timeout: self.timeout,
            pre_dump_mode: self.pre_dump_mode.clone(),
            orphan_pts_master: false,
            lsm_profile: self.lsm_profile.clone(),
            lsm_mount_context: self.lsm_mount_context.clone(),
            track_mem: self.track_mem,
            parent_img: self.prev_images_dir.clone(),
            pre_dump: self.action == "pre-dump",
            lazy_pages: self.lazy_pages,
            page_server: self.page_server,
            leave_stopped: self.leave_stopped,
            exec_cmd: if self.exec_cmd {
                self.args.clone()
            } else {
                Vec::new()
            },
            veths: self.veth_pair.clone(),
        })
    }

    /// The --action-script programs as notifications.
    fn scripts(&self, o: &Opts, root: Option<i32>) -> actions::Notify {
        if self.action_script.is_empty() {
            return actions::silent();
        }
        let images = std::fs::canonicalize(&o.images_dir).unwrap_or_else(|_| o.images_dir.clone());
        actions::shell_scripts(self.action_script.clone(), images, root)
    }

    fn check(&self) -> Result<ExitCode> {
        logging::init(None, verbosity(&self.verbosity))?;
        if let Some(name) = &self.feature {
            return match opts::feature(name) {
                None => {
                    eprintln!("Error: Unknown feature {name}");
                    Ok(ExitCode::from(1))
                }
                Some(Ok(())) => {
                    println!("{name} is supported");
                    Ok(ExitCode::SUCCESS)
                }
                Some(Err(why)) => {
                    eprintln!("Error: {name} is not supported: {why}");
                    Ok(ExitCode::from(1))
                }
            };
        }
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
        let o = self.opts()?;
        let n = self.scripts(&o, Some(pid));
        let st = actions::dump(&o, pid, n)?;
        opts::stats_to_work_dir(&o.images_dir, &self.work_dir(), "stats-dump");
        if self.display_stats {
            println!("{st}");
        }
        Ok(ExitCode::SUCCESS)
    }

    fn restore(&self) -> Result<ExitCode> {
        self.init_log("restore.log")?;
        let o = self.opts()?;
        let n = self.scripts(&o, None);
        let done = actions::restore(&o, n, None)?;
        opts::stats_to_work_dir(&o.images_dir, &self.work_dir(), "stats-restore");
        if self.display_stats {
            println!("{}", done.stats);
        }
        if o.detach {
            return Ok(ExitCode::SUCCESS);
        }
        // Like CRIU without -d: wait for the root and pass on its status.
        let code = restore::wait_root(done.root_pid)?;
        Ok(ExitCode::from(code as u8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> CriuCli {
        CriuCli::try_parse_from(std::iter::once("criu").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn verbosity_forms() {
        assert_eq!(verbosity(&parse(&["dump", "-v4"]).verbosity), 4);
        assert_eq!(verbosity(&parse(&["dump", "--verbosity=3"]).verbosity), 3);
        assert_eq!(verbosity(&parse(&["dump", "-v"]).verbosity), 4);
        // zdtm's `-verbosity=0` is -v with "erbosity=0": atoi gives 0.
        assert_eq!(verbosity(&parse(&["check", "-verbosity=0"]).verbosity), 0);
        assert_eq!(verbosity(&parse(&["dump"]).verbosity), 2);
    }

    #[test]
    fn optional_values_need_equals() {
        let c = parse(&["dump", "--manage-cgroups", "--ext-unix-sk", "-t", "1"]);
        assert_eq!(c.manage_cgroups.as_deref(), Some("soft"));
        assert_eq!(c.ext_unix_sk.as_deref(), Some(""));
        assert_eq!(c.tree, Some(1));
        let c = parse(&["dump", "--manage-cgroups=full", "--ext-unix-sk=42"]);
        assert_eq!(c.manage_cgroups.as_deref(), Some("full"));
        assert_eq!(c.ext_unix_sk.as_deref(), Some("42"));
    }

    #[test]
    fn runtime_options_reach_opts() {
        let c = parse(&[
            "restore",
            "-D",
            "/x",
            "-W",
            "/w",
            "--pidfile",
            "p",
            "--inherit-fd",
            "fd[1]:pipe:[5]",
            "--cgroup-root",
            "cpu:/a",
            "--cgroup-root",
            "/b",
            "--empty-ns",
            "net",
            "--restore-sibling",
            "-M",
            "/k:/v",
        ]);
        let o = c.opts().unwrap();
        assert_eq!(o.pidfile.as_deref(), Some(Path::new("/w/p")));
        assert_eq!(
            o.inherit_fd,
            vec![InheritFd {
                fd: 1,
                key: "pipe:[5]".into()
            }]
        );
        assert_eq!(
            o.cg_root,
            vec![("cpu".into(), "/a".into()), (String::new(), "/b".into())]
        );
        assert_eq!(o.empty_ns, libc::CLONE_NEWNET as u32);
        assert!(o.restore_sibling && o.detach);
        assert_eq!(o.external, vec!["mnt[/k]:/v".to_string()]);
    }
}
