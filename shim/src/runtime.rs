//! The runc-compatible command line: `stasis [GLOBAL FLAGS] COMMAND ...`.
//! Flags follow runc 1.1 (urfave/cli): single-dash long flags, `--flag=v`,
//! repeated flags, and "flag needs an argument" for a missing value.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use oci_spec::runtime::LinuxResources;
use stasis_oci::{util, CheckpointOpts, CreateOpts, ExecOpts, RestoreOpts, Runtime, Waiter};

use crate::rtlog;

#[derive(Parser, Debug)]
#[command(
    name = "stasis",
    version,
    about = "Checkpoint/restore for Linux processes and containers; a runc-compatible OCI runtime",
    args_override_self = true
)]
pub struct RtCli {
    /// Root directory for the containers' state.
    #[arg(long, global = true, default_value = "/run/stasis")]
    root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// Debug logging.
    #[arg(long, global = true)]
    debug: bool,
    /// Not supported: cgroups are managed with cgroupfs (v2).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility; stasis checkpoints in-process.
    #[arg(long, global = true)]
    criu: Option<String>,
    /// Accepted for runc compatibility (true, false or auto).
    #[arg(long = "rootless", id = "global_rootless")]
    rootless: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a container (its init waits for `start`).
    Create(CreateArgs),
    /// Start a created container.
    Start { id: String },
    /// Create and start a container.
    Run(RunArgs),
    /// Output the state of a container.
    State { id: String },
    /// Send a signal to the container's init (or all its processes).
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
    },
    /// Delete a container and its resources.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Processes running inside a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Run a new process inside a container.
    Exec(ExecArgs),
    /// Freeze all processes of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Container statistics (once with --stats, else every --interval).
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Update the container's resource limits.
    Update(UpdateArgs),
    /// Write a new config.json.
    Spec {
        #[arg(short, long)]
        bundle: Option<PathBuf>,
        #[arg(long)]
        rootless: bool,
    },
    /// What this runtime implements (JSON).
    Features,
    /// Checkpoint a running container.
    Checkpoint(CheckpointArgs),
    /// Restore a container from a checkpoint.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    id: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    c: CreateArgs,
    #[arg(short, long)]
    detach: bool,
    #[arg(long)]
    keep: bool,
    #[arg(long = "no-subreaper")]
    no_subreaper: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(short, long)]
    env: Vec<String>,
    #[arg(short, long)]
    tty: bool,
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "process-label")]
    process_label: Option<String>,
    #[arg(long = "apparmor")]
    apparmor: Option<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    #[arg(short, long)]
    cap: Vec<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    #[arg(long)]
    cgroup: Vec<String>,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-share")]
    cpu_share: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    #[arg(long)]
    memory: Option<String>,
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<String>,
    #[arg(long = "memory-swap")]
    memory_swap: Option<String>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    id: String,
}

#[derive(Args, Debug)]
pub struct CheckpointArgs {
    #[arg(long = "image-path")]
    image_path: Option<PathBuf>,
    #[arg(long = "work-path")]
    work_path: Option<PathBuf>,
    #[arg(long = "parent-path")]
    parent_path: Option<PathBuf>,
    #[arg(long = "leave-running")]
    leave_running: bool,
    #[arg(long = "tcp-established")]
    tcp_established: bool,
    #[arg(long = "tcp-skip-in-flight")]
    tcp_skip_in_flight: bool,
    #[arg(long = "link-remap")]
    link_remap: bool,
    #[arg(long = "ext-unix-sk")]
    ext_unix_sk: bool,
    #[arg(long = "shell-job")]
    shell_job: bool,
    #[arg(long = "lazy-pages")]
    lazy_pages: bool,
    #[arg(long = "status-fd")]
    status_fd: Option<i32>,
    #[arg(long = "page-server")]
    page_server: Option<String>,
    #[arg(long = "file-locks")]
    file_locks: bool,
    #[arg(long = "pre-dump")]
    pre_dump: bool,
    #[arg(long = "manage-cgroups-mode")]
    manage_cgroups_mode: Option<String>,
    #[arg(long = "empty-ns")]
    empty_ns: Vec<String>,
    #[arg(long = "auto-dedup")]
    auto_dedup: bool,
    id: String,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "image-path")]
    image_path: Option<PathBuf>,
    #[arg(long = "work-path")]
    work_path: Option<PathBuf>,
    #[arg(long = "tcp-established")]
    tcp_established: bool,
    #[arg(long = "ext-unix-sk")]
    ext_unix_sk: bool,
    #[arg(long = "shell-job")]
    shell_job: bool,
    #[arg(long = "file-locks")]
    file_locks: bool,
    #[arg(long = "manage-cgroups-mode")]
    manage_cgroups_mode: Option<String>,
    #[arg(short, long)]
    bundle: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "no-subreaper")]
    no_subreaper: bool,
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    #[arg(long = "empty-ns")]
    empty_ns: Vec<String>,
    #[arg(long = "auto-dedup")]
    auto_dedup: bool,
    #[arg(long = "lazy-pages")]
    lazy_pages: bool,
    #[arg(long = "lsm-profile")]
    lsm_profile: Option<String>,
    #[arg(long = "lsm-mount-context")]
    lsm_mount_context: Option<String>,
    id: String,
}

/// One long flag as clap knows it.
struct Flag {
    name: String,
    takes_value: bool,
}

fn flags_of(cmd: &clap::Command) -> Vec<Flag> {
    cmd.get_arguments()
        .filter_map(|a| {
            let name = a.get_long()?.to_string();
            let takes_value = matches!(a.get_action(), ArgAction::Set | ArgAction::Append);
            Some(Flag { name, takes_value })
        })
        .collect()
}

/// Rewrite Go-style arguments into clap's: `-name` -> `--name`,
/// `--bool=true|false`, `--flag value` where the value starts with '-'.
/// Stops at the first positional argument after the command. A flag with
/// no value fails the way urfave/cli does.
pub fn normalise(args: Vec<String>) -> std::result::Result<Vec<String>, String> {
    let top = RtCli::command();
    let globals = flags_of(&top);
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    if let Some(a0) = it.next() {
        out.push(a0);
    }
    let mut sub: Option<Vec<Flag>> = None;
    let mut rest = false;
    let args: Vec<String> = it.collect();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].clone();
        i += 1;
        if rest || a == "--" {
            rest |= a == "--";
            out.push(a);
            continue;
        }
        let Some(stripped) = a.strip_prefix('-') else {
            if sub.is_none() {
                sub = Some(top.find_subcommand(&a).map(flags_of).unwrap_or_default());
            } else {
                rest = true;
            }
            out.push(a);
            continue;
        };
        let body = stripped.strip_prefix('-').unwrap_or(stripped);
        let (name, val) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        let known = sub
            .iter()
            .flatten()
            .chain(globals.iter())
            .find(|f| f.name == name);
        let Some(f) = known.filter(|_| name.len() > 1) else {
            out.push(a);
            continue;
        };
        if f.takes_value {
            let v = match val {
                Some(v) => v,
                None if i < args.len() => {
                    i += 1;
                    args[i - 1].clone()
                }
                None => return Err(format!("flag needs an argument: -{name}")),
            };
            out.push(format!("--{name}={v}"));
        } else {
            match val.as_deref() {
                None | Some("true") | Some("1") => out.push(format!("--{name}")),
                Some("false") | Some("0") => {}
                Some(v) => return Err(format!("invalid boolean value {v:?} for -{name}")),
            }
        }
    }
    Ok(out)
}

fn parse_bytes(s: &str) -> Result<i64> {
    let t = s.trim();
    if t == "-1" {
        return Ok(-1);
    }
    let (num, mult) = match t.to_ascii_lowercase().trim_end_matches('b').chars().last() {
        Some('k') => (
            &t[..t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len()],
            1i64 << 10,
        ),
        Some('m') => (
            &t[..t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len()],
            1 << 20,
        ),
        Some('g') => (
            &t[..t.len() - t.trim_start_matches(|c: char| c.is_ascii_digit()).len()],
            1 << 30,
        ),
        _ => (t, 1),
    };
    let n: i64 = num.parse().map_err(|_| anyhow!("invalid size {s:?}"))?;
    Ok(n * mult)
}

fn parse_duration(s: &str) -> Result<Duration> {
    let (n, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let n: f64 = n.parse().map_err(|_| anyhow!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("invalid duration {s:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn tabwrite(rows: &[Vec<String>]) -> String {
    // Go's tabwriter(minwidth 12, padding 3), as runc's list.
    let cols = rows.first().map_or(0, Vec::len);
    let mut w = vec![0; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len() + 3).max(12);
        }
    }
    let mut s = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i + 1 == cols {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}", width = w[i]));
            }
        }
        s.push('\n');
    }
    s
}

const DEFAULT_SPEC: &str = include_str!("default-spec.json");

fn spec_json(rootless: bool) -> Result<String> {
    let mut v: serde_json::Value = serde_json::from_str(DEFAULT_SPEC)?;
    if rootless {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let linux = &mut v["linux"];
        linux["resources"] = serde_json::Value::Null;
        linux.as_object_mut().unwrap().remove("resources");
        let ns = linux["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
        ns.push(serde_json::json!({"type": "user"}));
        linux["uidMappings"] = serde_json::json!([{"containerID": 0, "hostID": uid, "size": 1}]);
        linux["gidMappings"] = serde_json::json!([{"containerID": 0, "hostID": gid, "size": 1}]);
        let mounts = v["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| m["type"] != "cgroup");
        for m in mounts.iter_mut() {
            if m["type"] == "devpts" {
                if let Some(o) = m["options"].as_array_mut() {
                    o.retain(|x| x != "gid=5");
                }
            }
            if m["type"] == "sysfs" {
                *m = serde_json::json!({"destination": "/sys", "type": "none", "source": "/sys", "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]});
            }
        }
    }
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    serde::Serialize::serialize(&v, &mut ser)?;
    Ok(String::from_utf8(buf)?)
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": stasis_oci::state::OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["async", "atime", "bind", "dev", "diratime", "dirsync", "exec", "mand", "noatime", "nodev",
            "nodiratime", "noexec", "nomand", "norelatime", "nostrictatime", "nosuid", "private", "rbind", "relatime",
            "remount", "ro", "rprivate", "rshared", "rslave", "runbindable", "rw", "shared", "slave", "strictatime",
            "suid", "sync", "unbindable"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<std::collections::BTreeSet<_>>(),
            "cgroup": {"v1": false, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
        },
        "annotations": {
            "org.opencontainers.runc.checkpoint.enabled": "true",
            "io.github.seccomp.libseccomp.version": "2.5",
        },
    })
}

/// Entry: returns the process exit code.
pub fn main(raw: Vec<String>) -> ExitCode {
    let args = match normalise(raw) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("Incorrect Usage: {e}");
            eprintln!("time={:?} level=error msg={e:?}", rtlog::now());
            return ExitCode::from(1);
        }
    };
    let cli = match RtCli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let to_file = match rtlog::init(cli.log.as_deref(), cli.log_format == "json", cli.debug) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(1);
        }
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let m = crate::one_line(&e);
            tracing::error!("{m}");
            if to_file {
                eprintln!("{m}");
            }
            ExitCode::from(1)
        }
    }
}

fn run(cli: RtCli) -> Result<i32> {
    if cli.systemd_cgroup {
        bail!("--systemd-cgroup is not supported: stasis manages cgroup v2 directly (cgroupfs); use a /path cgroupsPath")
    }
    if cli.log_format != "text" && cli.log_format != "json" {
        bail!("unknown log-format {:?}", cli.log_format)
    }
    let rt = Runtime::new(&cli.root);
    match cli.cmd {
        Cmd::Create(c) => {
            rt.create(&create_opts(&c, false), None)
                .context(err_ctx("create"))?;
        }
        Cmd::Run(r) => {
            let o = create_opts(&r.c, !r.detach);
            return rt.run(&o, r.detach, r.keep).context(err_ctx("run"));
        }
        Cmd::Start { id } => rt.start(&id)?,
        Cmd::State { id } => {
            let s = rt.state_json(&id)?;
            print!("{s}");
            std::io::stdout().flush()?;
        }
        Cmd::Kill { all, id, signal } => rt.kill(&id, util::parse_signal(&signal)?, all)?,
        Cmd::Delete { force, id } => rt.delete(&id, force)?,
        Cmd::List { format, quiet } => {
            let l = rt.list()?;
            if quiet {
                for (s, _) in &l {
                    println!("{}", s.id);
                }
            } else if format == "json" {
                let v: Vec<_> = l
                    .iter()
                    .map(|(s, st)| s.oci(*st, &util::user_name(s.owner)))
                    .collect();
                if v.is_empty() {
                    println!("null");
                } else {
                    println!("{}", serde_json::to_string(&v)?);
                }
            } else if format == "table" {
                let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
                    .map(String::from)
                    .to_vec()];
                for (s, st) in &l {
                    let pid = if *st == stasis_oci::Status::Stopped {
                        0
                    } else {
                        s.pid
                    };
                    rows.push(vec![
                        s.id.clone(),
                        pid.to_string(),
                        st.to_string(),
                        s.bundle.display().to_string(),
                        s.created.clone(),
                        util::user_name(s.owner),
                    ]);
                }
                print!("{}", tabwrite(&rows));
            } else {
                bail!("invalid format option")
            }
        }
        Cmd::Ps {
            format,
            id,
            ps_args,
        } => {
            let pids = rt.pids(&id)?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string(&pids)?),
                "table" => {
                    let a = if ps_args.is_empty() {
                        vec!["-ef".to_string()]
                    } else {
                        ps_args
                    };
                    let out = std::process::Command::new("ps")
                        .args(&a)
                        .output()
                        .context("ps")?;
                    if !out.status.success() {
                        bail!(
                            "ps {}: {}",
                            a.join(" "),
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                    }
                    let text = String::from_utf8_lossy(&out.stdout);
                    let mut lines = text.lines();
                    let header = lines.next().unwrap_or_default();
                    let col = header
                        .split_whitespace()
                        .position(|c| c == "PID")
                        .ok_or_else(|| anyhow!("couldn't find PID field in ps output"))?;
                    println!("{header}");
                    for l in lines {
                        if let Some(p) = l
                            .split_whitespace()
                            .nth(col)
                            .and_then(|p| p.parse::<i32>().ok())
                        {
                            if pids.contains(&p) {
                                println!("{l}");
                            }
                        }
                    }
                }
                _ => bail!("invalid format option"),
            }
        }
        Cmd::Exec(e) => {
            let o = ExecOpts {
                process: e.process,
                args: e.command,
                tty: e.tty,
                env: e.env,
                cwd: e.cwd,
                user: e.user,
                additional_gids: e.additional_gids,
                caps: e.cap,
                no_new_privs: e.no_new_privs,
                console_socket: e.console_socket,
                pid_file: e.pid_file,
                detach: e.detach,
                preserve_fds: e.preserve_fds,
                stdio: None,
            };
            let _ = (e.process_label, e.apparmor, e.cgroup);
            return rt.exec(&e.id, &o).context(err_ctx("exec"));
        }
        Cmd::Pause { id } => rt.pause(&id)?,
        Cmd::Resume { id } => rt.resume(&id)?,
        Cmd::Events {
            stats,
            interval,
            id,
        } => {
            let iv = parse_duration(&interval)?;
            loop {
                let v = match rt.stats(&id) {
                    Ok(v) => v,
                    Err(e) if !stats => {
                        tracing::debug!("{e}");
                        return Ok(0);
                    }
                    Err(e) => return Err(e.into()),
                };
                // A reader that went away (`| head`) ends the stream.
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{v}").and_then(|_| out.flush()).is_err() {
                    break;
                }
                if stats {
                    break;
                }
                std::thread::sleep(iv);
            }
        }
        Cmd::Update(u) => {
            let mut res: LinuxResources = match &u.resources {
                Some(p) => {
                    let text = if p == Path::new("-") {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(p).with_context(|| format!("{}", p.display()))?
                    };
                    stasis_oci::spec::parse("resources", &text)?
                }
                None => LinuxResources::default(),
            };
            apply_update_flags(&mut res, &u)?;
            rt.update(&u.id, &res)?;
        }
        Cmd::Spec { bundle, rootless } => {
            let dir = bundle.unwrap_or_else(|| PathBuf::from("."));
            let p = dir.join("config.json");
            if p.exists() {
                bail!("File {} exists. Remove it first", p.display())
            }
            std::fs::write(&p, spec_json(rootless)?).with_context(|| format!("{}", p.display()))?;
        }
        Cmd::Features => println!("{}", serde_json::to_string_pretty(&features())?),
        Cmd::Checkpoint(c) => {
            let image_path = c.image_path.clone().unwrap_or_else(|| {
                // runc's default: ./checkpoint
                std::env::current_dir()
                    .unwrap_or_default()
                    .join("checkpoint")
            });
            let o = CheckpointOpts {
                image_path,
                work_path: c.work_path,
                parent_path: c.parent_path,
                leave_running: c.leave_running,
                tcp_established: c.tcp_established,
                tcp_skip_in_flight: c.tcp_skip_in_flight,
                link_remap: c.link_remap,
                ext_unix_sk: c.ext_unix_sk,
                shell_job: c.shell_job,
                file_locks: c.file_locks,
                pre_dump: c.pre_dump,
                lazy_pages: c.lazy_pages,
                status_fd: c.status_fd.filter(|&f| f >= 0),
                page_server: c.page_server.filter(|s| !s.is_empty()),
                auto_dedup: c.auto_dedup,
                manage_cgroups_mode: c.manage_cgroups_mode,
                empty_ns: c.empty_ns,
            };
            rt.checkpoint(&c.id, &o).context(err_ctx("checkpoint"))?;
        }
        Cmd::Restore(r) => {
            let image_path = r.image_path.clone().unwrap_or_else(|| {
                std::env::current_dir()
                    .unwrap_or_default()
                    .join("checkpoint")
            });
            let bundle = r.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
            let o = RestoreOpts {
                image_path,
                work_path: r.work_path,
                console_socket: r.console_socket,
                pid_file: r.pid_file,
                detach: r.detach,
                no_subreaper: r.no_subreaper,
                no_pivot: r.no_pivot,
                tcp_established: r.tcp_established,
                ext_unix_sk: r.ext_unix_sk,
                shell_job: r.shell_job,
                file_locks: r.file_locks,
                manage_cgroups_mode: r.manage_cgroups_mode,
                empty_ns: r.empty_ns,
                auto_dedup: r.auto_dedup,
                lazy_pages: r.lazy_pages,
                lsm_profile: r.lsm_profile,
                lsm_mount_context: r.lsm_mount_context,
                stdio: None,
                on_console: None,
            };
            let done = rt.restore(&r.id, &bundle, &o).context(err_ctx("restore"))?;
            if r.detach {
                return Ok(0);
            }
            // Foreground, like runc: wait for the container (our child: the
            // engine forks the restored root), then delete it.
            let mut w = Waiter::with_subreaper(!r.no_subreaper)?;
            let code = w.wait(done.state.pid)?;
            rt.delete(&r.id, true)?;
            return Ok(code);
        }
    }
    Ok(0)
}

fn err_ctx(what: &'static str) -> String {
    format!("stasis {what} failed")
}

fn create_opts(c: &CreateArgs, foreground: bool) -> CreateOpts {
    let _ = c.no_new_keyring;
    CreateOpts {
        id: c.id.clone(),
        bundle: c.bundle.clone(),
        console_socket: c.console_socket.clone(),
        pid_file: c.pid_file.clone(),
        no_pivot: c.no_pivot,
        preserve_fds: c.preserve_fds,
        foreground,
        stdio: None,
    }
}

fn apply_update_flags(res: &mut LinuxResources, u: &UpdateArgs) -> Result<()> {
    let mut mem = (*res.memory()).unwrap_or_default();
    let mut mem_set = res.memory().is_some();
    if let Some(m) = &u.memory {
        mem.set_limit(Some(parse_bytes(m)?));
        mem_set = true;
    }
    if let Some(m) = &u.memory_reservation {
        mem.set_reservation(Some(parse_bytes(m)?));
        mem_set = true;
    }
    if let Some(m) = &u.memory_swap {
        mem.set_swap(Some(parse_bytes(m)?));
        mem_set = true;
    }
    if mem_set {
        res.set_memory(Some(mem));
    }
    let mut cpu = res.cpu().clone().unwrap_or_default();
    let mut cpu_set = res.cpu().is_some();
    if let Some(v) = u.cpu_share {
        cpu.set_shares(Some(v));
        cpu_set = true;
    }
    if let Some(v) = u.cpu_quota {
        cpu.set_quota(Some(v));
        cpu_set = true;
    }
    if let Some(v) = u.cpu_period {
        cpu.set_period(Some(v));
        cpu_set = true;
    }
    if let Some(v) = &u.cpuset_cpus {
        cpu.set_cpus(Some(v.clone()));
        cpu_set = true;
    }
    if let Some(v) = &u.cpuset_mems {
        cpu.set_mems(Some(v.clone()));
        cpu_set = true;
    }
    if cpu_set {
        res.set_cpu(Some(cpu));
    }
    if let Some(p) = u.pids_limit {
        let mut pids = oci_spec::runtime::LinuxPids::default();
        pids.set_limit(p);
        res.set_pids(Some(pids));
    }
    if let Some(w) = u.blkio_weight {
        let mut b = res.block_io().clone().unwrap_or_default();
        b.set_weight(Some(w));
        res.set_block_io(Some(b));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(a: &[&str]) -> std::result::Result<Vec<String>, String> {
        normalise(a.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn go_style_flags() {
        assert_eq!(
            n(&[
                "stasis",
                "-root",
                "/r",
                "restore",
                "-no-subreaper",
                "--detach=true",
                "--no-pivot=false",
                "c1"
            ])
            .unwrap(),
            [
                "stasis",
                "--root=/r",
                "restore",
                "--no-subreaper",
                "--detach",
                "c1"
            ]
        );
        assert_eq!(
            n(&["stasis", "restore", "--lsm-mount-context"]).unwrap_err(),
            "flag needs an argument: -lsm-mount-context"
        );
        // Arguments after the container id belong to the process.
        assert_eq!(
            n(&["stasis", "exec", "-t", "c1", "ls", "-tty"]).unwrap(),
            ["stasis", "exec", "-t", "c1", "ls", "-tty"]
        );
        assert!(RtCli::try_parse_from(
            n(&[
                "stasis",
                "checkpoint",
                "--leave-running",
                "--leave-running",
                "c1"
            ])
            .unwrap()
        )
        .is_ok());
    }

    #[test]
    fn spec_is_valid() {
        let s = spec_json(false).unwrap();
        let _: oci_spec::runtime::Spec = serde_json::from_str(&s).unwrap();
        let s = spec_json(true).unwrap();
        let _: oci_spec::runtime::Spec = serde_json::from_str(&s).unwrap();
    }
}
