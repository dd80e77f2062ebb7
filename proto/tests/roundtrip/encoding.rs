//! Exact byte encodings and proto2 default/unknown-field behaviour.

use prost::Message;
use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header, ImageWriter};

use super::common::hex;

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
