//! Round-trips a populated instance of every group-A message through
//! ImageWriter/ImageReader, and pins a few encodings byte by byte.

use std::fmt::Debug;

use prost::Message;
use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header, ImageReader, ImageWriter};

/// Writes `msgs` as an image, reads them back, and checks equality. Also
/// checks that the populated message differs from its default (so every
/// sample really carries data).
fn roundtrip<M: Message + Default + PartialEq + Debug + Clone>(header: Header, msgs: &[M]) {
    let mut w = ImageWriter::new(Vec::new(), header).unwrap();
    for m in msgs {
        assert_ne!(m, &M::default(), "sample is empty");
        w.write_entry(m).unwrap();
    }
    let expected_len: usize =
        header.len() + msgs.iter().map(|m| 4 + m.encoded_len()).sum::<usize>();
    assert_eq!(w.offset() as usize, expected_len);
    let bytes = w.finish().unwrap();
    assert_eq!(bytes.len(), expected_len);

    let mut r = ImageReader::open(bytes.as_slice(), header, "rt.img").unwrap();
    let back: Vec<M> = r.entries().collect::<Result<_, _>>().unwrap();
    assert_eq!(back, msgs);
    assert_eq!(r.offset() as usize, expected_len);
    assert!(r.read_entry::<M>().unwrap().is_none(), "EOF stays EOF");
}

fn rt<M: Message + Default + PartialEq + Debug + Clone>(m: M) {
    roundtrip(Header::Common(magic::CORE), &[m.clone(), m]);
}

// ---- samples -------------------------------------------------------------

fn fown() -> FownEntry {
    FownEntry {
        uid: 1000,
        euid: 1001,
        signum: 29,
        pid_type: 1,
        pid: 4242,
    }
}

fn ids() -> TaskKobjIdsEntry {
    TaskKobjIdsEntry {
        vm_id: 1,
        files_id: 2,
        fs_id: 3,
        sighand_id: 4,
        pid_ns_id: Some(5),
        net_ns_id: Some(6),
        ipc_ns_id: Some(7),
        uts_ns_id: Some(8),
        mnt_ns_id: Some(9),
        user_ns_id: Some(10),
        cgroup_ns_id: Some(11),
        time_ns_id: Some(12),
    }
}

fn inventory() -> InventoryEntry {
    InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        root_ids: Some(ids()),
        ns_per_id: Some(true),
        root_cg_set: Some(1),
        lsmtype: Some(Lsmtype::Apparmor as i32),
        dump_uptime: Some(123_456_789),
        pre_dump_mode: Some(1),
        tcp_close: Some(false),
        network_lock_method: Some(2),
        plugins_entry: Some(PluginsEntry {
            plugins: vec!["amdgpu".into(), "cuda".into()],
        }),
        dump_criu_run_id: Some("stasis-1".into()),
        allow_uprobes: Some(true),
    }
}

fn pstree() -> PstreeEntry {
    PstreeEntry {
        pid: 10,
        ppid: 1,
        pgid: 10,
        sid: 10,
        threads: vec![10, 11, 12],
        ..Default::default()
    }
}

fn gpregs() -> UserX86RegsEntry {
    UserX86RegsEntry {
        r15: 15,
        r14: 14,
        r13: 13,
        r12: 12,
        bp: 0x7ffd_0000_1000,
        bx: 6,
        r11: 0x246,
        r10: 10,
        r9: 9,
        r8: 8,
        ax: u64::MAX - 37,
        cx: 0x40_1000,
        dx: 3,
        si: 2,
        di: 1,
        orig_ax: 230,
        ip: 0x40_1234,
        cs: 0x33,
        flags: 0x246,
        sp: 0x7ffd_0000_0f00,
        ss: 0x2b,
        fs_base: 0x7f00_0000_0740,
        gs_base: 0,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
        mode: Some(UserX86RegsMode::Native as i32),
    }
}

fn fpregs() -> UserX86FpregsEntry {
    UserX86FpregsEntry {
        cwd: 0x37f,
        swd: 0,
        twd: 0xffff,
        fop: 0,
        rip: 0x40_2000,
        rdp: 0x7ffd_0000_0100,
        mxcsr: 0x1f80,
        mxcsr_mask: 0xffff,
        st_space: (0..32).collect(),
        xmm_space: (100..164).collect(),
        padding: vec![0; 24],
        xsave: Some(UserX86XsaveEntry {
            xstate_bv: 0x2e7,
            ymmh_space: (0..64).collect(),
            bndreg_state: vec![1, 2, 3, 4, 5, 6, 7, 8],
            bndcsr_state: vec![9, 10],
            opmask_reg: vec![0xff; 8],
            zmm_upper: (0..64).collect(),
            hi16_zmm: (0..128).collect(),
            pkru: vec![0x5555_5554],
            cet: Some(UserX86CetEntry {
                cet: 1,
                ssp: 0x7fff_f000,
            }),
        }),
        stasis_xsave: Some((0..=255).collect()),
    }
}

fn tls() -> Vec<UserDescT> {
    (12..15)
        .map(|n| UserDescT {
            entry_number: n,
            base_addr: 0x1000 * n,
            limit: 0xfffff,
            seg_32bit: true,
            contents_h: false,
            contents_l: true,
            read_exec_only: false,
            limit_in_pages: true,
            seg_not_present: false,
            usable: true,
        })
        .collect()
}

fn creds() -> CredsEntry {
    CredsEntry {
        uid: 1,
        gid: 2,
        euid: 3,
        egid: 4,
        suid: 5,
        sgid: 6,
        fsuid: 7,
        fsgid: 8,
        cap_inh: vec![0, 0],
        cap_prm: vec![0xffff_ffff, 0x1ff],
        cap_eff: vec![0xffff_ffff, 0x1ff],
        cap_bnd: vec![0xffff_ffff, 0x1ff],
        secbits: 0x2f,
        groups: vec![10, 20, 30],
        lsm_profile: Some("unconfined".into()),
        lsm_sockcreate: Some("system_u:object_r:x".into()),
        apparmor_data: Some(vec![0, 1, 2, 255]),
        no_new_privs: Some(1),
        cap_amb: vec![1, 0],
    }
}

fn sa(n: u64) -> SaEntry {
    SaEntry {
        sigaction: 0x40_1000 + n,
        flags: 0x0400_0000,
        restorer: 0x7f00_0000_1000,
        mask: 1 << (n - 1),
        compat_sigaction: Some(false),
        mask_extended: Some(7),
    }
}

fn signal_queue() -> SignalQueueEntry {
    SignalQueueEntry {
        signals: vec![
            SiginfoEntry {
                siginfo: vec![10; 128],
            },
            SiginfoEntry {
                siginfo: (0..128).collect(),
            },
        ],
    }
}

fn itimer(base: u64) -> ItimerEntry {
    ItimerEntry {
        isec: base,
        iusec: base + 1,
        vsec: base + 2,
        vusec: base + 3,
    }
}

fn posix_timer() -> PosixTimerEntry {
    PosixTimerEntry {
        it_id: 1,
        clock_id: 1,
        si_signo: 14,
        it_sigev_notify: 4,
        sival_ptr: 0xdead_beef,
        overrun: 2,
        isec: 3,
        insec: 4,
        vsec: 5,
        vnsec: 6,
        notify_thread_id: Some(11),
    }
}

fn timers() -> TaskTimersEntry {
    TaskTimersEntry {
        real: itimer(1),
        virt: itimer(10),
        prof: itimer(100),
        posix: vec![posix_timer(), posix_timer()],
    }
}

fn rlimits() -> TaskRlimitsEntry {
    TaskRlimitsEntry {
        rlimits: (0..16)
            .map(|i| RlimitEntry {
                cur: i,
                max: u64::MAX,
            })
            .collect(),
    }
}

fn rseq() -> RseqEntry {
    RseqEntry {
        rseq_abi_pointer: 0x7f00_0000_2000,
        rseq_abi_size: 32,
        signature: 0x5305_3053,
        rseq_cs_pointer: Some(0x40_5000),
    }
}

fn task_core() -> TaskCoreEntry {
    TaskCoreEntry {
        task_state: 1,
        exit_code: 0,
        personality: 0,
        flags: 0x40_0100,
        blk_sigset: 1 << 13,
        comm: "sleep".into(),
        timers: Some(timers()),
        rlimits: Some(rlimits()),
        cg_set: Some(1),
        signals_s: Some(signal_queue()),
        old_seccomp_mode: Some(SeccompMode::Disabled as i32),
        old_seccomp_filter: Some(0),
        loginuid: Some(u32::MAX),
        oom_score_adj: Some(-1000),
        sigactions: (1..=64).map(sa).collect(),
        child_subreaper: Some(true),
        blk_sigset_extended: Some(0),
        stop_signo: Some(19),
        membarrier_registration_mask: Some(0x8),
    }
}

fn thread_core() -> ThreadCoreEntry {
    ThreadCoreEntry {
        futex_rla: 0x7f00_0000_09e0,
        futex_rla_len: 24,
        sched_nice: Some(-5),
        sched_policy: Some(0),
        sched_prio: Some(0),
        blk_sigset: Some(0),
        sas: Some(ThreadSasEntry {
            ss_sp: 0x1000,
            ss_size: 8192,
            ss_flags: 2,
        }),
        pdeath_sig: Some(9),
        signals_p: Some(signal_queue()),
        creds: Some(creds()),
        seccomp_mode: Some(SeccompMode::Filter as i32),
        seccomp_filter: Some(3),
        comm: Some("worker".into()),
        blk_sigset_extended: Some(1),
        rseq_entry: Some(rseq()),
        cg_set: Some(2),
    }
}

fn core() -> CoreEntry {
    CoreEntry {
        mtype: core_entry::March::X8664 as i32,
        thread_info: Some(ThreadInfoX86 {
            clear_tid_addr: 0x7f00_0000_0a10,
            gpregs: gpregs(),
            fpregs: fpregs(),
            tls: tls(),
        }),
        tc: Some(task_core()),
        ids: Some(ids()),
        thread_core: Some(thread_core()),
    }
}

fn vma(i: u64) -> VmaEntry {
    VmaEntry {
        start: 0x40_0000 + i * 0x1000,
        end: 0x40_1000 + i * 0x1000,
        pgoff: i,
        shmid: 7,
        prot: 5,
        flags: 2,
        status: 1 | (1 << 6),
        fd: -1,
        madv: Some(1 << 14),
        fdflags: Some(0o100000),
    }
}

fn mm() -> MmEntry {
    MmEntry {
        mm_start_code: 0x40_0000,
        mm_end_code: 0x40_5000,
        mm_start_data: 0x60_0000,
        mm_end_data: 0x60_1000,
        mm_start_stack: 0x7ffd_0000_0000,
        mm_start_brk: 0x70_0000,
        mm_brk: 0x72_0000,
        mm_arg_start: 0x7ffd_0000_1000,
        mm_arg_end: 0x7ffd_0000_1100,
        mm_env_start: 0x7ffd_0000_1100,
        mm_env_end: 0x7ffd_0000_1f00,
        exe_file_id: 5,
        mm_saved_auxv: (0..44).collect(),
        vmas: (0..4).map(vma).collect(),
        dumpable: Some(1),
        aios: vec![AioRingEntry {
            id: 0x7f00_0000_3000,
            nr_req: 128,
            ring_len: 4096,
        }],
        thp_disabled: Some(true),
    }
}

fn reg_file() -> RegFileEntry {
    RegFileEntry {
        id: 5,
        flags: 0o100002,
        pos: 4096,
        fown: fown(),
        name: "/usr/bin/sleep".into(),
        mnt_id: Some(23),
        size: Some(35_000),
        ext: Some(false),
        mode: Some(0o100755),
        build_id: vec![0xdead_beef, 0x1234_5678, 0x0bad_f00d, 1, 2],
        checksum: Some(0xabcd_ef01),
        checksum_config: Some(1),
        checksum_parameter: Some(4096),
    }
}

fn sk_opts() -> SkOptsEntry {
    SkOptsEntry {
        so_sndbuf: 212_992,
        so_rcvbuf: 212_992,
        so_snd_tmo_sec: 1,
        so_snd_tmo_usec: 2,
        so_rcv_tmo_sec: 3,
        so_rcv_tmo_usec: 4,
        reuseaddr: Some(true),
        so_priority: Some(6),
        so_rcvlowat: Some(1),
        so_mark: Some(0x10),
        so_passcred: Some(true),
        so_passsec: Some(false),
        so_dontroute: Some(false),
        so_no_check: Some(false),
        so_bound_dev: Some("eth0".into()),
        so_filter: vec![0x0000_0000_0000_0006, 0xffff_ffff_0000_0006],
        so_reuseport: Some(true),
        so_broadcast: Some(false),
        so_keepalive: Some(true),
        tcp_keepcnt: Some(9),
        tcp_keepidle: Some(7200),
        tcp_keepintvl: Some(75),
        so_oobinline: Some(0),
        so_linger: Some(5),
        so_buf_lock: Some(3),
    }
}

fn fh() -> FhEntry {
    FhEntry {
        bytes: 8,
        r#type: 1,
        handle: vec![1, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        path: Some("/tmp/watched".into()),
        mnt_id: Some(23),
    }
}

fn unix_sk() -> UnixSkEntry {
    UnixSkEntry {
        id: 16,
        ino: 999,
        r#type: 1,
        state: 1,
        flags: 0o4000,
        uflags: 0,
        backlog: 128,
        peer: 998,
        fown: fown(),
        opts: sk_opts(),
        name: b"\0abstract\0name".to_vec(),
        shutdown: Some(SkShutdown::Write as i32),
        file_perms: Some(FilePermsEntry {
            mode: 0o140777,
            uid: 0,
            gid: 0,
        }),
        name_dir: Some("/run".into()),
        deleted: Some(false),
        ns_id: Some(3),
        mnt_id: Some(30),
    }
}

fn tty_file() -> TtyFileEntry {
    TtyFileEntry {
        id: 19,
        tty_info_id: 1,
        flags: 0o2,
        fown: fown(),
        regf_id: Some(5),
    }
}

/// A file_entry with every per-kind member set (type says REG; the point is
/// that every member encodes and decodes at its field number).
fn file_entry_all() -> FileEntry {
    FileEntry {
        r#type: FdTypes::Reg as i32,
        id: 5,
        reg: Some(reg_file()),
        isk: Some(Box::new(InetSkEntry {
            id: 4,
            ino: 1234,
            family: 10,
            r#type: 1,
            proto: 6,
            state: 1,
            src_port: 8080,
            dst_port: 51_000,
            flags: 0o4000,
            backlog: 0,
            src_addr: vec![0, 0, 0xffff, 0x7f00_0001],
            dst_addr: vec![0, 0, 0xffff, 0x7f00_0001],
            fown: fown(),
            opts: sk_opts(),
            v6only: Some(false),
            ip_opts: Some(IpOptsEntry {
                freebind: Some(true),
                raw: Some(IpOptsRawEntry {
                    hdrincl: Some(true),
                    nodefrag: Some(false),
                    checksum: Some(true),
                    icmpv_filter: vec![1, 2, 3, 4, 5, 6, 7, 8],
                }),
                pktinfo: Some(true),
                tos: Some(0x10),
                ttl: Some(64),
            }),
            ifname: Some("lo".into()),
            ns_id: Some(2),
            shutdown: Some(SkShutdown::None as i32),
            tcp_opts: Some(TcpOptsEntry {
                cork: Some(false),
                nodelay: Some(true),
                keepcnt: Some(9),
                keepidle: Some(7200),
                keepintvl: Some(75),
            }),
        })),
        nsf: Some(NsFileEntry {
            id: 5,
            ns_id: 3,
            ns_cflag: 0x4000_0000,
            flags: 0,
        }),
        psk: Some(Box::new(PacketSockEntry {
            id: 6,
            r#type: 3,
            protocol: 0x0300,
            flags: 2,
            ifindex: 1,
            fown: fown(),
            opts: sk_opts(),
            version: 2,
            reserve: 4,
            aux_data: true,
            orig_dev: false,
            vnet_hdr: true,
            loss: false,
            timestamp: 0,
            copy_thresh: 0,
            mclist: vec![PacketMclist {
                index: 1,
                r#type: 0,
                addr: vec![1, 2, 3, 4, 5, 6],
            }],
            fanout: Some(0x1_0002),
            rx_ring: Some(PacketRing {
                block_size: 4096,
                block_nr: 64,
                frame_size: 2048,
                frame_nr: 128,
                retire_tmo: 60,
                sizeof_priv: 0,
                features: 0,
            }),
            tx_ring: None,
            ns_id: Some(2),
        })),
        nlsk: Some(Box::new(NetlinkSkEntry {
            id: 7,
            ino: 77,
            protocol: 0,
            state: 0,
            flags: 0o2,
            portid: 4242,
            groups: vec![1, 0],
            dst_portid: 0,
            dst_group: 0,
            fown: fown(),
            opts: sk_opts(),
            ns_id: Some(2),
        })),
        efd: Some(EventfdFileEntry {
            id: 8,
            flags: 0o2004000,
            fown: fown(),
            counter: 17,
        }),
        epfd: Some(EventpollFileEntry {
            id: 9,
            flags: 0o2000000,
            fown: fown(),
            tfd: vec![EventpollTfdEntry {
                id: 9,
                tfd: 3,
                events: 0x1,
                data: 0xfeed,
                dev: Some(8),
                inode: Some(1234),
                pos: Some(0),
            }],
        }),
        sgfd: Some(SignalfdEntry {
            id: 10,
            flags: 0o4000,
            fown: fown(),
            sigmask: 1 << 16,
        }),
        tunf: Some(TunfileEntry {
            id: 11,
            netdev: Some("tun0".into()),
            detached: Some(false),
            ns_id: Some(2),
        }),
        tfd: Some(TimerfdEntry {
            id: 12,
            flags: 0o4000,
            fown: fown(),
            clockid: 1,
            ticks: 3,
            settime_flags: 1,
            vsec: 1,
            vnsec: 2,
            isec: 3,
            insec: 4,
        }),
        ify: Some(InotifyFileEntry {
            id: 13,
            flags: 0o4000,
            fown: fown(),
            wd: vec![InotifyWdEntry {
                id: 13,
                i_ino: 5678,
                mask: 0x100,
                ignored_mask: 0,
                s_dev: 0x803,
                wd: 1,
                f_handle: fh(),
            }],
        }),
        ffy: Some(FanotifyFileEntry {
            id: 14,
            flags: 0o2,
            fown: fown(),
            faflags: 0x1,
            evflags: 0o2,
            mark: vec![
                FanotifyMarkEntry {
                    id: 14,
                    r#type: MarkType::Inode as i32,
                    mflags: 1,
                    mask: 0x20,
                    ignored_mask: 0,
                    s_dev: 0x803,
                    ie: Some(FanotifyInodeMarkEntry {
                        i_ino: 42,
                        f_handle: fh(),
                    }),
                    me: None,
                },
                FanotifyMarkEntry {
                    id: 14,
                    r#type: MarkType::Mount as i32,
                    mflags: 2,
                    mask: 0x8,
                    ignored_mask: 1,
                    s_dev: 0x803,
                    ie: None,
                    me: Some(FanotifyMountMarkEntry {
                        mnt_id: 23,
                        path: Some("/".into()),
                    }),
                },
            ],
        }),
        ext: Some(ExtFileEntry {
            id: 15,
            fown: fown(),
        }),
        usk: Some(unix_sk()),
        fifo: Some(FifoEntry {
            id: 17,
            pipe_id: 5555,
            regf_id: Some(18),
        }),
        pipe: Some(PipeEntry {
            id: 18,
            pipe_id: 5556,
            flags: 0o4001,
            fown: fown(),
        }),
        tty: Some(tty_file()),
        memfd: Some(MemfdFileEntry {
            id: 20,
            flags: 0o2,
            pos: 10,
            fown: fown(),
            inode_id: 1,
        }),
        bpf: Some(Box::new(BpfmapFileEntry {
            id: 21,
            flags: 0o2,
            pos: 0,
            fown: fown(),
            map_type: 1,
            key_size: 4,
            value_size: 8,
            map_id: 99,
            max_entries: 1024,
            map_flags: 0,
            memlock: 16384,
            frozen: true,
            map_name: "counters".into(),
            ifindex: 0,
            mnt_id: Some(23),
            map_extra: Some(0),
        })),
        pidfd: Some(PidfdEntry {
            id: 22,
            ino: 3333,
            flags: 0o4000,
            nspid: -1,
            fown: fown(),
        }),
    }
}

fn termios() -> TermiosEntry {
    TermiosEntry {
        c_iflag: 0x500,
        c_oflag: 0x5,
        c_cflag: 0xbf,
        c_lflag: 0x8a3b,
        c_line: 0,
        c_ispeed: 38400,
        c_ospeed: 38400,
        c_cc: (0..19).collect(),
    }
}

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

// ---- tests ---------------------------------------------------------------

#[test]
fn task_images() {
    roundtrip(Header::Inventory, &[inventory()]);
    rt(PluginsEntry {
        plugins: vec!["x".into()],
    });
    roundtrip(Header::Common(magic::PSTREE), &[pstree(), pstree()]);
    roundtrip(Header::Common(magic::CORE), &[core()]);
    rt(task_core());
    rt(thread_core());
    rt(ids());
    roundtrip(Header::Common(magic::IDS), &[ids()]);
    rt(ThreadSasEntry {
        ss_sp: 1,
        ss_size: 2,
        ss_flags: 3,
    });
    rt(rlimits());
    rt(gpregs());
    rt(fpregs());
    rt(UserX86CetEntry { cet: 1, ssp: 2 });
    for t in tls() {
        rt(t);
    }
    roundtrip(Header::Common(magic::CREDS), &[creds()]);
    roundtrip(Header::Common(magic::RLIMIT), &rlimits().rlimits[1..]);
    roundtrip(
        Header::Common(magic::SIGACT),
        &(1..=64).map(sa).collect::<Vec<_>>(),
    );
    roundtrip(Header::Common(magic::SIGNAL), &signal_queue().signals);
    rt(signal_queue());
    roundtrip(Header::Common(magic::ITIMERS), &[itimer(1), itimer(2)]);
    roundtrip(Header::Common(magic::POSIX_TIMERS), &[posix_timer()]);
    rt(timers());
    rt(rseq());
}

#[test]
fn memory_images() {
    roundtrip(Header::Common(magic::MM), &[mm()]);
    roundtrip(
        Header::Common(magic::VMAS),
        &(0..8).map(vma).collect::<Vec<_>>(),
    );
    rt(AioRingEntry {
        id: 1,
        nr_req: 2,
        ring_len: 3,
    });

    // pagemap: a head, then entries of another type, plus a raw pages file.
    let head = PagemapHead { pages_id: 3 };
    let entries = vec![
        PagemapEntry {
            vaddr: 0x40_0000,
            compat_nr_pages: 2,
            in_parent: None,
            flags: Some(4),
            nr_pages: Some(2),
        },
        PagemapEntry {
            vaddr: 0x7f00_0000_0000,
            compat_nr_pages: 0,
            in_parent: Some(true),
            flags: Some(1),
            nr_pages: Some(1 << 33),
        },
    ];
    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::PAGEMAP)).unwrap();
    w.write_entry(&head).unwrap();
    for e in &entries {
        w.write_entry(e).unwrap();
    }
    let bytes = w.finish().unwrap();
    let mut r = ImageReader::open(bytes.as_slice(), Header::Common(magic::PAGEMAP), "pm").unwrap();
    assert_eq!(r.read_entry::<PagemapHead>().unwrap(), Some(head));
    let back: Vec<PagemapEntry> = r.entries().collect::<Result<_, _>>().unwrap();
    assert_eq!(back, entries);

    let mut w = ImageWriter::new(Vec::new(), Header::Raw).unwrap();
    w.write_payload(&[0xaa; 8192]).unwrap();
    let pages = w.finish().unwrap();
    assert_eq!(pages.len(), 8192);
    let mut r = ImageReader::open(pages.as_slice(), Header::Raw, "pages-3.img").unwrap();
    let mut page = vec![0u8; 4096];
    r.read_payload_into(&mut page).unwrap();
    assert!(page.iter().all(|&b| b == 0xaa));
    assert_eq!(r.read_payload(4096).unwrap(), vec![0xaa; 4096]);
}

#[test]
fn file_images() {
    roundtrip(
        Header::Common(magic::FS),
        &[FsEntry {
            cwd_id: 1,
            root_id: 2,
            umask: Some(0o22),
        }],
    );
    roundtrip(
        Header::Common(magic::FDINFO),
        &[0u32, 1, 2, 255]
            .iter()
            .map(|&fd| FdinfoEntry {
                id: fd + 100,
                flags: 1,
                r#type: FdTypes::Pidfd as i32,
                fd,
                xattr_security_selinux: Some("system_u:object_r:foo_t:s0".into()),
            })
            .collect::<Vec<_>>(),
    );
    roundtrip(Header::Common(magic::FILES), &[file_entry_all()]);
    roundtrip(Header::Common(magic::REG_FILES), &[reg_file()]);
    rt(fown());
    roundtrip(
        Header::Common(magic::REMAP_FPATH),
        &[RemapFilePathEntry {
            orig_id: 1,
            remap_id: 2,
            remap_type: Some(RemapType::Procfs as i32),
        }],
    );
    let ghost = GhostFileEntry {
        uid: 1,
        gid: 2,
        mode: 0o100644,
        dev: Some(0x803),
        ino: Some(77),
        rdev: Some(0),
        atim: Some(Timeval {
            tv_sec: 1,
            tv_usec: 2,
        }),
        mtim: Some(Timeval {
            tv_sec: 3,
            tv_usec: 4,
        }),
        chunks: Some(true),
        size: Some(10),
        symlnk_target: Some("target".into()),
    };
    roundtrip(Header::Common(magic::GHOST_FILE), &[ghost]);
    rt(GhostChunkEntry { len: 10, off: 4096 });
    rt(Timeval {
        tv_sec: 5,
        tv_usec: 6,
    });
    roundtrip(
        Header::Common(magic::TTY_INFO),
        &[TtyInfoEntry {
            id: 1,
            r#type: TtyType::Pty as i32,
            locked: true,
            exclusive: false,
            packet_mode: true,
            sid: 10,
            pgrp: 10,
            rdev: 0x8800,
            termios: Some(termios()),
            termios_locked: Some(termios()),
            winsize: Some(WinsizeEntry {
                ws_row: 24,
                ws_col: 80,
                ws_xpixel: 0,
                ws_ypixel: 0,
            }),
            pty: Some(TtyPtyEntry { index: 3 }),
            dev: Some(5),
            uid: Some(1000),
            gid: Some(5),
        }],
    );
    roundtrip(Header::Common(magic::TTY_FILES), &[tty_file()]);
    roundtrip(
        Header::Common(magic::TTY_DATA),
        &[TtyDataEntry {
            tty_id: 1,
            data: b"pending input".to_vec(),
        }],
    );
    roundtrip(
        Header::Common(magic::MEMFD_INODE),
        &[MemfdInodeEntry {
            name: "memfd:shm".into(),
            uid: 0,
            gid: 0,
            size: 1 << 20,
            shmid: 77,
            seals: 0xf,
            inode_id: 1,
            hugetlb_flag: Some(0),
            mode: Some(0o100777),
        }],
    );
    roundtrip(
        Header::Common(magic::FILE_LOCKS),
        &[FileLockEntry {
            flag: 1,
            r#type: 2,
            pid: 4242,
            fd: 3,
            start: -1,
            len: i64::MAX,
        }],
    );
    roundtrip(Header::Common(magic::UNIXSK), &[unix_sk()]);
    rt(sk_opts());
    rt(FilePermsEntry {
        mode: 1,
        uid: 2,
        gid: 3,
    });
    roundtrip(
        Header::Common(magic::EVENTPOLL_TFD),
        &file_entry_all().epfd.unwrap().tfd,
    );
    rt(fh());
    roundtrip(
        Header::Service(magic::IRMAP_CACHE),
        &[IrmapCacheEntry {
            dev: 0x803,
            inode: 5,
            path: "/x".into(),
        }],
    );

    // Every per-kind member on its own, in a file_entry with its own type.
    let all = file_entry_all();
    let kinds: Vec<FileEntry> = vec![
        FileEntry {
            r#type: FdTypes::Reg as i32,
            id: 1,
            reg: all.reg.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Inetsk as i32,
            id: 2,
            isk: all.isk.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Ns as i32,
            id: 3,
            nsf: all.nsf,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Packetsk as i32,
            id: 4,
            psk: all.psk.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Netlinksk as i32,
            id: 5,
            nlsk: all.nlsk.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Eventfd as i32,
            id: 6,
            efd: all.efd,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Eventpoll as i32,
            id: 7,
            epfd: all.epfd.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Signalfd as i32,
            id: 8,
            sgfd: all.sgfd,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Tunf as i32,
            id: 9,
            tunf: all.tunf.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Timerfd as i32,
            id: 10,
            tfd: all.tfd,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Inotify as i32,
            id: 11,
            ify: all.ify.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Fanotify as i32,
            id: 12,
            ffy: all.ffy.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Ext as i32,
            id: 13,
            ext: all.ext,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Unixsk as i32,
            id: 14,
            usk: all.usk.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Fifo as i32,
            id: 15,
            fifo: all.fifo,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Pipe as i32,
            id: 16,
            pipe: all.pipe,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Tty as i32,
            id: 17,
            tty: all.tty,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Memfd as i32,
            id: 18,
            memfd: all.memfd,
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Bpfmap as i32,
            id: 19,
            bpf: all.bpf.clone(),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Pidfd as i32,
            id: 20,
            pidfd: all.pidfd,
            ..Default::default()
        },
    ];
    roundtrip(Header::Common(magic::FILES), &kinds);
}

#[test]
fn data_images_with_payloads() {
    // pipes-data: entry + `bytes` raw bytes, repeated.
    let data: Vec<(PipeDataEntry, Vec<u8>)> = (1..4u32)
        .map(|i| {
            (
                PipeDataEntry {
                    pipe_id: 100 + i,
                    bytes: i * 7,
                    size: Some(65536),
                },
                (0..i * 7).map(|b| b as u8).collect(),
            )
        })
        .collect();
    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::PIPES_DATA)).unwrap();
    for (e, payload) in &data {
        w.write_entry(e).unwrap();
        w.write_payload(payload).unwrap();
    }
    let bytes = w.finish().unwrap();
    let mut r = ImageReader::open(
        bytes.as_slice(),
        Header::Common(magic::PIPES_DATA),
        "pipes-data.img",
    )
    .unwrap();
    for (e, payload) in &data {
        let got: PipeDataEntry = r.read_entry().unwrap().unwrap();
        assert_eq!(&got, e);
        assert_eq!(&r.read_payload(got.bytes as usize).unwrap(), payload);
    }
    assert!(r.read_entry::<PipeDataEntry>().unwrap().is_none());

    // sk-queues with skip_payload.
    let pkt = SkPacketEntry {
        id_for: 16,
        length: 5,
        scm: vec![ScmEntry {
            r#type: 1,
            rights: vec![3, 4],
        }],
    };
    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::SK_QUEUES)).unwrap();
    w.write_entry(&pkt).unwrap();
    w.write_payload(b"hello").unwrap();
    w.write_entry(&pkt).unwrap();
    w.write_payload(b"world").unwrap();
    let bytes = w.finish().unwrap();
    let mut r = ImageReader::open(
        bytes.as_slice(),
        Header::Common(magic::SK_QUEUES),
        "sk-queues.img",
    )
    .unwrap();
    let e: SkPacketEntry = r.read_entry().unwrap().unwrap();
    assert_eq!(e, pkt);
    r.skip_payload(u64::from(e.length)).unwrap();
    let e: SkPacketEntry = r.read_entry().unwrap().unwrap();
    let mut buf = [0u8; 5];
    r.read_payload_into(&mut buf).unwrap();
    assert_eq!(&buf, b"world");
    assert_eq!(e, pkt);
    assert!(r.read_entry::<SkPacketEntry>().unwrap().is_none());
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

// ---- exact encodings -----------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn pstree_encoding_is_exact() {
    let e = PstreeEntry {
        pid: 1,
        ppid: 0,
        pgid: 1,
        sid: 1,
        threads: vec![1],
        ..Default::default()
    };
    // Required fields are emitted even when zero; repeated scalars unpacked.
    let body = [0x08, 0x01, 0x10, 0x00, 0x18, 0x01, 0x20, 0x01, 0x28, 0x01];
    assert_eq!(hex(&e.encode_to_vec()), hex(&body));

    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::PSTREE)).unwrap();
    w.write_entry(&e).unwrap();
    let file = w.finish().unwrap();
    let mut expected = vec![
        0x19, 0x43, 0x56, 0x54, 0x30, 0x30, 0x27, 0x50, 0x0a, 0, 0, 0,
    ];
    expected.extend_from_slice(&body);
    assert_eq!(hex(&file), hex(&expected));

    // Packed threads (as another writer might emit) decode too.
    let packed = [
        0x08, 0x01, 0x10, 0x00, 0x18, 0x01, 0x20, 0x01, 0x2a, 0x02, 0x01, 0x02,
    ];
    let d = PstreeEntry::decode(&packed[..]).unwrap();
    assert_eq!(d.threads, vec![1, 2]);
}

#[test]
fn pagemap_entry_encoding_is_exact() {
    let e = PagemapEntry {
        vaddr: 0x40_0000,
        compat_nr_pages: 2,
        in_parent: None,
        flags: Some(4),
        nr_pages: Some(2),
    };
    let body = [
        0x08, 0x80, 0x80, 0x80, 0x02, // 1: vaddr varint 0x400000
        0x10, 0x02, // 2: compat_nr_pages
        0x20, 0x04, // 4: flags = PE_PRESENT
        0x28, 0x02, // 5: nr_pages
    ];
    assert_eq!(hex(&e.encode_to_vec()), hex(&body));
    assert_eq!(PagemapEntry::decode(&body[..]).unwrap(), e);

    let head = PagemapHead { pages_id: 1 };
    assert_eq!(head.encode_to_vec(), vec![0x08, 0x01]);
}

#[test]
fn vma_entry_encoding_is_exact() {
    let e = VmaEntry {
        start: 0x1000,
        end: 0x2000,
        pgoff: 0,
        shmid: 0,
        prot: 3,
        flags: 0x22,
        status: 0x201, // VMA_AREA_REGULAR | VMA_ANON_PRIVATE
        fd: -1,
        madv: Some(0),
        fdflags: None,
    };
    let body = [
        0x08, 0x80, 0x20, // 1: start
        0x10, 0x80, 0x40, // 2: end
        0x18, 0x00, // 3: pgoff
        0x20, 0x00, // 4: shmid
        0x28, 0x03, // 5: prot
        0x30, 0x22, // 6: flags
        0x38, 0x81, 0x04, // 7: status
        0x40, 0x01, // 8: fd, sint64 zigzag(-1) = 1
        0x48, 0x00, // 9: madv
    ];
    assert_eq!(hex(&e.encode_to_vec()), hex(&body));
    assert_eq!(VmaEntry::decode(&body[..]).unwrap(), e);
}

#[test]
fn defaults_follow_criu() {
    let o = CriuOpts::default();
    assert_eq!(o.images_dir_fd, -1);
    assert_eq!(o.log_level(), 2);
    assert_eq!(o.cpu_cap(), 0xffff_ffff);
    assert_eq!(o.ghost_limit(), 0x10_0000);
    assert_eq!(o.pre_dump_mode(), CriuPreDumpMode::Splice);
    assert_eq!(o.network_lock(), CriuNetworkLockMethod::Iptables);
    assert_eq!(RegFileEntry::default().mnt_id(), -1);
    assert_eq!(UnixSkEntry::default().mnt_id(), -1);
    assert_eq!(PacketSockEntry::default().fanout(), 0xffff_ffff);
    assert_eq!(UserX86RegsEntry::default().mode(), UserX86RegsMode::Native);
    let d = UserDescT::default();
    assert!(d.read_exec_only && d.seg_not_present);
    // A required field at its default is still on the wire.
    let o = CriuOpts::default().encode_to_vec();
    assert_eq!(
        o,
        vec![0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
    );
}

#[test]
fn unknown_fields_are_skipped() {
    // criu_req{type=VERSION} plus an unknown field 99 (varint) and 100 (bytes).
    let mut b = CriuReq {
        r#type: CriuReqType::Version as i32,
        ..Default::default()
    }
    .encode_to_vec();
    b.extend_from_slice(&[0x98, 0x06, 0x05, 0xa2, 0x06, 0x02, 0xaa, 0xbb]);
    let r = CriuReq::decode(b.as_slice()).unwrap();
    assert_eq!(r.r#type(), CriuReqType::Version);
}

#[test]
fn enums_without_zero_default_to_their_first_value() {
    // proto2: an unset enum defaults to its first listed value, which is
    // not 0 for several CRIU enums. Decoding an empty message shows it.
    assert_eq!(SysctlEntry::default().r#type, 5);
    assert_eq!(SysctlEntry::default().encode_to_vec(), vec![0x08, 0x05]);
    assert_eq!(SysctlEntry::default().r#type(), SysctlType::CtlStr);
    assert_eq!(NetDeviceEntry::default().r#type(), NdType::Loopback);
    assert_eq!(FanotifyMarkEntry::default().r#type(), MarkType::Inode);
    assert_eq!(
        SysctlEntry::decode(&[][..]).unwrap().r#type(),
        SysctlType::CtlStr
    );
}

#[test]
fn userns_image() {
    let ext = |first, lower_first, count| UidGidExtent {
        first,
        lower_first,
        count,
    };
    let e = UsernsEntry {
        uid_map: vec![ext(0, 100_000, 1000), ext(1000, 1000, 1)],
        gid_map: vec![ext(0, 200_000, 65536)],
        stasis_setgroups_deny: Some(true),
    };
    roundtrip(Header::Common(magic::USERNS), &[e]);
    // CRIU's field numbers: extent {1 first, 2 lower_first, 3 count},
    // entry {1 uid_map, 2 gid_map}; the extension is field 1000.
    let one = UsernsEntry {
        uid_map: vec![ext(1, 2, 3)],
        gid_map: vec![ext(4, 5, 6)],
        stasis_setgroups_deny: None,
    };
    assert_eq!(
        hex(&one.encode_to_vec()),
        "0a 06 08 01 10 02 18 03 12 06 08 04 10 05 18 06"
    );
    let deny = UsernsEntry {
        stasis_setgroups_deny: Some(true),
        ..Default::default()
    };
    assert_eq!(hex(&deny.encode_to_vec()), "c0 3e 01");
}
