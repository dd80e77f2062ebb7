//! Raw calls a restore stub makes on itself before it is taken over, for
//! which neither std nor nix has a safe wrapper.

use std::io;

use super::cvt;

/// Install a signal action from the kernel's `struct sigaction` layout
/// {handler, flags, restorer, mask}, exactly as dumped.
pub fn rt_sigaction_raw(sig: i32, act: &[u8; 32]) -> io::Result<()> {
    // The handler address refers to the restored program, which only runs
    // once its memory is in place (all signals are blocked until then).
    // SAFETY: `act` is 32 readable bytes, the kernel sigaction layout on
    // x86_64; the old-action pointer is NULL.
    cvt(unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act.as_ptr(), 0usize, 8usize) })?;
    Ok(())
}

/// Read our own action for `sig`, in the same layout as [`rt_sigaction_raw`].
pub fn rt_sigaction_get(sig: i32) -> io::Result<[u8; 32]> {
    let mut old = [0u8; 32];
    // SAFETY: `old` is 32 writable bytes, the kernel sigaction layout on
    // x86_64; the new-action pointer is NULL (nothing changes).
    cvt(unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            0usize,
            old.as_mut_ptr(),
            8usize,
        )
    })?;
    Ok(old)
}

/// close_range(2) over `[first, last]`.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: closing descriptors has no memory-safety impact on us beyond
    // invalidating fds; callers only close ranges they do not use.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) })?;
    Ok(())
}

/// Map the scratch area of a restore stub at exactly `addr` (never replacing
/// an existing mapping) and put `syscall; int3` at its start and the
/// syscall-batch loop at offset 16.
pub fn map_scratch(addr: u64, len: u64) -> io::Result<()> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no
    // memory we use is affected; on success we own the new mapping.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if p as u64 != addr {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    let code: [u8; 3] = [0x0f, 0x05, 0xcc];
    // SAFETY: the mapping is at least one page, writable and ours alone.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), p as *mut u8, code.len()) };
    let batch = super::inject::BATCH_CODE;
    // SAFETY: as above; the loop goes at offset 16, well inside the page.
    unsafe { std::ptr::copy_nonoverlapping(batch.as_ptr(), (p as *mut u8).add(16), batch.len()) };
    Ok(())
}

/// prctl(2) with integer arguments.
pub fn prctl(opt: i32, a2: u64, a3: u64, a4: u64, a5: u64) -> io::Result<i64> {
    // SAFETY: the options used with this wrapper take integer arguments only.
    Ok(cvt(unsafe { libc::syscall(libc::SYS_prctl, opt, a2, a3, a4, a5) })? as i64)
}

/// personality(2).
pub fn personality(p: u32) -> io::Result<()> {
    // SAFETY: personality takes a plain integer.
    cvt(unsafe { libc::syscall(libc::SYS_personality, p as libc::c_ulong) })?;
    Ok(())
}

/// Write to a raw fd we own (error reports from stubs).
pub fn write_fd(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of its length.
    let r = unsafe { libc::write(fd, buf.as_ptr() as *const libc::c_void, buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Read from a raw fd we own.
pub fn read_fd(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// memfd_create(2) returning an owned fd.
pub fn memfd(name: &str) -> io::Result<std::os::fd::OwnedFd> {
    let c = std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_memfd_create, c.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: the kernel just returned this new fd; nothing else owns it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// prlimit(2) on ourselves: read resource `res` as (soft, hard).
pub fn get_rlimit(res: u32) -> io::Result<(u64, u64)> {
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `old` is a valid rlimit64 for the kernel to fill.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            res,
            std::ptr::null::<libc::rlimit64>(),
            &mut old,
        )
    })?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// prlimit(2) on ourselves: set resource `res`.
pub fn set_rlimit(res: u32, cur: u64, max: u64) -> io::Result<()> {
    let new = libc::rlimit64 {
        rlim_cur: cur,
        rlim_max: max,
    };
    // SAFETY: `new` is a valid rlimit64 read by the kernel.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            res,
            &new,
            std::ptr::null_mut::<libc::rlimit64>(),
        )
    })?;
    Ok(())
}

/// setpriority(PRIO_PROCESS, tid, nice) for another thread.
pub fn set_nice(tid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setpriority, libc::PRIO_PROCESS, tid, nice) })?;
    Ok(())
}
