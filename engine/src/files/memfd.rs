//! memfd: anonymous memory files, held by fds and/or mapped.
//!
//! As in CRIU, the file (one open file description, or one mapping) is a
//! `memfd_file_entry` {id, flags, pos, fown, inode_id} in files.img, and each
//! memfd inode is saved once as a `memfd_inode_entry` {name, uid, gid, size,
//! shmid, seals, inode_id, mode} in memfd.img, with its content stored as
//! shared memory: `pagemap-shmem-<shmid>.img` (offsets in the file) and a
//! pages image, `shmid` being the inode number. The content is read from a
//! new read-only open of the same inode (`/proc/PID/fd/N` or
//! `/proc/PID/map_files/...`) with pread, holes skipped (SEEK_DATA), so the
//! target's file position and data are untouched. A mapping of a memfd is a
//! `VMA_AREA_MEMFD` VMA whose `shmid` is such a file id.
//!
//! Restore: the restorer creates every inode before forking (memfd_create,
//! size, content, owner, mode, then the seals that do not depend on
//! mappings) and keeps it open; each fd and each mapping reopens it through
//! `/proc/self/fd`, so fds and mappings of all tasks share one inode again.
//! `F_SEAL_FUTURE_WRITE` and `F_SEAL_SEAL` are added once every task is
//! mapped ([`late_seals`]), since the first forbids new writable mappings and
//! the second forbids further seals.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::OnceLock;

use stasis_proto::criu::{
    FdTypes, FileEntry, FownEntry, MemfdFileEntry, MemfdInodeEntry, PagemapEntry, PagemapHead,
};
use stasis_proto::image::magic;

use super::{FdCtx, FileTable, OpenCtx};
use crate::error::{Error, PathCtx, Result};
use crate::images::{common, ImageDir};
use crate::mem::{PAGE_SIZE, PE_PRESENT};
use crate::sys::fdobj;

pub const MEMFD_IMG: &str = "memfd.img";
const PREFIX: &str = "/memfd:";

/// Seals that must wait until every mapping exists.
const LATE_SEALS: u32 = (libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL) as u32;

/// Dump-side state: the inodes saved so far and the file ids of mappings.
#[derive(Default)]
pub struct Dumped {
    inodes: HashMap<(u64, u64), u32>,
    entries: Vec<MemfdInodeEntry>,
    maps: HashMap<(u32, u32), u32>,
}

fn pagemap_name(shmid: u32) -> String {
    format!("pagemap-shmem-{shmid}.img")
}

/// The device of memfds (the kernel's internal shmem mount).
fn shmem_dev() -> Option<u64> {
    static DEV: OnceLock<Option<u64>> = OnceLock::new();
    *DEV.get_or_init(|| {
        let fd = fdobj::memfd_create("stasis-probe", libc::MFD_CLOEXEC).ok()?;
        File::from(fd).metadata().ok().map(|m| m.dev())
    })
}

/// The NAME of `/memfd:NAME (deleted)`.
pub fn name_of(link: &str) -> &str {
    let l = link.strip_suffix(" (deleted)").unwrap_or(link);
    l.strip_prefix(PREFIX).unwrap_or(l)
}

fn check_dev(st: &std::fs::Metadata, what: &str) -> std::result::Result<(), String> {
    match shmem_dev() {
        Some(d) if d == st.dev() => Ok(()),
        Some(_) => Err(format!(
            "{what}: not a plain memfd (hugetlb memfds are not supported yet)"
        )),
        None => Err(format!(
            "{what}: cannot tell memfds apart (memfd_create fails)"
        )),
    }
}

/// Save the inode behind `source` once; returns its inode id.
fn dump_inode(
    t: &mut FileTable<'_>,
    source: &Path,
    name: &str,
    st: &std::fs::Metadata,
) -> Result<u32> {
    if let Some(&id) = t.memfds.inodes.get(&(st.dev(), st.ino())) {
        return Ok(id);
    }
    let f = File::open(source).path_ctx(source)?;
    let seals = match fdobj::get_seals(f.as_fd()) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => libc::F_SEAL_SEAL as u32,
        Err(e) => return Err(Error::io(source, e)),
    };
    let size = st.len();
    let shmid = st.ino() as u32;
    // Data runs (page aligned), holes skipped.
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < size {
        use nix::unistd::{lseek, Whence};
        let data = match lseek(f.as_raw_fd(), off, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(Error::io(source, e.into())),
        };
        let hole = lseek(f.as_raw_fd(), data, Whence::SeekHole)
            .map_err(|e| Error::io(source, e.into()))?
            .min(size as i64);
        let a = (data as u64) & !(PAGE_SIZE - 1);
        let b = (hole as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        match runs.last_mut() {
            Some(r) if r.0 + r.1 >= a => r.1 = b.max(r.0 + r.1) - r.0,
            _ => runs.push((a, b - a)),
        }
        off = hole;
    }
    let pages_id = t.new_pages_id();
    let dir = t.dir;
    let pm = pagemap_name(shmid);
    let mut w = dir.writer(&pm, common(magic::PAGEMAP))?;
    dir.put(&mut w, &pm, &PagemapHead { pages_id })?;
    for &(a, len) in &runs {
        let nr = len / PAGE_SIZE;
        dir.put(
            &mut w,
            &pm,
            &PagemapEntry {
                vaddr: a,
                compat_nr_pages: nr.min(u32::MAX as u64) as u32,
                in_parent: None,
                flags: Some(PE_PRESENT),
                nr_pages: Some(nr),
            },
        )?;
    }
    dir.finish(w, &pm)?;
    let pages = format!("pages-{pages_id}.img");
    let out = dir.raw_writer(&pages)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    for &(a, len) in &runs {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            // The last page may extend past the end of the file: zeros.
            let avail = size.saturating_sub(a + done).min(n as u64) as usize;
            buf[avail..n].fill(0);
            f.read_exact_at(&mut buf[..avail], a + done)
                .path_ctx(source)?;
            out.write_all_at(&buf[..n], at).path_ctx(dir.file(&pages))?;
            at += n as u64;
            done += n as u64;
        }
    }
    let id = t.memfds.entries.len() as u32 + 1;
    let (uid, gid) = crate::ns::user::owner_to_tree(t.userns.as_ref(), st.uid(), st.gid());
    t.memfds.entries.push(MemfdInodeEntry {
        name: name.to_string(),
        uid,
        gid,
        size,
        shmid,
        seals,
        inode_id: id as u64,
        hugetlb_flag: None,
        mode: Some(st.mode() & 0o7777),
    });
    t.memfds.inodes.insert((st.dev(), st.ino()), id);
    Ok(id)
}

/// An fd of a task that refers to a memfd.
pub fn dump_fd(t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    check_dev(cx.st, cx.link).map_err(|e| cx.err(e))?;
    let source = format!("/proc/{}/fd/{}", cx.pid, cx.fd);
    let inode_id = dump_inode(t, Path::new(&source), name_of(cx.link), cx.st)?;
    Ok(FileEntry {
        r#type: FdTypes::Memfd as i32,
        id: cx.id,
        memfd: Some(Box::new(MemfdFileEntry {
            id: cx.id,
            flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
            pos: cx.info.pos.max(0) as u64,
            fown: FownEntry::default(),
            inode_id,
        })),
        ..Default::default()
    })
}

/// A memfd held by path (a mapping, or the exe): `path` is `/memfd:NAME`,
/// `source` a /proc link to it. Returns the file id for the VMA.
pub fn dump_path(
    t: &mut FileTable<'_>,
    pid: i32,
    path: &str,
    flags: u32,
    source: &Path,
) -> Result<u32> {
    let st = std::fs::metadata(source)
        .map_err(|e| Error::task(pid, format!("stat {path} via {}", source.display()), e))?;
    check_dev(&st, path).map_err(|e| Error::unsupported(pid, e))?;
    let inode_id = dump_inode(t, source, name_of(path), &st)?;
    if let Some(&id) = t.memfds.maps.get(&(inode_id, flags)) {
        return Ok(id);
    }
    let id = t.new_id();
    t.push(FileEntry {
        r#type: FdTypes::Memfd as i32,
        id,
        memfd: Some(Box::new(MemfdFileEntry {
            id,
            flags,
            pos: 0,
            fown: FownEntry::default(),
            inode_id,
        })),
        ..Default::default()
    });
    t.memfds.maps.insert((inode_id, flags), id);
    Ok(id)
}

/// Write memfd.img (called from `FileTable::write`).
pub fn write(dir: &ImageDir, d: Dumped) -> Result<()> {
    if d.entries.is_empty() {
        return Ok(());
    }
    dir.write_all(MEMFD_IMG, common(magic::MEMFD_INODE), &d.entries)
}

// ---------------------------------------------------------------- restore

fn read_inodes(dir: &ImageDir) -> Result<Vec<MemfdInodeEntry>> {
    if !dir.exists(MEMFD_IMG) {
        return Ok(Vec::new());
    }
    dir.read_all(MEMFD_IMG, common(magic::MEMFD_INODE))
}

/// Recreate one inode with its content and early seals.
fn make_inode(
    dir: &ImageDir,
    e: &MemfdInodeEntry,
    userns: Option<&crate::ns::user::UserNs>,
) -> Result<OwnedFd> {
    let what = format!("memfd:{} (inode {})", e.name, e.inode_id);
    let sealing = e.seals != libc::F_SEAL_SEAL as u32;
    let mut flags = libc::MFD_CLOEXEC;
    if sealing {
        flags |= libc::MFD_ALLOW_SEALING;
    }
    if let Some(h) = e.hugetlb_flag.filter(|&h| h != 0) {
        return Err(Error::Other(format!(
            "{what}: hugetlb memfds (flags {h:#x}) are not supported yet"
        )));
    }
    let fd = fdobj::memfd_create(&e.name, flags)
        .map_err(|err| Error::Other(format!("{what}: memfd_create: {err}")))?;
    let f = File::from(fd);
    f.set_len(e.size).path_ctx(&what)?;
    let pm = pagemap_name(e.shmid);
    if dir.exists(&pm) {
        let mut r = dir.reader(&pm, common(magic::PAGEMAP))?;
        let head: PagemapHead = r
            .read_entry()?
            .ok_or_else(|| Error::bad_image(&pm, "missing pagemap head"))?;
        let pages_name = format!("pages-{}.img", head.pages_id);
        let pages = dir.open_file(&pages_name)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut src = 0u64;
        while let Some(pe) = r.read_entry::<PagemapEntry>()? {
            let nr = pe.nr_pages.unwrap_or(pe.compat_nr_pages as u64);
            if pe.flags.unwrap_or(PE_PRESENT) & PE_PRESENT == 0 {
                continue;
            }
            let len = nr * PAGE_SIZE;
            if pe.vaddr % PAGE_SIZE != 0 || pe.vaddr >= e.size.next_multiple_of(PAGE_SIZE) {
                return Err(Error::bad_image(
                    &pm,
                    format!("pages at {:#x} beyond the file ({:#x})", pe.vaddr, e.size),
                ));
            }
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(buf.len() as u64) as usize;
                pages
                    .read_exact_at(&mut buf[..n], src + done)
                    .path_ctx(dir.file(&pages_name))?;
                // Never write past the end: that would grow the file.
                let keep = e.size.saturating_sub(pe.vaddr + done).min(n as u64) as usize;
                f.write_all_at(&buf[..keep], pe.vaddr + done)
                    .path_ctx(&what)?;
                done += n as u64;
            }
            src += len;
        }
    }
    let (uid, gid) = crate::ns::user::owner_from_tree(userns, e.uid, e.gid);
    let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
    if let Some(m) = e.mode {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(m & 0o7777))
            .path_ctx(&what)?;
    }
    let early = e.seals & !LATE_SEALS;
    if sealing && early != 0 {
        fdobj::add_seals(f.as_fd(), early)
            .map_err(|err| Error::Other(format!("{what}: add seals {early:#x}: {err}")))?;
    }
    Ok(OwnedFd::from(f))
}

/// Recreate every memfd inode of the image: (inode id, fd) each. Runs in the
/// restorer before any task is forked.
/// `userns`: the tree's own user namespace, in which the owners were saved.
pub fn restore_inodes(
    dir: &ImageDir,
    userns: Option<&crate::ns::user::UserNs>,
) -> Result<Vec<(u32, OwnedFd)>> {
    let mut out = Vec::new();
    for e in read_inodes(dir)? {
        out.push((e.inode_id as u32, make_inode(dir, &e, userns)?));
    }
    Ok(out)
}

/// Add the seals that had to wait for the mappings (restorer, after every
/// task's memory is in place). `fds`: inode id -> restorer fd.
pub fn late_seals(dir: &ImageDir, fds: &HashMap<u32, i32>) -> Result<()> {
    for e in read_inodes(dir)? {
        let late = e.seals & LATE_SEALS;
        if late == 0 || e.seals == libc::F_SEAL_SEAL as u32 {
            continue;
        }
        let Some(&fd) = fds.get(&(e.inode_id as u32)) else {
            continue;
        };
        let p = format!("/proc/self/fd/{fd}");
        // F_ADD_SEALS wants a writable file.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .path_ctx(&p)?;
        fdobj::add_seals(f.as_fd(), late)
            .map_err(|err| Error::Other(format!("memfd:{}: add seals {late:#x}: {err}", e.name)))?;
    }
    Ok(())
}

/// Open a memfd file for a task (an fd or a mapping): reopen the inode the
/// restorer made, with the saved flags and position.
pub fn open(e: &MemfdFileEntry, cx: &OpenCtx<'_>) -> std::result::Result<OwnedFd, String> {
    let fd = cx
        .memfd_fds
        .get(&e.inode_id)
        .ok_or_else(|| format!("memfd file {}: no memfd inode {}", e.id, e.inode_id))?;
    let p = format!("/proc/self/fd/{fd}");
    super::reg::open_flags(Path::new(&p), e.flags as i32, e.pos)
        .map_err(|err| format!("reopen memfd inode {}: {err}", e.inode_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_names() {
        assert_eq!(name_of("/memfd:my mem (deleted)"), "my mem");
        assert_eq!(name_of("/memfd:x"), "x");
        assert_eq!(name_of("/memfd: (deleted)"), "");
    }

    #[test]
    fn memfds_live_on_the_shmem_device() {
        let fd = fdobj::memfd_create("t", libc::MFD_CLOEXEC).unwrap();
        let st = File::from(fd).metadata().unwrap();
        assert!(check_dev(&st, "t").is_ok());
        let st = std::fs::metadata("/").unwrap();
        assert!(check_dev(&st, "/").is_err());
    }
}
