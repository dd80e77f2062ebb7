//! Tasks: seizing a tree, and the per-task state that lives in core-*.img.

pub mod creds;
pub mod regs;
pub mod remote;
pub mod seccomp;
pub mod seize;
pub mod signals;
pub mod timers;

pub use seize::{SeizedTree, Task, TaskState};
