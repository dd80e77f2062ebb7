//! Checkpoint/restore of event-notification files, timers and file locks:
//! epoll (nested, several target kinds), inotify, POSIX and interval timers,
//! flock/POSIX/OFD locks. Each workload runs in the two usual scenarios:
//! - `*_dump_restore`: dump (kills the tree), reap it, restore with `-d`,
//!   verify, clean exit;
//! - `*_leave_running`: dump with `-R`, the original verifies itself and
//!   exits, then a restore from the same images verifies again.
//!
//! `epoll_pipes_*` also puts a pipe and an eventfd behind the epolls, so
//! they need those kinds restorable too.
//!
//! Root only (skipped otherwise); run with `--test-threads=1`.

use stasis_integration::harness::{
    dump_restore, leave_running_then_restore, Env, Mount, Scenario, Workload,
};
use stasis_integration::workload_tests;

workload_tests!(
    epoll_dump_restore,
    epoll_leave_running,
    "wl-epoll",
    [],
    ["child"],
    []
);
workload_tests!(
    epoll_pipes_dump_restore,
    epoll_pipes_leave_running,
    "wl-epoll",
    ["pipes"],
    ["child"],
    []
);
workload_tests!(
    inotify_dump_restore,
    inotify_leave_running,
    "wl-inotify",
    [],
    [],
    []
);
workload_tests!(
    timers_dump_restore,
    timers_leave_running,
    "wl-timers",
    [],
    [],
    []
);
workload_tests!(
    locks_dump_restore,
    locks_leave_running,
    "wl-locks",
    [],
    ["child"],
    ["--file-locks"]
);

/// Without --file-locks a held lock fails the dump, naming the task, and the
/// tree runs on untouched.
#[test]
fn locks_dump_needs_flag() {
    let Some(env) = Env::setup("locks_dump_needs_flag") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-locks"), &[], &["child"]);
    let img = env.dir("images");
    let pid = wl.root_pid().to_string();
    env.dump(wl.root_pid(), &img, &[])
        .expect_clear_failure("dump of a tree holding locks", &[&pid]);
    let run = env.dump(wl.root_pid(), &img, &[]);
    assert!(
        run.stderr.contains("--file-locks"),
        "the error should point at --file-locks: {}",
        run.describe()
    );
    wl.expect_running("after the refused dumps");
    wl.verify_and_finish("after the refused dumps");
}

/// Images holding locks are refused by a restore without --file-locks
/// (nothing is left behind); with the flag the same images restore.
#[test]
fn locks_restore_needs_flag() {
    let Some(env) = Env::setup("locks_restore_needs_flag") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-locks"), &[], &["child"]);
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &["--file-locks"])
        .expect_success("wl-locks: dump --file-locks");
    wl.expect_killed_and_reap();
    let pidfile = env.path("refused.pid");
    env.restore(&img, &pidfile, &[])
        .expect_clear_failure("restore of locks without --file-locks", &["--file-locks"]);
    assert!(
        !stasis_integration::harness::process_exists(wl.root_pid()),
        "a refused restore left pid {} behind",
        wl.root_pid()
    );
    wl.restore_from(&env, &img, &["--file-locks"]);
    wl.verify_and_finish("after restore");
}

/// fanotify: inode marks, an ignore mark and a mount mark (on a tmpfs of
/// the test's own), both scenarios.
#[test]
fn fanotify_dump_restore() {
    let Some(env) = Env::setup("fanotify_dump_restore") else {
        return;
    };
    let mnt = env.path("mnt");
    let _m = Mount::tmpfs(&mnt, "size=1m", false).expect("mount tmpfs");
    let m = mnt.to_string_lossy().into_owned();
    dump_restore(
        &env,
        &Scenario {
            bin: env!("CARGO_BIN_EXE_wl-fanotify"),
            args: &[&m],
            roles: &[],
            flags: &[],
        },
    );
}

#[test]
fn fanotify_leave_running() {
    let Some(env) = Env::setup("fanotify_leave_running") else {
        return;
    };
    let mnt = env.path("mnt");
    let _m = Mount::tmpfs(&mnt, "size=1m", false).expect("mount tmpfs");
    let m = mnt.to_string_lossy().into_owned();
    leave_running_then_restore(
        &env,
        &Scenario {
            bin: env!("CARGO_BIN_EXE_wl-fanotify"),
            args: &[&m],
            roles: &[],
            flags: &[],
        },
    );
}
