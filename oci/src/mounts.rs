//! The container's root filesystem: the spec's mounts (with propagation),
//! default devices and /dev links, pivot_root (or MS_MOVE + chroot), masked
//! and read-only paths. Runs inside the container's new mount namespace.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};
use tracing::warn;

use crate::error::{bail, IoCtx, Result, SysCtx};

/// `dest` inside `root`, lexically (no `..` escapes; symlinks in the
/// rootfs are followed by the kernel, as with runc's plain join).
fn join(root: &Path, dest: &Path) -> PathBuf {
    let mut p = root.to_path_buf();
    let mut depth = 0usize;
    for c in dest.components() {
        match c {
            Component::Normal(n) => {
                p.push(n);
                depth += 1;
            }
            Component::ParentDir if depth > 0 => {
                p.pop();
                depth -= 1;
            }
            _ => {}
        }
    }
    p
}

struct Opts {
    flags: MsFlags,
    clear: MsFlags,
    prop: MsFlags,
    data: Vec<String>,
    bind: bool,
}

fn parse_opts(o: &[String]) -> Opts {
    let mut r = Opts {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        prop: MsFlags::empty(),
        data: Vec::new(),
        bind: false,
    };
    for s in o {
        let (set, clr, prop): (MsFlags, MsFlags, MsFlags) = match s.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty(), MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty(), MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty(), MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => {
                r.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty())
            }
            "rbind" => {
                r.bind = true;
                (
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    MsFlags::empty(),
                    MsFlags::empty(),
                )
            }
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            // runc-only extensions this runtime does not implement.
            "tmpcopyup" | "idmap" | "ridmap" | "nosymfollow" => continue,
            other => {
                r.data.push(other.to_string());
                continue;
            }
        };
        r.flags |= set;
        r.flags &= !clr;
        r.clear |= clr;
        r.prop |= prop;
    }
    r
}

fn mkdirs(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).at(p)
}

/// Make `p` a mount point of the right kind (directory, or empty file for a
/// bind mount of a file).
fn mountpoint(p: &Path, file: bool) -> Result<()> {
    if file {
        if let Some(d) = p.parent() {
            mkdirs(d)?;
        }
        if !p.exists() {
            std::fs::File::create(p).at(p)?;
        }
        Ok(())
    } else {
        mkdirs(p)
    }
}

fn do_mount(rootfs: &Path, m: &Mount, cgroup_dir: Option<&Path>) -> Result<()> {
    let dest = join(rootfs, m.destination());
    let typ = m.typ().clone().unwrap_or_default();
    let o = parse_opts(m.options().as_deref().unwrap_or_default());
    let src = m.source().clone().unwrap_or_default();
    let what = |op: &str| format!("{op} {} on {}", src.display(), m.destination().display());
    if typ == "bind" || o.bind {
        let file = std::fs::metadata(&src).map(|md| !md.is_dir()).at(&src)?;
        mountpoint(&dest, file)?;
        mount(
            Some(&src),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | (o.flags & MsFlags::MS_REC),
            None::<&str>,
        )
        .what(what("bind mount"))?;
        let extra = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                None::<&str>,
            )
            .what(what("remount"))?;
        }
    } else if typ == "cgroup" || typ == "cgroup2" {
        // A cgroup v2 runtime: the container sees its own cgroup (read-only
        // when asked), bound from the host's hierarchy.
        mkdirs(&dest)?;
        let Some(cg) = cgroup_dir else { return Ok(()) };
        mount(
            Some(cg),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .what(what("bind cgroup"))?;
        let extra = o.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
            None::<&str>,
        )
        .what(what("remount"))?;
    } else {
        mkdirs(&dest)?;
        let data = o.data.join(",");
        let r = mount(
            Some(&src),
            &dest,
            Some(typ.as_str()),
            o.flags & !MsFlags::MS_REMOUNT,
            if data.is_empty() {
                None
            } else {
                Some(data.as_str())
            },
        );
        match r {
            // sysfs needs a network namespace of our own; runc binds the
            // host's /sys (read-only) instead.
            Err(nix::errno::Errno::EPERM) if typ == "sysfs" => {
                mount(
                    Some("/sys"),
                    &dest,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .what(what("bind /sys"))?;
                let ro = o.flags & MsFlags::MS_RDONLY;
                let _ = mount(
                    None::<&str>,
                    &dest,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_REC | ro,
                    None::<&str>,
                );
            }
            r => r.what(what(&format!("mount {typ}")))?,
        }
    }
    if !o.prop.is_empty() {
        mount(None::<&str>, &dest, None::<&str>, o.prop, None::<&str>)
            .what(what("set propagation of"))?;
    }
    Ok(())
}

fn default_devices() -> Vec<(&'static str, u64, u64)> {
    vec![
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
}

#[allow(clippy::too_many_arguments)] // one device node's full description
fn make_device(
    rootfs: &Path,
    path: &Path,
    kind: SFlag,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<()> {
    let dest = join(rootfs, path);
    if let Some(d) = dest.parent() {
        mkdirs(d)?;
    }
    let _ = std::fs::remove_file(&dest);
    match mknod(
        &dest,
        kind,
        Mode::from_bits_truncate(mode & 0o7777),
        makedev(major, minor),
    ) {
        Ok(()) => {
            // mknod honours the umask; the spec's mode is exact.
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode & 0o7777))
                .at(&dest)?;
            nix::unistd::chown(&dest, Some(uid.into()), Some(gid.into()))
                .what(format!("chown {}", dest.display()))?;
        }
        Err(nix::errno::Errno::EPERM) => {
            // In a user namespace: bind the host's node instead.
            std::fs::File::create(&dest).at(&dest)?;
            mount(
                Some(path),
                &dest,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .what(format!("bind device {}", path.display()))?;
        }
        Err(e) => return Err(e).what(format!("mknod {}", dest.display())),
    }
    Ok(())
}

fn devices(rootfs: &Path, spec_devs: &[LinuxDevice]) -> Result<()> {
    for (name, ma, mi) in default_devices() {
        let p = PathBuf::from("/dev").join(name);
        if spec_devs.iter().any(|d| d.path() == &p) {
            continue;
        }
        make_device(rootfs, &p, SFlag::S_IFCHR, ma, mi, 0o666, 0, 0)?;
    }
    for d in spec_devs {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            other => bail!(
                "device {}: type {} cannot be created",
                d.path().display(),
                other.as_str()
            ),
        };
        make_device(
            rootfs,
            d.path(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )?;
    }
    let dev = rootfs.join("dev");
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        let l = dev.join(link);
        if std::fs::symlink_metadata(&l).is_err() {
            symlink(target, &l).at(&l)?;
        }
    }
    let ptmx = dev.join("ptmx");
    if dev.join("pts").is_dir() {
        let _ = std::fs::remove_file(&ptmx);
        symlink("pts/ptmx", &ptmx).at(&ptmx)?;
    }
    Ok(())
}

fn propagation(s: Option<&str>) -> Result<MsFlags> {
    Ok(match s.unwrap_or("") {
        "" | "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => bail!("config.json: invalid field linux.rootfsPropagation: {other:?}"),
    })
}

/// Phase one, before the createRuntime hooks: everything under the rootfs.
pub fn prepare(spec: &Spec, rootfs: &Path, cgroup_dir: Option<&Path>) -> Result<()> {
    let linux = spec.linux().as_ref().expect("validated");
    let prop = propagation(linux.rootfs_propagation().as_deref())?;
    // Nothing we mount may leak back to the host.
    let base = if prop.contains(MsFlags::MS_SHARED) {
        MsFlags::MS_SLAVE | MsFlags::MS_REC
    } else {
        prop
    };
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        base | MsFlags::MS_REC,
        None::<&str>,
    )
    .what("make / a slave mount")?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .what(format!("bind mount rootfs {}", rootfs.display()))?;
    let mut dev_bound = false;
    for m in spec.mounts().iter().flatten() {
        if m.destination() == Path::new("/dev")
            && (m.typ().as_deref() == Some("bind")
                || m.options()
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind"))
        {
            dev_bound = true;
        }
        do_mount(rootfs, m, cgroup_dir)?;
    }
    if !dev_bound {
        devices(rootfs, linux.devices().as_deref().unwrap_or_default())?;
    }
    Ok(())
}

/// Phase two, after the createContainer hooks: switch root and lock down.
pub fn finish(spec: &Spec, rootfs: &Path, no_pivot: bool) -> Result<()> {
    let linux = spec.linux().as_ref().expect("validated");
    if no_pivot {
        nix::unistd::chdir(rootfs).what(format!("chdir {}", rootfs.display()))?;
        mount(
            Some(rootfs),
            "/",
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .what("move the rootfs to /")?;
        nix::unistd::chroot(".").what("chroot")?;
    } else {
        pivot(rootfs)?;
    }
    nix::unistd::chdir("/").what("chdir /")?;
    if let Some(p) = linux.rootfs_propagation().as_deref() {
        if p.contains("shared") {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                propagation(Some(p))?,
                None::<&str>,
            )
            .what("set rootfs propagation")?;
        }
    }
    for p in linux.masked_paths().iter().flatten() {
        mask(Path::new(p))?;
    }
    for p in linux.readonly_paths().iter().flatten() {
        readonly(Path::new(p))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .what("remount the rootfs read-only")?;
    }
    Ok(())
}

/// pivot_root(".", ".") and detach the old root stacked under the new one.
fn pivot(rootfs: &Path) -> Result<()> {
    let old = std::fs::File::open("/").at("/")?;
    nix::unistd::chdir(rootfs).what(format!("chdir {}", rootfs.display()))?;
    nix::unistd::pivot_root(".", ".").what(format!("pivot_root {}", rootfs.display()))?;
    use std::os::fd::AsRawFd;
    nix::unistd::fchdir(old.as_raw_fd()).what("fchdir old root")?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .what("make the old root a slave")?;
    umount2(".", MntFlags::MNT_DETACH).what("detach the old root")?;
    Ok(())
}

fn mask(p: &Path) -> Result<()> {
    match std::fs::metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .what(format!("mask {}", p.display())),
        Ok(_) => mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .what(format!("mask {}", p.display())),
    }
}

fn readonly(p: &Path) -> Result<()> {
    if !p.exists() {
        return Ok(());
    }
    mount(
        Some(p),
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .what(format!("bind {}", p.display()))?;
    let r = mount(
        None::<&str>,
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
        None::<&str>,
    );
    if let Err(e) = r {
        warn!("read-only path {}: {e}", p.display());
    }
    Ok(())
}
