//! `checkpoint` and `restore` of whole containers, in-process with the
//! engine, the way runc 1.1 drives CRIU (libcontainer's criu_linux.go):
//!
//! - dump: bind mounts are external, keyed by their destination; masked
//!   files are external (`/dev/null`); device nodes and the cgroup mount
//!   too when they are mounts; the container's stdio is recorded in
//!   `descriptors.json` in the image dir; the container's cgroup is frozen
//!   while the tree is seized; `stats-dump` is copied into the work dir
//!   (podman's export and `--print-stats` read it there). Without
//!   `--leave-running` the container is destroyed afterwards.
//! - restore: a new container (state dir, cgroup from the bundle's config)
//!   whose rootfs is the restore root; external mounts are bound back from
//!   the bundle's config; stdio pipes of `descriptors.json` become our fds
//!   0..2 (or the caller's `stdio`); a restored terminal's new pty master is
//!   sent to `--console-socket`; prestart and createRuntime hooks run once
//!   the tree is forked, as runc runs them at CRIU's setup-namespaces.
//!
//! What the engine cannot do yet (pre-dump, page server, lazy pages,
//! auto-dedup, LSM labels) is refused with "not supported yet".

use std::os::fd::RawFd;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use oci_spec::runtime::{Mount, Spec};
use tracing::{debug, warn};

use crate::cgroup;
use crate::container::{check_id, write_pid_file};
use crate::engine::{self as engine, cgroup::CgMode, dump, restore, stats};
use crate::error::{bail, Error, IoCtx, Result};
use crate::state::{State, Status};
use crate::{hooks, spec, tty, util, Runtime};

/// The container's stdio at checkpoint time (runc's file name and format:
/// a JSON array of the link targets of fds 0, 1 and 2).
pub const DESCRIPTORS: &str = "descriptors.json";

/// `stasis checkpoint` (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct CheckpointOpts {
    /// Where the images go (created when missing).
    pub image_path: PathBuf,
    /// Where `stats-dump` goes (default: the image dir).
    pub work_path: Option<PathBuf>,
    /// Images of an earlier pre-dump, relative to `image_path` (runc's
    /// `--parent-path`): pages unchanged since are left there.
    pub parent_path: Option<PathBuf>,
    /// Let the container run on (else it is destroyed after the dump).
    pub leave_running: bool,
    pub tcp_established: bool,
    pub tcp_skip_in_flight: bool,
    pub link_remap: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    /// Save the memory and track its changes from now on; the container
    /// runs on (runc's `--pre-dump`).
    pub pre_dump: bool,
    /// Not supported yet.
    pub lazy_pages: bool,
    /// Only meaningful with lazy pages.
    pub status_fd: Option<i32>,
    /// Not supported yet.
    pub page_server: Option<String>,
    /// Not supported yet.
    pub auto_dedup: bool,
    /// soft (default), full, strict or ignore.
    pub manage_cgroups_mode: Option<String>,
    /// Namespaces restored empty; only "network" (loopback only, the
    /// caller sets up the rest).
    pub empty_ns: Vec<String>,
}

/// `stasis restore` (runc's flags).
#[derive(Debug, Clone, Default)]
pub struct RestoreOpts {
    pub image_path: PathBuf,
    /// Where `stats-restore` goes (default: the image dir).
    pub work_path: Option<PathBuf>,
    /// Receives the new pty master when the container has a terminal.
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    /// Informational: `restore` always returns once the container runs;
    /// a foreground caller waits for it (see `Waiter`).
    pub detach: bool,
    /// runc's `--no-subreaper`: a foreground caller's [`Waiter`] is then
    /// not the child subreaper (`Waiter::with_subreaper(false)`).
    pub no_subreaper: bool,
    /// Accepted: the restored mount namespace is always pivoted into.
    pub no_pivot: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub manage_cgroups_mode: Option<String>,
    pub empty_ns: Vec<String>,
    /// Not supported yet.
    pub auto_dedup: bool,
    /// Not supported yet.
    pub lazy_pages: bool,
    /// Not supported yet (LSM labels are not restored).
    pub lsm_profile: Option<String>,
    /// Not supported yet.
    pub lsm_mount_context: Option<String>,
    /// Our fds that replace the checkpointed stdio pipes (fd 0, 1, 2 of
    /// `descriptors.json`); default: our own 0, 1 and 2, as runc does.
    pub stdio: Option<[RawFd; 3]>,
    /// For in-process callers (a shim): given the restored terminal's new
    /// pty master instead of sending it to `console_socket`.
    pub on_console: Option<engine::hook::FdHook>,
}

/// A restored container.
#[derive(Debug)]
pub struct Restored {
    pub state: State,
    pub stats: stats::RestoreStats,
}

fn not_yet(what: &str, why: &str) -> Error {
    Error::msg(format!("{what} is not supported yet ({why})"))
}

fn cg_mode(s: Option<&str>) -> Result<CgMode> {
    Ok(match s.unwrap_or("") {
        "" | "soft" => CgMode::Soft,
        "full" => CgMode::Full,
        // The runtime creates the container's cgroup itself (as runc's
        // manager does before CRIU runs): strict cannot ask for a new one.
        "strict" => CgMode::Full,
        "ignore" => CgMode::Ignore,
        other => bail!("invalid manage-cgroups-mode value {other:?}"),
    })
}

fn check_empty_ns(v: &[String]) -> Result<()> {
    for ns in v {
        // An empty network namespace (loopback only) is the engine's
        // `empty_net`; others are always rebuilt.
        if ns != "network" {
            bail!("namespace {ns:?} is not supported")
        }
    }
    Ok(())
}

/// `dest` as a clean absolute path (no `.`, `..` or doubled slashes).
fn clean(dest: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in dest.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    format!("/{}", parts.join("/"))
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn is_cgroup(m: &Mount) -> bool {
    matches!(m.typ().as_deref(), Some("cgroup") | Some("cgroup2"))
}

/// Mount points that may be external, with the value restore binds there:
/// (destination, source). `cgroup_dir` is the container's cgroup, bound
/// at a cgroup mount.
fn externals(spec: &Spec, bundle: &Path, cgroup_dir: Option<&Path>) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let dest = clean(m.destination());
        if is_bind(m) {
            let src = m.source().clone().unwrap_or_default();
            let src = if src.is_relative() {
                bundle.join(src)
            } else {
                src
            };
            v.push((dest, src));
        } else if is_cgroup(m) {
            if let Some(d) = cgroup_dir {
                v.push((dest, d.to_path_buf()));
            }
        }
    }
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        v.push((clean(Path::new(p)), PathBuf::from("/dev/null")));
    }
    for d in linux
        .and_then(|l| l.devices().as_ref())
        .into_iter()
        .flatten()
    {
        let p = clean(d.path());
        v.push((p.clone(), PathBuf::from(p)));
    }
    for d in ["null", "zero", "full", "random", "urandom", "tty"] {
        let p = format!("/dev/{d}");
        if !v.iter().any(|(k, _)| k == &p) {
            v.push((p.clone(), PathBuf::from(p)));
        }
    }
    v
}

/// Link targets of the init's fds 0..2 ("" for a closed one).
fn descriptors(pid: i32) -> Vec<String> {
    (0..3)
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect()
}

/// Copy a stats file from the image dir into the work dir when they differ.
fn stats_to_work(images: &Path, work: Option<&Path>, name: &str) {
    let Some(work) = work else { return };
    let same = |a: &Path, b: &Path| {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    };
    if same(images, work) || !images.join(name).exists() {
        return;
    }
    if let Err(e) = std::fs::copy(images.join(name), work.join(name)) {
        warn!(
            "cannot copy {name} into the work dir {}: {e}",
            work.display()
        );
    }
}

/// runc's clients look for CRIU's dump.log/restore.log in the work dir
/// when an operation fails: the outcome goes there.
fn work_log<T>(dir: &Path, name: &str, r: &Result<T>) {
    let line = match r {
        Ok(_) => format!("{name}: done\n"),
        Err(e) => format!("Error: {e}\n"),
    };
    if let Err(e) = std::fs::write(dir.join(name), line) {
        debug!("cannot write {name} into {}: {e}", dir.display());
    }
}

fn mkdir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(e).at(p),
    }
}

/// Our own cgroup v2 directory, to go back to after a restore that put us
/// into the container's cgroup (manage-cgroups-mode ignore).
struct Inside {
    back: PathBuf,
}

impl Drop for Inside {
    fn drop(&mut self) {
        let me = std::process::id().to_string();
        if let Err(e) = std::fs::write(self.back.join("cgroup.procs"), me) {
            warn!("cannot move back to cgroup {}: {e}", self.back.display());
        }
    }
}

impl Runtime {
    /// Checkpoint the running (or paused) container `id` into
    /// `o.image_path`.
    pub fn checkpoint(&self, id: &str, o: &CheckpointOpts) -> Result<engine::DumpStats> {
        let st = self.load(id)?;
        let status = st.status(&self.root);
        if matches!(status, Status::Created | Status::Stopped) {
            bail!("container {id} cannot be checkpointed in {status} state")
        }
        if o.page_server.is_some() {
            return Err(not_yet(
                "the page server",
                "images are always written locally",
            ));
        }
        if o.lazy_pages {
            return Err(not_yet("lazy pages", "memory is always dumped in full"));
        }
        if o.auto_dedup {
            return Err(not_yet("auto-dedup", "images are never deduplicated"));
        }
        cg_mode(o.manage_cgroups_mode.as_deref())?;
        check_empty_ns(&o.empty_ns)?;
        if o.image_path.as_os_str().is_empty() {
            bail!("invalid directory to save checkpoint")
        }
        debug!(
            link_remap = o.link_remap,
            status_fd = ?o.status_fd,
            "checkpoint options without engine counterpart accepted"
        );
        mkdir(&o.image_path)?;
        if let Some(w) = &o.work_path {
            mkdir(w)?;
        }
        let pid = st.pid;
        // Candidates are kept only where the container has a mount.
        let mounts: Vec<String> = engine::proc::read_mountinfo(pid)
            .map_err(|e| Error::msg(format!("container {id}: mounts of pid {pid}: {e}")))?
            .into_iter()
            .map(|m| m.mount_point)
            .collect();
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let masked: Vec<String> = st
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default()
            .iter()
            .map(|p| clean(Path::new(p)))
            .collect();
        let mut external = Vec::new();
        for (dest, _) in externals(
            &st.spec,
            &st.bundle,
            st.cgroup.as_ref().map(|c| c.dir.as_path()),
        ) {
            if !mounts.contains(&dest)
                || external
                    .iter()
                    .any(|e: &String| e == &format!("mnt[{dest}]:{dest}"))
            {
                continue;
            }
            // A masked directory is a tmpfs of the container's own: saved.
            if masked.contains(&dest) && root.join(dest.trim_start_matches('/')).is_dir() {
                continue;
            }
            external.push(format!("mnt[{dest}]:{dest}"));
        }
        let fds = serde_json::to_string(&descriptors(pid)).map_err(Error::msg)?;
        let dp = o.image_path.join(DESCRIPTORS);
        std::fs::write(&dp, fds).at(&dp)?;
        let d = dump::DumpOptions {
            pid,
            images_dir: o.image_path.clone(),
            leave_running: o.leave_running,
            shell_job: o.shell_job,
            file_locks: o.file_locks,
            progress: false,
            ext_unix_sk: o.ext_unix_sk,
            post_dump: None,
            orphan_pts_master: true,
            external,
            freeze_cgroup: st.cgroup.as_ref().map(|c| c.dir.clone()),
            tcp_established: o.tcp_established,
            tcp_skip_in_flight: o.tcp_skip_in_flight,
            // runc's --pre-dump / --parent-path (relative to the image dir,
            // as CRIU's --prev-images-dir).
            pre_dump: o.pre_dump,
            parent: o.parent_path.clone(),
            ..Default::default()
        };
        let t0 = Instant::now();
        let r = dump::dump(&d);
        if status == Status::Paused && (r.is_err() || o.leave_running || o.pre_dump) {
            // The dump thaws the cgroup to run its injected calls.
            if let Some(cg) = &st.cgroup {
                if let Err(e) = cg.freeze(true) {
                    warn!("container {id}: cannot pause it again: {e}");
                }
            }
        }
        let r = r.map_err(|e| Error::msg(format!("checkpoint of container {id}: {e}")));
        work_log(
            o.work_path.as_deref().unwrap_or(&o.image_path),
            "dump.log",
            &r,
        );
        let stats = r?;
        debug!(id, pid, elapsed = ?t0.elapsed(), "container checkpointed");
        stats_to_work(&o.image_path, o.work_path.as_deref(), stats::STATS_DUMP);
        if !o.leave_running && !o.pre_dump {
            // runc destroys the container once CRIU has dumped (and killed) it.
            let deadline = Instant::now() + Duration::from_secs(5);
            while util::alive(pid, st.start_time) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.delete(id, true)?;
        }
        Ok(stats)
    }

    /// Restore the checkpoint in `o.image_path` as a new container `id`
    /// of `bundle`; returns once the container runs.
    pub fn restore(&self, id: &str, bundle: &Path, o: &RestoreOpts) -> Result<Restored> {
        check_id(id)?;
        if o.lazy_pages {
            return Err(not_yet("lazy pages", "memory is always restored in full"));
        }
        if o.auto_dedup {
            return Err(not_yet("auto-dedup", "images are never deduplicated"));
        }
        if o.lsm_profile.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(not_yet("an LSM profile", "LSM labels are not restored"));
        }
        if o.lsm_mount_context
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            return Err(not_yet(
                "an LSM mount context",
                "LSM labels are not restored",
            ));
        }
        let mode = cg_mode(o.manage_cgroups_mode.as_deref())?;
        check_empty_ns(&o.empty_ns)?;
        if o.image_path.as_os_str().is_empty() {
            bail!("invalid directory to restore checkpoint")
        }
        let images = std::fs::canonicalize(&o.image_path)
            .map_err(|e| Error::msg(format!("image dir {}: {e}", o.image_path.display())))?;
        if !images.join("inventory.img").exists() {
            bail!(
                "image dir {}: no checkpoint there (inventory.img is missing)",
                images.display()
            )
        }
        let dp = images.join(DESCRIPTORS);
        let fds: Vec<String> = match std::fs::read_to_string(&dp) {
            Ok(t) => serde_json::from_str(&t)
                .map_err(|e| Error::msg(format!("{}: {e}", dp.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "image dir {}: not a container checkpoint ({DESCRIPTORS} is missing)",
                images.display()
            ),
            Err(e) => return Err(e).at(&dp),
        };
        let bundle = std::fs::canonicalize(bundle)
            .map_err(|e| Error::msg(format!("bundle {}: {e}", bundle.display())))?;
        let spec = spec::load(&bundle)?;
        let rootfs = spec::rootfs(&bundle, &spec)?;
        let process = spec.process().clone().expect("validated");
        let terminal = process.terminal().unwrap_or(false);
        if terminal && o.console_socket.is_none() && o.on_console.is_none() {
            bail!("cannot allocate tty if runc will detach without setting console socket")
        }
        if !terminal && o.console_socket.is_some() {
            bail!("cannot use console socket if runc will not detach or allocate tty")
        }
        if o.no_pivot {
            debug!("--no-pivot: the restored mount namespace is always pivoted into");
        }
        let console = o.console_socket.as_deref().map(tty::connect).transpose()?;
        if let Some(w) = &o.work_path {
            mkdir(w)?;
        }
        let (_, mut undo, cg) = self.claim(id, &spec)?;
        let cg_rel = cg
            .dir
            .strip_prefix(cgroup::cgroup2_mount()?)
            .map(|p| format!("/{}", p.display()))
            .map_err(|_| Error::msg(format!("cgroup {}: not under cgroup2", cg.dir.display())))?;
        // Ignore: the engine leaves cgroups alone, so the tree is born in
        // ours; runc puts CRIU into the container's cgroup for that.
        let _inside = if mode == CgMode::Ignore {
            let back = cgroup::cgroup2_mount()?.join(cgroup::own_cgroup()?.trim_start_matches('/'));
            cg.add(std::process::id() as i32)?;
            Some(Inside { back })
        } else {
            None
        };
        let stdio = o.stdio.unwrap_or([0, 1, 2]);
        let inherit_fds: Vec<(i32, String)> = fds
            .iter()
            .enumerate()
            .filter(|(_, s)| s.contains("pipe:"))
            .map(|(i, s)| (stdio[i.min(2)], s.clone()))
            .collect();
        let external: Vec<String> = externals(&spec, &bundle, Some(&cg.dir))
            .into_iter()
            .map(|(k, v)| format!("mnt[{k}]:{}", v.display()))
            .collect();
        let mut st = State {
            id: id.to_string(),
            pid: 0,
            start_time: 0,
            bundle: bundle.clone(),
            rootfs: rootfs.clone(),
            created: util::rfc3339_nano(SystemTime::now()),
            owner: nix::unistd::geteuid().as_raw(),
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            cgroup: Some(cg.clone()),
            spec: spec.clone(),
        };
        let hook_state = st.clone();
        let hk = spec.hooks().clone();
        let on_forked = engine::hook::Hook::new(move |pid| {
            let mut s = hook_state.clone();
            s.pid = pid;
            let state = s.hook_state("creating");
            let h = hk.as_ref();
            hooks::run_all("prestart", h.and_then(|h| h.prestart().as_ref()), &state)
                .and_then(|_| {
                    hooks::run_all(
                        "createRuntime",
                        h.and_then(|h| h.create_runtime().as_ref()),
                        &state,
                    )
                })
                .map_err(|e| e.to_string())
        });
        let on_orphan_pts = match console {
            Some(sock) => Some(engine::hook::FdHook::new(move |fd| {
                tty::send_master(&sock, fd).map_err(|e| e.to_string())
            })),
            None => o.on_console.clone(),
        };
        let r = restore::RestoreOptions {
            images_dir: images.clone(),
            detach: true,
            shell_job: o.shell_job,
            pidfile: None,
            file_locks: o.file_locks,
            progress: false,
            ext_unix_sk: o.ext_unix_sk,
            sibling: false,
            on_forked: Some(on_forked),
            before_resume: None,
            inherit_fds,
            orphan_pts_master: true,
            on_orphan_pts,
            root: Some(rootfs.clone()),
            external,
            manage_cgroups: Some(mode),
            cgroup_root: vec![cg_rel],
            join_ns: Vec::new(),
            tcp_established: o.tcp_established,
            tcp_close: false,
            empty_net: o.empty_ns.iter().any(|n| n == "network"),
        };
        let t0 = Instant::now();
        let done =
            restore::restore(&r).map_err(|e| Error::msg(format!("restore of container {id}: {e}")));
        work_log(
            o.work_path.as_deref().unwrap_or(&images),
            "restore.log",
            &done,
        );
        let done = done?;
        drop(_inside);
        let pid = done.root_pid;
        undo.pid = pid;
        st.pid = pid;
        st.start_time = util::proc_stat(pid).map(|s| s.1).unwrap_or(0);
        st.save(&self.root)?;
        if let Some(p) = &o.pid_file {
            write_pid_file(p, pid)?;
        }
        std::mem::forget(undo);
        debug!(id, pid, elapsed = ?t0.elapsed(), "container restored");
        stats_to_work(&images, o.work_path.as_deref(), stats::STATS_RESTORE);
        Ok(Restored {
            state: st,
            stats: done.stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean(Path::new("/etc//hosts")), "/etc/hosts");
        assert_eq!(clean(Path::new("dev/../proc/./kcore")), "/proc/kcore");
        assert_eq!(clean(Path::new("/")), "/");
    }

    #[test]
    fn cgroup_modes_and_empty_ns() {
        assert_eq!(cg_mode(None).unwrap(), CgMode::Soft);
        assert_eq!(cg_mode(Some("ignore")).unwrap(), CgMode::Ignore);
        assert!(cg_mode(Some("bogus")).is_err());
        check_empty_ns(&["network".into()]).unwrap();
        assert!(check_empty_ns(&["pid".into()])
            .unwrap_err()
            .to_string()
            .contains("\"pid\""));
    }

    #[test]
    fn externals_follow_runc() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/u/hosts", "options": ["rbind"]},
                {"destination": "/data", "type": "none", "source": "data", "options": ["bind", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"}
            ],
            "linux": {
                "maskedPaths": ["/proc/kcore"],
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
            }
        }))
        .unwrap();
        let e = externals(&spec, Path::new("/b"), Some(Path::new("/cg/c1")));
        let get = |k: &str| e.iter().find(|(d, _)| d == k).map(|(_, v)| v.clone());
        assert_eq!(get("/etc/hosts"), Some(PathBuf::from("/u/hosts")));
        assert_eq!(get("/data"), Some(PathBuf::from("/b/data")));
        assert_eq!(get("/sys/fs/cgroup"), Some(PathBuf::from("/cg/c1")));
        assert_eq!(get("/proc/kcore"), Some(PathBuf::from("/dev/null")));
        assert_eq!(get("/dev/fuse"), Some(PathBuf::from("/dev/fuse")));
        assert_eq!(get("/dev/null"), Some(PathBuf::from("/dev/null")));
        assert_eq!(get("/proc"), None);
    }
}
