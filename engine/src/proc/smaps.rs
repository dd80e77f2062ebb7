//! `/proc/PID/smaps`: per-VMA blocks (a maps header line followed by
//! `Key: value` lines, ending with `VmFlags:`).

use std::fmt;

use super::maps::{parse_maps_line, MapsEntry};
use super::util::{dec, pid_path, read_parse};
use super::ProcError;

const FILE: &str = "smaps";

/// Every two-letter `VmFlags` code the kernel knows (fs/proc/task_mmu.c,
/// `show_smap_vma_flags`), in the order the kernel prints them. Bit `i` of
/// [`VmFlags`] stands for `KNOWN[i]`.
const KNOWN: [&str; 37] = [
    "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "pf", "lo", "io", "sr", "rr", "dc", "de",
    "lf", "ac", "nr", "ht", "sf", "ar", "wf", "dd", "bt", "sd", "mm", "hg", "nh", "mg", "um", "uw",
    "mt", "ui", "ss", "dp", "sl",
];

fn known_bit(code: &str) -> Option<u64> {
    KNOWN.iter().position(|&k| k == code).map(|i| 1u64 << i)
}

/// The `VmFlags:` line: a set of two-letter codes.
///
/// Known codes are kept in a bitmask (no allocation); codes this parser does
/// not know (newer kernels) are kept verbatim in `unknown`.
///
/// Common codes: `rd` `wr` `ex` readable/writable/executable, `sh` shared,
/// `mr` `mw` `me` `ms` may-read/write/exec/share, `gd` MAP_GROWSDOWN, `pf`
/// PFN map, `lo` mlocked, `lf` lock-on-fault, `io` I/O memory, `sr`/`rr`
/// sequential/random read advice, `dc` MADV_DONTFORK (dontcopy), `de`
/// dontexpand (mremap), `ac` accounted, `nr` MAP_NORESERVE, `ht` hugetlb,
/// `sf` MAP_SYNC, `wf` MADV_WIPEONFORK, `dd` MADV_DONTDUMP, `sd` soft-dirty,
/// `mm` mixed map, `hg`/`nh` MADV_HUGEPAGE/NOHUGEPAGE, `mg` KSM mergeable,
/// `um`/`uw`/`ui` userfaultfd missing/wp/minor, `ss` shadow stack, `dp`
/// droppable, `sl` mseal()ed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VmFlags {
    known: u64,
    /// Codes not in the built-in table, in file order.
    pub unknown: Vec<[u8; 2]>,
}

impl VmFlags {
    /// Parse the value of a `VmFlags:` line (`rd wr mr mw me ac `).
    /// Returns `None` if a token is not exactly two bytes.
    pub fn parse(s: &str) -> Option<VmFlags> {
        let mut f = VmFlags::default();
        for tok in s.split_ascii_whitespace() {
            if tok.len() != 2 {
                return None;
            }
            match known_bit(tok) {
                Some(bit) => f.known |= bit,
                None => {
                    let b = tok.as_bytes();
                    f.unknown.push([b[0], b[1]]);
                }
            }
        }
        Some(f)
    }

    /// True if `code` (e.g. `"gd"`) is present.
    pub fn has(&self, code: &str) -> bool {
        match known_bit(code) {
            Some(bit) => self.known & bit != 0,
            None => self.unknown.iter().any(|u| u == code.as_bytes()),
        }
    }

    /// All codes present: known ones in kernel order, then unknown ones.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        KNOWN
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.known & (1 << i) != 0)
            .map(|(_, &k)| k)
            .chain(
                self.unknown
                    .iter()
                    .map(|u| std::str::from_utf8(u).unwrap_or("??")),
            )
    }

    pub fn is_empty(&self) -> bool {
        self.known == 0 && self.unknown.is_empty()
    }

    /// `gd`: MAP_GROWSDOWN.
    pub fn growsdown(&self) -> bool {
        self.has("gd")
    }
    /// `sh`: VM_SHARED.
    pub fn shared(&self) -> bool {
        self.has("sh")
    }
    /// `dc`: MADV_DONTFORK.
    pub fn dontcopy(&self) -> bool {
        self.has("dc")
    }
    /// `de`: VM_DONTEXPAND.
    pub fn dontexpand(&self) -> bool {
        self.has("de")
    }
    /// `dd`: MADV_DONTDUMP.
    pub fn dontdump(&self) -> bool {
        self.has("dd")
    }
    /// `wf`: MADV_WIPEONFORK.
    pub fn wipeonfork(&self) -> bool {
        self.has("wf")
    }
    /// `hg`: MADV_HUGEPAGE.
    pub fn hugepage(&self) -> bool {
        self.has("hg")
    }
    /// `nh`: MADV_NOHUGEPAGE.
    pub fn nohugepage(&self) -> bool {
        self.has("nh")
    }
    /// `mg`: MADV_MERGEABLE (KSM).
    pub fn mergeable(&self) -> bool {
        self.has("mg")
    }
    /// `lo`: mlock()ed.
    pub fn locked(&self) -> bool {
        self.has("lo")
    }
    /// `lf`: mlock2(MLOCK_ONFAULT).
    pub fn lockonfault(&self) -> bool {
        self.has("lf")
    }
    /// `io` or `pf`: device memory the dumper must not read.
    pub fn io_or_pfnmap(&self) -> bool {
        self.has("io") || self.has("pf")
    }
    /// `ht`: hugetlb.
    pub fn hugetlb(&self) -> bool {
        self.has("ht")
    }
    /// `uw`: userfaultfd write-protect registered.
    pub fn uffd_wp(&self) -> bool {
        self.has("uw")
    }
    /// `um`: userfaultfd missing registered.
    pub fn uffd_missing(&self) -> bool {
        self.has("um")
    }
    /// `ss`: shadow stack.
    pub fn shadow_stack(&self) -> bool {
        self.has("ss")
    }
    /// `sl`: sealed with mseal().
    pub fn sealed(&self) -> bool {
        self.has("sl")
    }
}

impl fmt::Display for VmFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(c)?;
        }
        Ok(())
    }
}

/// One VMA of `/proc/PID/smaps`. Sizes are in kB, as printed. Keys absent
/// from the block are 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SmapsEntry {
    /// The header line (same format as maps).
    pub vma: MapsEntry,
    pub size_kb: u64,
    pub kernel_page_size_kb: u64,
    pub mmu_page_size_kb: u64,
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub shared_clean_kb: u64,
    pub shared_dirty_kb: u64,
    pub private_clean_kb: u64,
    pub private_dirty_kb: u64,
    pub referenced_kb: u64,
    pub anonymous_kb: u64,
    pub swap_kb: u64,
    pub anon_huge_pages_kb: u64,
    pub locked_kb: u64,
    /// `THPeligible: 1`.
    pub thp_eligible: bool,
    /// `ProtectionKey:` (only with pkeys enabled).
    pub protection_key: Option<u32>,
    pub vm_flags: VmFlags,
}

fn is_header(line: &str) -> bool {
    // A header starts with "start-end" in lowercase hex; a key line with a
    // capitalised name ("Size:", "VmFlags:"). One byte tells them apart,
    // which matters: a dump parses some 25 lines per VMA.
    matches!(line.as_bytes().first(), Some(b'0'..=b'9' | b'a'..=b'f'))
}

/// Parse the text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Result<Vec<SmapsEntry>, ProcError> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.is_empty() {
            continue;
        }
        if is_header(line) {
            let vma = parse_maps_line(line, lineno).map_err(|e| match e {
                ProcError::BadLine {
                    line, text, reason, ..
                } => ProcError::BadLine {
                    file: FILE,
                    line,
                    text,
                    reason,
                },
                e => e,
            })?;
            out.push(SmapsEntry {
                vma,
                ..Default::default()
            });
            continue;
        }
        let bad = |reason| ProcError::bad_line(FILE, lineno, line, reason);
        let cur = out
            .last_mut()
            .ok_or_else(|| bad("key before first header"))?;
        let (key, v) = line.split_once(':').ok_or_else(|| bad("no colon"))?;
        if key == "VmFlags" {
            cur.vm_flags = VmFlags::parse(v).ok_or_else(|| bad("bad flag"))?;
            continue;
        }
        let slot = match key {
            "Size" => &mut cur.size_kb,
            "KernelPageSize" => &mut cur.kernel_page_size_kb,
            "MMUPageSize" => &mut cur.mmu_page_size_kb,
            "Rss" => &mut cur.rss_kb,
            "Pss" => &mut cur.pss_kb,
            "Shared_Clean" => &mut cur.shared_clean_kb,
            "Shared_Dirty" => &mut cur.shared_dirty_kb,
            "Private_Clean" => &mut cur.private_clean_kb,
            "Private_Dirty" => &mut cur.private_dirty_kb,
            "Referenced" => &mut cur.referenced_kb,
            "Anonymous" => &mut cur.anonymous_kb,
            "Swap" => &mut cur.swap_kb,
            "AnonHugePages" => &mut cur.anon_huge_pages_kb,
            "Locked" => &mut cur.locked_kb,
            "THPeligible" => {
                cur.thp_eligible = dec::<u8>(v.trim()).ok_or_else(|| bad("bad value"))? != 0;
                continue;
            }
            "ProtectionKey" => {
                cur.protection_key = Some(dec(v.trim()).ok_or_else(|| bad("bad value"))?);
                continue;
            }
            _ => continue,
        };
        let num = v.split_ascii_whitespace().next().unwrap_or("");
        *slot = dec(num).ok_or_else(|| bad("bad value"))?;
    }
    Ok(out)
}

/// Read and parse `/proc/<pid>/smaps`.
pub fn read_smaps(pid: i32) -> Result<Vec<SmapsEntry>, ProcError> {
    read_parse(pid_path(pid, "smaps"), parse_smaps)
}

#[cfg(test)]
mod tests {
    use super::super::maps::VmaKind;
    use super::*;

    /// Three blocks from `/proc/PID/smaps` of a Python process on the 6.18
    /// test VM (a growsdown mapping, a SysV segment, the stack), plus the
    /// vvar block and one with madvise(WIPEONFORK|DONTDUMP).
    const SAMPLE: &str = "\
7f11f1069000-7f11f106b000 rw-p 00000000 00:00 0\x20
Size:                  8 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Pss_Dirty:             0 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:         0 kB
Referenced:            0 kB
Anonymous:             0 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                  0 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd wr mr mw me gd ac\x20
7f11f106b000-7f11f106c000 rw-s 00000000 00:01 0                          /SYSV0000abcd (deleted)
Size:                  4 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                   0 kB
Pss:                   0 kB
Anonymous:             0 kB
Swap:                  0 kB
Locked:                0 kB
THPeligible:           0
ProtectionKey:         0
VmFlags: rd wr sh mr mw me ms\x20
7ffe7d9e2000-7ffe7da03000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:                  60 kB
Pss:                  60 kB
Pss_Dirty:            60 kB
Shared_Clean:          0 kB
Shared_Dirty:          0 kB
Private_Clean:         0 kB
Private_Dirty:        60 kB
Referenced:           60 kB
Anonymous:            60 kB
KSM:                   0 kB
LazyFree:              0 kB
AnonHugePages:      2048 kB
ShmemPmdMapped:        0 kB
FilePmdMapped:         0 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
Swap:                 12 kB
SwapPss:               0 kB
Locked:                0 kB
THPeligible:           1
ProtectionKey:         0
VmFlags: rd wr mr mw me gd ac\x20
7f11f1cef000-7f11f1cf3000 r--p 00000000 00:00 0                          [vvar]
Size:                 16 kB
VmFlags: rd mr pf io de dd\x20
7f11f1c00000-7f11f1c02000 rw-p 00000000 00:00 0\x20
Size:                  8 kB
VmFlags: rd wr mr mw me ac wf dd zz\x20
";

    #[test]
    fn parses_sample() {
        let s = parse_smaps(SAMPLE).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].vma.kind(), VmaKind::Anon);
        assert_eq!(s[0].size_kb, 8);
        assert!(s[0].vm_flags.growsdown());
        assert!(s[0].vm_flags.has("ac"));
        assert!(!s[0].vm_flags.shared());
        assert_eq!(s[0].protection_key, Some(0));

        assert_eq!(s[1].vma.kind(), VmaKind::SysV);
        assert!(s[1].vm_flags.shared() && s[1].vm_flags.has("ms"));
        assert_eq!(s[1].vm_flags.to_string(), "rd wr sh mr mw me ms");

        let st = &s[2];
        assert_eq!(st.vma.kind(), VmaKind::Stack);
        assert_eq!((st.size_kb, st.rss_kb, st.pss_kb), (132, 60, 60));
        assert_eq!(
            (st.private_dirty_kb, st.referenced_kb, st.anonymous_kb),
            (60, 60, 60)
        );
        assert_eq!(
            (st.anon_huge_pages_kb, st.swap_kb, st.locked_kb),
            (2048, 12, 0)
        );
        assert!(st.thp_eligible);

        assert!(s[3].vm_flags.io_or_pfnmap());
        assert!(s[3].vm_flags.dontexpand() && s[3].vm_flags.dontdump());
        // Missing keys default to zero.
        assert_eq!(s[3].rss_kb, 0);
        assert_eq!(s[3].protection_key, None);

        let f = &s[4].vm_flags;
        assert!(f.wipeonfork() && f.dontdump());
        assert!(f.has("zz"));
        assert_eq!(f.unknown, vec![*b"zz"]);
        assert_eq!(f.to_string(), "rd wr mr mw me ac wf dd zz");
        assert!(!f.sealed() && !f.uffd_wp() && !f.hugepage());
    }

    #[test]
    fn vmflags() {
        let f = VmFlags::parse(" rd ex mr mw me de hg nh mg lo lf uw um ss sl dc ").unwrap();
        assert!(f.hugepage() && f.nohugepage() && f.mergeable() && f.locked());
        assert!(f.lockonfault() && f.uffd_wp() && f.uffd_missing());
        assert!(f.shadow_stack() && f.sealed() && f.dontcopy());
        assert!(!f.has("wr") && !f.has("xx"));
        assert!(VmFlags::parse("").unwrap().is_empty());
        assert!(VmFlags::parse("rd w").is_none());
    }

    #[test]
    fn empty_and_errors() {
        assert!(parse_smaps("").unwrap().is_empty());
        let e = parse_smaps("Size: 4 kB\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "smaps: bad line 1: \"Size: 4 kB\" (key before first header)"
        );
        let e = parse_smaps("1000-2000 r--p 00000000 00:00 0\nRss: lots kB\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "smaps: bad line 2: \"Rss: lots kB\" (bad value)"
        );
        let e = parse_smaps("1000-2000 r--z 00000000 00:00 0\n").unwrap_err();
        assert!(e.to_string().starts_with("smaps: bad line 1: "), "{e}");
        let e = parse_smaps("1000-2000 r--p 00000000 00:00 0\nVmFlags: rd abc\n").unwrap_err();
        assert!(e.to_string().ends_with("(bad flag)"), "{e}");
    }

    #[test]
    fn live_self() {
        let pid = std::process::id() as i32;
        let s = read_smaps(pid).unwrap();
        let m = super::super::maps::read_maps(pid).unwrap();
        // Both reads see (nearly) the same layout; the stack is in both.
        let stack = s.iter().find(|e| e.vma.kind() == VmaKind::Stack).unwrap();
        assert!(stack.vm_flags.growsdown());
        assert_eq!(stack.size_kb * 1024, stack.vma.size());
        assert!(m.iter().any(|e| e.start == stack.vma.start));
        assert!(s.iter().all(|e| e.vm_flags.has("mr") || !e.vma.perms.read));
    }
}
