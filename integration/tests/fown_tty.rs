//! The owner and signal of open files (F_SETOWN_EX, F_SETSIG, O_ASYNC) and
//! terminals (issue 3), each workload in the two standard scenarios (see
//! files_basic.rs). Root only (skipped otherwise); run with
//! `--test-threads=1`.

use stasis_integration::workload_tests;

workload_tests!(fown_dump_restore, fown_leave_running, "wl-fown", [], []);
workload_tests!(pty_dump_restore, pty_leave_running, "wl-pty", [], ["child"]);
