//! Shared helpers for stasis workload programs and end-to-end tests.
//!
//! - [`workload`]: the protocol every `wl-*` program follows (state dir, `ready`,
//!   `check`, `result.<role>`), plus small helpers the programs share.
//! - [`harness`]: what the root-only tests in `tests/` use to drive the `stasis`
//!   binary and the workloads (spawn, dump, restore, wait, reap, clean up).
//!
//! This crate talks to the kernel directly a lot (that is the point of the
//! workloads), so `unsafe` is allowed here, but every block documents why it is
//! sound (`clippy::undocumented_unsafe_blocks`, set for every target of the
//! crate in `Cargo.toml`).

pub mod fdutil;
pub mod harness;
pub mod net;
pub mod stack;
pub mod workload;
