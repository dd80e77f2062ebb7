//! Reading and writing another process's memory.
//!
//! `process_vm_readv`/`process_vm_writev` are the fast path (up to ~7 GB/s
//! here with 64 KiB–1 MiB chunks). They obey the target's VMA protections:
//! writing to a read-only mapping fails with EFAULT, and one failing remote
//! iovec ends the call there. `/proc/PID/mem` ([`mem_read`], [`mem_write`])
//! writes through protections (FOLL_FORCE) and is the fallback for those.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;

use libc::c_void;

use super::cvt_retry;

/// Most iovecs one `process_vm_*` call accepts (`UIO_MAXIOV`).
pub const IOV_MAX: usize = 1024;

/// A range in the remote process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteIoVec {
    /// Remote start address.
    pub base: u64,
    /// Length in bytes.
    pub len: usize,
}

/// A position inside a list of (address, length) segments.
struct Cursor<'a> {
    segs: &'a [(usize, usize)],
    idx: usize,
    off: usize,
}

impl Cursor<'_> {
    /// Fills `out` with up to IOV_MAX iovecs from the current position,
    /// skipping empty segments.
    fn batch(&self, out: &mut Vec<libc::iovec>) {
        out.clear();
        let mut off = self.off;
        for &(base, len) in &self.segs[self.idx.min(self.segs.len())..] {
            if out.len() == IOV_MAX {
                break;
            }
            if len > off {
                out.push(libc::iovec {
                    iov_base: (base + off) as *mut c_void,
                    iov_len: len - off,
                });
            }
            off = 0;
        }
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 && self.idx < self.segs.len() {
            let left = self.segs[self.idx].1 - self.off;
            if n < left {
                self.off += n;
                return;
            }
            n -= left;
            self.idx += 1;
            self.off = 0;
        }
    }
}

/// Bytes moved, and the error that stopped the transfer early (if any).
struct Transfer {
    done: usize,
    err: Option<io::Error>,
}

/// Runs `process_vm_readv` (`write == false`) or `process_vm_writev` over
/// the two segment lists until one is exhausted or the kernel stops.
///
/// # Safety
/// Every local segment must be valid memory of this process for the whole
/// call: writable when reading, readable when writing.
unsafe fn transfer(
    pid: i32,
    local: &[(usize, usize)],
    remote: &[(usize, usize)],
    write: bool,
) -> Transfer {
    let mut l = Cursor {
        segs: local,
        idx: 0,
        off: 0,
    };
    let mut r = Cursor {
        segs: remote,
        idx: 0,
        off: 0,
    };
    let (mut liov, mut riov) = (Vec::new(), Vec::new());
    let mut done = 0usize;
    loop {
        l.batch(&mut liov);
        r.batch(&mut riov);
        if liov.is_empty() || riov.is_empty() {
            return Transfer { done, err: None };
        }
        let nr = if write {
            libc::SYS_process_vm_writev
        } else {
            libc::SYS_process_vm_readv
        };
        let res = cvt_retry(|| {
            // SAFETY: the local iovecs lie inside the caller's segments,
            // which the caller guarantees valid; the remote ones are only
            // addresses in the other process, checked by the kernel.
            unsafe {
                libc::syscall(
                    nr,
                    pid as libc::c_long,
                    liov.as_ptr(),
                    liov.len() as libc::c_ulong,
                    riov.as_ptr(),
                    riov.len() as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            }
        });
        match res {
            Ok(0) => return Transfer { done, err: None },
            Ok(n) => {
                let n = n as usize;
                done += n;
                l.advance(n);
                r.advance(n);
            }
            Err(e) => return Transfer { done, err: Some(e) },
        }
    }
}

fn remote_segs(remote: &[RemoteIoVec]) -> Vec<(usize, usize)> {
    remote.iter().map(|r| (r.base as usize, r.len)).collect()
}

/// Reads from `remote` ranges of `pid` into `local` buffers (scatter/gather,
/// any number of iovecs). Returns the bytes read; a short count means the
/// remote memory at that offset is not readable (an error is returned only
/// if nothing at all could be read).
pub fn read_remote(
    pid: i32,
    local: &mut [IoSliceMut<'_>],
    remote: &[RemoteIoVec],
) -> io::Result<usize> {
    let segs: Vec<(usize, usize)> = local
        .iter_mut()
        .map(|s| (s.as_mut_ptr() as usize, s.len()))
        .collect();
    // SAFETY: the segments come from `local`, which we borrow mutably for
    // the whole call.
    let t = unsafe { transfer(pid, &segs, &remote_segs(remote), false) };
    short_ok(t)
}

/// Writes `local` buffers into `remote` ranges of `pid`. Returns the bytes
/// written; see [`read_remote`] for short counts. Fails on read-only
/// mappings (use [`mem_write`] there).
pub fn write_remote(pid: i32, local: &[IoSlice<'_>], remote: &[RemoteIoVec]) -> io::Result<usize> {
    let segs: Vec<(usize, usize)> = local
        .iter()
        .map(|s| (s.as_ptr() as usize, s.len()))
        .collect();
    // SAFETY: the segments come from `local`, borrowed for the whole call;
    // process_vm_writev only reads them.
    let t = unsafe { transfer(pid, &segs, &remote_segs(remote), true) };
    short_ok(t)
}

fn short_ok(t: Transfer) -> io::Result<usize> {
    match t.err {
        Some(e) if t.done == 0 => Err(e),
        _ => Ok(t.done),
    }
}

fn exact(t: Transfer, want: usize, what: &str, pid: i32, addr: u64) -> io::Result<()> {
    if t.done == want {
        return Ok(());
    }
    Err(t.err.unwrap_or_else(|| {
        io::Error::other(format!(
            "short {what} of pid {pid} at {addr:#x}: {} of {want} bytes",
            t.done
        ))
    }))
}

/// Reads exactly `buf.len()` bytes at `addr` of `pid`.
pub fn read_remote_into(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    let want = buf.len();
    let local = [(buf.as_mut_ptr() as usize, want)];
    // SAFETY: `local` describes `buf`, borrowed mutably for the call.
    let t = unsafe { transfer(pid, &local, &[(addr as usize, want)], false) };
    exact(t, want, "read", pid, addr)
}

/// Writes all of `buf` at `addr` of `pid`.
pub fn write_remote_from(pid: i32, addr: u64, buf: &[u8]) -> io::Result<()> {
    let want = buf.len();
    let local = [(buf.as_ptr() as usize, want)];
    // SAFETY: `local` describes `buf`, borrowed for the call and only read.
    let t = unsafe { transfer(pid, &local, &[(addr as usize, want)], true) };
    exact(t, want, "write", pid, addr)
}

/// Opens `/proc/PID/mem` for [`mem_read`] (and [`mem_write`] if `write`).
pub fn open_mem(pid: i32, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .open(format!("/proc/{pid}/mem"))
}

/// Reads exactly `buf.len()` bytes at `addr` through an open
/// `/proc/PID/mem` (ignores VMA protections; EIO on unmapped memory).
pub fn mem_read(mem: &File, addr: u64, buf: &mut [u8]) -> io::Result<()> {
    // read_exact_at loops on short reads and EINTR; unsigned offsets above
    // i64::MAX are accepted by /proc/PID/mem.
    mem.read_exact_at(buf, addr)
}

/// Writes all of `buf` at `addr` through an open `/proc/PID/mem`, even into
/// read-only mappings (the kernel breaks COW as a debugger would).
pub fn mem_write(mem: &File, addr: u64, buf: &[u8]) -> io::Result<()> {
    mem.write_all_at(buf, addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_batches_and_advances() {
        let segs = [(100, 10), (200, 0), (300, 5)];
        let mut c = Cursor {
            segs: &segs,
            idx: 0,
            off: 0,
        };
        let mut v = Vec::new();
        c.batch(&mut v);
        assert_eq!(v.len(), 2);
        c.advance(12);
        c.batch(&mut v);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].iov_base as usize, 302);
        assert_eq!(v[0].iov_len, 3);
        c.advance(3);
        c.batch(&mut v);
        assert!(v.is_empty());
    }

    #[test]
    fn cursor_caps_at_iov_max() {
        let segs: Vec<(usize, usize)> = (0..3000).map(|i| (i * 16, 8)).collect();
        let c = Cursor {
            segs: &segs,
            idx: 0,
            off: 0,
        };
        let mut v = Vec::new();
        c.batch(&mut v);
        assert_eq!(v.len(), IOV_MAX);
    }

    // Reading our own memory needs no privilege: same uid, ptrace-able.
    #[test]
    fn self_read_write_many_iovecs() {
        let pid = std::process::id() as i32;
        let src: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let mut dst = vec![0u8; 3000];
        // 3000 one-byte remote iovecs force three batches.
        let remote: Vec<RemoteIoVec> = (0..3000)
            .map(|i| RemoteIoVec {
                base: src.as_ptr() as u64 + i,
                len: 1,
            })
            .collect();
        let n = read_remote(pid, &mut [IoSliceMut::new(&mut dst)], &remote).unwrap();
        assert_eq!(n, 3000);
        assert_eq!(src, dst);

        let mut back = vec![0u8; 16];
        let addr = back.as_mut_ptr() as u64;
        write_remote_from(pid, addr, &[9u8; 16]).unwrap();
        // The kernel wrote behind the compiler's back; read through a fresh
        // remote read rather than trusting the borrow.
        let mut check = [0u8; 16];
        read_remote_into(pid, addr, &mut check).unwrap();
        assert_eq!(check, [9u8; 16]);
        drop(back);
    }

    #[test]
    fn unreadable_remote_is_short_or_error() {
        let pid = std::process::id() as i32;
        let mut buf = [0u8; 8];
        // Page 0 is never mapped.
        let e = read_remote_into(pid, 0, &mut buf).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT));
        let data = [1u8; 8];
        let remote = [
            RemoteIoVec {
                base: data.as_ptr() as u64,
                len: 4,
            },
            RemoteIoVec { base: 0, len: 4 },
        ];
        let n = read_remote(pid, &mut [IoSliceMut::new(&mut buf)], &remote).unwrap();
        assert_eq!(n, 4);
    }

    #[test]
    fn proc_mem_self() {
        let mem = open_mem(std::process::id() as i32, false).unwrap();
        let data = *b"stasis-proc-mem!";
        let mut out = [0u8; 16];
        mem_read(&mem, data.as_ptr() as u64, &mut out).unwrap();
        assert_eq!(out, data);
    }
}
