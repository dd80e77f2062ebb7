//! `/proc/PID/cgroup`.

use super::util::{dec, pid_path, read_parse_single};
use super::ProcError;

const FILE: &str = "cgroup";

/// One line `hierarchy-id:controllers:path`. The v2 line is `0::/path`
/// (empty controller list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CgroupEntry {
    pub hierarchy_id: u32,
    /// Comma-separated controllers, including `name=…` for named v1
    /// hierarchies; empty for v2.
    pub controllers: Vec<String>,
    /// Path relative to the hierarchy root (or to the cgroup-namespace root).
    pub path: String,
}

impl CgroupEntry {
    /// True for the unified (v2) hierarchy line.
    pub fn is_v2(&self) -> bool {
        self.hierarchy_id == 0 && self.controllers.is_empty()
    }

    /// True if this v1 hierarchy carries `controller` (e.g. `"freezer"`,
    /// `"name=systemd"`).
    pub fn has_controller(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Parse the text of `/proc/PID/cgroup`. The path is everything after the
/// second colon, so it may itself contain colons.
pub fn parse_cgroup(text: &str) -> Result<Vec<CgroupEntry>, ProcError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |reason| ProcError::bad_line(FILE, i + 1, line, reason);
        let mut f = line.splitn(3, ':');
        let id = f
            .next()
            .and_then(dec)
            .ok_or_else(|| bad("bad hierarchy id"))?;
        let ctrl = f.next().ok_or_else(|| bad("too few fields"))?;
        let path = f.next().ok_or_else(|| bad("too few fields"))?;
        out.push(CgroupEntry {
            hierarchy_id: id,
            controllers: if ctrl.is_empty() {
                Vec::new()
            } else {
                ctrl.split(',').map(str::to_owned).collect()
            },
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// The unified-hierarchy (`0::`) entry, if any.
pub fn find_cgroup_v2(entries: &[CgroupEntry]) -> Option<&CgroupEntry> {
    entries.iter().find(|e| e.is_v2())
}

/// Read and parse `/proc/<pid>/cgroup`.
pub fn read_cgroup(pid: i32) -> Result<Vec<CgroupEntry>, ProcError> {
    read_parse_single(pid_path(pid, "cgroup"), parse_cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cat /proc/self/cgroup` on the test VM (cgroup v1 hybrid).
    const SAMPLE: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/845f301258ae812bee7c232fd811c6b1
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn parses_sample() {
        let c = parse_cgroup(SAMPLE).unwrap();
        assert_eq!(c.len(), 10);
        assert!(c[0].has_controller("name=systemd"));
        assert_eq!(c[5].hierarchy_id, 4);
        assert_eq!(c[5].path, "/process_api/845f301258ae812bee7c232fd811c6b1");
        let v2 = find_cgroup_v2(&c).unwrap();
        assert_eq!(v2.path, "/");
        assert!(!c[1].is_v2());
    }

    #[test]
    fn edge_cases() {
        let c = parse_cgroup("3:cpu,cpuacct:/a:b/c\n0::/user.slice/x (y)\n").unwrap();
        assert_eq!(c[0].controllers, ["cpu", "cpuacct"]);
        assert_eq!(c[0].path, "/a:b/c");
        assert_eq!(c[1].path, "/user.slice/x (y)");
        assert!(parse_cgroup("").unwrap().is_empty());
        assert!(find_cgroup_v2(&c[..1]).is_none());
    }

    #[test]
    fn errors() {
        let e = parse_cgroup("0::/\nx:cpu:/\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cgroup: bad line 2: \"x:cpu:/\" (bad hierarchy id)"
        );
        let e = parse_cgroup("1:cpu\n").unwrap_err();
        assert!(e.to_string().ends_with("(too few fields)"), "{e}");
    }

    #[test]
    fn live_self() {
        let c = read_cgroup(std::process::id() as i32).unwrap();
        assert!(!c.is_empty());
        assert!(c.iter().all(|e| e.path.starts_with('/')));
    }
}
