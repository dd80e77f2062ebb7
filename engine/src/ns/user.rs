//! User namespace. Not supported yet: a tree in a user namespace of its own
//! is refused at dump.

use stasis_proto::criu::UidGidExtent;

use super::KindOps;
use crate::error::Error;
use crate::proc::NsKind;

/// uid/gid maps of a user namespace (`userns-<id>.img`).
#[derive(Debug, Clone, Default)]
pub struct UserNs {
    pub uid_map: Vec<UidGidExtent>,
    pub gid_map: Vec<UidGidExtent>,
}

pub const OPS: KindOps = KindOps {
    kind: NsKind::User,
    check: |cx| {
        Err(Error::unsupported(
            cx.root_pid,
            "the tree is in a user namespace of its own: user namespaces are not supported yet",
        ))
    },
    dump: |_| Ok(()),
    read: |dir, id, _| {
        Err(Error::bad_image(
            format!("userns-{id}.img in {}", dir.path().display()),
            "the tree has a user namespace of its own: not supported yet",
        ))
    },
    setup: |_| Err("user namespaces are not supported yet".into()),
};
