//! `/proc/PID/mountinfo`.

use super::util::{dec, pid_path, read_parse, unescape_octal};
use super::ProcError;

const FILE: &str = "mountinfo";

/// An optional field (between the mount options and the `-` separator).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MountOptional {
    /// `shared:N`: peer group N.
    Shared(u32),
    /// `master:N`: slave of peer group N.
    Master(u32),
    /// `propagate_from:N`: receives from peer group N (nearest dominant).
    PropagateFrom(u32),
    /// `unbindable`
    Unbindable,
    /// A tag this parser does not know, verbatim.
    Other(String),
}

/// One line of `/proc/PID/mountinfo`. Paths and the source have the kernel's
/// octal escapes (`\040` space, `\011` tab, `\012` newline, `\134`
/// backslash) undone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// `st_dev` of the filesystem (decimal major:minor).
    pub major: u32,
    pub minor: u32,
    /// Root of the mount within its filesystem.
    pub root: String,
    /// Mount point relative to the reader's root.
    pub mount_point: String,
    /// Per-mount options (`rw,nosuid,relatime`).
    pub mount_options: String,
    pub optional: Vec<MountOptional>,
    pub fstype: String,
    /// Mount source (`/dev/vda`, `tmpfs`, `none`, or empty).
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl MountInfo {
    /// The `shared:N` peer group.
    pub fn shared(&self) -> Option<u32> {
        self.optional.iter().find_map(|o| match o {
            MountOptional::Shared(n) => Some(*n),
            _ => None,
        })
    }

    /// The `master:N` peer group.
    pub fn master(&self) -> Option<u32> {
        self.optional.iter().find_map(|o| match o {
            MountOptional::Master(n) => Some(*n),
            _ => None,
        })
    }

    /// The `propagate_from:N` peer group.
    pub fn propagate_from(&self) -> Option<u32> {
        self.optional.iter().find_map(|o| match o {
            MountOptional::PropagateFrom(n) => Some(*n),
            _ => None,
        })
    }

    pub fn is_unbindable(&self) -> bool {
        self.optional.contains(&MountOptional::Unbindable)
    }

    /// True if `opt` (e.g. `"ro"`, `"nosuid"`) is one of the per-mount options.
    pub fn has_mount_option(&self, opt: &str) -> bool {
        self.mount_options.split(',').any(|o| o == opt)
    }

    /// The `st_dev` value (`makedev(major, minor)`).
    pub fn dev(&self) -> u64 {
        libc::makedev(self.major, self.minor)
    }
}

fn parse_optional(s: &str) -> Option<MountOptional> {
    if s == "unbindable" {
        return Some(MountOptional::Unbindable);
    }
    let (tag, n) = match s.split_once(':') {
        Some(x) => x,
        None => return Some(MountOptional::Other(s.to_owned())),
    };
    Some(match tag {
        "shared" => MountOptional::Shared(dec(n)?),
        "master" => MountOptional::Master(dec(n)?),
        "propagate_from" => MountOptional::PropagateFrom(dec(n)?),
        _ => MountOptional::Other(s.to_owned()),
    })
}

fn parse_line(line: &str) -> Result<MountInfo, &'static str> {
    // Fields are separated by single spaces; the source may be empty, which
    // shows as two consecutive spaces, so split on ' ' rather than on runs.
    let mut f = line.split(' ');
    let mut next = || f.next().ok_or("too few fields");
    let mount_id = dec(next()?).ok_or("bad mount id")?;
    let parent_id = dec(next()?).ok_or("bad parent id")?;
    let (maj, min) = next()?.split_once(':').ok_or("bad major:minor")?;
    let major = dec(maj).ok_or("bad major:minor")?;
    let minor = dec(min).ok_or("bad major:minor")?;
    let root = unescape_octal(next()?).into_owned();
    let mount_point = unescape_octal(next()?).into_owned();
    let mount_options = next()?.to_owned();
    let mut optional = Vec::new();
    loop {
        let tok = next().map_err(|_| "no '-' separator")?;
        if tok == "-" {
            break;
        }
        if tok.is_empty() {
            continue;
        }
        optional.push(parse_optional(tok).ok_or("bad optional field")?);
    }
    let fstype = unescape_octal(next()?).into_owned();
    let source = unescape_octal(next()?).into_owned();
    let super_options = next()?.to_owned();
    if f.next().is_some() {
        return Err("too many fields");
    }
    Ok(MountInfo {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        mount_options,
        optional,
        fstype,
        source,
        super_options,
    })
}

/// Parse the text of `/proc/PID/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, ProcError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        out.push(parse_line(line).map_err(|r| ProcError::bad_line(FILE, i + 1, line, r))?);
    }
    Ok(out)
}

/// Read and parse `/proc/<pid>/mountinfo`.
pub fn read_mountinfo(pid: i32) -> Result<Vec<MountInfo>, ProcError> {
    read_parse(pid_path(pid, "mountinfo"), parse_mountinfo)
}

/// The first mount with fstype `cgroup2` (on this machine,
/// `/sys/fs/cgroup/unified`).
pub fn find_cgroup2_mount(mounts: &[MountInfo]) -> Option<&MountInfo> {
    mounts.iter().find(|m| m.fstype == "cgroup2")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a mount namespace on the 6.18 test VM after `mount --make-rshared
    /// /`, a tmpfs at a path with a space, a slave bind of it and an
    /// unbindable mount.
    const SAMPLE: &str = "\
43 42 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
45 43 0:21 / /proc rw,relatime shared:3 - proc proc rw
47 46 0:28 / /sys/fs/cgroup rw,relatime shared:5 - tmpfs tmpfs rw,mode=755
56 47 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:14 - cgroup cgroup rw,name=systemd
57 47 0:38 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw
63 43 0:39 / /tmp/procsamp/mnt\\040a rw,relatime shared:21 - tmpfs src\\040x rw
64 43 0:39 / /tmp/procsamp/b rw,relatime master:21 - tmpfs src\\040x rw
65 43 0:40 / /tmp/procsamp/u rw,relatime unbindable - tmpfs u rw
";

    #[test]
    fn parses_sample() {
        let m = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(m.len(), 8);
        let root = &m[0];
        assert_eq!(
            (root.mount_id, root.parent_id, root.major, root.minor),
            (43, 42, 254, 0)
        );
        assert_eq!((root.root.as_str(), root.mount_point.as_str()), ("/", "/"));
        assert_eq!(root.shared(), Some(1));
        assert_eq!(root.master(), None);
        assert_eq!(root.fstype, "ext4");
        assert_eq!(root.source, "/dev/vda");
        assert!(root.super_options.contains("resuid=65534"));
        assert!(root.has_mount_option("relatime") && !root.has_mount_option("ro"));
        assert_eq!(root.dev(), libc::makedev(254, 0));

        let a = &m[5];
        assert_eq!(a.mount_point, "/tmp/procsamp/mnt a");
        assert_eq!(a.source, "src x");
        let b = &m[6];
        assert_eq!((b.master(), b.shared()), (Some(21), None));
        assert!(m[7].is_unbindable());
        assert!(m[7].optional == [MountOptional::Unbindable]);

        let cg = find_cgroup2_mount(&m).unwrap();
        assert_eq!(cg.mount_point, "/sys/fs/cgroup/unified");
        assert!(find_cgroup2_mount(&m[..4]).is_none());
    }

    #[test]
    fn edge_cases() {
        // No optional fields, several optional fields, empty source, escapes
        // in root, unknown optional tag.
        let m = parse_mountinfo(
            "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
             90 43 8:1 /sub\\011dir /mnt/x\\134y ro shared:3 master:2 propagate_from:1 future:9 - fuse.sshfs  rw\n",
        )
        .unwrap();
        assert!(m[0].optional.is_empty());
        let x = &m[1];
        assert_eq!(x.root, "/sub\tdir");
        assert_eq!(x.mount_point, "/mnt/x\\y");
        assert_eq!(
            (x.shared(), x.master(), x.propagate_from()),
            (Some(3), Some(2), Some(1))
        );
        assert_eq!(x.optional[3], MountOptional::Other("future:9".into()));
        assert_eq!(x.fstype, "fuse.sshfs");
        assert_eq!(x.source, "");
        assert_eq!(x.super_options, "rw");
        assert!(parse_mountinfo("").unwrap().is_empty());
    }

    #[test]
    fn errors() {
        let e = parse_mountinfo("22 27 0:21 / /proc rw,relatime proc proc rw\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "mountinfo: bad line 1: \"22 27 0:21 / /proc rw,relatime proc proc rw\" (no '-' separator)"
        );
        let e = parse_mountinfo("22 27 0-21 / /proc rw - proc proc rw\n").unwrap_err();
        assert!(e.to_string().ends_with("(bad major:minor)"), "{e}");
        let e = parse_mountinfo("x 27 0:21 / /proc rw - proc proc rw\n").unwrap_err();
        assert!(e.to_string().ends_with("(bad mount id)"), "{e}");
        let e = parse_mountinfo("1 2 0:21 / /proc rw shared:x - proc proc rw\n").unwrap_err();
        assert!(e.to_string().ends_with("(bad optional field)"), "{e}");
        let e = parse_mountinfo("1 2 0:21 / /proc rw - proc proc\n").unwrap_err();
        assert!(e.to_string().ends_with("(too few fields)"), "{e}");
    }

    #[test]
    fn live_self() {
        let m = read_mountinfo(std::process::id() as i32).unwrap();
        assert!(m.iter().any(|e| e.mount_point == "/"));
        assert!(m.iter().any(|e| e.fstype == "proc"));
    }
}
