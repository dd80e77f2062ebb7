//! Regular files, directories and device nodes: saved by path, flags and
//! position; files that were unlinked while open (or mapped) are saved with
//! their content as ghost files and recreated unnamed on restore.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use stasis_proto::criu::{
    FdTypes, FileEntry, FownEntry, GhostFileEntry, RegFileEntry, RemapFilePathEntry, RemapType,
    Timeval,
};
use stasis_proto::image::magic;

use super::{FdCtx, FileTable};
use crate::error::{Error, PathCtx, Result};
use crate::images::{common, ImageDir};

pub fn ghost_image(remap_id: u32) -> String {
    format!("ghost-file-{remap_id:x}.img")
}

fn strip_deleted(link: &str) -> (&str, bool) {
    match link.strip_suffix(" (deleted)") {
        Some(p) => (p, true),
        None => (link, false),
    }
}

fn reg_entry(id: u32, flags: u32, pos: u64, name: &str, st: &Metadata) -> RegFileEntry {
    RegFileEntry {
        id,
        flags,
        pos,
        fown: FownEntry::default(),
        name: name.to_string(),
        mnt_id: None,
        size: st.is_file().then_some(st.len()),
        ext: None,
        mode: Some(st.mode()),
        ..Default::default()
    }
}

/// Save the content of a deleted file as `ghost-file-<remap_id>.img` and
/// record the remap, so restore recreates the file unnamed.
fn dump_ghost(
    t: &mut FileTable<'_>,
    id: u32,
    name: &str,
    st: &Metadata,
    source: &Path,
) -> Result<()> {
    if !st.is_file() {
        return Err(Error::Other(format!(
            "{name}: deleted non-regular files are not supported"
        )));
    }
    let remap_id = t.new_id();
    let img = ghost_image(remap_id);
    let mut w = t.dir.writer(&img, common(magic::GHOST_FILE))?;
    let (uid, gid) = crate::ns::user::owner_to_tree(t.userns.as_ref(), st.uid(), st.gid());
    let g = GhostFileEntry {
        uid,
        gid,
        mode: st.mode(),
        dev: Some(st.dev() as u32),
        ino: Some(st.ino()),
        rdev: None,
        atim: Some(Timeval {
            tv_sec: st.atime() as u64,
            tv_usec: (st.atime_nsec() / 1000) as u64,
        }),
        mtim: Some(Timeval {
            tv_sec: st.mtime() as u64,
            tv_usec: (st.mtime_nsec() / 1000) as u64,
        }),
        chunks: Some(false),
        size: Some(st.len()),
        symlnk_target: None,
    };
    t.dir.put(&mut w, &img, &g)?;
    let mut src = File::open(source).path_ctx(source)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf).path_ctx(source)?;
        if n == 0 {
            break;
        }
        w.write_payload(&buf[..n])
            .map_err(|e| Error::io(t.dir.file(&img), e))?;
    }
    t.dir.finish(w, &img)?;
    t.push_remap(RemapFilePathEntry {
        orig_id: id,
        remap_id,
        remap_type: Some(RemapType::Ghost as i32),
    });
    Ok(())
}

/// A file held by path (exe, mapping, cwd, root).
pub fn dump_path(
    t: &mut FileTable<'_>,
    pid: i32,
    id: u32,
    path: &str,
    deleted: bool,
    flags: u32,
    source: &Path,
) -> Result<()> {
    let st = std::fs::metadata(source)
        .map_err(|e| Error::task(pid, format!("stat {path} via {}", source.display()), e))?;
    if deleted && st.nlink() == 0 {
        dump_ghost(t, id, path, &st, source)?;
    }
    t.push(FileEntry {
        r#type: FdTypes::Reg as i32,
        id,
        reg: Some(Box::new(reg_entry(id, flags, 0, path, &st))),
        ..Default::default()
    });
    Ok(())
}

/// An fd of a task that refers to a regular file, directory or device.
pub fn dump_fd(t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    let (name, deleted) = strip_deleted(cx.link);
    let source = format!("/proc/{}/fd/{}", cx.pid, cx.fd);
    if deleted && cx.st.nlink() == 0 {
        dump_ghost(t, cx.id, name, cx.st, Path::new(&source))?;
    } else if !name.starts_with('/') {
        return Err(cx.err(format!("{}: not a path", cx.link)));
    }
    let flags = cx.info.flags & !(libc::O_CLOEXEC as u32);
    let mut reg = reg_entry(cx.id, flags, cx.info.pos.max(0) as u64, name, cx.st);
    reg.fown = super::fown::of(cx, t.userns.as_ref())?;
    Ok(FileEntry {
        r#type: FdTypes::Reg as i32,
        id: cx.id,
        reg: Some(Box::new(reg)),
        ..Default::default()
    })
}

/// Is this reg entry a terminal (re-bound to the caller's with --shell-job)?
pub fn is_tty(e: &RegFileEntry) -> bool {
    let chr = e.mode.is_some_and(|m| m & libc::S_IFMT == libc::S_IFCHR);
    chr && (e.name.starts_with("/dev/pts/")
        || e.name.starts_with("/dev/tty")
        || e.name == "/dev/console"
        || e.name == "/dev/ptmx")
}

/// Recreate a ghost file as an unnamed file with its content; the returned
/// fd stays open in the restorer and is reopened by path through /proc.
/// `userns`: the tree's own user namespace, in which the owner was saved.
pub fn restore_ghost(
    dir: &ImageDir,
    remap_id: u32,
    orig_name: &str,
    userns: Option<&crate::ns::user::UserNs>,
) -> Result<OwnedFd> {
    let img = ghost_image(remap_id);
    let mut r = dir.reader(&img, common(magic::GHOST_FILE))?;
    let g: GhostFileEntry = r
        .read_entry()?
        .ok_or_else(|| Error::bad_image(&img, "no ghost file entry"))?;
    let parent = Path::new(orig_name)
        .parent()
        .filter(|p| p.is_dir())
        .unwrap_or(dir.path());
    let f = match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(g.mode & 0o7777)
        .open(parent)
    {
        Ok(f) => f,
        Err(_) => {
            // No O_TMPFILE on this filesystem: create and unlink at once.
            let p = parent.join(format!(".stasis-ghost-{remap_id:x}-{}", std::process::id()));
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(g.mode & 0o7777)
                .open(&p)
                .path_ctx(&p)?;
            let _ = std::fs::remove_file(&p);
            f
        }
    };
    let size = g.size.unwrap_or(0);
    let mut left = size;
    let mut buf = vec![0u8; (1 << 20).min(size.max(1) as usize)];
    let mut off = 0u64;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        r.read_payload_into(&mut buf[..n])?;
        std::os::unix::fs::FileExt::write_all_at(&f, &buf[..n], off).path_ctx(orig_name)?;
        off += n as u64;
        left -= n as u64;
    }
    let (uid, gid) = crate::ns::user::owner_from_tree(userns, g.uid, g.gid);
    let _ = std::os::unix::fs::fchown(&f, Some(uid), Some(gid));
    Ok(OwnedFd::from(f))
}

/// Open a regular file entry for restore. `ghost` is the restorer's fd of the
/// recreated content when the file was deleted; `tty` is the caller's
/// terminal for shell jobs.
pub fn open(e: &RegFileEntry, ghost: Option<i32>, tty: Option<i32>) -> io::Result<OwnedFd> {
    let path = match (ghost, tty) {
        (Some(g), _) => format!("/proc/self/fd/{g}"),
        (None, Some(t)) if is_tty(e) => format!("/proc/self/fd/{t}"),
        _ => e.name.clone(),
    };
    open_flags(Path::new(&path), e.flags as i32, e.pos)
}

/// open(2) with the saved flags (never creating or truncating) and seek to
/// the saved position. The fd is close-on-exec until it is moved into place.
pub fn open_flags(path: &Path, flags: i32, pos: u64) -> io::Result<OwnedFd> {
    let acc = flags & libc::O_ACCMODE;
    let f = OpenOptions::new()
        .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
        .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
        .custom_flags(
            flags
                & !(libc::O_ACCMODE
                    | libc::O_CREAT
                    | libc::O_TRUNC
                    | libc::O_EXCL
                    | (libc::O_TMPFILE & !libc::O_DIRECTORY)
                    | libc::O_CLOEXEC)
                | libc::O_NOCTTY,
        )
        .open(path)?;
    if pos != 0 {
        // O_APPEND files still report (and keep) their last position.
        nix::unistd::lseek(f.as_raw_fd(), pos as i64, nix::unistd::Whence::SeekSet)?;
    }
    Ok(OwnedFd::from(f))
}
