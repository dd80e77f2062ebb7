//! Control groups: freezing a tree's cgroup for a consistent dump
//! (`--freeze-cgroup`), the tasks' memberships in `cgroup.img` (CRIU's
//! sets and controller trees), and putting the restored tree back into its
//! cgroup (`--manage-cgroups`, CRIU's modes).
//!
//! Only the unified (v2) hierarchy is rebuilt on restore; v1 memberships are
//! recorded in the image (as CRIU does) but left to the caller.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stasis_proto::criu::{
    CgControllerEntry, CgMemberEntry, CgSetEntry, CgroupDirEntry, CgroupEntry, CgroupPerms,
    CgroupPropEntry,
};
use stasis_proto::image::magic;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc::{self, CgroupEntry as ProcCg};

pub const IMAGE: &str = "cgroup.img";

/// Where the cgroup2 hierarchy is mounted, from our mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let m = proc::read_mountinfo(std::process::id() as i32)?;
    proc::find_cgroup2_mount(&m)
        .map(|m| PathBuf::from(&m.mount_point))
        .ok_or_else(|| Error::Other("no cgroup2 filesystem is mounted".into()))
}

fn wr(p: &Path, v: &str) -> Result<()> {
    std::fs::write(p, v).map_err(|e| Error::io(p, e))
}

fn rd(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(|e| Error::io(p, e))
}

/// A frozen cgroup (v2 `cgroup.freeze`, or a v1 freezer's `freezer.state`);
/// thawed by [`Freezer::thaw`] or when dropped, whatever happened.
pub struct Freezer {
    dir: PathBuf,
    v2: bool,
    frozen: bool,
    /// Time from the freeze request to the frozen state.
    pub latency: Duration,
}

/// `--freeze-cgroup PATH`: a cgroup directory, or a path inside the cgroup2
/// hierarchy (`/mygroup`).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let ok = |p: &Path| p.join("cgroup.freeze").exists() || p.join("freezer.state").exists();
    if ok(path) {
        return Ok(path.to_path_buf());
    }
    let under = cgroup2_mount()?.join(path.strip_prefix("/").unwrap_or(path));
    if ok(&under) {
        return Ok(under);
    }
    Err(Error::Other(format!(
        "--freeze-cgroup {}: not a cgroup with a freezer (tried {} too)",
        path.display(),
        under.display()
    )))
}

impl Freezer {
    /// Freeze and wait (up to `timeout`) until every task is frozen.
    pub fn freeze(path: &Path, timeout: Duration) -> Result<Freezer> {
        let dir = resolve(path)?;
        let v2 = dir.join("cgroup.freeze").exists();
        let t0 = Instant::now();
        let mut f = Freezer {
            dir,
            v2,
            frozen: true,
            latency: Duration::ZERO,
        };
        if v2 {
            wr(&f.dir.join("cgroup.freeze"), "1")?;
        } else {
            wr(&f.dir.join("freezer.state"), "FROZEN")?;
        }
        let mut nap = Duration::from_micros(20);
        loop {
            if f.is_frozen()? {
                break;
            }
            if t0.elapsed() > timeout {
                // Drop thaws.
                return Err(Error::Other(format!(
                    "cgroup {} did not freeze within {timeout:?}",
                    f.dir.display()
                )));
            }
            std::thread::sleep(nap);
            // Fine steps: the latency is a figure we report.
            nap = (nap * 2).min(Duration::from_micros(200));
        }
        f.latency = t0.elapsed();
        info!(cgroup = %f.dir.display(), latency = ?f.latency, "cgroup frozen");
        Ok(f)
    }

    fn is_frozen(&self) -> Result<bool> {
        if self.v2 {
            let ev = rd(&self.dir.join("cgroup.events"))?;
            Ok(ev.lines().any(|l| l.trim() == "frozen 1"))
        } else {
            Ok(rd(&self.dir.join("freezer.state"))?.trim() == "FROZEN")
        }
    }

    pub fn thaw(&mut self) -> Result<()> {
        if !self.frozen {
            return Ok(());
        }
        self.frozen = false;
        if self.v2 {
            wr(&self.dir.join("cgroup.freeze"), "0")
        } else {
            wr(&self.dir.join("freezer.state"), "THAWED")
        }
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        if let Err(e) = self.thaw() {
            warn!("cannot thaw cgroup {}: {e}", self.dir.display());
        }
    }
}

// ---------------------------------------------------------------- dump

/// Name of a hierarchy in the image: its controllers (`cpu,cpuacct`,
/// `name=systemd`), or "" for the unified one.
fn hier_name(e: &ProcCg) -> String {
    e.controllers.join(",")
}

/// Files of a v2 cgroup directory that hold settable properties: writable,
/// belonging to the cgroup core or to an enabled controller, and not state
/// we must not copy (freeze, kill, membership, pressure triggers).
fn v2_props(dir: &Path) -> Vec<CgroupPropEntry> {
    let ctrls: Vec<String> = std::fs::read_to_string(dir.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut names: Vec<String> = rd
        .filter_map(|d| d.ok())
        .filter_map(|d| d.file_name().into_string().ok())
        .collect();
    names.sort();
    for n in names {
        let (ctrl, _) = n.split_once('.').unwrap_or((&n, ""));
        let skip = matches!(
            n.as_str(),
            "cgroup.freeze" | "cgroup.kill" | "cgroup.procs" | "cgroup.threads"
        ) || n.ends_with(".pressure")
            || n.ends_with(".events")
            || n.ends_with(".stat")
            || n.ends_with(".current")
            || !(ctrl == "cgroup" || ctrls.iter().any(|c| c == ctrl));
        if skip {
            continue;
        }
        let p = dir.join(&n);
        let Ok(md) = std::fs::metadata(&p) else {
            continue;
        };
        if md.mode() & 0o200 == 0 {
            continue;
        }
        let Ok(v) = std::fs::read_to_string(&p) else {
            continue;
        };
        out.push(CgroupPropEntry {
            name: n,
            value: v.trim_end_matches('\n').to_string(),
            perms: Some(CgroupPerms {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
            }),
        });
    }
    out
}

/// The tasks' cgroup sets: pid -> set id.
#[derive(Debug, Default)]
pub struct CgSets {
    pub of: BTreeMap<i32, u32>,
}

/// Write `cgroup.img` for the live tasks (host pids); returns each task's
/// set id (for `core.tc.cg_set`).
pub fn dump(dir: &ImageDir, pids: &[i32]) -> Result<CgSets> {
    let mut sets: Vec<Vec<(String, String)>> = Vec::new();
    let mut out = CgSets::default();
    for &p in pids {
        let cg = proc::read_cgroup(p)?;
        let members: Vec<(String, String)> =
            cg.iter().map(|e| (hier_name(e), e.path.clone())).collect();
        let id = match sets.iter().position(|s| *s == members) {
            Some(i) => i,
            None => {
                sets.push(members);
                sets.len() - 1
            }
        };
        out.of.insert(p, id as u32 + 1);
    }
    let v2root = cgroup2_mount().ok();
    // The v2 directories the tasks are in, with their properties.
    let mut dirs: Vec<CgroupDirEntry> = Vec::new();
    if let Some(root) = &v2root {
        let mut paths: Vec<&str> = sets
            .iter()
            .flat_map(|s| {
                s.iter()
                    .filter(|(n, _)| n.is_empty())
                    .map(|(_, p)| p.as_str())
            })
            .filter(|p| *p != "/")
            .collect();
        paths.sort();
        paths.dedup();
        for p in paths {
            insert_dir(&mut dirs, root, p);
        }
    }
    let entry = CgroupEntry {
        sets: sets
            .iter()
            .enumerate()
            .map(|(i, s)| CgSetEntry {
                id: i as u32 + 1,
                ctls: s
                    .iter()
                    .map(|(n, p)| CgMemberEntry {
                        name: n.clone(),
                        path: p.clone(),
                        cgns_prefix: None,
                    })
                    .collect(),
            })
            .collect(),
        controllers: if v2root.is_some() {
            vec![CgControllerEntry {
                cnames: vec![String::new()],
                dirs,
                is_threaded: None,
            }]
        } else {
            Vec::new()
        },
    };
    dir.write_one(IMAGE, common(magic::CGROUP), &entry)?;
    debug!(sets = sets.len(), "cgroups dumped");
    Ok(out)
}

/// Add `path` (`/a/b`) to the tree; the leaf gets its properties.
fn insert_dir(dirs: &mut Vec<CgroupDirEntry>, root: &Path, path: &str) {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut level = dirs;
    let mut full = root.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        full.push(c);
        let pos = match level.iter().position(|d| d.dir_name == *c) {
            Some(p) => p,
            None => {
                let md = std::fs::metadata(&full).ok();
                level.push(CgroupDirEntry {
                    dir_name: c.to_string(),
                    children: Vec::new(),
                    properties: Vec::new(),
                    dir_perms: md.map(|m| CgroupPerms {
                        mode: m.mode(),
                        uid: m.uid(),
                        gid: m.gid(),
                    }),
                });
                level.len() - 1
            }
        };
        if i + 1 == comps.len() {
            level[pos].properties = v2_props(&full);
        }
        level = &mut level[pos].children;
    }
}

// ---------------------------------------------------------------- restore

/// CRIU's `--manage-cgroups` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CgMode {
    /// Do not set properties; the cgroup must exist.
    None,
    /// Set properties; the cgroup must exist.
    Props,
    /// Create the cgroup if needed; set properties only if we created it.
    #[default]
    Soft,
    /// Create the cgroup if needed; always set properties.
    Full,
    /// The cgroup must not exist; create it, set every property or fail.
    Strict,
    /// Leave cgroups alone.
    Ignore,
}

impl std::str::FromStr for CgMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "none" => CgMode::None,
            "props" => CgMode::Props,
            "soft" | "" => CgMode::Soft,
            "full" => CgMode::Full,
            "strict" => CgMode::Strict,
            "ignore" => CgMode::Ignore,
            o => {
                return Err(format!(
                    "unknown cgroup mode {o:?} (none, props, soft, full, strict, ignore)"
                ))
            }
        })
    }
}

/// Where the restored tree goes (the restorer enters it before forking the
/// root, so the root and every task after it are born there, and a cgroup
/// namespace of the tree is rooted there).
#[derive(Debug)]
pub struct CgTarget {
    pub dir: PathBuf,
    back: Option<PathBuf>,
}

impl CgTarget {
    /// Move the calling process into the target.
    pub fn enter(&mut self) -> Result<()> {
        let me = std::process::id().to_string();
        let v2 = proc::read_cgroup(std::process::id() as i32)?;
        if let (Some(e), Ok(root)) = (proc::find_cgroup_v2(&v2), cgroup2_mount()) {
            self.back = Some(root.join(e.path.trim_start_matches('/')));
        }
        wr(&self.dir.join("cgroup.procs"), &me)
    }

    /// Move back to where we were.
    pub fn leave(&mut self) {
        if let Some(b) = self.back.take() {
            let me = std::process::id().to_string();
            if let Err(e) = wr(&b.join("cgroup.procs"), &me) {
                warn!("cannot move back to cgroup {}: {e}", b.display());
            }
        }
    }
}

impl Drop for CgTarget {
    fn drop(&mut self) {
        self.leave();
    }
}

fn find_dir<'a>(dirs: &'a [CgroupDirEntry], path: &str) -> Option<&'a CgroupDirEntry> {
    let mut level = dirs;
    let mut found = None;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let d = level.iter().find(|d| d.dir_name == c)?;
        found = Some(d);
        level = &d.children;
    }
    found
}

/// Map a dumped v2 path through `--cgroup-root`: the root task's dumped
/// cgroup becomes `new_root` (pure).
pub fn remap(path: &str, root_path: &str, new_root: Option<&str>) -> String {
    let Some(nr) = new_root else {
        return path.to_string();
    };
    let tail = if root_path == "/" {
        path.trim_start_matches('/')
    } else {
        path.strip_prefix(root_path)
            .unwrap_or(path)
            .trim_start_matches('/')
    };
    let nr = nr.trim_end_matches('/');
    if tail.is_empty() {
        if nr.is_empty() {
            "/".into()
        } else {
            nr.to_string()
        }
    } else {
        format!("{nr}/{tail}")
    }
}

/// `--cgroup-root [CTRL:]PATH` values that apply to the unified hierarchy
/// (no controller, "" or "unified").
pub fn v2_root(list: &[String]) -> Option<String> {
    list.iter().rev().find_map(|s| match s.split_once(':') {
        None => Some(s.clone()),
        Some(("", p)) | Some(("unified", p)) => Some(p.to_string()),
        Some(_) => None,
    })
}

/// Prepare the root task's v2 cgroup per `mode`; `None` when there is
/// nothing to do. `root_set` is the root task's set id; `managed` says
/// whether `--manage-cgroups` was given (without it an existing cgroup is
/// entered and nothing is created).
pub fn prepare(
    dir: &ImageDir,
    root_set: Option<u32>,
    mode: CgMode,
    managed: bool,
    cgroup_root: &[String],
) -> Result<Option<CgTarget>> {
    if mode == CgMode::Ignore || !dir.file(IMAGE).exists() {
        return Ok(None);
    }
    let img: CgroupEntry = dir.read_one(IMAGE, common(magic::CGROUP))?;
    let Some(set) = img
        .sets
        .iter()
        .find(|s| Some(s.id) == root_set)
        .or(img.sets.first())
    else {
        return Ok(None);
    };
    let Some(dumped) = set
        .ctls
        .iter()
        .find(|m| m.name.is_empty())
        .map(|m| m.path.clone())
    else {
        return Ok(None);
    };
    let new_root = v2_root(cgroup_root);
    let path = remap(&dumped, &dumped, new_root.as_deref());
    if path == "/" {
        return Ok(None);
    }
    let base = cgroup2_mount()?;
    let target = base.join(path.trim_start_matches('/'));
    let exists = target.join("cgroup.procs").exists();
    let mut created = false;
    match (exists, mode) {
        (true, CgMode::Strict) if managed => {
            return Err(Error::Other(format!(
                "cgroup {} exists (--manage-cgroups=strict needs it not to)",
                target.display()
            )))
        }
        (false, CgMode::None | CgMode::Props) if managed => {
            return Err(Error::Other(format!(
                "cgroup {} does not exist (--manage-cgroups={} needs it)",
                target.display(),
                if mode == CgMode::None {
                    "none"
                } else {
                    "props"
                }
            )))
        }
        (false, _) if !managed => {
            info!(
                cgroup = %target.display(),
                "the dumped cgroup does not exist: the tree stays in ours (use --manage-cgroups)"
            );
            return Ok(None);
        }
        (false, _) => {
            std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
            created = true;
            info!(cgroup = %target.display(), "cgroup created");
        }
        (true, _) => {}
    }
    let set_props = managed
        && match mode {
            CgMode::Props | CgMode::Full | CgMode::Strict => true,
            CgMode::Soft => created,
            _ => false,
        };
    if set_props {
        let props = img
            .controllers
            .iter()
            .find(|c| c.cnames.iter().any(|n| n.is_empty() || n == "unified"))
            .and_then(|c| find_dir(&c.dirs, &dumped))
            .map(|d| d.properties.clone())
            .unwrap_or_default();
        let failed = restore_props(&target, &props);
        if !failed.is_empty() {
            let msg = format!(
                "cgroup {}: could not set {}",
                target.display(),
                failed.join("; ")
            );
            if mode == CgMode::Strict {
                return Err(Error::Other(msg));
            }
            warn!("{msg}");
        }
    }
    Ok(Some(CgTarget {
        dir: target,
        back: None,
    }))
}

/// Write each property; returns "name (why)" for those that failed.
fn restore_props(dir: &Path, props: &[CgroupPropEntry]) -> Vec<String> {
    let mut failed = Vec::new();
    let ctrls = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    // Controllers first (children's files appear only then), then the rest.
    let mut ordered: Vec<&CgroupPropEntry> = props
        .iter()
        .filter(|p| p.name == "cgroup.subtree_control")
        .collect();
    ordered.extend(props.iter().filter(|p| p.name != "cgroup.subtree_control"));
    for p in ordered {
        let f = dir.join(&p.name);
        if p.name == "cgroup.subtree_control" {
            for c in p.value.split_whitespace() {
                if let Err(e) = std::fs::write(&f, format!("+{c}")) {
                    failed.push(format!("{} +{c} ({e})", p.name));
                }
            }
            continue;
        }
        let (ctrl, _) = p.name.split_once('.').unwrap_or((&p.name, ""));
        if !f.exists() {
            let why = if ctrl != "cgroup" && !ctrls.split_whitespace().any(|c| c == ctrl) {
                format!("controller {ctrl} is not available here")
            } else {
                "no such file".into()
            };
            failed.push(format!("{} ({why})", p.name));
            continue;
        }
        match std::fs::read_to_string(&f) {
            Ok(cur) if cur.trim_end_matches('\n') == p.value => continue,
            _ => {}
        }
        if let Err(e) = std::fs::write(&f, &p.value) {
            failed.push(format!("{}={:?} ({e})", p.name, p.value));
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!("strict".parse::<CgMode>(), Ok(CgMode::Strict));
        assert_eq!("".parse::<CgMode>(), Ok(CgMode::Soft));
        assert!("x".parse::<CgMode>().is_err());
    }

    #[test]
    fn cgroup_root_remap() {
        assert_eq!(remap("/ct/a", "/ct/a", None), "/ct/a");
        assert_eq!(remap("/ct/a", "/ct/a", Some("/new")), "/new");
        assert_eq!(remap("/ct/a/sub", "/ct/a", Some("/new/")), "/new/sub");
        assert_eq!(remap("/x", "/", Some("/r")), "/r/x");
        assert_eq!(v2_root(&["cpu:/a".into(), "/b".into()]), Some("/b".into()));
        assert_eq!(v2_root(&[":/c".into()]), Some("/c".into()));
        assert_eq!(v2_root(&["memory:/c".into()]), None);
    }

    #[test]
    fn dir_tree() {
        let mut dirs = Vec::new();
        let root = Path::new("/nonexistent-cg");
        insert_dir(&mut dirs, root, "/a/b");
        insert_dir(&mut dirs, root, "/a/c");
        assert_eq!(dirs.len(), 1);
        assert_eq!(dirs[0].children.len(), 2);
        assert_eq!(find_dir(&dirs, "/a/c").unwrap().dir_name, "c");
        assert!(find_dir(&dirs, "/a/d").is_none());
    }

    #[test]
    fn props_report_missing_controller() {
        let d = std::env::temp_dir().join(format!("stasis-cgprops-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup.controllers"), "hugetlb\n").unwrap();
        std::fs::write(d.join("cgroup.max.depth"), "max\n").unwrap();
        let p = |n: &str, v: &str| CgroupPropEntry {
            name: n.into(),
            value: v.into(),
            perms: None,
        };
        let failed = restore_props(
            &d,
            &[p("cgroup.max.depth", "3"), p("memory.max", "1000000")],
        );
        assert_eq!(
            std::fs::read_to_string(d.join("cgroup.max.depth")).unwrap(),
            "3"
        );
        assert_eq!(
            failed,
            ["memory.max (controller memory is not available here)"]
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
