//! Memory images: mm, vmas, aio rings, pagemap and pages.

use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header, ImageReader, ImageWriter};

use super::common::{roundtrip, rt};

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
