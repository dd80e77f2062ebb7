//! The options of one dump or restore, whether they came from CRIU's command
//! line or from a swrk `criu_opts`: checked against what the engine does
//! and turned into its option structs.
//!
//! Options the engine has no equivalent for are accepted when ignoring them
//! cannot change the result (e.g. `--freeze-cgroup`: the tree is frozen by
//! ptrace anyway), and refused with "not supported yet" when their value
//! matters (e.g. a restore root other than `/`: mount namespaces are not
//! restored yet).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use stasis_engine::images::{common, ImageDir};
use stasis_engine::{dump, restore};
use stasis_proto::criu::{FdTypes, FileEntry};
use stasis_proto::image::magic;
use tracing::{debug, warn};

/// CRIU's `--manage-cgroups` modes (rpc `criu_cg_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgMode {
    Ignore,
    None,
    Props,
    Soft,
    Full,
    Strict,
    Default,
}

impl CgMode {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => CgMode::None,
            "props" => CgMode::Props,
            "soft" => CgMode::Soft,
            "full" => CgMode::Full,
            "strict" => CgMode::Strict,
            "ignore" => CgMode::Ignore,
            _ => bail!("Unknown cgroups mode `{s}' selected"),
        })
    }

    pub fn from_rpc(v: i32) -> Self {
        match v {
            0 => CgMode::Ignore,
            1 => CgMode::None,
            2 => CgMode::Props,
            3 => CgMode::Soft,
            4 => CgMode::Full,
            5 => CgMode::Strict,
            _ => CgMode::Default,
        }
    }

    /// The engine's mode; `None` when the default applies.
    pub fn engine(self) -> Option<stasis_engine::cgroup::CgMode> {
        use stasis_engine::cgroup::CgMode as E;
        Some(match self {
            CgMode::Ignore => E::Ignore,
            CgMode::None => E::None,
            CgMode::Props => E::Props,
            CgMode::Soft => E::Soft,
            CgMode::Full => E::Full,
            CgMode::Strict => E::Strict,
            CgMode::Default => return None,
        })
    }
}

/// `--inherit-fd fd[N]:KEY`: the file KEY of the images is our fd N.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    pub fd: i32,
    pub key: String,
}

impl InheritFd {
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || anyhow::anyhow!("invalid argument for --inherit-fd: {s}");
        let rest = s.strip_prefix("fd[").ok_or_else(bad)?;
        let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
        let fd = n.parse().map_err(|_| bad())?;
        if key.is_empty() {
            return Err(bad());
        }
        Ok(InheritFd {
            fd,
            key: key.to_string(),
        })
    }
}

#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub pid: Option<i32>,
    pub images_dir: PathBuf,
    pub leave_running: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub ext_unix_sk: bool,
    pub tcp_established: bool,
    pub tcp_close: bool,
    pub tcp_skip_in_flight: bool,
    pub link_remap: bool,
    pub evasive_devices: bool,
    pub restore_sibling: bool,
    pub detach: bool,
    pub pidfile: Option<PathBuf>,
    pub progress: bool,
    pub root: Option<PathBuf>,
    pub external: Vec<String>,
    pub inherit_fd: Vec<InheritFd>,
    /// (controller or "" for the unified hierarchy, path)
    pub cg_root: Vec<(String, String)>,
    pub manage_cgroups: Option<CgMode>,
    pub freeze_cgroup: Option<String>,
    /// CLONE_NEW* mask of namespaces to create empty on restore.
    pub empty_ns: u32,
    /// `ns:file` pairs to join on restore.
    pub join_ns: Vec<String>,
    pub timeout: Option<u32>,
    pub pre_dump_mode: Option<String>,
    pub orphan_pts_master: bool,
    pub lsm_profile: Option<String>,
    pub lsm_mount_context: Option<String>,
    pub track_mem: bool,
    pub parent_img: Option<String>,
    /// `pre-dump` / PRE_DUMP: memory only matters, the tree runs on with its
    /// memory changes tracked.
    pub pre_dump: bool,
    pub lazy_pages: bool,
    pub page_server: bool,
    pub leave_stopped: bool,
    pub exec_cmd: Vec<String>,
    pub veths: Vec<String>,
    /// The mnt[] externals are candidates (runc names every device node
    /// and cgroup hierarchy it might have bound): on dump, those with no
    /// mount in the tree are dropped, as CRIU does, instead of refused.
    pub ext_mnt_candidates: bool,
}

fn not_yet(what: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!("{what} is not supported yet ({why})")
}

/// The kind in `kind[id]:value` of an --external entry.
fn external_kind(e: &str) -> &str {
    e.split_once('[').map(|(k, _)| k).unwrap_or(e)
}

const NS_KINDS: &[&str] = &[
    "net", "pid", "ipc", "uts", "mnt_ns", "user", "cgroup", "time",
];

impl Opts {
    /// Options both operations refuse.
    fn check_common(&self) -> Result<()> {
        if self.lazy_pages {
            bail!(not_yet(
                "lazy pages",
                "memory is always dumped and restored in full"
            ));
        }
        if self.page_server {
            bail!(not_yet(
                "the page server",
                "images are always written locally"
            ));
        }
        if self.leave_stopped {
            bail!(not_yet("--leave-stopped", "the tree always resumes"));
        }
        for v in &self.veths {
            if !v.contains('=') {
                bail!("--veth-pair {v}: expected IN=OUT");
            }
        }
        for e in &self.external {
            match external_kind(e) {
                "mnt" | "dev" | "unix" | "veth" | "macvlan" => {}
                k if NS_KINDS.contains(&k) => {}
                _ => bail!(not_yet(
                    &format!("--external {e}"),
                    "only mnt[], dev[], unix[], veth[], macvlan[] and namespaces are known"
                )),
            }
        }
        if let Some(m) = &self.pre_dump_mode {
            if m != "splice" && m != "read" {
                bail!("invalid argument for --pre-dump-mode: {m}");
            }
        }
        Ok(())
    }

    pub fn check_dump(&self) -> Result<()> {
        self.check_common()?;
        // --track-mem: a pre-dump always tracks, a dump uses a tracked
        // parent (--prev-images-dir) when it has one.
        debug!(track_mem = self.track_mem, parent = ?self.parent_img, pre_dump = self.pre_dump, "memory tracking");
        // Harmless on dump: namespaces and mounts are not dumped yet, so
        // anything declared external stays external; the tree is frozen by
        // ptrace, so a freezer cgroup adds nothing; cgroups are not saved.
        debug!(
            root = ?self.root,
            external = ?self.external,
            freeze_cgroup = ?self.freeze_cgroup,
            manage_cgroups = ?self.manage_cgroups,
            empty_ns = self.empty_ns,
            link_remap = self.link_remap,
            tcp_close = self.tcp_close,
            "dump options without engine counterpart accepted"
        );
        Ok(())
    }

    pub fn check_restore(&self) -> Result<()> {
        self.check_common()?;
        if let Some(r) = &self.root {
            std::fs::canonicalize(r).with_context(|| format!("{}: restore root", r.display()))?;
        }
        for e in &self.external {
            let k = external_kind(e);
            if NS_KINDS.contains(&k) {
                bail!(not_yet(
                    &format!("--external {e}"),
                    "join a caller's namespace with --join-ns"
                ));
            }
        }
        // An empty net namespace (loopback only) is the engine's
        // `empty_net`; other kinds are always rebuilt.
        if self.empty_ns & !(libc::CLONE_NEWNET as u32) != 0 {
            bail!(not_yet(
                &format!("empty namespaces (mask {:#x})", self.empty_ns),
                "only an empty net namespace can be asked for"
            ));
        }
        if self.lsm_profile.as_deref().is_some_and(|s| !s.is_empty()) {
            bail!(not_yet("an LSM profile", "LSM labels are not restored"));
        }
        if self
            .lsm_mount_context
            .as_deref()
            .is_some_and(|s| !s.is_empty())
        {
            bail!(not_yet(
                "an LSM mount context",
                "mount labels are not applied"
            ));
        }
        if !self.exec_cmd.is_empty() {
            bail!(not_yet("--exec-cmd", "the restorer does not exec"));
        }
        self.check_inherit_fd()?;
        debug!(
            evasive_devices = self.evasive_devices,
            tcp_close = self.tcp_close,
            "accepted: devices are reopened by path"
        );
        Ok(())
    }

    /// Every inherited fd must be open here; a key no file of the images
    /// has is harmless (runc names the container's stdio pipes even when
    /// the images hold none of them).
    fn check_inherit_fd(&self) -> Result<()> {
        if self.inherit_fd.is_empty() {
            return Ok(());
        }
        let dir = ImageDir::open(&self.images_dir)?;
        let files: Vec<FileEntry> = if dir.exists("files.img") {
            dir.read_all("files.img", common(magic::FILES))?
        } else {
            Vec::new()
        };
        for i in &self.inherit_fd {
            if !Path::new(&format!("/proc/self/fd/{}", i.fd)).exists() {
                bail!("inherited fd {} for {} is not open", i.fd, i.key);
            }
            let hit = files.iter().any(|f| match f.r#type() {
                FdTypes::Pipe => f
                    .pipe
                    .as_ref()
                    .is_some_and(|p| i.key == format!("pipe:[{}]", p.pipe_id)),
                FdTypes::Reg => f.reg.as_ref().is_some_and(|r| {
                    r.name.trim_start_matches('/') == i.key.trim_start_matches('/')
                }),
                _ => false,
            });
            debug!(fd = i.fd, key = %i.key, used = hit, "inherit fd");
        }
        Ok(())
    }

    pub fn ext_unix(&self) -> bool {
        self.ext_unix_sk || self.external.iter().any(|e| external_kind(e) == "unix")
    }

    pub fn dump_options(&self, pid: i32) -> dump::DumpOptions {
        dump::DumpOptions {
            pid,
            images_dir: self.images_dir.clone(),
            leave_running: self.leave_running,
            shell_job: self.shell_job,
            file_locks: self.file_locks,
            progress: self.progress,
            ext_unix_sk: self.ext_unix(),
            post_dump: None,
            orphan_pts_master: self.orphan_pts_master,
            external: self.dump_externals(pid),
            freeze_cgroup: self.freeze_cgroup.as_ref().map(PathBuf::from),
            timeout: self
                .timeout
                .filter(|&s| s > 0)
                .map(|s| std::time::Duration::from_secs(u64::from(s))),
            tcp_established: self.tcp_established,
            tcp_skip_in_flight: self.tcp_skip_in_flight,
            pre_dump: self.pre_dump,
            parent: self.parent_img.as_ref().map(PathBuf::from),
        }
    }

    fn dump_externals(&self, pid: i32) -> Vec<String> {
        if !self.ext_mnt_candidates {
            return self.external.clone();
        }
        let mounts: Vec<String> = stasis_engine::proc::read_mountinfo(pid)
            .map(|m| m.into_iter().map(|m| m.mount_point).collect())
            .unwrap_or_default();
        self.external
            .iter()
            .filter(|e| match stasis_engine::ns::mnt::parse_external(e) {
                Ok(Some((at, _))) => {
                    let used = mounts.contains(&at);
                    if !used {
                        debug!(external = %e, "no such mount in the tree: unused");
                    }
                    used
                }
                _ => true,
            })
            .cloned()
            .collect()
    }

    pub fn restore_options(&self) -> restore::RestoreOptions {
        restore::RestoreOptions {
            images_dir: self.images_dir.clone(),
            detach: self.detach,
            shell_job: self.shell_job,
            pidfile: self.pidfile.clone(),
            file_locks: self.file_locks,
            progress: self.progress,
            ext_unix_sk: self.ext_unix(),
            sibling: self.restore_sibling,
            on_forked: None,
            before_resume: None,
            inherit_fds: self
                .inherit_fd
                .iter()
                .map(|i| (i.fd, i.key.trim_start_matches('/').to_string()))
                .collect(),
            orphan_pts_master: self.orphan_pts_master,
            on_orphan_pts: None,
            root: self.root.clone(),
            // `--veth-pair IN=OUT` is CRIU's older `veth[IN]:OUT`.
            external: self
                .external
                .iter()
                .filter(|e| matches!(external_kind(e), "mnt" | "veth" | "macvlan"))
                .cloned()
                .chain(self.veths.iter().filter_map(|v| {
                    let (i, o) = v.split_once('=')?;
                    Some(format!("veth[{i}]:{o}"))
                }))
                .collect(),
            manage_cgroups: self.manage_cgroups.and_then(CgMode::engine),
            cgroup_root: self
                .cg_root
                .iter()
                .map(|(c, p)| {
                    if c.is_empty() {
                        p.clone()
                    } else {
                        format!("{c}:{p}")
                    }
                })
                .collect(),
            join_ns: self.join_ns.clone(),
            tcp_established: self.tcp_established,
            tcp_close: self.tcp_close,
            empty_net: self.empty_ns & libc::CLONE_NEWNET as u32 != 0,
        }
    }
}

/// Copy `stats-dump`/`stats-restore` from the images dir into the work dir
/// when they differ: CRIU writes stats into its work dir, where podman and
/// zdtm look for them.
pub fn stats_to_work_dir(images: &Path, work: &Path, name: &str) {
    let same = match (std::fs::metadata(images), std::fs::metadata(work)) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            a.dev() == b.dev() && a.ino() == b.ino()
        }
        _ => true,
    };
    if same {
        return;
    }
    if let Err(e) = std::fs::copy(images.join(name), work.join(name)) {
        warn!(
            "cannot copy {name} into the work dir {}: {e}",
            work.display()
        );
    }
}

/// `criu check --feature NAME`: true when the engine (not just the kernel)
/// can use the feature. None for a name CRIU does not know.
pub fn feature(name: &str) -> Option<Result<(), String>> {
    let probe = |n: &str| -> Result<(), String> {
        match stasis_engine::check::probe()
            .into_iter()
            .find(|f| f.name == n)
        {
            Some(f) if f.ok => Ok(()),
            Some(f) => Err(f.detail),
            None => Err(format!("{n}: not probed")),
        }
    };
    let no = |why: &str| Err(why.to_string());
    Some(match name {
        "clone3_set_tid" => probe("clone3_set_tid"),
        "pidfd_store" => probe("pidfd"),
        "get_rseq_conf" => probe("ptrace_rseq_conf"),
        "can_map_vdso" => probe("vdso"),
        "mnt_id"
        | "timerfd"
        | "fdinfo_lock"
        | "kcmp_epoll"
        | "sk_unix_file"
        | "loginuid"
        | "openat2"
        | "breakpoints"
        | "pagemap_scan"
        | "mem_dirty_track"
        | "pagemap_scan_guard_pages"
        | "aio_remap"
        | "tcp_half_closed"
        | "ipv6_freebind"
        | "sockopt_buf_lock"
        | "seccomp_suspend"
        | "seccomp_filters"
        | "net_diag_raw"
        | "timer_cr_ids"
        | "overlayfs_maps"
        | "memfd_hugetlb"
        | "move_mount_set_group" => {
            // Kernel facilities: present on the kernels stasis supports.
            Ok(())
        }
        "uffd" | "uffd-noncoop" => no("lazy pages are not supported by stasis"),
        "compat_cr" => no("32-bit tasks are not supported"),
        "tun"
        | "tun_ns"
        | "sk_ns"
        | "nsid"
        | "link_nsid"
        | "newifindex"
        | "external_net_ns"
        | "nftables"
        | "network_lock_nftables"
        | "has_ipt_legacy" => no("network namespaces are not supported yet"),
        "userns" => probe("userns"),
        "cgroupns" | "timens" | "ns_pid" => no("namespaces are not supported yet"),
        "autofs" => no("autofs mounts are not supported"),
        "apparmor_stacking" => no("LSM labels are not supported"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherit_fd_parses_criu_syntax() {
        let i = InheritFd::parse("fd[3]:pipe:[12345]").unwrap();
        assert_eq!((i.fd, i.key.as_str()), (3, "pipe:[12345]"));
        let i = InheritFd::parse("fd[0]:tmp/out.log").unwrap();
        assert_eq!((i.fd, i.key.as_str()), (0, "tmp/out.log"));
        for bad in ["3:pipe", "fd[x]:k", "fd[1]:", "fd[1]"] {
            assert!(InheritFd::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cgroup_modes() {
        assert_eq!(CgMode::parse("soft").unwrap(), CgMode::Soft);
        assert_eq!(CgMode::parse("ignore").unwrap(), CgMode::Ignore);
        assert!(CgMode::parse("bogus")
            .unwrap_err()
            .to_string()
            .contains("Unknown cgroups mode `bogus'"));
        assert_eq!(CgMode::from_rpc(5), CgMode::Strict);
        assert_eq!(CgMode::from_rpc(6), CgMode::Default);
    }

    #[test]
    fn features_are_truthful() {
        assert!(feature("mem_dirty_track").unwrap().is_ok());
        assert!(feature("uffd-noncoop").unwrap().is_err());
        assert!(feature("timerfd").unwrap().is_ok());
        assert!(feature("no_such_feature").is_none());
    }

    #[test]
    fn refusals_name_the_option() {
        let o = Opts {
            external: vec!["tty[1:2]".into()],
            ..Default::default()
        };
        assert!(o.check_dump().unwrap_err().to_string().contains("tty[1:2]"));
        let o = Opts {
            external: vec!["mnt[/a]:b".into(), "net[1]:x".into(), "unix[7]".into()],
            ..Default::default()
        };
        o.check_dump().unwrap();
        assert!(o.ext_unix());
        let o = Opts {
            external: vec!["net[1]:x".into()],
            ..Default::default()
        };
        assert!(o
            .check_restore()
            .unwrap_err()
            .to_string()
            .contains("net[1]:x"));
    }

    #[test]
    fn network_externals_reach_the_engine() {
        let o = Opts {
            external: vec![
                "veth[nl0]:out0@br0".into(),
                "macvlan[mv0]:eth0".into(),
                "unix[7]".into(),
            ],
            veths: vec!["eth1=out1".into()],
            empty_ns: libc::CLONE_NEWNET as u32,
            ..Default::default()
        };
        o.check_restore().unwrap();
        let r = o.restore_options();
        assert_eq!(
            r.external,
            vec![
                "veth[nl0]:out0@br0".to_string(),
                "macvlan[mv0]:eth0".to_string(),
                "veth[eth1]:out1".to_string(),
            ]
        );
        assert!(r.empty_net);
        let o = Opts {
            veths: vec!["eth1".into()],
            ..Default::default()
        };
        assert!(o.check_restore().unwrap_err().to_string().contains("eth1"));
    }
}
