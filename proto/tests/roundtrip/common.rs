//! Shared helpers: image round-trip checks and hex dumps.

use std::fmt::Debug;

use prost::Message;
use stasis_proto::image::{magic, Header, ImageReader, ImageWriter};

/// Writes `msgs` as an image, reads them back, and checks equality. Also
/// checks that the populated message differs from its default (so every
/// sample really carries data).
pub fn roundtrip<M: Message + Default + PartialEq + Debug + Clone>(header: Header, msgs: &[M]) {
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

pub fn rt<M: Message + Default + PartialEq + Debug + Clone>(m: M) {
    roundtrip(Header::Common(magic::CORE), &[m.clone(), m]);
}

pub fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
