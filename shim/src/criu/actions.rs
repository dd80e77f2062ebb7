//! Dump and restore with CRIU's action-script points, shared by the command
//! line (`--action-script`) and swrk (NOTIFY messages).
//!
//! Order, as CRIU: dump: pre-dump, network-lock (own net namespace only),
//! query-ext-files (RPC only: the ack may name more external resources),
//! post-dump (images complete, tree still frozen), network-unlock (when the
//! tree runs on). Restore: pre-restore, setup-namespaces (root pid),
//! post-setup-namespaces, post-restore (root pid, tree still stopped),
//! network-unlock (own net namespace only), pre-resume, post-resume.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use stasis_engine::hook::{FdHook, Hook};
use stasis_engine::{dump as engine_dump, restore as engine_restore, DumpStats};
use tracing::{info, warn};

use super::opts::Opts;

/// One notification: script name and, where CRIU sends one, the root pid.
/// An error aborts the operation at that point. The answer is the list of
/// external resources the client added (query-ext-files), else empty.
pub type Notify = Arc<dyn Fn(&str, Option<i32>) -> Result<Vec<String>, String> + Send + Sync>;

/// No notifications.
pub fn silent() -> Notify {
    Arc::new(|_, _| Ok(Vec::new()))
}

/// CRIU's `--action-script`: each script runs with CRTOOLS_SCRIPT_ACTION,
/// CRTOOLS_IMAGE_DIR and, once the root is known, CRTOOLS_INIT_PID; a
/// non-zero exit fails the operation.
pub fn shell_scripts(paths: Vec<PathBuf>, images: PathBuf, root: Option<i32>) -> Notify {
    let root = Mutex::new(root);
    Arc::new(move |action: &str, pid: Option<i32>| {
        // CRIU asks only RPC clients for external files.
        if action == "query-ext-files" {
            return Ok(Vec::new());
        }
        let mut r = root.lock().unwrap_or_else(|e| e.into_inner());
        if pid.is_some() {
            *r = pid;
        }
        for p in &paths {
            let mut c = Command::new(p);
            c.env("CRTOOLS_SCRIPT_ACTION", action)
                .env("CRTOOLS_IMAGE_DIR", &images);
            if let Some(pid) = *r {
                c.env("CRTOOLS_INIT_PID", pid.to_string());
            }
            let st = c
                .status()
                .map_err(|e| format!("Script {} cannot run: {e}", p.display()))?;
            if !st.success() {
                return Err(format!(
                    "Script {} exited with {} ({action})",
                    p.display(),
                    st.code().unwrap_or(-1)
                ));
            }
        }
        Ok(Vec::new())
    })
}

/// Whether `pid` runs in a network namespace other than ours (CRIU sends
/// network-lock/unlock only then).
fn own_netns(pid: i32) -> bool {
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
    match (
        ino(&format!("/proc/{pid}/ns/net")),
        ino("/proc/self/ns/net"),
    ) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    }
}

pub fn dump(o: &Opts, pid: i32, n: Notify) -> Result<DumpStats> {
    o.check_dump()?;
    n("pre-dump", None).map_err(|e| anyhow!(e))?;
    let net = own_netns(pid);
    if net {
        n("network-lock", None).map_err(|e| anyhow!(e))?;
    }
    let r = query_and_dump(o, pid, &n);
    if net && (r.is_err() || o.leave_running) {
        if let Err(e) = n("network-unlock", None) {
            warn!("{e}");
        }
    }
    r
}

/// A freezer cgroup we thawed, frozen again when dropped.
struct Thawed {
    file: PathBuf,
    frozen: &'static str,
}

impl Drop for Thawed {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.file, self.frozen) {
            warn!("cannot freeze {} again: {e}", self.file.display());
        }
    }
}

/// The tree is stopped with ptrace, which a frozen cgroup would never let
/// happen (e.g. `runc pause` before `runc checkpoint`, as containerd does):
/// thaw `--freeze-cgroup` for the dump and leave it as found, like CRIU.
fn thaw_if_frozen(cg: Option<&str>) -> Result<Option<Thawed>> {
    let Some(cg) = cg else { return Ok(None) };
    let dir = PathBuf::from(cg);
    let (file, thawed, frozen) = if dir.join("freezer.state").exists() {
        (dir.join("freezer.state"), "THAWED", "FROZEN")
    } else if dir.join("cgroup.freeze").exists() {
        (dir.join("cgroup.freeze"), "0", "1")
    } else {
        return Ok(None);
    };
    let now = std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
    if now.trim() != frozen {
        return Ok(None);
    }
    std::fs::write(&file, thawed).with_context(|| format!("thaw {}", file.display()))?;
    info!(cgroup = cg, "thawed the frozen cgroup for the dump");
    Ok(Some(Thawed { file, frozen }))
}

fn query_and_dump(o: &Opts, pid: i32, n: &Notify) -> Result<DumpStats> {
    let added = n("query-ext-files", None).map_err(|e| anyhow!(e))?;
    let mut o = o.clone();
    if !added.is_empty() {
        info!(?added, "external resources added by the client");
        o.external.extend(added);
        o.check_dump()?;
    }
    let mut d = o.dump_options(pid);
    let post = n.clone();
    d.post_dump = Some(Hook::new(move |_| post("post-dump", None).map(drop)));
    let _thawed = thaw_if_frozen(o.freeze_cgroup.as_deref())?;
    engine_dump::dump(&d).with_context(|| format!("dump of pid {pid} failed"))
}

/// `orphan`: where the new master of each orphan pty slave goes (swrk
/// sends it to the client with an orphan-pts-master notification).
pub fn restore(o: &Opts, n: Notify, orphan: Option<FdHook>) -> Result<engine_restore::Restored> {
    o.check_restore()?;
    n("pre-restore", None).map_err(|e| anyhow!(e))?;
    let mut r = o.restore_options();
    r.on_orphan_pts = orphan;
    let n1 = n.clone();
    r.on_forked = Some(Hook::new(move |pid| {
        n1("setup-namespaces", Some(pid))?;
        n1("post-setup-namespaces", None).map(drop)
    }));
    let n2 = n.clone();
    r.before_resume = Some(Hook::new(move |pid| {
        n2("post-restore", Some(pid))?;
        if own_netns(pid) {
            n2("network-unlock", None)?;
        }
        n2("pre-resume", None).map(drop)
    }));
    let done = engine_restore::restore(&r).context("restore failed")?;
    // The tree runs already: a failure here is only reported.
    if let Err(e) = n("post-resume", None) {
        warn!("post-resume: {e}");
    }
    info!(pid = done.root_pid, "restored");
    Ok(done)
}
