//! Reaping children and killing leftover trees.

use std::collections::BTreeSet;
use std::fs;
use std::time::{Duration, Instant};

use super::*;

/// Non-blocking `waitpid(pid)`: `Some(status)` once reaped.
pub fn try_reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
    (r == pid).then_some(status)
}

/// Reaps every zombie child of ours except `keep` (pids whose `Child`
/// handle someone else will wait for).
pub fn reap_zombie_children(keep: &[i32]) {
    let me = std::process::id() as i32;
    for p in all_pids() {
        if keep.contains(&p) {
            continue;
        }
        if let Some(st) = proc_state(p) {
            if st.ppid == me && st.state == 'Z' {
                try_reap(p);
            }
        }
    }
}

/// Reaps our zombie children until none of our children is running or in
/// uninterruptible sleep (a killed process on its way out), for at most
/// `timeout`. Children that sleep or are stopped (live workloads) are left.
pub fn reap_exiting_children(timeout: Duration) {
    let me = std::process::id() as i32;
    let deadline = Instant::now() + timeout;
    loop {
        let mut busy = false;
        for p in all_pids() {
            let Some(st) = proc_state(p) else { continue };
            if st.ppid != me {
                continue;
            }
            match st.state {
                'Z' => {
                    try_reap(p);
                }
                'R' | 'D' | 'X' => busy = true,
                _ => {}
            }
        }
        if !busy || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until every pid in `pids` is gone (reaping those that are our
/// children, directly or through the subreaper).
pub fn wait_gone(pids: &[i32], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<i32> = pids
            .iter()
            .copied()
            .filter(|&p| {
                try_reap(p);
                process_exists(p)
            })
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let desc: Vec<String> = left
                .iter()
                .map(|&p| match proc_state(p) {
                    Some(st) => format!("{p} (State {}, PPid {})", st.state, st.ppid),
                    None => p.to_string(),
                })
                .collect();
            return Err(format!(
                "still there after {timeout:?}: {}",
                desc.join(", ")
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends SIGKILL to `pid` and all its descendants (via
/// `/proc/PID/task/*/children`), only if `owned(pid)` says it is ours.
pub fn kill_tree(pid: i32, owned: &dyn Fn(i32) -> bool) {
    let mut todo = vec![pid];
    let mut seen = BTreeSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p) || !process_exists(p) || !owned(p) {
            continue;
        }
        for tid in threads_of(p) {
            if let Ok(s) = fs::read_to_string(format!("/proc/{p}/task/{tid}/children")) {
                todo.extend(s.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
            }
        }
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
}
