//! Checkpoint/restore of every workload, in two scenarios each:
//! - `*_dump_restore`: dump (kills the tree), reap it, restore with `-d`,
//!   verify, clean exit;
//! - `*_leave_running`: dump with `-R`, the original verifies itself and
//!   exits, then a restore from the same images verifies again.
//!
//! Root only (skipped otherwise); run with `--test-threads=1`.

use stasis_integration::workload_tests;

workload_tests!(small_dump_restore, small_leave_running, "wl-small", [], []);
workload_tests!(mem_dump_restore, mem_leave_running, "wl-mem", [], ["child"]);
workload_tests!(
    filemap_dump_restore,
    filemap_leave_running,
    "wl-filemap",
    [],
    []
);
workload_tests!(
    threads_dump_restore,
    threads_leave_running,
    "wl-threads",
    [],
    []
);
workload_tests!(
    tree_dump_restore,
    tree_leave_running,
    "wl-tree",
    [],
    ["pgrp", "sess", "gchild", "stopped"]
);
workload_tests!(
    signals_dump_restore,
    signals_leave_running,
    "wl-signals",
    [],
    []
);
// The dump's remote calls without any trap (no int3, no single step).
workload_tests!(
    signals_trap_ignored_dump_restore,
    signals_trap_ignored_leave_running,
    "wl-signals",
    ["trap-ignored"],
    []
);
workload_tests!(files_dump_restore, files_leave_running, "wl-files", [], []);
workload_tests!(creds_dump_restore, creds_leave_running, "wl-creds", [], []);
workload_tests!(
    seccomp_dump_restore,
    seccomp_leave_running,
    "wl-seccomp",
    [],
    ["child"]
);
workload_tests!(
    memhog_dump_restore,
    memhog_leave_running,
    "wl-memhog",
    ["256"],
    []
);
// Madvised MADV_HUGEPAGE: restored with the advice.
workload_tests!(
    memhog_thp_dump_restore,
    memhog_thp_leave_running,
    "wl-memhog",
    ["64", "thp"],
    []
);
