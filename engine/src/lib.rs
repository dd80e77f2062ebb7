//! stasis engine: checkpoint and restore of Linux process trees.
//!
//! All `unsafe` lives in [`sys`]; everything else is safe Rust over its wrappers.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod sys;

pub mod proc;
pub mod progress;

pub mod cgroup;
pub mod check;
pub mod dump;
pub mod error;
pub mod files;
pub mod hook;
pub mod images;
pub mod mem;
pub mod ns;
pub mod restore;
pub mod stats;
pub mod task;

pub use dump::{dump, DumpOptions};
pub use error::{Error, Result};
pub use stats::{DumpStats, RestoreStats};
