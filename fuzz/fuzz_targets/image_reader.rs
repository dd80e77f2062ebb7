//! Feeds arbitrary bytes to ImageReader as several message types.
//!
//! Byte 0 picks the expected header and the payload-read pattern; the rest
//! is the image file. Properties: no panic, bounded memory (entries are
//! capped by the reader limit, payloads grow with the bytes present), and
//! every decoded entry re-encodes to an equal message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header, ImageReader};

const HEADERS: [Header; 6] = [
    Header::Common(magic::CORE),
    Header::Common(magic::FILES),
    Header::Common(magic::PAGEMAP),
    Header::Service(magic::STATS),
    Header::Inventory,
    Header::Raw,
];

fn drive<M: Message + Default + PartialEq + std::fmt::Debug>(
    data: &[u8],
    header: Header,
    mode: u8,
) {
    let Ok(mut r) = ImageReader::open(data, header, "fuzz.img") else {
        return;
    };
    if mode & 0x80 != 0 {
        r.set_max_entry(usize::from(mode & 0x3f));
    }
    for i in 0..256u32 {
        match r.read_entry::<M>() {
            Ok(Some(m)) => {
                let again = M::decode(m.encode_to_vec().as_slice()).expect("re-decode");
                assert_eq!(again, m);
            }
            Ok(None) | Err(_) => return,
        }
        let n = (i as usize * 7 + usize::from(mode)) % 97;
        let res = match (mode >> 3) & 3 {
            1 => r.read_payload(n).map(drop),
            2 => r.skip_payload(n as u64),
            3 => {
                let mut buf = vec![0u8; n % 16];
                r.read_payload_into(&mut buf)
            }
            _ => Ok(()),
        };
        if res.is_err() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, image)) = data.split_first() else {
        return;
    };
    let header = HEADERS[usize::from(mode) % HEADERS.len()];
    drive::<PstreeEntry>(image, header, mode);
    drive::<CoreEntry>(image, header, mode);
    drive::<FileEntry>(image, header, mode);
    drive::<FdinfoEntry>(image, header, mode);
    drive::<MmEntry>(image, header, mode);
    drive::<PagemapEntry>(image, header, mode);
    drive::<InventoryEntry>(image, header, mode);
    drive::<StatsEntry>(image, header, mode);
    drive::<CriuReq>(image, header, mode);
    drive::<CgroupEntry>(image, header, mode);
    drive::<MntEntry>(image, header, mode);
    drive::<NetDeviceEntry>(image, header, mode);
    drive::<GhostFileEntry>(image, header, mode);
});
