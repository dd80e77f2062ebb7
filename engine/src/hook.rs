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
