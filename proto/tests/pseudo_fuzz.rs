//! Deterministic pseudo-fuzzing of ImageReader: random and mutated images
//! must only ever produce `Ok` or an `ImageError`, never a panic, and every
//! decoded entry must survive re-encoding.

use std::fmt::Debug;

use prost::Message;
use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header, ImageReader, ImageWriter};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const HEADERS: [Header; 5] = [
    Header::Common(magic::CORE),
    Header::Common(magic::FILES),
    Header::Service(magic::STATS),
    Header::Inventory,
    Header::Raw,
];

/// Reads up to 64 entries of `M`, mixing in payload reads, and checks the
/// decode/encode/decode property for every entry that decodes.
fn drive<M: Message + Default + PartialEq + Debug>(
    data: &[u8],
    header: Header,
    rng: &mut XorShift,
) {
    let Ok(mut r) = ImageReader::open(data, header, "fuzz.img") else {
        return;
    };
    if rng.below(4) == 0 {
        r.set_max_entry(rng.below(64));
    }
    for _ in 0..64 {
        match r.read_entry::<M>() {
            Ok(Some(m)) => {
                let again = M::decode(m.encode_to_vec().as_slice()).expect("re-decode");
                assert_eq!(again, m);
            }
            Ok(None) | Err(_) => break,
        }
        let res = match rng.below(6) {
            0 => r.read_payload(rng.below(64)).map(drop),
            1 => r.skip_payload(rng.next() % 64),
            2 => {
                let mut buf = vec![0u8; rng.below(16)];
                r.read_payload_into(&mut buf)
            }
            3 => r.read_payload(usize::MAX).map(drop),
            _ => Ok(()),
        };
        if res.is_err() {
            break;
        }
    }
}

fn drive_all(data: &[u8], rng: &mut XorShift) {
    for h in HEADERS {
        drive::<PstreeEntry>(data, h, rng);
        drive::<CoreEntry>(data, h, rng);
        drive::<FileEntry>(data, h, rng);
        drive::<MmEntry>(data, h, rng);
        drive::<PagemapEntry>(data, h, rng);
        drive::<InventoryEntry>(data, h, rng);
        drive::<StatsEntry>(data, h, rng);
        drive::<CriuReq>(data, h, rng);
        drive::<CgroupEntry>(data, h, rng);
        drive::<NetDeviceEntry>(data, h, rng);
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();

    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::CORE)).unwrap();
    w.write_entry(&CoreEntry {
        mtype: core_entry::March::X8664 as i32,
        thread_info: Some(ThreadInfoX86 {
            clear_tid_addr: 0x7f00_0000_0a10,
            gpregs: UserX86RegsEntry {
                ip: 0x40_1000,
                sp: 0x7ffd_0000_0000,
                mode: Some(1),
                ..Default::default()
            },
            fpregs: UserX86FpregsEntry {
                st_space: vec![1; 32],
                xmm_space: vec![2; 64],
                xsave: Some(UserX86XsaveEntry {
                    xstate_bv: 7,
                    ymmh_space: vec![3; 64],
                    ..Default::default()
                }),
                ..Default::default()
            },
            tls: vec![UserDescT::default(); 3],
        }),
        tc: Some(TaskCoreEntry {
            comm: "init".into(),
            sigactions: vec![SaEntry::default(); 4],
            rlimits: Some(TaskRlimitsEntry {
                rlimits: vec![RlimitEntry { cur: 1, max: 2 }; 16],
            }),
            ..Default::default()
        }),
        ids: Some(TaskKobjIdsEntry::default()),
        thread_core: Some(ThreadCoreEntry {
            creds: Some(CredsEntry {
                cap_eff: vec![u32::MAX; 2],
                groups: vec![1, 2, 3],
                ..Default::default()
            }),
            ..Default::default()
        }),
    })
    .unwrap();
    out.push(w.finish().unwrap());

    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::FILES)).unwrap();
    for id in 0..4 {
        w.write_entry(&FileEntry {
            r#type: FdTypes::Reg as i32,
            id,
            reg: Some(Box::new(RegFileEntry {
                id,
                name: format!("/tmp/file-{id}"),
                mnt_id: Some(-1),
                build_id: vec![1, 2, 3],
                ..Default::default()
            })),
            usk: Some(Box::new(UnixSkEntry {
                name: b"\0sock".to_vec(),
                opts: SkOptsEntry {
                    so_filter: vec![6, 7],
                    ..Default::default()
                },
                ..Default::default()
            })),
            ..Default::default()
        })
        .unwrap();
        w.write_payload(&[0xab; 5]).unwrap();
    }
    out.push(w.finish().unwrap());

    let mut w = ImageWriter::new(Vec::new(), Header::Inventory).unwrap();
    w.write_entry(&InventoryEntry {
        img_version: 2,
        fdinfo_per_id: Some(true),
        root_ids: Some(TaskKobjIdsEntry::default()),
        plugins_entry: Some(PluginsEntry {
            plugins: vec!["a".into()],
        }),
        ..Default::default()
    })
    .unwrap();
    out.push(w.finish().unwrap());

    let mut w = ImageWriter::new(Vec::new(), Header::Service(magic::STATS)).unwrap();
    w.write_entry(&StatsEntry {
        dump: Some(DumpStatsEntry {
            pages_written: 77,
            ..Default::default()
        }),
        restore: None,
    })
    .unwrap();
    out.push(w.finish().unwrap());

    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::PSTREE)).unwrap();
    for pid in 1..6 {
        w.write_entry(&PstreeEntry {
            pid,
            ppid: pid - 1,
            pgid: 1,
            sid: 1,
            threads: vec![pid, pid + 100],
            ..Default::default()
        })
        .unwrap();
    }
    out.push(w.finish().unwrap());
    out
}

fn mutate(seed: &[u8], rng: &mut XorShift) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(v.len() + 1);
                v.insert(i, rng.next() as u8);
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.remove(i);
            }
            4 => {
                let n = rng.below(v.len() + 1);
                v.truncate(n);
            }
            5 if v.len() >= 12 => {
                // Smash the first entry's length prefix.
                let len = match rng.below(3) {
                    0 => u32::MAX,
                    1 => rng.next() as u32,
                    _ => rng.below(32) as u32,
                };
                v[8..12].copy_from_slice(&len.to_le_bytes());
            }
            _ => {
                let n = rng.below(16);
                let extra = rng.bytes(n);
                v.extend_from_slice(&extra);
            }
        }
    }
    v
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for i in 0..3000 {
        let len = rng.below(256);
        let mut data = rng.bytes(len);
        // Half the time give it a valid header so entries get parsed.
        if i % 2 == 0 {
            let h = HEADERS[rng.below(HEADERS.len())];
            let (b, n) = h.encode();
            data.splice(0..0, b[..n].iter().copied());
        }
        drive_all(&data, &mut rng);
    }
}

#[test]
fn mutated_images_never_panic() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let seeds = seeds();
    for seed in &seeds {
        drive_all(seed, &mut rng);
    }
    for _ in 0..3000 {
        let seed = &seeds[rng.below(seeds.len())];
        let data = mutate(seed, &mut rng);
        drive_all(&data, &mut rng);
    }
}
