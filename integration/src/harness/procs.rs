//! Inspecting processes through `/proc`: existence, state, threads, ancestry.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

/// Polls for `path` to exist.
pub fn wait_for_file(path: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not appear within {timeout:?}",
                path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Reads a pid file (a decimal pid, optional whitespace).
pub fn read_pidfile(path: &Path) -> Result<i32, String> {
    let s = fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    s.trim()
        .parse::<i32>()
        .map_err(|e| format!("{}: bad pid {:?}: {e}", path.display(), s.trim()))
}

/// Whether `/proc/PID` exists (zombies included: their pid is still taken).
pub fn process_exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// State letter and tracer of a task, from `/proc/PID/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskState {
    /// `R`, `S`, `D`, `T`, `t`, `Z`, ...
    pub state: char,
    /// `TracerPid`.
    pub tracer: i32,
    /// `PPid`.
    pub ppid: i32,
}

impl TaskState {
    /// Running or sleeping, not stopped, traced, dead or a zombie.
    pub fn is_free(&self) -> bool {
        self.tracer == 0 && matches!(self.state, 'R' | 'S' | 'D' | 'I')
    }
}

/// Reads `/proc/PID/status` (or `/proc/PID/task/TID/status`).
pub fn task_state(status_path: &str) -> Option<TaskState> {
    let s = fs::read_to_string(status_path).ok()?;
    let mut state = None;
    let mut tracer = None;
    let mut ppid = None;
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("State:") {
            state = v.trim().chars().next();
        } else if let Some(v) = l.strip_prefix("TracerPid:") {
            tracer = v.trim().parse().ok();
        } else if let Some(v) = l.strip_prefix("PPid:") {
            ppid = v.trim().parse().ok();
        }
    }
    Some(TaskState {
        state: state?,
        tracer: tracer?,
        ppid: ppid?,
    })
}

/// State of process `pid`.
pub fn proc_state(pid: i32) -> Option<TaskState> {
    task_state(&format!("/proc/{pid}/status"))
}

/// Thread ids of process `pid`.
pub fn threads_of(pid: i32) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// Checks that every thread of `pid` is running freely (not traced, not
/// stopped), waiting up to `timeout` for that to become true.
pub fn expect_untraced(pid: i32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut bad = Vec::new();
        let tids = threads_of(pid);
        if tids.is_empty() {
            return Err(format!("process {pid} is gone"));
        }
        for tid in tids {
            match task_state(&format!("/proc/{pid}/task/{tid}/status")) {
                Some(st) if st.is_free() => {}
                Some(st) => bad.push(format!(
                    "task {tid}: State {} TracerPid {}",
                    st.state, st.tracer
                )),
                None => {}
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(bad.join(", "));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// All pids in `/proc`.
pub fn all_pids() -> BTreeSet<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `/proc/PID/cmdline` with NULs as spaces.
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .replace('\0', " ")
        })
        .unwrap_or_default()
}

/// `/proc/PID/comm`.
pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether `pid` descends from this process (walks `PPid`).
pub fn is_descendant(pid: i32) -> bool {
    let me = std::process::id() as i32;
    let mut p = pid;
    for _ in 0..64 {
        match proc_state(p) {
            Some(st) if st.ppid == me => return true,
            Some(st) if st.ppid > 1 => p = st.ppid,
            _ => return false,
        }
    }
    false
}

/// Live (not zombie) processes that exist now but not in `before`, and that
/// descend from us or whose command line contains `marker`. Zombie children
/// of ours are reaped on the way.
pub fn new_processes(before: &BTreeSet<i32>, marker: &str) -> Vec<String> {
    reap_zombie_children(&[]);
    all_pids()
        .difference(before)
        .filter(|&&p| is_descendant(p) || (!marker.is_empty() && cmdline(p).contains(marker)))
        .filter_map(|&p| {
            let st = proc_state(p)?;
            if matches!(st.state, 'Z' | 'X') {
                return None;
            }
            Some(format!(
                "{p} ({}) state {} ppid {}: {}",
                comm(p),
                st.state,
                st.ppid,
                cmdline(p)
            ))
        })
        .collect()
}

/// Waits until `pid` is in group-stop (State T) and untraced.
pub fn expect_stopped(pid: i32, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match proc_state(pid) {
            Some(st) if st.state == 'T' && st.tracer == 0 => return Ok(()),
            Some(st) if Instant::now() > deadline => {
                return Err(format!(
                    "task {pid}: State {} TracerPid {}, want a stopped, untraced task",
                    st.state, st.tracer
                ))
            }
            None => return Err(format!("task {pid} is gone")),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
