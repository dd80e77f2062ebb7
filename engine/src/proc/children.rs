//! `/proc/PID/task/TID/children` and the thread list `/proc/PID/task`.

use std::fs;
use std::path::PathBuf;

use super::util::{dec, read_parse, tid_path};
use super::ProcError;

const FILE: &str = "children";

/// Parse the text of `/proc/PID/task/TID/children`: space-separated pids
/// (with a trailing space), possibly empty.
pub fn parse_children(text: &str) -> Result<Vec<i32>, ProcError> {
    text.split_ascii_whitespace()
        .map(|t| dec(t).ok_or_else(|| ProcError::bad_line(FILE, 1, text.trim_end(), "bad pid")))
        .collect()
}

/// Read and parse `/proc/<pid>/task/<tid>/children`: the children forked by
/// that one thread.
pub fn read_children(pid: i32, tid: i32) -> Result<Vec<i32>, ProcError> {
    read_parse(tid_path(pid, tid, "children"), parse_children)
}

/// The children of every thread of `pid`, in thread order (a child appears
/// under the thread that forked it; see KERNEL-NOTES §14). Threads that exit
/// during the walk are skipped.
pub fn read_process_children(pid: i32) -> Result<Vec<i32>, ProcError> {
    let mut out = Vec::new();
    for tid in read_tids(pid)? {
        match read_children(pid, tid) {
            Ok(c) => out.extend(c),
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The thread ids of `pid` (entries of `/proc/<pid>/task`), sorted.
pub fn read_tids(pid: i32) -> Result<Vec<i32>, ProcError> {
    read_numeric_dir(PathBuf::from(format!("/proc/{pid}/task")))
}

/// Numeric entries of a directory, sorted; other entries are ignored.
pub(crate) fn read_numeric_dir(path: PathBuf) -> Result<Vec<i32>, ProcError> {
    let dir = fs::read_dir(&path).map_err(|e| ProcError::io(&path, e))?;
    let mut out = Vec::new();
    for ent in dir {
        let ent = ent.map_err(|e| ProcError::io(&path, e))?;
        if let Some(n) = ent.file_name().to_str().and_then(dec::<i32>) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_children("5081 5090 ").unwrap(), vec![5081, 5090]);
        assert_eq!(parse_children("").unwrap(), Vec::<i32>::new());
        assert_eq!(parse_children("7").unwrap(), vec![7]);
        let e = parse_children("12 x3 ").unwrap_err();
        assert_eq!(e.to_string(), "children: bad line 1: \"12 x3\" (bad pid)");
    }

    #[test]
    fn live_self() {
        let pid = std::process::id() as i32;
        // The test harness runs tests on threads, so there is at least one.
        let tids = read_tids(pid).unwrap();
        assert!(tids.contains(&pid));
        assert!(tids.windows(2).all(|w| w[0] < w[1]));

        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let kids = read_process_children(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(kids.contains(&(child.id() as i32)), "{kids:?}");
        assert!(read_tids(i32::MAX).unwrap_err().is_gone());
    }
}
