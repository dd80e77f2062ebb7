//! Pipes, FIFOs, eventfd, signalfd, timerfd and memfd (issue 3), each
//! workload in the two standard scenarios:
//! - `*_dump_restore`: dump (kills the tree), reap it, restore with `-d`,
//!   verify, clean exit;
//! - `*_leave_running`: dump with `-R`, the original verifies itself and
//!   exits, then a restore from the same images verifies again.
//!
//! Root only (skipped otherwise); run with `--test-threads=1`.

use stasis_integration::workload_tests;

workload_tests!(
    pipes_dump_restore,
    pipes_leave_running,
    "wl-pipes",
    [],
    ["child"]
);
workload_tests!(
    eventfd_dump_restore,
    eventfd_leave_running,
    "wl-eventfd",
    [],
    ["child"]
);
workload_tests!(
    signalfd_dump_restore,
    signalfd_leave_running,
    "wl-signalfd",
    [],
    []
);
workload_tests!(
    timerfd_dump_restore,
    timerfd_leave_running,
    "wl-timerfd",
    [],
    []
);
workload_tests!(
    memfd_dump_restore,
    memfd_leave_running,
    "wl-memfd",
    [],
    ["child"]
);
