//! `/proc/PID/maps`: one [`MapsEntry`] per VMA.
//!
//! This is on the dump hot path for processes with many thousands of VMAs,
//! so a line is parsed by slicing, without intermediate allocations: the only
//! allocation per entry is its path (if any).

use std::fmt;

use super::util::{hex_u32, hex_u64, pid_path, read_parse, unescape_octal};
use super::ProcError;

const FILE: &str = "maps";
const DELETED: &str = " (deleted)";

/// The `rwxp` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (VM_MAYSHARE) rather than `p`.
    pub shared: bool,
}

impl Perms {
    /// Parse the four-character column, e.g. `r-xp`.
    pub fn parse(s: &str) -> Option<Perms> {
        let b = s.as_bytes();
        if b.len() != 4 {
            return None;
        }
        let flag = |c: u8, yes: u8| match c {
            _ if c == yes => Some(true),
            b'-' => Some(false),
            _ => None,
        };
        Some(Perms {
            read: flag(b[0], b'r')?,
            write: flag(b[1], b'w')?,
            exec: flag(b[2], b'x')?,
            shared: match b[3] {
                b's' => true,
                b'p' => false,
                _ => return None,
            },
        })
    }

    /// `PROT_READ | PROT_WRITE | PROT_EXEC` bits for mmap/mprotect.
    pub fn prot(&self) -> i32 {
        let mut p = libc::PROT_NONE;
        if self.read {
            p |= libc::PROT_READ;
        }
        if self.write {
            p |= libc::PROT_WRITE;
        }
        if self.exec {
            p |= libc::PROT_EXEC;
        }
        p
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |b: bool, y: char| if b { y } else { '-' };
        write!(
            f,
            "{}{}{}{}",
            c(self.read, 'r'),
            c(self.write, 'w'),
            c(self.exec, 'x'),
            if self.shared { 's' } else { 'p' }
        )
    }
}

/// What a VMA is, from its path column (see [`MapsEntry::kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmaKind {
    /// `[heap]`
    Heap,
    /// `[stack]` (the main thread's stack only).
    Stack,
    /// `[vdso]`
    Vdso,
    /// `[vvar]`
    Vvar,
    /// `[vvar_vclock]` (6.x; part of the vvar/vdso block, see KERNEL-NOTES §10).
    VvarVclock,
    /// `[vsyscall]`
    Vsyscall,
    /// No path: private (or shared-less) anonymous memory.
    Anon,
    /// `[anon:NAME]`: private anonymous memory named with PR_SET_VMA_ANON_NAME.
    AnonNamed,
    /// `[anon_shmem:NAME]`: *shared* anonymous memory with a name.
    AnonShmemNamed,
    /// A regular file mapping (path starts with `/`; may be `deleted`).
    File,
    /// `/SYSV%08x (deleted)`: a SysV shm segment; the key is the hex number.
    SysV,
    /// `/memfd:NAME (deleted)` (note: "deleted" always; memfds are unlinked
    /// from birth).
    Memfd,
    /// `/dev/zero`: with `deleted`, shared anonymous memory
    /// (MAP_SHARED|MAP_ANONYMOUS or a shared mapping of /dev/zero); without,
    /// a private mapping of the /dev/zero device.
    DevZero,
    /// `/anon_hugepage (deleted)`: shared anonymous hugetlb memory.
    AnonHugepage,
    /// Anything else: other `[…]` names (`[uprobes]`, `[shadow stack]`, …),
    /// `anon_inode:[…]` mappings (io_uring, perf, dma-buf), …
    Other,
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct MapsEntry {
    pub start: u64,
    /// Exclusive.
    pub end: u64,
    pub perms: Perms,
    /// File offset in bytes (`vm_pgoff << PAGE_SHIFT`).
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The path column with leading padding, `\012` escapes and the
    /// ` (deleted)` suffix removed; `None` for an anonymous mapping.
    ///
    /// Ambiguities inherited from the kernel format: a file whose name really
    /// ends in " (deleted)" looks deleted; leading spaces of a name are lost;
    /// invalid UTF-8 is replaced by the readers (use `map_files` for exact
    /// bytes).
    pub path: Option<String>,
    /// The path carried the ` (deleted)` suffix.
    pub deleted: bool,
}

impl MapsEntry {
    /// `end - start`.
    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// True if `addr` is inside `[start, end)`.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Classify the mapping from its path (and `deleted`).
    pub fn kind(&self) -> VmaKind {
        let Some(p) = self.path.as_deref() else {
            return VmaKind::Anon;
        };
        if p.starts_with('[') {
            return match p {
                "[heap]" => VmaKind::Heap,
                "[stack]" => VmaKind::Stack,
                "[vdso]" => VmaKind::Vdso,
                "[vvar]" => VmaKind::Vvar,
                "[vvar_vclock]" => VmaKind::VvarVclock,
                "[vsyscall]" => VmaKind::Vsyscall,
                _ if p.starts_with("[anon:") && p.ends_with(']') => VmaKind::AnonNamed,
                _ if p.starts_with("[anon_shmem:") && p.ends_with(']') => VmaKind::AnonShmemNamed,
                _ => VmaKind::Other,
            };
        }
        if !p.starts_with('/') {
            return VmaKind::Other;
        }
        if self.deleted {
            if self.sysv_key().is_some() {
                return VmaKind::SysV;
            }
            if p.starts_with("/memfd:") {
                return VmaKind::Memfd;
            }
            if p == "/anon_hugepage" {
                return VmaKind::AnonHugepage;
            }
        }
        if p == "/dev/zero" {
            return VmaKind::DevZero;
        }
        VmaKind::File
    }

    /// The name inside `[anon:NAME]` or `[anon_shmem:NAME]`.
    pub fn anon_name(&self) -> Option<&str> {
        let p = self.path.as_deref()?;
        p.strip_prefix("[anon:")
            .or_else(|| p.strip_prefix("[anon_shmem:"))?
            .strip_suffix(']')
    }

    /// The NAME of a `/memfd:NAME (deleted)` mapping.
    pub fn memfd_name(&self) -> Option<&str> {
        if !self.deleted {
            return None;
        }
        self.path.as_deref()?.strip_prefix("/memfd:")
    }

    /// The key of a `/SYSV%08x (deleted)` mapping.
    pub fn sysv_key(&self) -> Option<u32> {
        if !self.deleted {
            return None;
        }
        let hex = self.path.as_deref()?.strip_prefix("/SYSV")?;
        if hex.len() != 8 {
            return None;
        }
        hex_u32(hex)
    }
}

/// Parse one maps line (without its newline). Returns the reason on failure.
fn parse_line(line: &str) -> Result<MapsEntry, &'static str> {
    let (range, rest) = line.split_once(' ').ok_or("too few fields")?;
    let (s, e) = range.split_once('-').ok_or("bad address range")?;
    let start = hex_u64(s).ok_or("bad address range")?;
    let end = hex_u64(e).ok_or("bad address range")?;
    if end < start {
        return Err("bad address range");
    }
    let (perms, rest) = rest.split_once(' ').ok_or("too few fields")?;
    let perms = Perms::parse(perms).ok_or("bad perms")?;
    let (offset, rest) = rest.split_once(' ').ok_or("too few fields")?;
    let offset = hex_u64(offset).ok_or("bad offset")?;
    let (dev, rest) = rest.split_once(' ').ok_or("too few fields")?;
    let (maj, min) = dev.split_once(':').ok_or("bad device")?;
    let dev_major = hex_u32(maj).ok_or("bad device")?;
    let dev_minor = hex_u32(min).ok_or("bad device")?;
    let (inode, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let inode = super::util::dec(inode).ok_or("bad inode")?;
    let mut name = rest.trim_start_matches(' ');
    let mut deleted = false;
    if let Some(n) = name.strip_suffix(DELETED) {
        name = n;
        deleted = true;
    }
    let path = if name.is_empty() && !deleted {
        None
    } else {
        Some(unescape_octal(name).into_owned())
    };
    Ok(MapsEntry {
        start,
        end,
        perms,
        offset,
        dev_major,
        dev_minor,
        inode,
        path,
        deleted,
    })
}

/// Parse one line of `/proc/PID/maps` (also the header line of an smaps
/// block). `lineno` (1-based) is only used in the error.
pub fn parse_maps_line(line: &str, lineno: usize) -> Result<MapsEntry, ProcError> {
    parse_line(line).map_err(|r| ProcError::bad_line(FILE, lineno, line, r))
}

/// Parse the text of `/proc/PID/maps`. Empty text (a kernel thread, or an
/// exiting task) gives an empty vector.
pub fn parse_maps(text: &str) -> Result<Vec<MapsEntry>, ProcError> {
    // One pass over the bytes to size the vector exactly.
    let mut out = Vec::with_capacity(text.bytes().filter(|&b| b == b'\n').count() + 1);
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        out.push(parse_maps_line(line, i + 1)?);
    }
    Ok(out)
}

/// Read and parse `/proc/<pid>/maps`.
pub fn read_maps(pid: i32) -> Result<Vec<MapsEntry>, ProcError> {
    read_parse(pid_path(pid, "maps"), parse_maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cat /proc/self/maps` on the 6.18 test VM (locale lines trimmed).
    const CAT: &str = "\
55a6d7ddf000-55a6d7de1000 r--p 00000000 fe:00 247030                     /usr/bin/cat
55a6d7de1000-55a6d7de6000 r-xp 00002000 fe:00 247030                     /usr/bin/cat
55a6d7de6000-55a6d7de9000 r--p 00007000 fe:00 247030                     /usr/bin/cat
55a6d7de9000-55a6d7dea000 r--p 00009000 fe:00 247030                     /usr/bin/cat
55a6d7dea000-55a6d7deb000 rw-p 0000a000 fe:00 247030                     /usr/bin/cat
55a6e82ec000-55a6e830d000 rw-p 00000000 00:00 0                          [heap]
7fecda06b000-7fecda08d000 rw-p 00000000 00:00 0\x20
7fecda08d000-7fecda0e4000 r--p 00000000 fe:00 316534                     /usr/lib/locale/C.utf8/LC_CTYPE
7fecda0f0000-7fecda116000 r--p 00000000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7fecda116000-7fecda26c000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
7fecda2d3000-7fecda2da000 r--s 00000000 fe:00 325745                     /usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache
7fecda2dd000-7fecda2e1000 r--p 00000000 00:00 0                          [vvar]
7fecda2e1000-7fecda2e3000 r--p 00000000 00:00 0                          [vvar_vclock]
7fecda2e3000-7fecda2e5000 r-xp 00000000 00:00 0                          [vdso]
7fecda318000-7fecda31a000 rw-p 00033000 fe:00 325843                     /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffd3d2dc000-7ffd3d2fd000 rw-p 00000000 00:00 0                          [stack]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    /// Captured from a Python process: a deleted file whose name has spaces
    /// and parentheses, a memfd, shared anonymous memory, a SysV segment, a
    /// private /dev/zero mapping. The `[anon:…]` lines are synthetic (the
    /// test VM lacks CONFIG_ANON_VMA_NAME).
    const SPECIAL: &str = "\
7f11f0fd3000-7f11f0fd4000 rw-p 00000000 00:06 4                          /dev/zero
7f11f106b000-7f11f106c000 rw-s 00000000 00:01 0                          /SYSV0000abcd (deleted)
7f11f1bba000-7f11f1bbb000 rw-s 00000000 00:01 1028                       /dev/zero (deleted)
7f11f1bbc000-7f11f1bbd000 rw-s 00000000 00:01 1026                       /memfd:my mem (deleted)
7f11f1ce4000-7f11f1ce6000 rw-s 00000000 fe:00 10011181                   /tmp/procsamp/my file (x).bin (deleted)
7f11f1ce6000-7f11f1ce8000 rw-p 00000000 00:00 0                          [anon:my name]
7f11f1ce8000-7f11f1ce9000 rw-s 00000000 00:01 2048                       [anon_shmem:shm]
7f11f1ce9000-7f11f1cea000 rw-s 00000000 00:10 17                         anon_inode:[io_uring]
7f11f1cea000-7f11f1ceb000 rw-s 00000000 00:01 2049                       /anon_hugepage (deleted)
7f11f1ceb000-7f11f1cec000 r--p 00000000 fe:00 77                         /tmp/new\\012line
103:02-1 r--p 00000000 fe:00 77 /x
";

    #[test]
    fn parses_cat() {
        let m = parse_maps(CAT).unwrap();
        assert_eq!(m.len(), 17);
        let e = &m[1];
        assert_eq!((e.start, e.end), (0x55a6d7de1000, 0x55a6d7de6000));
        assert_eq!(
            e.perms,
            Perms {
                read: true,
                write: false,
                exec: true,
                shared: false
            }
        );
        assert_eq!(e.perms.to_string(), "r-xp");
        assert_eq!(e.perms.prot(), libc::PROT_READ | libc::PROT_EXEC);
        assert_eq!(e.offset, 0x2000);
        assert_eq!((e.dev_major, e.dev_minor, e.inode), (0xfe, 0, 247030));
        assert_eq!(e.path.as_deref(), Some("/usr/bin/cat"));
        assert!(!e.deleted);
        assert_eq!(e.kind(), VmaKind::File);
        assert_eq!(e.size(), 0x5000);
        assert!(e.contains(0x55a6d7de1000) && !e.contains(0x55a6d7de6000));

        assert_eq!(m[5].kind(), VmaKind::Heap);
        assert_eq!(m[6].path, None);
        assert_eq!(m[6].kind(), VmaKind::Anon);
        assert!(m[10].perms.shared);
        let kinds: Vec<_> = m[11..].iter().map(MapsEntry::kind).collect();
        assert_eq!(
            kinds,
            [
                VmaKind::Vvar,
                VmaKind::VvarVclock,
                VmaKind::Vdso,
                VmaKind::File,
                VmaKind::Stack,
                VmaKind::Vsyscall
            ]
        );
        assert_eq!(m[16].start, 0xffffffffff600000);
        assert_eq!(m[16].perms.to_string(), "--xp");
    }

    #[test]
    fn special_names() {
        let err = parse_maps(SPECIAL).unwrap_err();
        assert_eq!(
            err.to_string(),
            "maps: bad line 11: \"103:02-1 r--p 00000000 fe:00 77 /x\" (bad address range)"
        );
        let text: String = SPECIAL.lines().take(10).map(|l| format!("{l}\n")).collect();
        let m = parse_maps(&text).unwrap();

        assert_eq!(m[0].kind(), VmaKind::DevZero);
        assert!(!m[0].deleted);

        assert_eq!(m[1].kind(), VmaKind::SysV);
        assert_eq!(m[1].sysv_key(), Some(0xabcd));
        assert_eq!(m[1].path.as_deref(), Some("/SYSV0000abcd"));
        assert!(m[1].deleted);

        assert_eq!(m[2].kind(), VmaKind::DevZero);
        assert!(m[2].deleted && m[2].perms.shared);

        assert_eq!(m[3].kind(), VmaKind::Memfd);
        assert_eq!(m[3].memfd_name(), Some("my mem"));

        assert_eq!(m[4].kind(), VmaKind::File);
        assert_eq!(m[4].path.as_deref(), Some("/tmp/procsamp/my file (x).bin"));
        assert!(m[4].deleted);
        assert_eq!(m[4].inode, 10011181);

        assert_eq!(m[5].kind(), VmaKind::AnonNamed);
        assert_eq!(m[5].anon_name(), Some("my name"));
        assert_eq!(m[6].kind(), VmaKind::AnonShmemNamed);
        assert_eq!(m[6].anon_name(), Some("shm"));
        assert_eq!(m[7].kind(), VmaKind::Other);
        assert_eq!(m[8].kind(), VmaKind::AnonHugepage);
        assert_eq!(m[9].path.as_deref(), Some("/tmp/new\nline"));
        assert_eq!(m[9].anon_name(), None);
        assert_eq!(m[9].memfd_name(), None);
    }

    #[test]
    fn edge_cases() {
        assert!(parse_maps("").unwrap().is_empty());
        assert!(parse_maps("\n").unwrap().is_empty());
        // No trailing space, no trailing newline.
        let m = parse_maps("1000-2000 ---p 00000000 00:00 0").unwrap();
        assert_eq!(m[0].path, None);
        assert_eq!(m[0].perms.prot(), libc::PROT_NONE);
        // A deleted file named just " (deleted)"-suffixed root is still a path.
        let m = parse_maps("1000-2000 rw-s 00000000 00:01 5 / (deleted)\n").unwrap();
        assert_eq!(m[0].path.as_deref(), Some("/"));
        // Path with multiple internal spaces is kept verbatim.
        let m = parse_maps("1000-2000 r--p 00000000 08:01 5      /a  b   c\n").unwrap();
        assert_eq!(m[0].path.as_deref(), Some("/a  b   c"));
        assert_eq!(m[0].dev_major, 8);
        // Not a SysV name when the key is not 8 hex digits.
        let m = parse_maps("1000-2000 rw-s 00000000 00:01 0 /SYSVzz (deleted)\n").unwrap();
        assert_eq!(m[0].kind(), VmaKind::File);
        // Large major numbers are hex too.
        let m = parse_maps("1000-2000 r--p 00000000 103:1f 5 /x\n").unwrap();
        assert_eq!((m[0].dev_major, m[0].dev_minor), (0x103, 0x1f));
    }

    #[test]
    fn errors() {
        let cases = [
            ("1000-2000 rwxq 00000000 00:00 0", "bad perms"),
            ("1000-2000 rwx 00000000 00:00 0", "bad perms"),
            ("2000-1000 rwxp 00000000 00:00 0", "bad address range"),
            ("1000 rwxp 00000000 00:00 0", "bad address range"),
            ("1000-2000 rwxp 0000g000 00:00 0", "bad offset"),
            ("1000-2000 rwxp 00000000 0000 0", "bad device"),
            ("1000-2000 rwxp 00000000 00:00 x /a", "bad inode"),
            ("1000-2000 rwxp", "too few fields"),
        ];
        for (line, reason) in cases {
            let text = format!("1000-2000 r--p 00000000 00:00 0\n\n{line}\n");
            match parse_maps(&text) {
                Err(ProcError::BadLine {
                    file,
                    line: n,
                    text,
                    reason: r,
                }) => {
                    assert_eq!((file, n, text.as_str(), r), ("maps", 3, line, reason));
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }

    #[test]
    fn live_self() {
        let m = read_maps(std::process::id() as i32).unwrap();
        assert!(m.iter().any(|e| e.kind() == VmaKind::Stack));
        assert!(m.iter().any(|e| e.kind() == VmaKind::Vdso));
        assert!(m.windows(2).all(|w| w[0].end <= w[1].start));
        // Our own code is mapped from the test binary.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let here = main_addr();
        let e = m.iter().find(|e| e.contains(here)).unwrap();
        assert!(e.perms.exec);
        assert_eq!(e.path.as_deref(), exe.to_str());
    }

    fn main_addr() -> u64 {
        let f: fn() -> u64 = main_addr;
        f as usize as u64
    }
}
