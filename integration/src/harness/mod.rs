//! Helpers for the root-only end-to-end tests in `tests/`.
//!
//! Every test starts with [`Env::setup`], which skips (returns `None`) when not
//! root or when the `stasis` binary is missing, serialises the tests of one
//! test binary (they reap each other's children otherwise), and makes the test
//! process a child subreaper so that restored trees, which the restorer leaves
//! behind, are re-parented to it and can be reaped.
//!
//! Set `STASIS_TESTS_REQUIRED=1` to turn the two skips into failures (CI as
//! root), and `STASIS_KEEP=1` to keep temporary directories (they are always
//! kept when a test fails; the path is printed).

mod cleanup;
mod env;
mod procs;
mod run;
mod workload;

pub use cleanup::*;
pub use env::*;
pub use procs::*;
pub use run::*;
pub use workload::*;

use std::sync::atomic::AtomicU32;
use std::sync::Mutex;
use std::time::Duration;

/// How long a workload may take to report its results.
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `stasis` command may run before the harness kills it.
pub const STASIS_TIMEOUT: Duration = Duration::from_secs(120);

static LOCK: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);
