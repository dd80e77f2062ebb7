//! Callbacks a caller (the CRIU swrk server) runs at fixed points of a dump
//! or restore, while the tree is still stopped: CRIU's action scripts.

use std::fmt;
use std::sync::Arc;

/// A callback given the root task's pid; an `Err` aborts the operation (the
/// message becomes its error).
#[derive(Clone)]
pub struct Hook(Arc<dyn Fn(i32) -> Result<(), String> + Send + Sync>);

impl Hook {
    pub fn new(f: impl Fn(i32) -> Result<(), String> + Send + Sync + 'static) -> Self {
        Hook(Arc::new(f))
    }

    pub fn call(&self, pid: i32) -> crate::Result<()> {
        (self.0)(pid).map_err(crate::Error::Other)
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Hook")
    }
}

/// Run `h` if set.
pub fn run(h: &Option<Hook>, pid: i32) -> crate::Result<()> {
    match h {
        Some(h) => h.call(pid),
        None => Ok(()),
    }
}

/// A callback given a descriptor to pass on (CRIU's orphan-pts-master: the
/// new master of a pty whose master was outside the dumped tree).
#[derive(Clone)]
pub struct FdHook(Arc<FdFn>);

type FdFn = dyn Fn(std::os::fd::BorrowedFd<'_>) -> Result<(), String> + Send + Sync;

impl FdHook {
    pub fn new(
        f: impl Fn(std::os::fd::BorrowedFd<'_>) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        FdHook(Arc::new(f))
    }

    pub fn call(&self, fd: std::os::fd::BorrowedFd<'_>) -> crate::Result<()> {
        (self.0)(fd).map_err(crate::Error::Other)
    }
}

impl fmt::Debug for FdHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FdHook")
    }
}
