//! The remaining group-A messages (stats, service, criu rpc, ...).

use prost::Message;
use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header};

use super::common::{roundtrip, rt};
use super::files::file_entry_all;

fn criu_opts() -> CriuOpts {
    CriuOpts {
        images_dir_fd: 3,
        pid: Some(4242),
        leave_running: Some(true),
        ext_unix_sk: Some(true),
        tcp_established: Some(true),
        evasive_devices: Some(true),
        shell_job: Some(true),
        file_locks: Some(true),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        ps: Some(CriuPageServerInfo {
            address: Some("127.0.0.1".into()),
            port: Some(27),
            pid: Some(5),
            fd: Some(6),
        }),
        notify_scripts: Some(true),
        root: Some("/run/runc/x/criu-root".into()),
        parent_img: Some("../parent".into()),
        track_mem: Some(true),
        auto_dedup: Some(true),
        work_dir_fd: Some(4),
        link_remap: Some(true),
        veths: vec![CriuVethPair {
            if_in: "eth0".into(),
            if_out: "veth0".into(),
        }],
        cpu_cap: Some(0),
        force_irmap: Some(true),
        exec_cmd: vec!["true".into()],
        ext_mnt: vec![ExtMountMap {
            key: "/etc/hosts".into(),
            val: "/etc/hosts".into(),
        }],
        manage_cgroups: Some(true),
        cg_root: vec![CgroupRoot {
            ctrl: Some(String::new()),
            path: "/sys/fs/cgroup/x".into(),
        }],
        rst_sibling: Some(true),
        inherit_fd: vec![InheritFd {
            key: "pipe:[123]".into(),
            fd: 0,
        }],
        auto_ext_mnt: Some(true),
        ext_sharing: Some(true),
        ext_masters: Some(true),
        skip_mnt: vec!["/proc/kcore".into()],
        enable_fs: vec!["fuse".into()],
        unix_sk_ino: vec![UnixSk { inode: 77 }],
        manage_cgroups_mode: Some(CriuCgMode::Soft as i32),
        ghost_limit: Some(1 << 20),
        irmap_scan_paths: vec!["/usr".into()],
        external: vec!["net[4026531840]:extRootNetNS".into()],
        empty_ns: Some(0x4000_0000),
        join_ns: vec![JoinNamespace {
            ns: "net".into(),
            ns_file: "/proc/1/ns/net".into(),
            extra_opt: Some("x".into()),
        }],
        cgroup_props: Some("props".into()),
        cgroup_props_file: Some("/p".into()),
        cgroup_dump_controller: vec!["cpu".into()],
        freeze_cgroup: Some("/sys/fs/cgroup/x".into()),
        timeout: Some(10),
        tcp_skip_in_flight: Some(true),
        weak_sysctls: Some(true),
        lazy_pages: Some(false),
        status_fd: Some(9),
        orphan_pts_master: Some(true),
        config_file: Some("/etc/criu/runc.conf".into()),
        tcp_close: Some(true),
        lsm_profile: Some("apparmor:x".into()),
        tls_cacert: Some("ca".into()),
        tls_cacrl: Some("crl".into()),
        tls_cert: Some("cert".into()),
        tls_key: Some("key".into()),
        tls: Some(false),
        tls_no_cn_verify: Some(false),
        cgroup_yard: Some("/yard".into()),
        pre_dump_mode: Some(CriuPreDumpMode::VmRead as i32),
        pidfd_store_sk: Some(11),
        lsm_mount_context: Some("ctx".into()),
        network_lock: Some(CriuNetworkLockMethod::Nftables as i32),
        mntns_compat_mode: Some(true),
        skip_file_rwx_check: Some(true),
        unprivileged: Some(true),
        images_dir: Some("/img".into()),
        leave_stopped: Some(true),
        display_stats: Some(true),
        log_to_stderr: Some(true),
    }
}

#[test]
fn other_group_a_messages() {
    roundtrip(
        Header::Service(magic::STATS),
        &[StatsEntry {
            dump: Some(DumpStatsEntry {
                freezing_time: 1,
                frozen_time: 2,
                memdump_time: 3,
                memwrite_time: 4,
                pages_scanned: 5,
                pages_skipped_parent: 6,
                pages_written: 7,
                irmap_resolve: Some(8),
                pages_lazy: 9,
                page_pipes: Some(10),
                page_pipe_bufs: Some(11),
                shpages_scanned: Some(12),
                shpages_skipped_parent: Some(13),
                shpages_written: Some(14),
            }),
            restore: Some(RestoreStatsEntry {
                pages_compared: 1,
                pages_skipped_cow: 2,
                forking_time: 3,
                restore_time: 4,
                pages_restored: Some(5),
            }),
        }],
    );
    roundtrip(
        Header::Common(magic::SECCOMP),
        &[SeccompEntry {
            seccomp_filters: vec![
                SeccompFilter {
                    filter: vec![0x06, 0, 0, 0, 0, 0, 0xff, 0x7f],
                    prev: None,
                    flags: Some(0),
                },
                SeccompFilter {
                    filter: vec![1; 16],
                    prev: Some(0),
                    flags: Some(1),
                },
            ],
        }],
    );
    let perms = CgroupPerms {
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    roundtrip(
        Header::Common(magic::CGROUP),
        &[CgroupEntry {
            sets: vec![CgSetEntry {
                id: 1,
                ctls: vec![CgMemberEntry {
                    name: "cpu".into(),
                    path: "/x".into(),
                    cgns_prefix: Some(2),
                }],
            }],
            controllers: vec![CgControllerEntry {
                cnames: vec!["cpu".into(), "cpuacct".into()],
                dirs: vec![CgroupDirEntry {
                    dir_name: "x".into(),
                    children: vec![CgroupDirEntry {
                        dir_name: "y".into(),
                        children: vec![],
                        properties: vec![],
                        dir_perms: Some(perms),
                    }],
                    properties: vec![CgroupPropEntry {
                        name: "cpu.shares".into(),
                        value: "1024".into(),
                        perms: Some(perms),
                    }],
                    dir_perms: Some(perms),
                }],
                is_threaded: Some(false),
            }],
        }],
    );
    roundtrip(
        Header::Common(magic::PIPES),
        &[file_entry_all().pipe.unwrap()],
    );
    roundtrip(
        Header::Common(magic::FIFO),
        &[file_entry_all().fifo.unwrap()],
    );
    roundtrip(
        Header::Common(magic::EXT_FILES),
        &[file_entry_all().ext.unwrap()],
    );
    roundtrip(
        Header::Common(magic::NS_FILES),
        &[file_entry_all().nsf.unwrap()],
    );
    roundtrip(
        Header::Common(magic::PIDFD),
        &[file_entry_all().pidfd.unwrap()],
    );

    // swrk RPC messages are raw datagrams, but the image framing works too.
    let req = CriuReq {
        r#type: CriuReqType::Dump as i32,
        opts: Some(criu_opts()),
        notify_success: Some(true),
        keep_open: Some(true),
        features: Some(CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(false),
            pidfd_store: Some(true),
        }),
        pid: Some(7),
    };
    rt(req.clone());
    assert_eq!(
        CriuReq::decode(req.encode_to_vec().as_slice()).unwrap(),
        req
    );
    rt(CriuResp {
        r#type: CriuReqType::Version as i32,
        success: true,
        dump: Some(CriuDumpResp {
            restored: Some(false),
        }),
        restore: Some(CriuRestoreResp { pid: 4242 }),
        notify: Some(CriuNotify {
            script: Some("post-restore".into()),
            pid: Some(4242),
        }),
        ps: Some(CriuPageServerInfo {
            address: None,
            port: Some(1),
            pid: None,
            fd: None,
        }),
        cr_errno: Some(1),
        features: Some(CriuFeatures::default()),
        cr_errmsg: Some("Error (criu/cr-dump.c:1): boom".into()),
        version: Some(CriuVersion {
            major_number: 4,
            minor_number: 2,
            gitid: None,
            sublevel: Some(0),
            extra: Some(0),
            name: Some("stasis".into()),
        }),
        status: Some(0),
    });
}
