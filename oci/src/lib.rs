//! OCI container runtime (runc-compatible) built next to the `stasis-engine`.
//!
//! The layout follows youki's libcontainer: this library does the work
//! (bundle -> namespaces, mounts, cgroup v2, process), the `stasis` binary is
//! a thin runc-compatible command line on top of it.
//!
//! Process model (runc's two phases): `create` forks a short-lived helper that
//! joins and creates the namespaces and forks the container's init (so the
//! init is pid 1 of a new pid namespace), then exits; the init prepares the
//! rootfs and the process and blocks opening the exec fifo in the state dir;
//! `start` opens the other end of the fifo, which lets the init exec the
//! user's program.
#![deny(unsafe_code)]

pub use stasis_engine as engine;

pub mod cgroup;
pub mod checkpoint;
pub mod container;
pub mod error;
mod hooks;
mod init;
mod mounts;
mod seccomp;
pub mod spec;
pub mod state;
mod sys;
pub mod tty;
pub mod util;

pub use checkpoint::{CheckpointOpts, RestoreOpts, Restored};
pub use container::{CreateOpts, ExecOpts, Runtime, Waiter};
pub use error::{Error, Result};
pub use state::{State, Status};
