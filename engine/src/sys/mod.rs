//! Thin, safe wrappers over the raw kernel interfaces the engine needs.
//!
//! Everything `unsafe` in the engine lives below this module; every function
//! exported from here is safe to call. Errors are `std::io::Error` built from
//! errno, so callers can match on `raw_os_error()`.
//!
//! Only x86_64 is supported: register layouts, syscall numbers and the
//! injection recipe are architecture specific.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("stasis-engine supports only x86_64");

pub mod clock;
pub mod clone3;
pub mod cpu;
pub mod fdctl;
pub mod fdobj;
pub mod inject;
pub mod ipc;
pub mod kcmp;
pub mod misc;
pub mod mman;
pub mod mount;
pub mod netdev;
pub mod notify;
pub mod pagemap;
pub mod pidfd;
pub mod ptrace;
pub mod sig;
pub mod sock;
pub mod stub;
pub mod tcp;
pub mod uffd;
pub mod vm;

pub use clone3::{clone3_fork, CloneArgs, Fork};
pub use inject::{find_syscall_insn, Injector, StepMode};
pub use kcmp::{kcmp, kcmp_file};
pub use pagemap::PageRegion;
pub use pidfd::{pidfd_getfd, pidfd_open, pidfd_send_signal};
pub use ptrace::{Tid, WaitStatus};
pub use vm::RemoteIoVec;

use std::io;

/// Turns a raw `syscall(2)`-style return (-1 and errno on failure) into a
/// `Result`.
pub(crate) fn cvt(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`] but retries while the call fails with `EINTR`.
pub(crate) fn cvt_retry(mut f: impl FnMut() -> libc::c_long) -> io::Result<libc::c_long> {
    loop {
        match cvt(f()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Whether the current process runs as root; root-only tests skip otherwise.
#[cfg(test)]
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns early from a test (with a note on stderr) unless we are root.
#[cfg(test)]
macro_rules! require_root {
    () => {
        if !$crate::sys::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
    };
}
#[cfg(test)]
pub(crate) use require_root;
