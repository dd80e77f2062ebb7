//! mount(2), umount2(2) and pivot_root(2).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::cvt;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `mount(source, target, fstype, flags, data)`; `None` passes NULL.
pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(cpath).transpose()?;
    let tgt = cpath(target)?;
    let fs = fstype.map(cstr).transpose()?;
    let dat = data.filter(|d| !d.is_empty()).map(cstr).transpose()?;
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is NULL or a NUL-terminated string that lives
    // until the call returns; mount(2) only reads them.
    let r = unsafe {
        libc::mount(
            p(&src),
            tgt.as_ptr(),
            p(&fs),
            flags as libc::c_ulong,
            p(&dat) as *const libc::c_void,
        )
    };
    cvt(r as libc::c_long).map(drop)
}

/// `umount2(target, flags)`.
pub fn umount2(target: &Path, flags: i32) -> io::Result<()> {
    let tgt = cpath(target)?;
    // SAFETY: `tgt` is a NUL-terminated path that outlives the call.
    cvt(unsafe { libc::umount2(tgt.as_ptr(), flags) } as libc::c_long).map(drop)
}

/// `pivot_root(new_root, put_old)`.
pub fn pivot_root(new_root: &Path, put_old: &Path) -> io::Result<()> {
    let a = cpath(new_root)?;
    let b = cpath(put_old)?;
    // SAFETY: both arguments are NUL-terminated paths that outlive the call.
    cvt(unsafe { libc::syscall(libc::SYS_pivot_root, a.as_ptr(), b.as_ptr()) }).map(drop)
}
