//! The demo workload: after dump and restore, `wl-counter` continues counting
//! from where it stopped (no reset, no jump, no repeated line), in its own
//! session and as a shell job (`-j`) inside the test's session.

use std::fs;
use std::time::{Duration, Instant};

use stasis_integration::harness::{Env, Spawn, Workload};

/// The counts in the log (complete lines only), checking the line format.
fn counts(log: &str) -> Vec<u64> {
    let complete = log.rfind('\n').map_or("", |i| &log[..=i]);
    complete
        .lines()
        .map(|l| {
            l.strip_prefix("count ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("bad line {l:?} in the counter log"))
        })
        .collect()
}

fn wait_count(wl: &Workload, at_least: u64, timeout: Duration) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    loop {
        let c = counts(&fs::read_to_string(wl.path("stdout")).unwrap_or_default());
        if c.last().is_some_and(|&n| n >= at_least) {
            return c;
        }
        if Instant::now() > deadline {
            panic!(
                "counter did not reach {at_least} within {timeout:?} (log ends at {:?})\n{}",
                c.last(),
                wl.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn continuity(env: &Env, spawn: Spawn, extra: &[&str]) {
    let mut wl = Workload::start_with(env, env!("CARGO_BIN_EXE_wl-counter"), &[], &[], spawn);
    wait_count(&wl, 5, Duration::from_secs(10));
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, extra)
        .expect_success("dump wl-counter");
    wl.expect_killed_and_reap();
    let before = counts(&fs::read_to_string(wl.path("stdout")).expect("read log"));
    let last = *before.last().expect("some counts before dump");
    println!("last count before dump: {last}");

    wl.restore_from(env, &img, extra);
    let after = wait_count(&wl, last + 5, Duration::from_secs(10));
    println!(
        "first count after restore: {}",
        after.get(before.len()).copied().unwrap_or(u64::MAX)
    );
    let want: Vec<u64> = (0..after.len() as u64).collect();
    assert_eq!(
        after, want,
        "the log must be count 0, 1, 2, ... without gaps or repeats (dumped at {last})"
    );
    wl.verify_and_finish("after restore");
}

#[test]
fn counter_continues_after_restore() {
    let Some(env) = Env::setup("counter_continues_after_restore") else {
        return;
    };
    continuity(&env, Spawn::default(), &[]);
}

#[test]
fn counter_shell_job_continues_after_restore() {
    let Some(env) = Env::setup("counter_shell_job_continues_after_restore") else {
        return;
    };
    continuity(&env, Spawn { setsid: false }, &["-j"]);
}
