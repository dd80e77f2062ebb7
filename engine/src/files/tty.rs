//! Pseudo-terminal pairs whose master is held inside the dumped tree.
//!
//! Dump: every fd on a pty master (/dev/ptmx, rdev 5:2) is one; a slave
//! (/dev/pts/N, majors 136-143) is one when some task of the tree holds the
//! master of index N (found before any task is dumped). Each end gets a
//! `tty_info_entry` in tty-info.img (type PTY, the slave index in `pty`, the
//! end's rdev, termios, window size, packet mode, lock, and the session and
//! foreground group of the slave), each open file a `tty_file_entry`
//! {id, tty_info_id, flags, fown} in files.img. Bytes queued in the pair are
//! not saved (reading them would consume them). Other terminals (the
//! caller's /dev/pts/N, consoles) keep the --shell-job behaviour of reg.rs.
//!
//! Restore: all files of one pty are one [`Group::Pty`](super::Group): a new
//! master from /dev/ptmx, unlocked, each slave opened through it with
//! TIOCGPTPEER, termios and window size applied, packet mode and the lock
//! set back, exclusive mode too. The index of the new pair usually differs. A session leader
//! that had the slave as controlling terminal takes it again with
//! TIOCSCTTY right after setsid, before it forks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::OnceLock;

use stasis_proto::criu::{
    FdTypes, FileEntry, TermiosEntry, TtyFileEntry, TtyInfoEntry, TtyPtyEntry, TtyType,
    WinsizeEntry,
};
use stasis_proto::image::magic;

use super::{FdCtx, FileTable, OpenCtx};
use crate::error::Result;
use crate::images::{common, ImageDir};
use crate::sys::fdctl;

pub const TTY_INFO_IMG: &str = "tty-info.img";

const PTMX_MAJOR: u32 = 5;
const PTMX_MINOR: u32 = 2;

fn is_master_rdev(rdev: u64) -> bool {
    libc::major(rdev) == PTMX_MAJOR && libc::minor(rdev) == PTMX_MINOR
}

fn slave_index(rdev: u64) -> Option<u32> {
    let maj = libc::major(rdev);
    (136..=143)
        .contains(&maj)
        .then(|| (maj - 136) * 256 + libc::minor(rdev))
}

/// A pty slave (/dev/pts/N)?
pub fn is_slave(rdev: u64) -> bool {
    slave_index(rdev).is_some()
}

/// Dump-side state.
#[derive(Default)]
pub struct DumpState {
    /// Indexes of the pty masters held by the tree.
    masters: HashSet<u32>,
    /// (index, is master) -> tty_info id.
    ids: HashMap<(u32, bool), u32>,
    infos: Vec<TtyInfoEntry>,
}

impl DumpState {
    /// Is this terminal a pty end to save as such (master, or slave of a
    /// master the tree holds)?
    pub fn is_pair(&self, rdev: u64) -> bool {
        is_master_rdev(rdev) || slave_index(rdev).is_some_and(|i| self.masters.contains(&i))
    }
}

/// Find the pty masters held by `pids`.
pub fn prepare(t: &mut FileTable<'_>, pids: &[i32]) -> Result<()> {
    for &pid in pids {
        // The fds scanned by `FileTable::prepare_tree`.
        let masters: Vec<i32> = t
            .fdscan
            .fds(pid)
            .iter()
            .filter(|s| {
                s.st.as_ref().is_some_and(|st| {
                    st.mode() & libc::S_IFMT == libc::S_IFCHR && is_master_rdev(st.rdev())
                })
            })
            .map(|s| s.fd)
            .collect();
        for fd in masters {
            let Ok(pidfd) = crate::sys::pidfd::pidfd_open(pid) else {
                continue;
            };
            let Ok(m) = crate::sys::pidfd::pidfd_getfd(&pidfd, fd) else {
                continue;
            };
            if let Ok(n) = fdctl::ioctl_get_int(m.as_fd(), libc::TIOCGPTN) {
                t.tty.masters.insert(n as u32);
            }
        }
    }
    Ok(())
}

fn termios_entry(t: &libc::termios) -> TermiosEntry {
    TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: t.c_line as u32,
        c_ispeed: t.c_ispeed,
        c_ospeed: t.c_ospeed,
        c_cc: t.c_cc.iter().map(|&c| c as u32).collect(),
    }
}

fn termios_of(e: &TermiosEntry) -> libc::termios {
    let mut t = fdctl::zero_termios();
    t.c_iflag = e.c_iflag;
    t.c_oflag = e.c_oflag;
    t.c_cflag = e.c_cflag;
    t.c_lflag = e.c_lflag;
    t.c_line = e.c_line as u8;
    t.c_ispeed = e.c_ispeed;
    t.c_ospeed = e.c_ospeed;
    for (d, &s) in t.c_cc.iter_mut().zip(e.c_cc.iter()) {
        *d = s as u8;
    }
    t
}

/// (session, foreground group) of `pid` when its controlling terminal is
/// device `rdev` (/proc/PID/stat).
fn ctty_of(pid: i32, rdev: u64) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<i64> = rest
        .split_whitespace()
        .skip(1)
        .take(5)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let (session, tty_nr, tpgid) = (*f.get(2)?, *f.get(3)? as u64, *f.get(4)?);
    let maj = ((tty_nr >> 8) & 0xfff) as u32;
    let min = ((tty_nr & 0xff) | ((tty_nr >> 12) & 0xfff00)) as u32;
    (maj == libc::major(rdev) && min == libc::minor(rdev))
        .then_some((session as i32, tpgid.max(0) as i32))
}

/// An fd on a pty end of the tree.
pub fn dump_fd(t: &mut FileTable<'_>, cx: &FdCtx<'_>) -> Result<FileEntry> {
    let fd = cx.steal()?;
    let b = fd.as_fd();
    let rdev = cx.st.rdev();
    let master = is_master_rdev(rdev);
    let index = match slave_index(rdev) {
        Some(i) => i,
        None => fdctl::ioctl_get_int(b, libc::TIOCGPTN)
            .map_err(|e| cx.err(format!("TIOCGPTN on {}: {e}", cx.link)))? as u32,
    };
    let info_id = match t.tty.ids.get(&(index, master)) {
        Some(&id) => id,
        None => {
            let id = t.new_id();
            let tio =
                fdctl::tcgets(b).map_err(|e| cx.err(format!("TCGETS on {}: {e}", cx.link)))?;
            let ws = fdctl::get_winsize(b)
                .map_err(|e| cx.err(format!("TIOCGWINSZ on {}: {e}", cx.link)))?;
            let get = |req| fdctl::ioctl_get_int(b, req).unwrap_or(0);
            // TIOCGSID answers through a master only; a slave's session
            // is read from its holder when the slave is its terminal.
            let (sid, pgrp) = match (get(libc::TIOCGSID), get(libc::TIOCGPGRP)) {
                (s, p) if s > 0 => (s, p.max(0)),
                _ => ctty_of(cx.pid, rdev).unwrap_or((0, 0)),
            };
            t.tty.infos.push(TtyInfoEntry {
                id,
                r#type: TtyType::Pty as i32,
                locked: master && get(libc::TIOCGPTLCK) != 0,
                exclusive: get(libc::TIOCGEXCL) != 0,
                packet_mode: master && get(libc::TIOCGPKT) != 0,
                sid: sid as u32,
                pgrp: pgrp as u32,
                rdev: rdev as u32,
                termios: Some(termios_entry(&tio)),
                termios_locked: None,
                winsize: Some(WinsizeEntry {
                    ws_row: ws.ws_row as u32,
                    ws_col: ws.ws_col as u32,
                    ws_xpixel: ws.ws_xpixel as u32,
                    ws_ypixel: ws.ws_ypixel as u32,
                }),
                pty: Some(TtyPtyEntry { index }),
                dev: None,
                uid: (!master)
                    .then(|| crate::ns::user::owner_to_tree(t.userns.as_ref(), cx.st.uid(), 0).0),
                gid: (!master)
                    .then(|| crate::ns::user::owner_to_tree(t.userns.as_ref(), 0, cx.st.gid()).1),
            });
            t.tty.ids.insert((index, master), id);
            id
        }
    };
    Ok(FileEntry {
        r#type: FdTypes::Tty as i32,
        id: cx.id,
        tty: Some(Box::new(TtyFileEntry {
            id: cx.id,
            tty_info_id: info_id,
            flags: cx.info.flags & !(libc::O_CLOEXEC as u32),
            fown: super::fown::read(b, t.userns.as_ref())
                .map_err(|e| cx.err(format!("owner: {e}")))?,
            regf_id: None,
        })),
        ..Default::default()
    })
}

/// Write tty-info.img (called from `FileTable::write`).
pub fn write(dir: &ImageDir, d: &DumpState) -> Result<()> {
    if d.infos.is_empty() {
        return Ok(());
    }
    dir.write_all(TTY_INFO_IMG, common(magic::TTY_INFO), &d.infos)
}

// ---------------------------------------------------------------- restore

static INFOS: OnceLock<HashMap<u32, TtyInfoEntry>> = OnceLock::new();

/// Read tty-info.img (once, in the restorer before the stubs fork).
pub fn load(dir: &ImageDir) -> Result<()> {
    let mut m = HashMap::new();
    if dir.exists(TTY_INFO_IMG) {
        for e in dir.read_all::<TtyInfoEntry>(TTY_INFO_IMG, common(magic::TTY_INFO))? {
            m.insert(e.id, e);
        }
    }
    let _ = INFOS.set(m);
    Ok(())
}

fn info(id: u32) -> Option<&'static TtyInfoEntry> {
    INFOS.get()?.get(&id)
}

/// The restore group of a tty file: the pty index.
pub fn group_key(f: &TtyFileEntry) -> u32 {
    info(f.tty_info_id)
        .and_then(|i| i.pty.as_ref())
        .map(|p| p.index)
        .unwrap_or(u32::MAX - f.tty_info_id)
}

type R<T> = std::result::Result<T, String>;

/// Create every file of pty `index`: (file id, fd).
pub fn create(index: u32, cx: &OpenCtx<'_>) -> R<Vec<(u32, OwnedFd)>> {
    let mut masters = BTreeMap::new();
    let mut slaves = BTreeMap::new();
    for f in cx.files.values() {
        let Some(tf) = f.tty.as_deref() else {
            continue;
        };
        let Some(i) = info(tf.tty_info_id) else {
            return Err(format!("tty file {}: no tty info {}", f.id, tf.tty_info_id));
        };
        if i.pty.as_ref().map(|p| p.index) != Some(index) {
            continue;
        }
        if is_master_rdev(i.rdev as u64) {
            masters.insert(f.id, (tf, i));
        } else {
            slaves.insert(f.id, (tf, i));
        }
    }
    if masters.is_empty() {
        if let Some(&m) = cx.orphan_masters.get(&index) {
            return orphan_slaves(index, m, &slaves);
        }
    }
    let mut it = masters.iter();
    let Some((&mid, &(mf, mi))) = it.next() else {
        return Err(format!(
            "pty {index}: no master (it was outside the dumped tree; restore with orphan_pts_master)"
        ));
    };
    if it.next().is_some() {
        return Err(format!(
            "pty {index}: several open files of one master are not supported"
        ));
    }
    let m = super::reg::open_flags(Path::new("/dev/ptmx"), mf.flags as i32, 0)
        .map_err(|e| format!("open /dev/ptmx: {e}"))?;
    let mb = m.as_fd();
    fdctl::ioctl_set_int(mb, libc::TIOCSPTLCK, 0).map_err(|e| format!("unlock pty: {e}"))?;
    if let Some(t) = &mi.termios {
        fdctl::tcsets(mb, &termios_of(t)).map_err(|e| format!("pty master termios: {e}"))?;
    }
    let mut out = Vec::new();
    let mut slave_done = false;
    let mut slave_excl = false;
    for (&sid, &(sf, si)) in &slaves {
        let acc = sf.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK);
        let s = fdctl::open_peer(mb, acc | libc::O_NOCTTY | libc::O_CLOEXEC)
            .map_err(|e| format!("TIOCGPTPEER: {e}"))?;
        if !slave_done {
            if let Some(t) = &si.termios {
                fdctl::tcsets(s.as_fd(), &termios_of(t))
                    .map_err(|e| format!("pty slave termios: {e}"))?;
            }
            slave_done = true;
            slave_excl = si.exclusive;
        }
        out.push((sid, s));
    }
    // Exclusive mode last: it refuses further opens.
    if slave_excl {
        if let Some((_, s)) = out.first() {
            fdctl::ioctl_arg(s.as_fd(), libc::TIOCEXCL, 0).map_err(|e| format!("TIOCEXCL: {e}"))?;
        }
    }
    if mi.exclusive {
        fdctl::ioctl_arg(mb, libc::TIOCEXCL, 0).map_err(|e| format!("TIOCEXCL: {e}"))?;
    }
    if let Some(w) = mi.winsize.as_ref() {
        let ws = libc::winsize {
            ws_row: w.ws_row as u16,
            ws_col: w.ws_col as u16,
            ws_xpixel: w.ws_xpixel as u16,
            ws_ypixel: w.ws_ypixel as u16,
        };
        fdctl::set_winsize(mb, &ws).map_err(|e| format!("TIOCSWINSZ: {e}"))?;
    }
    if mi.packet_mode {
        fdctl::ioctl_set_int(mb, libc::TIOCPKT, 1).map_err(|e| format!("TIOCPKT: {e}"))?;
    }
    if mi.locked {
        fdctl::ioctl_set_int(mb, libc::TIOCSPTLCK, 1).map_err(|e| format!("lock pty: {e}"))?;
    }
    out.insert(0, (mid, m));
    Ok(out)
}

/// In the stub of session leader `idx`, right after setsid and the creation
/// of its groups: take back the pty slave that was its controlling terminal
/// (`staged`: file id -> staged fd, inherited or just created).
pub fn set_ctty(
    plan: &crate::restore::plan::Plan,
    idx: usize,
    staged: &HashMap<u32, i32>,
) -> R<()> {
    let t = &plan.tasks[idx];
    if t.sid != t.pid {
        return Ok(());
    }
    for fi in &t.fds {
        let Some(tf) = plan.files.get(&fi.id).and_then(|f| f.tty.as_ref()) else {
            continue;
        };
        let Some(i) = info(tf.tty_info_id) else {
            continue;
        };
        if is_master_rdev(i.rdev as u64) || i.sid as i32 != t.pid {
            continue;
        }
        let Some(&fd) = staged.get(&fi.id) else {
            continue;
        };
        return fdctl::with_raw(fd, |b| fdctl::ioctl_arg(b, libc::TIOCSCTTY, 0))
            .map_err(|e| format!("TIOCSCTTY on fd {}: {e}", fi.fd));
    }
    Ok(())
}

/// The slaves of the images whose pty has no master there: a new master for
/// each (restorer side, before the stubs fork), with the slave's termios and
/// window size.
pub fn orphan_masters(files: &HashMap<u32, FileEntry>) -> R<Vec<(u32, OwnedFd)>> {
    let mut slaves: BTreeMap<u32, &TtyInfoEntry> = BTreeMap::new();
    let mut with_master = HashSet::new();
    for f in files.values() {
        let Some(i) = f.tty.as_ref().and_then(|tf| info(tf.tty_info_id)) else {
            continue;
        };
        let Some(index) = i.pty.as_ref().map(|p| p.index) else {
            continue;
        };
        if is_master_rdev(i.rdev as u64) {
            with_master.insert(index);
        } else {
            slaves.entry(index).or_insert(i);
        }
    }
    let mut out = Vec::new();
    for (index, si) in slaves {
        if with_master.contains(&index) {
            continue;
        }
        let m = super::reg::open_flags(
            Path::new("/dev/ptmx"),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            0,
        )
        .map_err(|e| format!("pty {index}: open /dev/ptmx for an orphan slave: {e}"))?;
        fdctl::ioctl_set_int(m.as_fd(), libc::TIOCSPTLCK, 0)
            .map_err(|e| format!("pty {index}: unlock: {e}"))?;
        if let Some(w) = si.winsize.as_ref() {
            let ws = libc::winsize {
                ws_row: w.ws_row as u16,
                ws_col: w.ws_col as u16,
                ws_xpixel: w.ws_xpixel as u16,
                ws_ypixel: w.ws_ypixel as u16,
            };
            fdctl::set_winsize(m.as_fd(), &ws).map_err(|e| format!("TIOCSWINSZ: {e}"))?;
        }
        out.push((index, m));
    }
    Ok(out)
}

/// Open the slaves of orphan pty `index` through its new master `m` (a
/// restorer fd inherited by the stub).
fn orphan_slaves(
    index: u32,
    m: i32,
    slaves: &BTreeMap<u32, (&TtyFileEntry, &TtyInfoEntry)>,
) -> R<Vec<(u32, OwnedFd)>> {
    let mut out = Vec::new();
    for (i, (&sid, &(sf, si))) in slaves.iter().enumerate() {
        let acc = sf.flags as i32 & (libc::O_ACCMODE | libc::O_NONBLOCK);
        let s = fdctl::with_raw(m, |mb| {
            fdctl::open_peer(mb, acc | libc::O_NOCTTY | libc::O_CLOEXEC)
        })
        .map_err(|e| format!("pty {index}: TIOCGPTPEER on the new master: {e}"))?;
        if i == 0 {
            if let Some(t) = &si.termios {
                fdctl::tcsets(s.as_fd(), &termios_of(t))
                    .map_err(|e| format!("pty {index}: slave termios: {e}"))?;
            }
        }
        out.push((sid, s));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pty_devices() {
        assert!(is_master_rdev(libc::makedev(5, 2)));
        assert!(!is_master_rdev(libc::makedev(5, 0)));
        assert_eq!(slave_index(libc::makedev(136, 3)), Some(3));
        assert_eq!(slave_index(libc::makedev(137, 1)), Some(257));
        assert_eq!(slave_index(libc::makedev(4, 1)), None);
        let d = DumpState::default();
        assert!(d.is_pair(libc::makedev(5, 2)));
        assert!(!d.is_pair(libc::makedev(136, 0)));
    }
}
