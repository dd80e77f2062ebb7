//! UTS namespace: hostname and domainname (`utsns-<id>.img`).

use stasis_proto::criu::UtsnsEntry;
use stasis_proto::image::magic;

use super::{in_ns_of, write_sys, DumpCx, KindOps, NsPlan};
use crate::error::{Error, Result};
use crate::images::{common, ImageDir};
use crate::proc::NsKind;

pub const OPS: KindOps = KindOps {
    kind: NsKind::Uts,
    check: |_| Ok(()),
    dump,
    read,
    setup,
};

const HOSTNAME: &str = "/proc/sys/kernel/hostname";
const DOMAINNAME: &str = "/proc/sys/kernel/domainname";

fn image(id: u32) -> String {
    format!("utsns-{id}.img")
}

fn read_line(p: &str) -> Result<String> {
    let s = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    Ok(s.trim_end_matches('\n').to_string())
}

fn dump(cx: &DumpCx) -> Result<()> {
    // These sysctls show the reader's UTS namespace.
    let e = in_ns_of(cx.root_pid, &[NsKind::Uts], || {
        Ok(UtsnsEntry {
            nodename: read_line(HOSTNAME)?,
            domainname: read_line(DOMAINNAME)?,
        })
    })?;
    cx.dir.write_one(&image(cx.id), common(magic::UTSNS), &e)
}

fn read(dir: &ImageDir, id: u32, p: &mut NsPlan) -> Result<()> {
    p.uts = Some(dir.read_one(&image(id), common(magic::UTSNS))?);
    Ok(())
}

fn setup(p: &NsPlan) -> std::result::Result<(), String> {
    if let Some(u) = &p.uts {
        write_sys(HOSTNAME, &u.nodename)?;
        write_sys(DOMAINNAME, &u.domainname)?;
    }
    Ok(())
}
