//! cgroup v2 for containers: the hierarchy is found from mountinfo (on
//! hybrid hosts it sits at /sys/fs/cgroup/unified), the container's cgroup is
//! created from `cgroupsPath`, each resource is applied when its controller
//! is available in that cgroup, and freeze/kill use cgroup.freeze and
//! cgroup.kill. Only directories this runtime created are ever removed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::error::{bail, IoCtx, Result};
use crate::util::{read_trim, write_file};

/// Mount point of the cgroup2 hierarchy, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").at("/proc/self/mountinfo")?;
    for l in mi.lines() {
        let Some((pre, post)) = l.split_once(" - ") else {
            continue;
        };
        if post.split_whitespace().next() == Some("cgroup2") {
            if let Some(mp) = pre.split_whitespace().nth(4) {
                return Ok(PathBuf::from(unescape(mp)));
            }
        }
    }
    bail!("no cgroup2 hierarchy is mounted (see /proc/self/mountinfo)")
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// This process's cgroup v2 path (`0::/path`).
pub(crate) fn own_cgroup() -> Result<String> {
    let s = std::fs::read_to_string("/proc/self/cgroup").at("/proc/self/cgroup")?;
    for l in s.lines() {
        if let Some(p) = l.strip_prefix("0::") {
            return Ok(p.to_string());
        }
    }
    Ok("/".into())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cgroup {
    /// Absolute directory of the container's cgroup.
    pub dir: PathBuf,
    /// Directories we created for it, outermost first (removed in reverse).
    pub created: Vec<PathBuf>,
}

impl Cgroup {
    /// The container's cgroup directory for `cgroups_path` (absolute: from
    /// the hierarchy's root; relative or empty: under our own cgroup, runc's
    /// rule), without creating it.
    pub fn locate(cgroups_path: Option<&Path>, id: &str) -> Result<PathBuf> {
        let root = cgroup2_mount()?;
        let rel = match cgroups_path {
            Some(p) if !p.as_os_str().is_empty() => {
                let s = p.to_string_lossy();
                if !s.starts_with('/') && s.contains(':') {
                    bail!("cgroupsPath {s:?}: systemd slice:prefix:name paths need --systemd-cgroup, which is not supported");
                }
                if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    PathBuf::from(own_cgroup()?).join(p)
                }
            }
            _ => PathBuf::from(own_cgroup()?).join(id),
        };
        let mut dir = root.clone();
        for c in rel.components() {
            match c {
                std::path::Component::Normal(n) => dir.push(n),
                std::path::Component::ParentDir => {
                    bail!("cgroupsPath {}: '..' is not allowed", rel.display())
                }
                _ => {}
            }
        }
        if dir == root {
            bail!(
                "cgroupsPath {}: the container cannot use the root cgroup",
                rel.display()
            )
        }
        Ok(dir)
    }

    pub fn create(cgroups_path: Option<&Path>, id: &str) -> Result<Cgroup> {
        let dir = Self::locate(cgroups_path, id)?;
        let mut created = Vec::new();
        let mut missing = Vec::new();
        let mut p = dir.as_path();
        while !p.exists() {
            missing.push(p.to_path_buf());
            p = match p.parent() {
                Some(q) => q,
                None => break,
            };
        }
        for m in missing.into_iter().rev() {
            match std::fs::create_dir(&m) {
                Ok(()) => created.push(m),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    let cg = Cgroup {
                        dir: dir.clone(),
                        created,
                    };
                    cg.remove();
                    return Err(e).at(&m);
                }
            }
        }
        Ok(Cgroup { dir, created })
    }

    pub fn add(&self, pid: i32) -> Result<()> {
        write_file(&self.dir.join("cgroup.procs"), pid.to_string())
    }

    pub fn procs(&self) -> Vec<i32> {
        let mut v: Vec<i32> = std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    pub fn controllers(&self) -> HashSet<String> {
        std::fs::read_to_string(self.dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    pub fn frozen(&self) -> bool {
        read_trim(&self.dir.join("cgroup.freeze")).is_ok_and(|s| s == "1")
    }

    /// Freeze or thaw, and wait until cgroup.events says it happened.
    pub fn freeze(&self, on: bool) -> Result<()> {
        write_file(&self.dir.join("cgroup.freeze"), if on { "1" } else { "0" })?;
        let want = if on { "frozen 1" } else { "frozen 0" };
        let ev = self.dir.join("cgroup.events");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = std::fs::read_to_string(&ev).at(&ev)?;
            if s.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{}: still not {want} after 10s", ev.display())
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// SIGKILL every process of the cgroup (cgroup.kill, else one by one).
    pub fn kill_all(&self) -> Result<()> {
        let k = self.dir.join("cgroup.kill");
        if k.exists() {
            return write_file(&k, "1");
        }
        self.signal_all(nix::sys::signal::Signal::SIGKILL)
    }

    pub fn signal_all(&self, sig: nix::sys::signal::Signal) -> Result<()> {
        for p in self.procs() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
        }
        Ok(())
    }

    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
            .unwrap_or(false)
    }

    /// Remove the directories we created, innermost first, waiting a little
    /// for dying processes to leave. Leaves anything we did not create.
    pub fn remove(&self) {
        for d in self.created.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && Instant::now() < deadline
                            && d == &self.dir =>
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        // A parent shared with another container stays.
                        if d == &self.dir {
                            warn!("cgroup {}: cannot remove: {e}", d.display());
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Apply `res`; resources whose controller is not available here are
    /// reported by name (returned and logged as warnings), not failed.
    pub fn apply(&self, res: &LinuxResources) -> Result<Vec<String>> {
        let avail = self.controllers();
        let mut files: Vec<(&str, String, String)> = Vec::new(); // controller, file, value
        if let Some(m) = res.memory() {
            if let Some(l) = m.limit() {
                files.push(("memory", "memory.max".into(), max_or(l)));
            }
            if let Some(r) = m.reservation() {
                files.push(("memory", "memory.low".into(), max_or(r)));
            }
            if let Some(s) = m.swap() {
                // v1 memsw = memory + swap; v2 swap.max is swap alone.
                let v = match (s, m.limit()) {
                    (s, _) if s < 0 => "max".to_string(),
                    (s, Some(l)) if l > 0 => (s - l).max(0).to_string(),
                    (s, _) => s.to_string(),
                };
                files.push(("memory", "memory.swap.max".into(), v));
            }
        }
        if let Some(c) = res.cpu() {
            if let Some(sh) = c.shares() {
                if sh > 0 {
                    let w = 1 + ((sh.clamp(2, 262144) - 2) * 9999) / 262142;
                    files.push(("cpu", "cpu.weight".into(), w.to_string()));
                }
            }
            if c.quota().is_some() || c.period().is_some() {
                let q = match c.quota() {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".into(),
                };
                let p = c.period().unwrap_or(100_000);
                files.push(("cpu", "cpu.max".into(), format!("{q} {p}")));
            }
            if let Some(s) = c.cpus() {
                files.push(("cpuset", "cpuset.cpus".into(), s.clone()));
            }
            if let Some(s) = c.mems() {
                files.push(("cpuset", "cpuset.mems".into(), s.clone()));
            }
        }
        if let Some(p) = res.pids() {
            let l = p.limit();
            files.push((
                "pids",
                "pids.max".into(),
                if l > 0 { l.to_string() } else { "max".into() },
            ));
        }
        if let Some(b) = res.block_io() {
            if let Some(w) = b.weight() {
                // v1 blkio weight 10..1000 -> v2 io weight 1..10000.
                let v = 1 + (u64::from(w).saturating_sub(10)) * 9999 / 990;
                files.push(("io", "io.weight".into(), format!("default {v}")));
            }
        }
        if let Some(hs) = res.hugepage_limits() {
            for h in hs {
                files.push((
                    "hugetlb",
                    format!("hugetlb.{}.max", h.page_size()),
                    h.limit().to_string(),
                ));
            }
        }
        if let Some(u) = res.unified() {
            for (k, v) in u {
                let ctrl = k.split('.').next().unwrap_or_default();
                files.push((
                    if ctrl == "cgroup" { "" } else { ctrl },
                    k.clone(),
                    v.clone(),
                ));
            }
        }
        let mut warnings = Vec::new();
        for (ctrl, file, val) in files {
            if !ctrl.is_empty() && !avail.contains(ctrl) {
                let w = format!(
                    "cgroup v2 controller {ctrl} is not available in {}: {file} not set",
                    self.dir.display()
                );
                warn!("{w}");
                warnings.push(w);
                continue;
            }
            write_file(&self.dir.join(&file), &val)?;
        }
        if res.devices().as_ref().is_some_and(|d| !d.is_empty()) {
            // v2 device rules need an eBPF program; default devices only are
            // created in the container, so deny-all holds for mknod anyway.
            tracing::debug!("cgroup v2 device rules are not enforced (no eBPF device filter)");
        }
        Ok(warnings)
    }

    /// Statistics as runc's `events --stats` data.
    pub fn stats(&self) -> serde_json::Value {
        let kv = |f: &str| -> Vec<(String, u64)> {
            std::fs::read_to_string(self.dir.join(f))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_string(), v.trim().parse().ok()?))
                })
                .collect()
        };
        let get = |v: &[(String, u64)], k: &str| {
            v.iter().find(|(n, _)| n == k).map(|(_, x)| *x).unwrap_or(0)
        };
        let cpu = kv("cpu.stat");
        let one = |f: &str| {
            read_trim(&self.dir.join(f))
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mem = kv("memory.stat");
        serde_json::json!({
            "cpu": {
                "usage": {
                    "total": get(&cpu, "usage_usec") * 1000,
                    "kernel": get(&cpu, "system_usec") * 1000,
                    "user": get(&cpu, "user_usec") * 1000,
                },
                "throttling": {
                    "periods": get(&cpu, "nr_periods"),
                    "throttled_periods": get(&cpu, "nr_throttled"),
                    "throttled_time": get(&cpu, "throttled_usec") * 1000,
                },
            },
            "memory": {
                "usage": {"usage": one("memory.current"), "limit": one("memory.max")},
                "swap": {"usage": one("memory.swap.current")},
                "cache": get(&mem, "file"),
                "raw": mem.into_iter().map(|(k, v)| (k, serde_json::Value::from(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
            },
            "pids": {
                "current": if self.dir.join("pids.current").exists() { one("pids.current") } else { self.procs().len() as u64 },
                "limit": one("pids.max"),
            },
        })
    }
}

fn max_or(v: i64) -> String {
    if v < 0 {
        "max".into()
    } else {
        v.to_string()
    }
}
