//! Mount namespace: the whole mount table (`mountpoints-<id>.img`, one
//! `mnt_entry` per mount in `/proc/PID/mountinfo` order) and the contents
//! of the tree's own tmpfs mounts (`tmpfs-dev-<dev>.tar.gz.img`, a gzipped
//! tar as CRIU writes it).
//!
//! Each mount is restored one of four ways:
//! - the tree's root mount (`/`) is `--root DIR`, bound non-recursively;
//! - a mount of a filesystem the dumper could see too (the host's disk,
//!   /dev, /sys, a tmpfs of the caller...) is marked `ext_mount` without a
//!   key and bound back from the restorer's own mount of that filesystem
//!   (same device, root below it): it belongs to the caller, not the tree;
//! - `--external mnt[PATH]:KEY` marks a mount with `ext_key`; restore binds
//!   the caller's `--external mnt[KEY]:VALUE` there;
//! - otherwise the first mount of a filesystem is mounted fresh (tmpfs with
//!   its contents, proc, sysfs, devpts, mqueue, cgroup2...), and later ones
//!   are bind mounts of it.
//!
//! Restore runs in the restored root (inside its fresh namespaces, before
//! it forks): everything is made private, the table is built under a yard
//! directory, then `pivot_root` makes it the root and the old one is
//! detached. Tasks open their files afterwards, so paths resolve inside.
//!
//! Propagation: peer groups whose members are binds of each other are
//! rebuilt (the first member is made shared before the others are bound
//! from it); a slave is rebuilt when its master group is in the table and
//! it is a bind of that group's filesystem, or when it is bound from a
//! mount outside (`--external`, `--root`, the caller's) that is shared or a
//! slave there: it is then a slave of that mount's group, as CRIU does for
//! "external slavery". Other slaves are restored private, with a warning
//! naming the mount.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use stasis_proto::criu::MntEntry;
use stasis_proto::image::magic;
use tracing::{debug, info, warn};

use super::{DumpCx, KindOps, NsPlan};
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc::{self, MountInfo, NsKind};
use crate::sys::mount as sm;

pub const OPS: KindOps = KindOps {
    kind: NsKind::Mnt,
    check: |_| Ok(()),
    dump,
    read,
    setup,
};

/// CRIU's `fstype` enum values (mnt.proto).
pub mod fstype {
    pub const UNSUPPORTED: u32 = 0;
    pub const PROC: u32 = 1;
    pub const SYSFS: u32 = 2;
    pub const DEVTMPFS: u32 = 3;
    pub const BINFMT_MISC: u32 = 4;
    pub const TMPFS: u32 = 5;
    pub const DEVPTS: u32 = 6;
    pub const PSTORE: u32 = 8;
    pub const SECURITYFS: u32 = 9;
    pub const FUSECTL: u32 = 10;
    pub const DEBUGFS: u32 = 11;
    pub const CGROUP: u32 = 12;
    pub const MQUEUE: u32 = 14;
    pub const AUTO: u32 = 16;
    pub const OVERLAYFS: u32 = 17;
    pub const TRACEFS: u32 = 19;
    pub const CGROUP2: u32 = 23;
}

// Mount flags (MS_*), as CRIU stores them.
const MS_RDONLY: u32 = 1;
const MS_NOSUID: u32 = 2;
const MS_NODEV: u32 = 4;
const MS_NOEXEC: u32 = 8;
const MS_SYNCHRONOUS: u32 = 16;
const MS_MANDLOCK: u32 = 64;
const MS_DIRSYNC: u32 = 128;
const MS_NOATIME: u32 = 1024;
const MS_NODIRATIME: u32 = 2048;
const MS_BIND: u64 = 4096;
const MS_REC: u64 = 16384;
const MS_REMOUNT: u64 = 32;
const MS_PRIVATE: u64 = 1 << 18;
const MS_SLAVE: u64 = 1 << 19;
const MS_SHARED: u64 = 1 << 20;
const MS_RELATIME: u32 = 1 << 21;
const MS_STRICTATIME: u32 = 1 << 24;
const MS_LAZYTIME: u32 = 1 << 25;

/// The mount table to rebuild, plus what the restorer adds (`configure`).
#[derive(Debug, Clone, Default)]
pub struct MntNs {
    pub id: u32,
    pub entries: Vec<MntEntry>,
    /// `--root`: the directory that becomes `/`.
    pub root: Option<PathBuf>,
    /// `--external mnt[KEY]:VALUE`, KEY -> VALUE.
    pub external: BTreeMap<String, PathBuf>,
    /// Empty directory the table is built under before `pivot_root`.
    pub yard: PathBuf,
    /// Where the tmpfs tarballs are.
    pub images_dir: PathBuf,
    /// The restorer's mount table (for binds of the caller's filesystems).
    pub host: Vec<MountInfo>,
}

fn image(id: u32) -> String {
    format!("mountpoints-{id}.img")
}

/// CRIU's tmpfs tarball name; `dev` is the kernel's s_dev encoding.
pub fn tmpfs_image(dev: u32) -> String {
    format!("tmpfs-dev-{dev}.tar.gz.img")
}

/// The kernel's internal dev_t (major << 20 | minor), as CRIU stores it.
fn kdev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

fn kdev_split(d: u32) -> (u32, u32) {
    (d >> 20, d & 0xfffff)
}

// ---------------------------------------------------------------- dump

/// `--external mnt[PATH]:KEY` given to dump: mountpoint -> key.
static DUMP_EXTERNAL: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Take the dump's `--external` list (entries of other kinds are ignored
/// here). `mnt[PATH]:KEY` marks the mount at PATH external under KEY;
/// `mnt[PATH]` uses PATH as the key.
pub fn set_dump_externals(list: &[String]) -> Result<()> {
    let mut v = Vec::new();
    for s in list {
        if let Some((k, val)) = parse_external(s)? {
            v.push((k, val.unwrap_or_default()));
        }
    }
    *DUMP_EXTERNAL.lock().unwrap_or_else(|e| e.into_inner()) = v;
    Ok(())
}

/// Parse `mnt[KEY]:VALUE` (VALUE optional); `None` for other kinds.
pub fn parse_external(s: &str) -> Result<Option<(String, Option<String>)>> {
    let Some(rest) = s.strip_prefix("mnt[") else {
        return Ok(None);
    };
    let Some(close) = rest.find(']') else {
        return Err(Error::Other(format!(
            "--external {s:?}: expected mnt[KEY]:VALUE"
        )));
    };
    let key = rest[..close].to_string();
    let tail = &rest[close + 1..];
    let val = match tail.strip_prefix(':') {
        Some(v) => Some(v.to_string()),
        None if tail.is_empty() => None,
        None => {
            return Err(Error::Other(format!(
                "--external {s:?}: expected mnt[KEY]:VALUE"
            )))
        }
    };
    if key.is_empty() {
        return Err(Error::Other(format!("--external {s:?}: empty key")));
    }
    Ok(Some((key, val)))
}

fn fstype_of(name: &str) -> u32 {
    match name {
        "proc" => fstype::PROC,
        "sysfs" => fstype::SYSFS,
        "devtmpfs" => fstype::DEVTMPFS,
        "binfmt_misc" => fstype::BINFMT_MISC,
        "tmpfs" => fstype::TMPFS,
        "devpts" => fstype::DEVPTS,
        "pstore" => fstype::PSTORE,
        "securityfs" => fstype::SECURITYFS,
        "fusectl" => fstype::FUSECTL,
        "debugfs" => fstype::DEBUGFS,
        "cgroup" => fstype::CGROUP,
        "mqueue" => fstype::MQUEUE,
        "overlay" => fstype::OVERLAYFS,
        "tracefs" => fstype::TRACEFS,
        "cgroup2" => fstype::CGROUP2,
        _ => fstype::AUTO,
    }
}

/// Per-mount flags from the mount options column.
fn mount_flags(opts: &str) -> u32 {
    let mut f = 0;
    let mut atime_seen = false;
    for o in opts.split(',') {
        f |= match o {
            "ro" => MS_RDONLY,
            "nosuid" => MS_NOSUID,
            "nodev" => MS_NODEV,
            "noexec" => MS_NOEXEC,
            "noatime" => {
                atime_seen = true;
                MS_NOATIME
            }
            "nodiratime" => MS_NODIRATIME,
            "relatime" => {
                atime_seen = true;
                MS_RELATIME
            }
            _ => 0,
        };
    }
    if !atime_seen {
        f |= MS_STRICTATIME;
    }
    f
}

/// Superblock flags and the filesystem's own options from the super
/// options column.
fn sb_flags(opts: &str) -> (u32, String) {
    let mut f = 0;
    let mut rest = Vec::new();
    for o in opts.split(',') {
        match o {
            "ro" => f |= MS_RDONLY,
            "rw" | "" => {}
            "sync" => f |= MS_SYNCHRONOUS,
            "dirsync" => f |= MS_DIRSYNC,
            "mand" => f |= MS_MANDLOCK,
            "lazytime" => f |= MS_LAZYTIME,
            o => rest.push(o),
        }
    }
    (f, rest.join(","))
}

/// The mount table of a namespace as image entries (pure). `dumper_devs`
/// are the filesystems the dumper can see (`major:minor`): mounts of those
/// belong to the caller. `external` maps a mountpoint to its key.
pub fn to_entries(
    mounts: &[MountInfo],
    dumper_devs: &HashSet<(u32, u32)>,
    external: &[(String, String)],
) -> Result<Vec<MntEntry>> {
    let mut out = Vec::with_capacity(mounts.len());
    for m in mounts {
        if m.mount_point.ends_with("//deleted") || m.root.ends_with("//deleted") {
            return Err(Error::Other(format!(
                "mount {} at {}: its mountpoint or root was deleted",
                m.mount_id, m.mount_point
            )));
        }
        let (sbf, options) = sb_flags(&m.super_options);
        let ext_key = external
            .iter()
            .find(|(p, _)| p == &m.mount_point)
            .map(|(p, k)| if k.is_empty() { p.clone() } else { k.clone() });
        // A pseudo filesystem mounted afresh in the tree is not shared even
        // if its device number repeats (proc of another pid ns gets its own).
        let shared_with_dumper = dumper_devs.contains(&(m.major, m.minor));
        out.push(MntEntry {
            fstype: fstype_of(&m.fstype),
            mnt_id: m.mount_id,
            root_dev: kdev(m.major, m.minor),
            parent_mnt_id: m.parent_id,
            flags: mount_flags(&m.mount_options),
            root: m.root.clone(),
            mountpoint: m.mount_point.clone(),
            source: m.source.clone(),
            options,
            shared_id: m.shared(),
            master_id: m.master(),
            with_plugin: None,
            ext_mount: (ext_key.is_some() || shared_with_dumper).then_some(true),
            fsname: Some(m.fstype.clone()),
            internal_sharing: None,
            deleted: None,
            sb_flags: Some(sbf),
            ext_key,
        });
    }
    for (p, _) in external {
        if !mounts.iter().any(|m| &m.mount_point == p) {
            return Err(Error::Other(format!(
                "--external mnt[{p}]: no mount at {p} in the tree's mount namespace"
            )));
        }
    }
    Ok(out)
}

/// Entries whose contents go into a tarball: the first mount of each of the
/// tree's own tmpfs filesystems.
fn tmpfs_to_save(entries: &[MntEntry]) -> Vec<&MntEntry> {
    let mut seen = HashSet::new();
    let mut v: Vec<&MntEntry> = entries
        .iter()
        .filter(|e| e.fstype == fstype::TMPFS && e.ext_mount != Some(true))
        .collect();
    // The mount closest to the filesystem's root shows the most.
    v.sort_by_key(|e| (e.root_dev, e.root.len()));
    v.retain(|e| seen.insert(e.root_dev));
    v
}

fn dump(cx: &DumpCx) -> Result<()> {
    let mounts = proc::read_mountinfo(cx.root_pid)?;
    let mine = proc::read_mountinfo(std::process::id() as i32)?;
    let devs: HashSet<(u32, u32)> = mine.iter().map(|m| (m.major, m.minor)).collect();
    let ext = DUMP_EXTERNAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let entries = to_entries(&mounts, &devs, &ext)?;
    for e in tmpfs_to_save(&entries) {
        // The path through /proc/PID/root resolves in the tree's namespace.
        let src = PathBuf::from(format!("/proc/{}/root{}", cx.root_pid, e.mountpoint));
        let name = tmpfs_image(e.root_dev);
        let out = cx.dir.file(&name);
        let n = write_tar(&src, &out, cx.user)?;
        debug!(mountpoint = %e.mountpoint, files = n, image = %name, "tmpfs saved");
    }
    info!(mounts = entries.len(), id = cx.id, "mount namespace dumped");
    cx.dir
        .write_all(&image(cx.id), common(magic::MNTS), &entries)
}

/// Tar `src` (not crossing into other mounts) into a gzipped tarball.
/// Owners are written as the tree's user namespace sees them (CRIU runs its
/// tar inside it), so the restored root can chown to them.
fn write_tar(src: &Path, out: &Path, user: Option<&super::user::UserNs>) -> Result<usize> {
    let f = File::create(out).map_err(|e| Error::io(out, e))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    let dev = std::fs::symlink_metadata(src)
        .map_err(|e| Error::io(src, e))?
        .dev();
    let mut n = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.as_os_str().is_empty() {
            src.to_path_buf()
        } else {
            src.join(&rel)
        };
        let md = std::fs::symlink_metadata(&full).map_err(|e| Error::io(&full, e))?;
        let name = Path::new(".").join(&rel);
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
        if let Some(u) = user {
            h.set_uid(u.uid_to_ns(md.uid()) as u64);
            h.set_gid(u.gid_to_ns(md.gid()) as u64);
        }
        let ft = md.file_type();
        let io = |e| Error::io(&full, e);
        if ft.is_symlink() {
            let target = std::fs::read_link(&full).map_err(io)?;
            h.set_size(0);
            b.append_link(&mut h, &name, &target).map_err(io)?;
        } else if ft.is_file() {
            let f = File::open(&full).map_err(io)?;
            b.append_data(&mut h, &name, f).map_err(io)?;
        } else if ft.is_dir() {
            h.set_size(0);
            b.append_data(&mut h, &name, std::io::empty()).map_err(io)?;
            // A mountpoint below is kept as an empty directory.
            if md.dev() == dev {
                let rd = std::fs::read_dir(&full).map_err(io)?;
                let mut kids: Vec<PathBuf> = Vec::new();
                for d in rd {
                    kids.push(rel.join(d.map_err(io)?.file_name()));
                }
                kids.sort();
                stack.extend(kids.into_iter().rev());
            }
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            let rdev = md.rdev();
            h.set_size(0);
            h.set_device_major(libc::major(rdev)).map_err(io)?;
            h.set_device_minor(libc::minor(rdev)).map_err(io)?;
            b.append_data(&mut h, &name, std::io::empty()).map_err(io)?;
        } else {
            // Sockets cannot be archived (CRIU's tar skips them too).
            continue;
        }
        n += 1;
    }
    let gz = b.into_inner().map_err(|e| Error::io(out, e))?;
    let mut f = gz.finish().map_err(|e| Error::io(out, e))?;
    f.flush().map_err(|e| Error::io(out, e))?;
    Ok(n)
}

// ---------------------------------------------------------------- restore

fn read(dir: &ImageDir, id: u32, p: &mut NsPlan) -> Result<()> {
    let entries: Vec<MntEntry> = dir.read_all(&image(id), common(magic::MNTS))?;
    if entries.is_empty() {
        return Err(Error::bad_image(image(id), "no mounts"));
    }
    p.mnt = Some(MntNs {
        id,
        entries,
        images_dir: dir.path().to_path_buf(),
        ..Default::default()
    });
    Ok(())
}

/// The yard directory, removed when the restore is over.
pub struct Yard(PathBuf);

impl Drop for Yard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Add the restore options to a plan that owns a mount namespace: `root`
/// (`--root`) and `external` (`--external` entries; other kinds ignored).
/// Returns the yard to keep until the restore is done.
pub fn configure(p: &mut NsPlan, root: Option<&Path>, external: &[String]) -> Result<Option<Yard>> {
    let Some(m) = p.mnt.as_mut() else {
        if let Some(r) = root {
            let canon = std::fs::canonicalize(r).map_err(|e| Error::io(r, e))?;
            if canon != Path::new("/") {
                return Err(Error::Other(format!(
                    "--root {}: the images hold no mount namespace to rebuild there",
                    r.display()
                )));
            }
        }
        return Ok(None);
    };
    m.root = root
        .map(|r| std::fs::canonicalize(r).map_err(|e| Error::io(r, e)))
        .transpose()?;
    for s in external {
        if let Some((k, v)) = parse_external(s)? {
            let v = v.ok_or_else(|| {
                Error::Other(format!("--external {s:?}: restore needs mnt[KEY]:VALUE"))
            })?;
            m.external.insert(k, PathBuf::from(v));
        }
    }
    m.host = proc::read_mountinfo(std::process::id() as i32)?;
    // Check now what would fail later inside the stub.
    let steps = plan_mounts(m)?;
    debug!(steps = steps.len(), "mount table planned");
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let y = base.join(format!(".stasis-mnt-{}-{i}", std::process::id()));
        match std::fs::create_dir(&y) {
            Ok(()) => {
                m.yard = y.clone();
                return Ok(Some(Yard(y)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(y, e)),
        }
    }
    Err(Error::Other(format!(
        "cannot create a mount yard in {}",
        base.display()
    )))
}

/// How one mount is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// Bind this path (outside the yard: the caller's or `--root`).
    BindOuter(PathBuf),
    /// Bind a path relative to the new root (an earlier mount of the same
    /// filesystem), made from entry `from`.
    BindInner { path: String, from: usize },
    /// Mount the filesystem afresh.
    Fresh {
        fstype: String,
        source: String,
        data: String,
    },
}

/// One step of the rebuilt table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Index into the entries.
    pub idx: usize,
    /// Mountpoint relative to the new root ("" for the root itself).
    pub target: String,
    pub how: How,
    /// Restore this tmpfs's contents from its tarball.
    pub tar: Option<String>,
}

fn rel(p: &str) -> String {
    p.trim_start_matches('/').to_string()
}

/// `path` below `root` as a relative tail, if it is.
fn below<'a>(path: &'a str, root: &str) -> Option<&'a str> {
    if root == "/" {
        return Some(path.trim_start_matches('/'));
    }
    let t = path.strip_prefix(root)?;
    if t.is_empty() {
        Some("")
    } else {
        t.strip_prefix('/')
    }
}

fn join_rel(base: &str, tail: &str) -> String {
    match (base.is_empty(), tail.is_empty()) {
        (_, true) => base.to_string(),
        (true, false) => tail.to_string(),
        _ => format!("{base}/{tail}"),
    }
}

/// Order entries so parents come before their children (stable otherwise).
fn order(entries: &[MntEntry]) -> Vec<usize> {
    let ids: HashSet<u32> = entries.iter().map(|e| e.mnt_id).collect();
    let mut done: HashSet<u32> = HashSet::new();
    let mut out = Vec::with_capacity(entries.len());
    let mut left: Vec<usize> = (0..entries.len()).collect();
    // Always the first mount (in table order) whose parent exists already:
    // a mount later covered by another on its parent comes first.
    while !left.is_empty() {
        let k = left
            .iter()
            .position(|&i| {
                let e = &entries[i];
                !ids.contains(&e.parent_mnt_id)
                    || done.contains(&e.parent_mnt_id)
                    || e.parent_mnt_id == e.mnt_id
            })
            .unwrap_or(0);
        let i = left.remove(k);
        done.insert(entries[i].mnt_id);
        out.push(i);
    }
    out
}

/// Decide how every mount is made (pure: uses only the plan).
pub fn plan_mounts(m: &MntNs) -> Result<Vec<Step>> {
    let e = &m.entries;
    let ord = order(e);
    let root_i = ord[0];
    if e[root_i].mountpoint != "/" {
        return Err(Error::bad_image(
            image(m.id),
            format!("the first mount is {} rather than /", e[root_i].mountpoint),
        ));
    }
    let mut steps: Vec<Step> = Vec::with_capacity(e.len());
    let mut tar_done: HashSet<u32> = HashSet::new();
    for &i in &ord {
        let me = &e[i];
        let target = rel(&me.mountpoint);
        let outer_of_host = || -> Option<PathBuf> {
            let (maj, min) = kdev_split(me.root_dev);
            m.host
                .iter()
                .filter(|h| h.major == maj && h.minor == min)
                .filter_map(|h| below(&me.root, &h.root).map(|t| (h, t)))
                // Shortest tail: the host mount nearest this root.
                .min_by_key(|(_, t)| t.len())
                // No tail: the mount point itself (joining "" would add a
                // trailing slash, wrong for a file such as an nsfs mount).
                .map(|(h, t)| {
                    if t.is_empty() {
                        PathBuf::from(&h.mount_point)
                    } else {
                        Path::new(&h.mount_point).join(t)
                    }
                })
        };
        let how = if let Some(k) = &me.ext_key {
            let v = m.external.get(k).ok_or_else(|| {
                Error::Other(format!(
                    "mount {} is external with key {k:?}: pass --external mnt[{k}]:PATH",
                    me.mountpoint
                ))
            })?;
            How::BindOuter(v.clone())
        } else if i == root_i && m.root.is_some() {
            How::BindOuter(m.root.clone().unwrap_or_default())
        } else if me.ext_mount == Some(true) {
            How::BindOuter(outer_of_host().ok_or_else(|| {
                Error::Other(format!(
                    "mount {} ({} {}:{}, root {}) was the caller's, and no mount of that \
                     filesystem is visible to the restorer{}",
                    me.mountpoint,
                    me.fsname.as_deref().unwrap_or("?"),
                    kdev_split(me.root_dev).0,
                    kdev_split(me.root_dev).1,
                    me.root,
                    if i == root_i { ": pass --root DIR" } else { "" }
                ))
            })?)
        } else if i == root_i {
            return Err(Error::Other(
                "the tree's root mount is its own: pass --root DIR".into(),
            ));
        } else if let Some((from, tail)) = steps.iter().find_map(|s| {
            let o = &e[s.idx];
            (o.root_dev == me.root_dev && s.idx != root_i)
                .then(|| below(&me.root, &o.root).map(|t| (s, t)))
                .flatten()
        }) {
            How::BindInner {
                path: join_rel(&from.target, tail),
                from: from.idx,
            }
        } else {
            let fs = me.fsname.clone().unwrap_or_default();
            if fs.is_empty() {
                return Err(Error::bad_image(
                    image(m.id),
                    format!("mount {} has no filesystem type", me.mountpoint),
                ));
            }
            How::Fresh {
                fstype: fs,
                source: me.source.clone(),
                data: me.options.clone(),
            }
        };
        let tar = (me.fstype == fstype::TMPFS
            && matches!(how, How::Fresh { .. })
            && tar_done.insert(me.root_dev))
        .then(|| tmpfs_image(me.root_dev));
        steps.push(Step {
            idx: i,
            target,
            how,
            tar,
        });
    }
    Ok(steps)
}

type R<T> = std::result::Result<T, String>;

fn mnt_err(what: &str, p: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

/// Create the mountpoint for `src` at `dst` if missing (a file for a file).
fn ensure_target(src_is_dir: bool, dst: &Path) -> R<()> {
    if dst.symlink_metadata().is_ok() {
        return Ok(());
    }
    if src_is_dir {
        std::fs::create_dir_all(dst).map_err(|e| mnt_err("mkdir", dst, e))
    } else {
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).map_err(|e| mnt_err("mkdir", p, e))?;
        }
        File::create(dst)
            .map(drop)
            .map_err(|e| mnt_err("create", dst, e))
    }
}

fn propagate(p: &Path, flag: u64) -> R<()> {
    sm::mount(None, p, None, flag, None).map_err(|e| mnt_err("set propagation of", p, e))
}

/// Whether the mount at `p` (the topmost there) is a slave and no peer:
/// a bind of a slave source, whose master MS_SLAVE then keeps (a peer
/// would become a slave of its own group instead).
fn has_master(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(all) = proc::parse_mountinfo(&text) else {
        return false;
    };
    all.iter()
        .rev()
        .find(|m| Path::new(&m.mount_point) == p)
        .is_some_and(|m| m.master().is_some() && m.shared().is_none())
}

fn setup(p: &NsPlan) -> R<()> {
    let Some(m) = &p.mnt else {
        return Ok(());
    };
    let steps = plan_mounts(m).map_err(|e| e.to_string())?;
    // Nothing we do may leak to the namespace we were copied from: our
    // copies become slaves (shared ones of their peer groups out there, so
    // a bind of the caller's mount can stay a slave of its group; others
    // are private already). Every mount made below gets its own
    // propagation explicitly.
    propagate(Path::new("/"), MS_REC | MS_SLAVE)?;
    let yard = &m.yard;
    let at = |t: &str| {
        if t.is_empty() {
            yard.clone()
        } else {
            yard.join(t)
        }
    };
    // Peer groups rebuilt so far.
    let mut groups: HashSet<u32> = HashSet::new();
    let rec_bound = std::cell::Cell::new(false);
    for s in &steps {
        let e = &m.entries[s.idx];
        let dst = at(&s.target);
        let bind = |src: &Path| -> R<()> {
            let md = std::fs::metadata(src).map_err(|er| mnt_err("stat", src, er))?;
            ensure_target(md.is_dir(), &dst)?;
            // Already there: brought along by a recursive bind below.
            if rec_bound.get() {
                if let Ok(d) = std::fs::metadata(&dst) {
                    if (d.dev(), d.ino()) == (md.dev(), md.ino()) {
                        return Ok(());
                    }
                }
            }
            sm::mount(Some(src), &dst, None, MS_BIND, None)
                .or_else(|er| {
                    // In a user namespace of our own the outer mounts are
                    // locked to their children: only a recursive bind may
                    // copy them (the tree saw them with those children too).
                    if p.user.is_some() && er.raw_os_error() == Some(libc::EINVAL) {
                        rec_bound.set(true);
                        sm::mount(Some(src), &dst, None, MS_BIND | MS_REC, None)
                    } else {
                        Err(er)
                    }
                })
                .map_err(|er| format!("bind {} at {}: {er}", src.display(), e.mountpoint))
        };
        let mut from_group = None;
        match &s.how {
            How::BindOuter(src) => bind(src)?,
            How::BindInner { path, from } => {
                bind(&at(path))?;
                from_group = m.entries[*from].shared_id.filter(|g| groups.contains(g));
            }
            How::Fresh {
                fstype,
                source,
                data,
            } => {
                ensure_target(true, &dst)?;
                let sbf = e.sb_flags.unwrap_or(0) & !MS_RDONLY;
                let src = if source.is_empty() { "none" } else { source };
                sm::mount(
                    Some(Path::new(src)),
                    &dst,
                    Some(fstype),
                    sbf as u64,
                    Some(data),
                )
                .map_err(|er| format!("mount {fstype} ({data}) at {}: {er}", e.mountpoint))?;
                if let Some(t) = &s.tar {
                    untar(&m.images_dir.join(t), &dst)?;
                }
            }
        }
        // A bind of a shared mount of ours is its peer already.
        if from_group.is_some() && from_group == e.shared_id {
            continue;
        }
        if from_group.is_some() && from_group == e.master_id {
            propagate(&dst, MS_SLAVE)?;
        } else if e.master_id.is_some() && has_master(&dst) {
            // Its master is outside the table (CRIU's "external slavery"):
            // bound from a mount out there (--external, --root, the
            // caller's), it is a slave of that mount's peer group.
            propagate(&dst, MS_SLAVE)?;
            info!(
                mountpoint = %e.mountpoint,
                master = e.master_id.unwrap_or(0),
                "slave of a peer group outside the mount namespace: slave of its source's group"
            );
        } else {
            propagate(&dst, MS_PRIVATE)?;
            if let Some(g) = e.master_id {
                warn!(
                    "mount {}: slave of peer group {g}, which is neither in the images nor \
                     the group of its source here: restored private",
                    e.mountpoint
                );
            }
        }
        if let Some(g) = e.shared_id {
            propagate(&dst, MS_SHARED)?;
            groups.insert(g);
        }
    }
    // Per-mount flags last (a read-only parent would stop mkdir above).
    for s in steps.iter().rev() {
        let e = &m.entries[s.idx];
        let dst = at(&s.target);
        let fl = e.flags
            & (MS_RDONLY
                | MS_NOSUID
                | MS_NODEV
                | MS_NOEXEC
                | MS_NOATIME
                | MS_NODIRATIME
                | MS_RELATIME
                | MS_STRICTATIME);
        let sbf = e.sb_flags.unwrap_or(0);
        if sbf & MS_RDONLY != 0 && matches!(s.how, How::Fresh { .. }) {
            let data = match &s.how {
                How::Fresh { data, .. } => data.clone(),
                _ => String::new(),
            };
            sm::mount(None, &dst, None, MS_REMOUNT | sbf as u64, Some(&data))
                .map_err(|er| format!("remount {} read-only: {er}", e.mountpoint))?;
        }
        sm::mount(None, &dst, None, MS_REMOUNT | MS_BIND | fl as u64, None)
            .map_err(|er| format!("set flags {fl:#x} on {}: {er}", e.mountpoint))?;
    }
    // The yard becomes / and the old root goes away.
    std::env::set_current_dir(yard).map_err(|e| mnt_err("chdir", yard, e))?;
    sm::pivot_root(Path::new("."), Path::new("."))
        .map_err(|e| mnt_err("pivot_root into", yard, e))?;
    sm::umount2(Path::new("."), libc::MNT_DETACH)
        .map_err(|e| format!("detach the old root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Unpack a tmpfs tarball into `dst`, keeping owners, modes and times.
fn untar(img: &Path, dst: &Path) -> R<()> {
    let f = File::open(img).map_err(|e| mnt_err("open", img, e))?;
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_overwrite(true);
    a.set_unpack_xattrs(false);
    for ent in a.entries().map_err(|e| mnt_err("read", img, e))? {
        let mut ent = ent.map_err(|e| mnt_err("read", img, e))?;
        let kind = ent.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            mknod_entry(&ent, dst)?;
            continue;
        }
        ent.unpack_in(dst).map_err(|e| mnt_err("unpack", img, e))?;
    }
    Ok(())
}

fn mknod_entry<Rd: Read>(ent: &tar::Entry<Rd>, dst: &Path) -> R<()> {
    let h = ent.header();
    let path = ent.path().map_err(|e| format!("tar entry path: {e}"))?;
    let full = dst.join(path.strip_prefix(".").unwrap_or(&path));
    let mode = h.mode().unwrap_or(0o644);
    let kind = h.entry_type();
    let dev = libc::makedev(
        h.device_major().ok().flatten().unwrap_or(0),
        h.device_minor().ok().flatten().unwrap_or(0),
    );
    let sflag = if kind.is_fifo() {
        nix::sys::stat::SFlag::S_IFIFO
    } else if kind.is_block_special() {
        nix::sys::stat::SFlag::S_IFBLK
    } else {
        nix::sys::stat::SFlag::S_IFCHR
    };
    nix::sys::stat::mknod(
        &full,
        sflag,
        nix::sys::stat::Mode::from_bits_truncate(mode),
        dev,
    )
    .map_err(|e| format!("mknod {}: {e}", full.display()))?;
    let uid = h.uid().unwrap_or(0) as u32;
    let gid = h.gid().unwrap_or(0) as u32;
    let _ = nix::unistd::chown(
        &full,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::parse_mountinfo;

    /// A workload in `unshare --mount --pid --fork --mount-proc` on the
    /// test VM, with a tmpfs, a bind of a directory in it, a shared tmpfs
    /// and a read-only nosuid mount.
    const NS: &str = "\
300 200 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
301 300 0:5 / /dev rw,nosuid,relatime - devtmpfs udev rw,size=4k,mode=755
302 300 0:90 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
303 300 0:91 / /tmp/w/t rw,relatime - tmpfs tmpfs rw,size=1024k,inode64
304 300 0:91 /sub /tmp/w/b ro,nosuid,relatime - tmpfs tmpfs rw,size=1024k,inode64
305 300 0:92 / /tmp/w/s rw,noatime shared:7 - tmpfs s rw
306 300 0:92 / /tmp/w/s2 rw,noatime shared:7 - tmpfs s rw
307 300 0:93 / /tmp/w/m rw - mqueue mqueue rw
";

    fn entries() -> Vec<MntEntry> {
        let m = parse_mountinfo(NS).unwrap();
        let host: HashSet<(u32, u32)> = [(254, 0), (0, 5)].into_iter().collect();
        to_entries(&m, &host, &[("/tmp/w/m".into(), "mq".into())]).unwrap()
    }

    #[test]
    fn entries_from_mountinfo() {
        let e = entries();
        assert_eq!(e.len(), 8);
        assert_eq!(e[0].fstype, fstype::AUTO);
        assert_eq!(e[0].ext_mount, Some(true));
        assert_eq!(e[0].fsname.as_deref(), Some("ext4"));
        assert_eq!(e[0].options, "discard");
        assert_eq!(e[0].root_dev, 254 << 20);
        assert_eq!(e[2].fstype, fstype::PROC);
        assert_eq!(e[2].ext_mount, None);
        assert_eq!(e[2].flags, MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME);
        assert_eq!(e[3].fstype, fstype::TMPFS);
        assert_eq!(e[3].options, "size=1024k,inode64");
        assert_eq!(e[4].flags & (MS_RDONLY | MS_NOSUID), MS_RDONLY | MS_NOSUID);
        assert_eq!(e[4].root, "/sub");
        assert_eq!(e[5].shared_id, Some(7));
        assert_eq!(e[5].flags, MS_NOATIME);
        assert_eq!(e[7].ext_key.as_deref(), Some("mq"));
        assert_eq!(e[7].ext_mount, Some(true));
        // Only the tree's own tmpfs filesystems are archived, once each.
        let t: Vec<&str> = tmpfs_to_save(&e)
            .iter()
            .map(|e| e.mountpoint.as_str())
            .collect();
        assert_eq!(t, ["/tmp/w/t", "/tmp/w/s"]);
        assert_eq!(tmpfs_image(e[3].root_dev), "tmpfs-dev-91.tar.gz.img");
    }

    #[test]
    fn external_must_exist() {
        let m = parse_mountinfo(NS).unwrap();
        let err = to_entries(&m, &HashSet::new(), &[("/nope".into(), "k".into())]).unwrap_err();
        assert!(err.to_string().contains("no mount at /nope"), "{err}");
        assert!(parse_external("net[1]:x").unwrap().is_none());
        assert_eq!(
            parse_external("mnt[/a b]:/c").unwrap(),
            Some(("/a b".into(), Some("/c".into())))
        );
        assert_eq!(parse_external("mnt[k]").unwrap(), Some(("k".into(), None)));
        assert!(parse_external("mnt[k").is_err());
    }

    fn host() -> Vec<MountInfo> {
        parse_mountinfo(
            "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
             23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw\n",
        )
        .unwrap()
    }

    #[test]
    fn plan_binds_and_fresh_mounts() {
        let mut ns = MntNs {
            entries: entries(),
            host: host(),
            ..Default::default()
        };
        ns.external.insert("mq".into(), "/run/mq".into());
        let s = plan_mounts(&ns).unwrap();
        let how: Vec<(&str, &How)> = s.iter().map(|s| (s.target.as_str(), &s.how)).collect();
        assert_eq!(how[0], ("", &How::BindOuter("/".into())));
        assert_eq!(how[1], ("dev", &How::BindOuter("/dev".into())));
        assert!(matches!(how[2].1, How::Fresh { fstype, .. } if fstype == "proc"));
        assert!(matches!(how[3].1, How::Fresh { fstype, data, .. }
            if fstype == "tmpfs" && data == "size=1024k,inode64"));
        assert_eq!(s[3].tar.as_deref(), Some("tmpfs-dev-91.tar.gz.img"));
        assert_eq!(
            how[4],
            (
                "tmp/w/b",
                &How::BindInner {
                    path: "tmp/w/t/sub".into(),
                    from: 3
                }
            )
        );
        assert_eq!(s[4].tar, None);
        assert_eq!(
            how[6],
            (
                "tmp/w/s2",
                &How::BindInner {
                    path: "tmp/w/s".into(),
                    from: 5
                }
            )
        );
        assert_eq!(how[7], ("tmp/w/m", &How::BindOuter("/run/mq".into())));

        // --root replaces the root mount; a missing external is named.
        ns.root = Some("/srv/rootfs".into());
        assert_eq!(
            plan_mounts(&ns).unwrap()[0].how,
            How::BindOuter("/srv/rootfs".into())
        );
        ns.external.clear();
        let err = plan_mounts(&ns).unwrap_err().to_string();
        assert!(err.contains("--external mnt[mq]:PATH"), "{err}");
    }

    #[test]
    fn own_root_needs_root_option() {
        let m = parse_mountinfo(
            "1 0 254:0 /srv/c/rootfs / rw - ext4 /dev/vda rw\n\
             2 1 0:50 / /proc rw - proc proc rw\n",
        )
        .unwrap();
        let e = to_entries(&m, &HashSet::new(), &[]).unwrap();
        let mut ns = MntNs {
            entries: e,
            ..Default::default()
        };
        let err = plan_mounts(&ns).unwrap_err().to_string();
        assert!(err.contains("--root"), "{err}");
        ns.root = Some("/new".into());
        assert_eq!(plan_mounts(&ns).unwrap().len(), 2);
    }

    #[test]
    fn parents_first() {
        let m = parse_mountinfo(
            "5 1 0:50 / /a/b rw - tmpfs t rw\n\
             1 0 254:0 / / rw - ext4 /dev/vda rw\n\
             4 1 0:51 / /a rw - tmpfs t rw\n",
        )
        .unwrap();
        let e = to_entries(&m, &HashSet::new(), &[]).unwrap();
        // Mount 5 sits on /a/b, whose parent is 1 here: only order by parent.
        assert_eq!(order(&e), [1, 0, 2]);
    }

    #[test]
    fn tar_roundtrip() {
        let d = std::env::temp_dir().join(format!("stasis-mnt-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let src = d.join("src");
        std::fs::create_dir_all(src.join("dir/sub")).unwrap();
        std::fs::write(src.join("a"), b"hello").unwrap();
        std::fs::write(src.join("dir/sub/b"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("a", src.join("ln")).unwrap();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        std::fs::set_permissions(
            src.join("a"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let img = d.join("t.tar.gz.img");
        assert_eq!(write_tar(&src, &img, None).unwrap(), 7);
        let dst = d.join("dst");
        std::fs::create_dir(&dst).unwrap();
        untar(&img, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("a")).unwrap(), b"hello");
        assert_eq!(std::fs::read(dst.join("dir/sub/b")).unwrap().len(), 100_000);
        assert_eq!(std::fs::read_link(dst.join("ln")).unwrap(), Path::new("a"));
        assert!(std::fs::symlink_metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(
            std::fs::metadata(dst.join("a")).unwrap().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// In a user namespace the tarball holds owners as the tree sees them.
    #[test]
    fn tar_owners_seen_from_the_user_ns() {
        use stasis_proto::criu::UidGidExtent;
        let d = std::env::temp_dir().join(format!("stasis-mnt-tar-u-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let src = d.join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a"), b"x").unwrap();
        let (uid, gid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let ext = |first, lower_first| UidGidExtent {
            first,
            lower_first,
            count: 1,
        };
        let u = super::super::user::UserNs {
            uid_map: vec![ext(7, uid)],
            gid_map: vec![ext(8, gid)],
            setgroups_deny: false,
        };
        let img = d.join("t.tar.gz.img");
        assert_eq!(write_tar(&src, &img, Some(&u)).unwrap(), 2);
        let gz = flate2::read::GzDecoder::new(File::open(&img).unwrap());
        let mut a = tar::Archive::new(gz);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(
                (e.header().uid().unwrap(), e.header().gid().unwrap()),
                (7, 8)
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
