//! Namespace images.

use prost::Message;
use stasis_proto::criu::*;
use stasis_proto::image::{magic, Header};

use super::common::{hex, roundtrip};

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
