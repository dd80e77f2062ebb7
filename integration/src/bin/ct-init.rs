//! A tiny container launcher for the container-shaped tests: run as the
//! first process of fresh mount/pid/uts/ipc namespaces (started by
//! `unshare --mount --pid --fork --uts --ipc --propagation private`), it
//! builds the container's mounts on a rootfs, pivots into it and execs the
//! command.
//!
//! `ct-init ROOTFS HOSTNAME CMD [ARGS...]`. Mounts made inside the rootfs:
//! `/proc` (this pid namespace's), `/tmp` (a tmpfs holding `/tmp/hello`),
//! `/dev/null` (a bind of the host's), `/ro` (a read-only, nosuid bind of
//! `/etc`) and `/dev/mqueue` (this IPC namespace's).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};

fn main() {
    if let Err(e) = run() {
        eprintln!("ct-init: {e:#}");
        std::process::exit(111);
    }
}

fn mnt(
    src: Option<&str>,
    dst: &Path,
    fs: Option<&str>,
    fl: MsFlags,
    data: Option<&str>,
) -> Result<()> {
    mount(src, dst, fs, fl, data)
        .with_context(|| format!("mount {src:?} ({fs:?}) on {}", dst.display()))
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        bail!("usage: ct-init ROOTFS HOSTNAME CMD [ARGS...]");
    }
    let root = PathBuf::from(&args[1]);
    let none: Option<&str> = None;
    mnt(
        none,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    let r = root.to_str().context("rootfs path")?;
    mnt(Some(r), &root, None, MsFlags::MS_BIND, None)?;
    mnt(
        Some("proc"),
        &root.join("proc"),
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    )?;
    mnt(
        Some("ct-tmp"),
        &root.join("tmp"),
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=4m,mode=1777"),
    )?;
    std::fs::create_dir_all(root.join("tmp/sub")).context("mkdir tmp/sub")?;
    std::fs::write(root.join("tmp/hello"), "tmpfs-data").context("write tmp/hello")?;
    std::fs::write(root.join("tmp/sub/deep"), "deep-data").context("write tmp/sub/deep")?;
    let null = root.join("dev/null");
    if !null.exists() {
        std::fs::File::create(&null).context("create dev/null")?;
    }
    mnt(Some("/dev/null"), &null, None, MsFlags::MS_BIND, None)?;
    mnt(
        Some(&format!("{r}/etc")),
        &root.join("ro"),
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    mnt(
        none,
        &root.join("ro"),
        None,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID,
        None,
    )?;
    std::fs::create_dir_all(root.join("dev/mqueue")).context("mkdir dev/mqueue")?;
    mnt(
        Some("mqueue"),
        &root.join("dev/mqueue"),
        Some("mqueue"),
        MsFlags::empty(),
        None,
    )?;
    nix::unistd::sethostname(&args[2]).context("sethostname")?;
    std::env::set_current_dir(&root).context("chdir rootfs")?;
    nix::unistd::pivot_root(".", ".").context("pivot_root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detach old root")?;
    std::env::set_current_dir("/").context("chdir /")?;
    // Stdio on the container's /dev/null; nothing else of the caller's.
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    for fd in 0..3 {
        nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd).context("dup2")?;
    }
    drop(null);
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .context("list fds")?
        .filter_map(|d| d.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        let _ = nix::unistd::close(fd);
    }
    let err = std::process::Command::new(&args[3]).args(&args[4..]).exec();
    bail!("exec {}: {err}", args[3])
}
