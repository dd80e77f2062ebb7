//! Many processes with many descriptors of mixed kinds (wl-fdtree: pipes
//! shared by the whole tree and private ones, eventfds, socketpairs,
//! /dev/null, regular files at offsets, shared and dup'ed descriptions),
//! small numbers: 8 processes × 20 fds. In the two usual scenarios:
//! - `fdtree_dump_restore`: dump (kills the tree), restore with `-d`, verify;
//! - `fdtree_leave_running`: dump with `-R`, the original verifies itself,
//!   then a restore from the same images verifies again.
//!
//! And `fdtree_leave_running_keeps_cow_sharing`: dump with `-R` copies none of
//!   the pages the processes share since their fork.
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

/// Private dirty memory (kB) of `root` and its children, as smaps_rollup
/// counts it: pages shared copy-on-write since a fork are not in it.
fn private_dirty_kb(root: i32) -> u64 {
    let kids = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children"))
        .expect("read children");
    let pids = std::iter::once(root).chain(kids.split_whitespace().map(|p| p.parse().unwrap()));
    pids.map(|p: i32| {
        let s = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).expect("smaps_rollup");
        s.lines()
            .filter_map(|l| l.strip_prefix("Private_Dirty:"))
            .map(|v| {
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            })
            .sum::<u64>()
    })
    .sum()
}

/// A dump with -R must leave the pages the processes share since their
/// fork shared: reading them must not copy them for the target (pinning a
/// copy-on-write page, as process_vm_readv does, unshares it; a tree of 8
/// grew from ~300 to ~1500 kB of private memory that way).
#[test]
fn fdtree_leave_running_keeps_cow_sharing() {
    use stasis_integration::harness::{Env, Workload};
    let Some(env) = Env::setup("fdtree_leave_running_keeps_cow_sharing") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-fdtree"), &["8", "20"], &[]);
    let before = private_dirty_kb(wl.root_pid());
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &["-R"])
        .expect_success("wl-fdtree: dump -R");
    let after = private_dirty_kb(wl.root_pid());
    // A page per process of slack: the processes themselves may touch one.
    assert!(
        after <= before + 8 * 4,
        "private memory grew from {before} to {after} kB by dump -R"
    );
    wl.verify_and_finish("original after dump -R");
}
