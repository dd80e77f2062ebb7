//! Task images: inventory, pstree, core, ids, creds, signals, timers.

use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header};

use super::common::{roundtrip, rt};

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
