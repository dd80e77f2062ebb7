//! Every malformed-image case is rejected with the right variant and message.

use std::io::{self, Read};

use prost::Message;
use stasis_proto::criu::{CoreEntry, FileEntry, MmEntry, PagemapEntry, PagemapHead, PstreeEntry};
use stasis_proto::image::{
    decode_all, decode_one, magic, Header, ImageError, ImageReader, ImageWriter, DEFAULT_MAX_ENTRY,
    IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC,
};

fn le(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn open_err(bytes: &[u8], header: Header, name: &str) -> ImageError {
    ImageReader::open(bytes, header, name).unwrap_err()
}

#[test]
fn bad_type_magic() {
    let bytes = le(&[IMG_COMMON_MAGIC, 0x12345678]);
    let e = open_err(&bytes, Header::Common(magic::CORE), "core-42.img");
    assert!(matches!(
        e,
        ImageError::BadMagic {
            found: 0x12345678,
            expected: magic::CORE,
            offset: 4,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "core-42.img: bad magic 0x12345678 (expected 0x55053847)"
    );
    assert_eq!(e.name(), "core-42.img");
}

#[test]
fn bad_head_magic() {
    let bytes = le(&[0xdeadbeef, magic::CORE]);
    let e = open_err(&bytes, Header::Common(magic::CORE), "core-1.img");
    assert_eq!(
        e.to_string(),
        "core-1.img: bad magic 0xdeadbeef (expected 0x54564319)"
    );
    assert_eq!(e.offset(), Some(0));
}

#[test]
fn wrong_header_kind() {
    // A service file opened as a common image.
    let stats = le(&[IMG_SERVICE_MAGIC, magic::STATS]);
    let e = open_err(&stats, Header::Common(magic::STATS), "stats-dump");
    assert!(matches!(
        e,
        ImageError::BadMagic {
            found: IMG_SERVICE_MAGIC,
            expected: IMG_COMMON_MAGIC,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "stats-dump: bad magic 0x55105940 (expected 0x54564319)"
    );
    // A common image opened as the inventory.
    let core = le(&[IMG_COMMON_MAGIC, magic::CORE]);
    let e = open_err(&core, Header::Inventory, "inventory.img");
    assert_eq!(
        e.to_string(),
        "inventory.img: bad magic 0x54564319 (expected 0x58313116)"
    );
    // The inventory opened as a common image.
    let inv = le(&[magic::INVENTORY]);
    let e = open_err(&inv, Header::Common(magic::INVENTORY), "inventory.img");
    assert!(matches!(
        e,
        ImageError::BadMagic {
            found: magic::INVENTORY,
            ..
        }
    ));
    // The right kind opens.
    ImageReader::open(
        stats.as_slice(),
        Header::Service(magic::STATS),
        "stats-dump",
    )
    .unwrap();
    ImageReader::open(inv.as_slice(), Header::Inventory, "inventory.img").unwrap();
}

#[test]
fn truncated_header() {
    let e = open_err(&[0x19, 0x43], Header::Common(magic::CORE), "core-1.img");
    assert!(matches!(
        e,
        ImageError::Truncated {
            what: "header",
            need: 4,
            have: 2,
            offset: 0,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "core-1.img: truncated header at offset 0 (need 4 bytes, have 2)"
    );
    let e = open_err(&[], Header::Inventory, "inventory.img");
    assert!(matches!(e, ImageError::Truncated { have: 0, .. }));
    // An empty raw file is fine.
    let mut r = ImageReader::open(&[][..], Header::Raw, "pages-1.img").unwrap();
    assert!(r.read_raw_entry().unwrap().is_none());
}

#[test]
fn clean_eof_vs_truncated_length() {
    let mut bytes = le(&[IMG_COMMON_MAGIC, magic::PSTREE]);
    let mut r = ImageReader::open(
        bytes.as_slice(),
        Header::Common(magic::PSTREE),
        "pstree.img",
    )
    .unwrap();
    assert_eq!(r.read_entry::<PstreeEntry>().unwrap(), None);

    bytes.extend_from_slice(&[10, 0, 0]);
    let mut r = ImageReader::open(
        bytes.as_slice(),
        Header::Common(magic::PSTREE),
        "pstree.img",
    )
    .unwrap();
    let e = r.read_entry::<PstreeEntry>().unwrap_err();
    assert!(matches!(
        e,
        ImageError::Truncated {
            what: "entry",
            offset: 8,
            need: 4,
            have: 3,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "pstree.img: truncated entry at offset 8 (need 4 bytes, have 3)"
    );
}

#[test]
fn truncated_body() {
    // Entries up to offset 120, then a 44-byte entry with only 3 body bytes.
    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::PAGEMAP)).unwrap();
    w.write_entry(&PagemapHead { pages_id: 7 }).unwrap();
    let filler = PagemapEntry {
        vaddr: 0x7f00_0000_0000,
        compat_nr_pages: 1,
        in_parent: None,
        flags: Some(4),
        nr_pages: Some(1),
    };
    while w.offset() + 18 <= 120 - 16 {
        w.write_entry(&filler).unwrap(); // 4 + 14 bytes
    }
    w.write_entry(&PagemapEntry {
        vaddr: 0x4000,
        compat_nr_pages: 1,
        in_parent: Some(false),
        flags: Some(4),
        nr_pages: Some(1),
    })
    .unwrap(); // 4 + 12 bytes
    assert_eq!(w.offset(), 120, "filler sizes line up");
    let mut bytes = w.finish().unwrap();
    bytes.extend_from_slice(&44u32.to_le_bytes());
    bytes.extend_from_slice(&[0x08, 0x01, 0x10]);

    let mut r = ImageReader::open(
        bytes.as_slice(),
        Header::Common(magic::PAGEMAP),
        "pagemap-7.img",
    )
    .unwrap();
    r.read_entry::<PagemapHead>().unwrap().unwrap();
    let mut n = 0;
    let err = loop {
        match r.read_entry::<PagemapEntry>() {
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("no error"),
            Err(e) => break e,
        }
    };
    assert!(n > 0);
    assert!(matches!(
        err,
        ImageError::Truncated {
            what: "entry",
            offset: 120,
            need: 44,
            have: 3,
            ..
        }
    ));
    assert_eq!(
        err.to_string(),
        "pagemap-7.img: truncated entry at offset 120 (need 44 bytes, have 3)"
    );
}

#[test]
fn oversized_entry_is_rejected_before_allocating() {
    let bytes = le(&[IMG_COMMON_MAGIC, magic::MM, u32::MAX]);
    let mut r = ImageReader::open(bytes.as_slice(), Header::Common(magic::MM), "mm-1.img").unwrap();
    assert_eq!(r.max_entry(), DEFAULT_MAX_ENTRY);
    let e = r.read_entry::<MmEntry>().unwrap_err();
    assert!(matches!(
        e,
        ImageError::Oversized {
            len: 4294967295,
            offset: 8,
            limit: 16777216,
            ..
        }
    ));
    assert_eq!(
        e.to_string(),
        "mm-1.img: entry of 4294967295 bytes at offset 8 exceeds limit 16777216"
    );

    // A custom limit applies; entries at the limit pass.
    let e = PstreeEntry {
        pid: 1,
        ppid: 0,
        pgid: 1,
        sid: 1,
        threads: vec![1],
        ..Default::default()
    };
    let mut w = ImageWriter::new(Vec::new(), Header::Common(magic::PSTREE)).unwrap();
    w.write_entry(&e).unwrap();
    let bytes = w.finish().unwrap();
    let mut r = ImageReader::open(
        bytes.as_slice(),
        Header::Common(magic::PSTREE),
        "pstree.img",
    )
    .unwrap();
    r.set_max_entry(9);
    assert!(matches!(
        r.read_entry::<PstreeEntry>(),
        Err(ImageError::Oversized {
            len: 10,
            limit: 9,
            ..
        })
    ));
    let mut r = ImageReader::open(
        bytes.as_slice(),
        Header::Common(magic::PSTREE),
        "pstree.img",
    )
    .unwrap();
    r.set_max_entry(10);
    assert_eq!(r.read_entry::<PstreeEntry>().unwrap(), Some(e));
}

#[test]
fn garbage_protobuf() {
    // Field 1, wire type 7 (invalid).
    let mut bytes = le(&[IMG_COMMON_MAGIC, magic::FILES, 2]);
    bytes.extend_from_slice(&[0x0f, 0x00]);
    let mut r =
        ImageReader::open(bytes.as_slice(), Header::Common(magic::FILES), "files.img").unwrap();
    let e = r.read_entry::<FileEntry>().unwrap_err();
    assert!(matches!(e, ImageError::Decode { offset: 8, .. }));
    let msg = e.to_string();
    assert!(
        msg.starts_with("files.img: protobuf decode failed at offset 8: "),
        "{msg}"
    );

    // A length-delimited field running past the entry.
    let mut bytes = le(&[IMG_COMMON_MAGIC, magic::CORE, 3]);
    bytes.extend_from_slice(&[0x12, 0x7f, 0x00]);
    let e = decode_one::<CoreEntry>(&bytes, Header::Common(magic::CORE), "core-9.img").unwrap_err();
    assert!(matches!(e, ImageError::Decode { .. }), "{e}");
}

#[test]
fn truncated_payload() {
    let bytes = le(&[IMG_COMMON_MAGIC, magic::PIPES_DATA]);
    let mut with_payload = bytes.clone();
    with_payload.extend_from_slice(b"abc");
    let mut r = ImageReader::open(
        with_payload.as_slice(),
        Header::Common(magic::PIPES_DATA),
        "pipes-data.img",
    )
    .unwrap();
    let e = r.read_payload(5).unwrap_err();
    assert_eq!(
        e.to_string(),
        "pipes-data.img: truncated payload at offset 8 (need 5 bytes, have 3)"
    );
    let mut r = ImageReader::open(
        with_payload.as_slice(),
        Header::Common(magic::PIPES_DATA),
        "pipes-data.img",
    )
    .unwrap();
    let mut buf = [0u8; 4];
    assert!(matches!(
        r.read_payload_into(&mut buf),
        Err(ImageError::Truncated {
            what: "payload",
            need: 4,
            have: 3,
            ..
        })
    ));
    let mut r = ImageReader::open(
        with_payload.as_slice(),
        Header::Common(magic::PIPES_DATA),
        "pipes-data.img",
    )
    .unwrap();
    assert!(matches!(
        r.skip_payload(1 << 40),
        Err(ImageError::Truncated { have: 3, .. })
    ));
    // A huge claimed payload length does not allocate it up front.
    let mut r = ImageReader::open(
        bytes.as_slice(),
        Header::Common(magic::PIPES_DATA),
        "pipes-data.img",
    )
    .unwrap();
    assert!(matches!(
        r.read_payload(usize::MAX),
        Err(ImageError::Truncated { have: 0, .. })
    ));
}

struct FailingReader {
    data: Vec<u8>,
    pos: usize,
    interrupted: bool,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.data.len() {
            return Err(io::Error::other("disk on fire"));
        }
        // One byte at a time, with an EINTR first, to exercise the fill loop.
        if self.pos == 1 && !self.interrupted {
            self.interrupted = true;
            return Err(io::ErrorKind::Interrupted.into());
        }
        buf[0] = self.data[self.pos];
        self.pos += 1;
        Ok(1)
    }
}

#[test]
fn io_errors_carry_name_and_offset() {
    let r = FailingReader {
        data: le(&[IMG_COMMON_MAGIC, magic::CORE, 5]),
        pos: 0,
        interrupted: false,
    };
    let mut r = ImageReader::open(r, Header::Common(magic::CORE), "core-3.img")
        .unwrap_or_else(|e| panic!("{e}"));
    let e = r.read_entry::<CoreEntry>().unwrap_err();
    assert!(matches!(e, ImageError::Io { offset: 12, .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "core-3.img: i/o error at offset 12: disk on fire"
    );
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn writer_io_errors_propagate() {
    struct Full;
    impl io::Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let e = ImageWriter::new(Full, Header::Common(magic::CORE)).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::WriteZero);
    // Raw header writes nothing, so creation works; the first entry fails.
    let mut w = ImageWriter::new(Full, Header::Raw).unwrap();
    assert!(w.write_entry(&PagemapHead { pages_id: 1 }).is_err());
}

#[test]
fn helpers() {
    let e = decode_one::<PstreeEntry>(
        &le(&[IMG_COMMON_MAGIC, magic::PSTREE]),
        Header::Common(magic::PSTREE),
        "pstree.img",
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "pstree.img: no entry");
    let entries = vec![PagemapHead { pages_id: 1 }, PagemapHead { pages_id: 2 }];
    let bytes = stasis_proto::encode_image(Header::Common(magic::PAGEMAP), &entries).unwrap();
    let back: Vec<PagemapHead> = decode_all(&bytes, Header::Common(magic::PAGEMAP), "p").unwrap();
    assert_eq!(back, entries);
    // The entries iterator stops after the first error.
    let mut bad = bytes.clone();
    bad.extend_from_slice(&[1, 0]);
    let mut r = ImageReader::open(bad.as_slice(), Header::Common(magic::PAGEMAP), "p").unwrap();
    let items: Vec<_> = r.entries::<PagemapHead>().collect();
    assert_eq!(items.len(), 3);
    assert!(items[2].is_err());
    // Raw entry access.
    let mut r = ImageReader::open(bytes.as_slice(), Header::Common(magic::PAGEMAP), "p").unwrap();
    assert_eq!(
        r.read_raw_entry().unwrap(),
        Some(&entries[0].encode_to_vec()[..])
    );
}
