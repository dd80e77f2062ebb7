//! Mount namespace (ns-b's part; this placeholder refuses it). A tree in a
//! mount namespace of its own is refused at dump.

use super::KindOps;
use crate::error::Error;
use crate::proc::NsKind;

/// The mount table to rebuild.
#[derive(Debug, Clone, Default)]
pub struct MntNs {}

pub const OPS: KindOps = KindOps {
    kind: NsKind::Mnt,
    check: |cx| {
        Err(Error::unsupported(
            cx.root_pid,
            "the tree is in a mount namespace of its own: not supported yet",
        ))
    },
    dump: |_| Ok(()),
    read: |_, id, _| {
        Err(Error::bad_image(
            format!("mountpoints-{id}.img"),
            "mount namespaces are not supported yet",
        ))
    },
    setup: |_| Err("mount namespaces are not supported yet".into()),
};
