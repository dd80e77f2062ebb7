//! stasis engine: checkpoint and restore of Linux process trees.
//!
//! All `unsafe` lives in [`sys`]; everything else is safe Rust over its wrappers.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod sys;

pub mod proc;
