//! Many processes with many descriptors of mixed kinds (wl-fdtree: pipes
//! shared by the whole tree and private ones, eventfds, socketpairs,
//! /dev/null, regular files at offsets, shared and dup'ed descriptions),
//! small numbers: 8 processes × 20 fds. In the two usual scenarios:
//! - `fdtree_dump_restore`: dump (kills the tree), restore with `-d`, verify;
//! - `fdtree_leave_running`: dump with `-R`, the original verifies itself,
//!   then a restore from the same images verifies again.
//!
//! Root only (skipped otherwise); run with `--test-threads=1`.

use stasis_integration::workload_tests;

workload_tests!(
    fdtree_dump_restore,
    fdtree_leave_running,
    "wl-fdtree",
    ["8", "20"],
    []
);
