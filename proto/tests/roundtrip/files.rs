//! File images: fs, files and their per-kind entries, payload-carrying data images.

use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header, ImageReader, ImageWriter};

use super::common::{roundtrip, rt};

fn fown() -> FownEntry {
    FownEntry {
        uid: 1000,
        euid: 1001,
        signum: 29,
        pid_type: 1,
        pid: 4242,
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
pub fn file_entry_all() -> FileEntry {
    FileEntry {
        r#type: FdTypes::Reg as i32,
        id: 5,
        reg: Some(Box::new(reg_file())),
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
        nsf: Some(Box::new(NsFileEntry {
            id: 5,
            ns_id: 3,
            ns_cflag: 0x4000_0000,
            flags: 0,
        })),
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
        efd: Some(Box::new(EventfdFileEntry {
            id: 8,
            flags: 0o2004000,
            fown: fown(),
            counter: 17,
        })),
        epfd: Some(Box::new(EventpollFileEntry {
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
        })),
        sgfd: Some(Box::new(SignalfdEntry {
            id: 10,
            flags: 0o4000,
            fown: fown(),
            sigmask: 1 << 16,
        })),
        tunf: Some(Box::new(TunfileEntry {
            id: 11,
            netdev: Some("tun0".into()),
            detached: Some(false),
            ns_id: Some(2),
        })),
        tfd: Some(Box::new(TimerfdEntry {
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
        })),
        ify: Some(Box::new(InotifyFileEntry {
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
        })),
        ffy: Some(Box::new(FanotifyFileEntry {
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
        })),
        ext: Some(Box::new(ExtFileEntry {
            id: 15,
            fown: fown(),
        })),
        usk: Some(Box::new(unix_sk())),
        fifo: Some(Box::new(FifoEntry {
            id: 17,
            pipe_id: 5555,
            regf_id: Some(18),
        })),
        pipe: Some(Box::new(PipeEntry {
            id: 18,
            pipe_id: 5556,
            flags: 0o4001,
            fown: fown(),
        })),
        tty: Some(Box::new(tty_file())),
        memfd: Some(Box::new(MemfdFileEntry {
            id: 20,
            flags: 0o2,
            pos: 10,
            fown: fown(),
            inode_id: 1,
        })),
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
        pidfd: Some(Box::new(PidfdEntry {
            id: 22,
            ino: 3333,
            flags: 0o4000,
            nspid: -1,
            fown: fown(),
        })),
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
