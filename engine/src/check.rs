//! `criu check`: probe once for the kernel features the engine relies on and
//! say in words what is missing.

use std::fs;

use crate::proc;
use crate::sys::{clone3, pagemap, pidfd, uffd};

#[derive(Debug, Clone)]
pub struct Feature {
    pub name: &'static str,
    /// Required for dump/restore at all (vs. for optional features).
    pub required: bool,
    pub ok: bool,
    pub detail: String,
}

fn feat(name: &'static str, required: bool, r: Result<String, String>) -> Feature {
    match r {
        Ok(detail) => Feature {
            name,
            required,
            ok: true,
            detail,
        },
        Err(detail) => Feature {
            name,
            required,
            ok: false,
            detail,
        },
    }
}

/// Run every probe. Cheap (a few syscalls); no process is harmed.
pub fn probe() -> Vec<Feature> {
    let mut v = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    v.push(feat(
        "root",
        true,
        if root {
            Ok("running as root".into())
        } else {
            Err("checkpoint/restore needs root (CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE)".into())
        },
    ));
    v.push(feat(
        "pidfd",
        true,
        pidfd::pidfd_open(std::process::id() as i32)
            .map(|_| "pidfd_open works".into())
            .map_err(|e| format!("pidfd_open failed: {e}")),
    ));
    v.push(feat(
        "ptrace_rseq_conf",
        true,
        match crate::sys::ptrace::get_rseq_config(0) {
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                Err("PTRACE_GET_RSEQ_CONFIGURATION unsupported".into())
            }
            _ => Ok("PTRACE_GET_RSEQ_CONFIGURATION known".into()),
        },
    ));
    v.push(feat(
        "clone3_set_tid",
        true,
        match clone3::clone3_fork(0, &[0x7fff_ffff], libc::SIGCHLD) {
            // An impossible pid must be refused with EINVAL, not ENOSYS.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                Ok("clone3 with set_tid available".into())
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                Err("clone3 is missing (kernel < 5.3)".into())
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                Err("clone3 set_tid needs CAP_CHECKPOINT_RESTORE".into())
            }
            Err(e) => Ok(format!("clone3 answered {e}")),
            Ok(clone3::Fork::Child) => clone3::child_exit(0),
            Ok(clone3::Fork::Parent { pid, .. }) => {
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
                Ok("clone3 with set_tid available".into())
            }
        },
    ));
    v.push(feat(
        "vdso",
        true,
        match proc::read_maps(std::process::id() as i32) {
            Ok(m) if m.iter().any(|e| e.path.as_deref() == Some("[vdso]")) => {
                Ok("[vdso] mapped".into())
            }
            Ok(_) => Err("no [vdso]: remote syscalls need its syscall instruction".into()),
            Err(e) => Err(e.to_string()),
        },
    ));
    v.push(feat(
        "mem_dirty_track",
        false,
        match fs::File::open("/proc/self/pagemap") {
            Ok(f) => {
                let mut out = Vec::new();
                match pagemap::scan(
                    &f,
                    0,
                    4096,
                    pagemap::PAGE_IS_PRESENT,
                    pagemap::PAGE_IS_PRESENT,
                    0,
                    &mut out,
                ) {
                    Ok(_) => Ok("PAGEMAP_SCAN available (dirty tracking via uffd-wp)".into()),
                    Err(e) => Err(format!("PAGEMAP_SCAN unavailable: {e}")),
                }
            }
            Err(e) => Err(e.to_string()),
        },
    ));
    v.push(feat(
        "uffd",
        false,
        uffd::userfaultfd(libc::O_CLOEXEC)
            .map(|_| "userfaultfd available".into())
            .map_err(|e| format!("userfaultfd unavailable: {e}")),
    ));
    v.push(feat(
        "timens",
        false,
        if fs::metadata("/proc/self/ns/time").is_ok() {
            Ok("time namespaces available".into())
        } else {
            Err("no time namespaces".into())
        },
    ));
    v.push(feat("userns", false, userns()));
    v.push(feat(
        "cgroup2",
        false,
        match proc::read_mountinfo(std::process::id() as i32) {
            Ok(m) => match proc::find_cgroup2_mount(&m) {
                Some(c) => Ok(format!("cgroup2 mounted at {}", c.mount_point)),
                None => Err("no cgroup2 mount".into()),
            },
            Err(e) => Err(e.to_string()),
        },
    ));
    v
}

/// A tree in a user namespace of its own needs one made at restore (the
/// tree root's; nested user namespaces are refused at dump).
fn userns() -> Result<String, String> {
    let max = fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .map_err(|e| format!("no user namespaces: /proc/sys/user/max_user_namespaces: {e}"))?;
    if max.trim() == "0" {
        return Err("user namespaces disabled (user.max_user_namespaces = 0)".into());
    }
    match clone3::clone3_fork(libc::CLONE_NEWUSER as u64, &[], libc::SIGCHLD) {
        Ok(clone3::Fork::Child) => clone3::child_exit(0),
        Ok(clone3::Fork::Parent { pid, .. }) => {
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            Ok(
                "user namespaces: the tree root's uid/gid maps are saved and restored \
                (nested user namespaces are refused)"
                    .into(),
            )
        }
        Err(e) => Err(format!("clone3(CLONE_NEWUSER) failed: {e}")),
    }
}
