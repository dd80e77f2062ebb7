//! Turning /proc/PID/smaps into vma_entry records, and deciding which pages of
//! each VMA belong in the image.

use stasis_proto::criu::VmaEntry;

use crate::error::{Error, Result};
use crate::proc::{SmapsEntry, VmaKind};

// vma_entry.status bits (CRIU's VMA_AREA_* / VMA_* values).
pub const VMA_AREA_REGULAR: u32 = 1 << 0;
pub const VMA_AREA_STACK: u32 = 1 << 1;
pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
pub const VMA_AREA_VDSO: u32 = 1 << 3;
pub const VMA_AREA_HEAP: u32 = 1 << 5;
pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
pub const VMA_FILE_SHARED: u32 = 1 << 7;
pub const VMA_ANON_SHARED: u32 = 1 << 8;
pub const VMA_ANON_PRIVATE: u32 = 1 << 9;
pub const VMA_AREA_SYSVIPC: u32 = 1 << 10;
pub const VMA_AREA_VVAR: u32 = 1 << 12;
pub const VMA_AREA_MEMFD: u32 = 1 << 14;
pub const VMA_AREA_GUARD: u32 = 1 << 16;
pub const VMA_UNSUPP: u32 = 1 << 31;

/// madvise advice numbers recorded in vma_entry.madv (as 1 << advice).
const MADV_FLAGS: [(&str, u32); 8] = [
    ("rr", libc::MADV_RANDOM as u32),
    ("sr", libc::MADV_SEQUENTIAL as u32),
    ("dc", libc::MADV_DONTFORK as u32),
    ("mg", libc::MADV_MERGEABLE as u32),
    ("hg", libc::MADV_HUGEPAGE as u32),
    ("nh", libc::MADV_NOHUGEPAGE as u32),
    ("dd", libc::MADV_DONTDUMP as u32),
    ("wf", libc::MADV_WIPEONFORK as u32),
];

/// What the dumper does with a VMA's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contents {
    /// Nothing to save (shared file mappings, vvar, vsyscall, SysV shm
    /// whose bytes the IPC namespace's images hold).
    None,
    /// Every page, present or not: the vDSO, which CRIU's restore reads
    /// from the image to check it against the running kernel's.
    Whole,
    /// Present or swapped pages of private anonymous memory.
    Anon,
    /// Only the pages copied on write (anonymous) of a private file mapping.
    CowOnly,
    /// Shared anonymous memory, saved once per object (shmid).
    Shmem,
}

/// A VMA ready for the image, with what the dumper needs to know about it.
#[derive(Debug, Clone)]
pub struct Vma {
    pub entry: VmaEntry,
    pub contents: Contents,
    /// For file mappings: the path and whether it is deleted.
    pub path: Option<String>,
    pub deleted: bool,
    pub dev: (u32, u32),
    pub inode: u64,
    /// Some of its pages are mapped by other processes too (smaps
    /// `Shared_*`): copy-on-write pages shared since a fork, say.
    pub shared_pages: bool,
}

impl Vma {
    pub fn start(&self) -> u64 {
        self.entry.start
    }
    pub fn end(&self) -> u64 {
        self.entry.end
    }
    pub fn status(&self) -> u32 {
        self.entry.status
    }
    pub fn is_sysv(&self) -> bool {
        self.entry.status & VMA_AREA_SYSVIPC != 0
    }
    pub fn is_file(&self) -> bool {
        self.entry.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0
    }
}

/// Classify one smaps block. The file id (`shmid` of file VMAs) is filled in
/// later by the caller, once the file is registered in files.img.
pub fn classify(pid: i32, s: &SmapsEntry) -> Result<Vma> {
    let m = &s.vma;
    let f = &s.vm_flags;
    let shared = m.perms.shared;
    let mut flags: u32 = if shared {
        libc::MAP_SHARED as u32
    } else {
        libc::MAP_PRIVATE as u32
    };
    if f.growsdown() {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    // As CRIU: mapped again with it, so that e.g. a malloc arena (reserved
    // MAP_NORESERVE) does not merge with an ordinary neighbour on restore.
    if f.has("nr") {
        flags |= libc::MAP_NORESERVE as u32;
    }
    let mut madv = 0u64;
    for (code, adv) in MADV_FLAGS {
        if f.has(code) {
            madv |= 1u64 << adv;
        }
    }
    let unsupported = |why: &str| {
        Err(Error::unsupported(
            pid,
            format!(
                "mapping {:x}-{:x} {}: {why}",
                m.start,
                m.end,
                m.path.as_deref().unwrap_or("[anon]")
            ),
        ))
    };
    let special = matches!(
        m.kind(),
        VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock | VmaKind::Vsyscall
    );
    if f.io_or_pfnmap() && !special {
        return unsupported("device (I/O or PFN) mappings cannot be checkpointed");
    }
    if f.hugetlb() {
        return unsupported("hugetlb mappings are not supported yet");
    }
    // The kernel's special mappings are anonymous private ones to CRIU
    // (status and MAP_ANONYMOUS): its restore maps them by those bits.
    let (status, contents) = match m.kind() {
        VmaKind::Vdso => (
            VMA_AREA_REGULAR | VMA_AREA_VDSO | VMA_ANON_PRIVATE,
            Contents::Whole,
        ),
        VmaKind::Vvar | VmaKind::VvarVclock => (
            VMA_AREA_REGULAR | VMA_AREA_VVAR | VMA_ANON_PRIVATE,
            Contents::None,
        ),
        VmaKind::Vsyscall => (VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE, Contents::None),
        VmaKind::Heap => (
            VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_HEAP,
            Contents::Anon,
        ),
        VmaKind::Stack => (
            VMA_AREA_REGULAR | VMA_ANON_PRIVATE | VMA_AREA_STACK,
            Contents::Anon,
        ),
        VmaKind::Anon | VmaKind::AnonNamed if !shared => {
            (VMA_AREA_REGULAR | VMA_ANON_PRIVATE, Contents::Anon)
        }
        VmaKind::DevZero if !shared => (VMA_AREA_REGULAR | VMA_ANON_PRIVATE, Contents::Anon),
        VmaKind::Anon | VmaKind::AnonNamed | VmaKind::AnonShmemNamed | VmaKind::DevZero => {
            (VMA_AREA_REGULAR | VMA_ANON_SHARED, Contents::Shmem)
        }
        VmaKind::File if shared => (VMA_AREA_REGULAR | VMA_FILE_SHARED, Contents::None),
        VmaKind::File => (VMA_AREA_REGULAR | VMA_FILE_PRIVATE, Contents::CowOnly),
        // CRIU's record of an shmat attachment: shared anonymous memory
        // whose shmid is the segment id (the inode of its /SYSV file); the
        // bytes are saved with the IPC namespace (ns/ipc.rs).
        VmaKind::SysV if shared => (
            VMA_AREA_REGULAR | VMA_ANON_SHARED | VMA_AREA_SYSVIPC,
            Contents::None,
        ),
        VmaKind::SysV => return unsupported("private SysV shm mapping"),
        // A memfd mapping maps the memfd's file (files/memfd.rs); its
        // content is saved with the memfd, COW copies like any file's.
        VmaKind::Memfd if shared => (
            VMA_AREA_REGULAR | VMA_FILE_SHARED | VMA_AREA_MEMFD,
            Contents::None,
        ),
        VmaKind::Memfd => (
            VMA_AREA_REGULAR | VMA_FILE_PRIVATE | VMA_AREA_MEMFD,
            Contents::CowOnly,
        ),
        VmaKind::AnonHugepage => return unsupported("hugetlb mappings are not supported yet"),
        VmaKind::Other => return unsupported("special mapping"),
    };
    if status & (VMA_ANON_PRIVATE | VMA_ANON_SHARED) != 0 {
        flags |= libc::MAP_ANONYMOUS as u32;
    }
    let shmid = if status & VMA_ANON_SHARED != 0 {
        m.inode
    } else {
        0
    };
    let fdflags = if status & (VMA_FILE_SHARED | VMA_FILE_PRIVATE) != 0 {
        // A shared writable mapping needs a writable file; private ones never.
        Some(if shared && m.perms.write {
            libc::O_RDWR as u32
        } else {
            libc::O_RDONLY as u32
        })
    } else {
        None
    };
    Ok(Vma {
        entry: VmaEntry {
            start: m.start,
            end: m.end,
            pgoff: m.offset,
            shmid,
            prot: m.perms.prot() as u32,
            flags,
            status,
            fd: -1,
            madv: (madv != 0).then_some(madv),
            fdflags,
        },
        contents,
        path: m.path.clone(),
        deleted: m.deleted,
        dev: (m.dev_major, m.dev_minor),
        inode: m.inode,
        shared_pages: s.shared_clean_kb + s.shared_dirty_kb != 0,
    })
}

/// One shmat of a SysV segment on restore, and what turns the attachment
/// back into the dumped VMAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysvAttach {
    /// The segment id (the VMAs' shmid).
    pub shmid: u64,
    /// Where the segment's first byte goes: a VMA's start minus its pgoff.
    pub base: u64,
    /// Page-rounded segment size: shmat maps all of it.
    pub len: u64,
    /// shmat flags: SHM_RDONLY unless some VMA is writable, SHM_EXEC when
    /// some is executable (mprotect cannot add what the attach lacks).
    pub flags: u64,
    /// Parts of `[base, base + len)` the process had unmapped.
    pub unmap: Vec<(u64, u64)>,
    /// VMAs whose protection differs from the attach's: (start, len, prot).
    pub protect: Vec<(u64, u64, u64)>,
}

/// The shmat calls that rebuild the SysV VMAs of one address space: VMAs of
/// the same segment with the same base are one attachment (split by
/// mprotect or a partial munmap). `size_of` gives a segment's size from the
/// IPC namespace's images. Errors say which VMA cannot be rebuilt.
pub fn sysv_attaches(
    vmas: &[VmaEntry],
    size_of: impl Fn(u64) -> Option<u64>,
) -> std::result::Result<Vec<SysvAttach>, String> {
    let page = super::PAGE_SIZE;
    let mut out: Vec<SysvAttach> = Vec::new();
    let mut parts: Vec<Vec<&VmaEntry>> = Vec::new();
    for v in vmas.iter().filter(|v| v.status & VMA_AREA_SYSVIPC != 0) {
        let Some(base) = v.start.checked_sub(v.pgoff) else {
            return Err(format!(
                "sysv shm vma {:#x}: offset {:#x} below address 0",
                v.start, v.pgoff
            ));
        };
        if let Some(i) = out
            .iter()
            .position(|a| a.shmid == v.shmid && a.base == base)
        {
            parts[i].push(v);
            continue;
        }
        let size = size_of(v.shmid).ok_or_else(|| {
            format!(
                "sysv shm vma {:#x}: segment {} is not in the ipc namespace's images",
                v.start, v.shmid
            )
        })?;
        out.push(SysvAttach {
            shmid: v.shmid,
            base,
            len: size.div_ceil(page) * page,
            flags: libc::SHM_RDONLY as u64,
            unmap: Vec::new(),
            protect: Vec::new(),
        });
        parts.push(vec![v]);
    }
    for (a, vs) in out.iter_mut().zip(&parts) {
        let (r, w, x) = (
            libc::PROT_READ as u32,
            libc::PROT_WRITE as u32,
            libc::PROT_EXEC as u32,
        );
        if vs.iter().any(|v| v.prot & w != 0) {
            a.flags &= !(libc::SHM_RDONLY as u64);
        }
        if vs.iter().any(|v| v.prot & x != 0) {
            a.flags |= libc::SHM_EXEC as u64;
        }
        let mut at_prot = r;
        if a.flags & libc::SHM_RDONLY as u64 == 0 {
            at_prot |= w;
        }
        if a.flags & libc::SHM_EXEC as u64 != 0 {
            at_prot |= x;
        }
        let mut at = a.base;
        for v in vs {
            if v.end > a.base + a.len {
                return Err(format!(
                    "sysv shm vma {:#x}-{:#x} reaches past segment {} ({:#x} bytes)",
                    v.start, v.end, a.shmid, a.len
                ));
            }
            if v.start > at {
                a.unmap.push((at, v.start - at));
            }
            at = v.end;
            if v.prot != at_prot {
                a.protect.push((v.start, v.end - v.start, v.prot as u64));
            }
        }
        if at < a.base + a.len {
            a.unmap.push((at, a.base + a.len - at));
        }
    }
    Ok(out)
}

/// `smaps` without `[start, end)`: the dumper's scratch area, mapped in the
/// task before its smaps were read. The kernel may have merged it with a
/// neighbour of its kind (anonymous, private, rwx), so whatever overlaps is
/// cut, not only an exact match dropped.
pub fn cut_out(smaps: Vec<SmapsEntry>, (start, end): (u64, u64)) -> Vec<SmapsEntry> {
    let mut out = Vec::with_capacity(smaps.len());
    for s in smaps {
        let (a, b) = (s.vma.start, s.vma.end);
        if b <= start || a >= end {
            out.push(s);
            continue;
        }
        if a < start {
            let mut left = s.clone();
            left.vma.end = start;
            left.size_kb = (start - a) / 1024;
            out.push(left);
        }
        if b > end {
            let mut right = s;
            if right.vma.path.is_some() {
                right.vma.offset += end - a;
            }
            right.vma.start = end;
            right.size_kb = (b - end) / 1024;
            out.push(right);
        }
    }
    out
}

/// Merges adjacent vvar VMAs (`[vvar]` + `[vvar_vclock]` on 6.x kernels)
/// into one, as CRIU records them: its restore expects a single vvar area.
pub fn merge_vvar(vmas: &mut Vec<Vma>) {
    let mut out: Vec<Vma> = Vec::with_capacity(vmas.len());
    for v in vmas.drain(..) {
        if let Some(last) = out.last_mut() {
            if last.status() & VMA_AREA_VVAR != 0
                && v.status() & VMA_AREA_VVAR != 0
                && last.end() == v.start()
            {
                last.entry.end = v.end();
                continue;
            }
        }
        out.push(v);
    }
    *vmas = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_out_drops_or_splits_what_overlaps() {
        let e = |start: u64, end: u64| {
            let mut s = SmapsEntry::default();
            s.vma.start = start;
            s.vma.end = end;
            s.size_kb = (end - start) / 1024;
            s
        };
        let span = |v: &[SmapsEntry]| {
            v.iter()
                .map(|s| (s.vma.start, s.vma.end))
                .collect::<Vec<_>>()
        };
        let all = vec![e(0x1000, 0x2000), e(0x10000, 0x20000), e(0x30000, 0x40000)];
        // An exact match goes.
        assert_eq!(
            span(&cut_out(all.clone(), (0x10000, 0x20000))),
            vec![(0x1000, 0x2000), (0x30000, 0x40000)]
        );
        // Merged with neighbours on both sides: they stay.
        let cut = cut_out(all.clone(), (0x14000, 0x18000));
        assert_eq!(
            span(&cut),
            vec![
                (0x1000, 0x2000),
                (0x10000, 0x14000),
                (0x18000, 0x20000),
                (0x30000, 0x40000)
            ]
        );
        assert_eq!((cut[1].size_kb, cut[2].size_kb), (16, 32));
        // Not mapped there: nothing changes.
        assert_eq!(span(&cut_out(all.clone(), (0x5000, 0x6000))), span(&all));
    }
    use crate::proc::parse_smaps;

    const SMAPS: &str = "\
55d4c0a00000-55d4c0a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                   4 kB
VmFlags: rd wr mr mw me ac sd
7f1c2b400000-7f1c2b428000 r--p 00000000 fe:00 1311                       /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                160 kB
VmFlags: rd mr mw me sd
7f1c2b600000-7f1c2b700000 rw-s 00000000 00:01 2048                       /dev/zero (deleted)
Size:               1024 kB
VmFlags: rd wr sh mr mw me ms sd
7ffd1a1e0000-7ffd1a201000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
VmFlags: rd wr mr mw me gd ac
7ffd1a3f0000-7ffd1a3f8000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
VmFlags: rd ex mr mw me de sd
7f1c24000000-7f1c24021000 rw-p 00000000 00:00 0 
Size:                132 kB
VmFlags: rd wr mr mw me nr sd
";

    #[test]
    fn classify_common_vmas() {
        let all = parse_smaps(SMAPS).unwrap();
        let v: Vec<Vma> = all.iter().map(|s| classify(1, s).unwrap()).collect();
        assert_eq!(v[0].contents, Contents::Anon);
        assert_ne!(v[0].status() & VMA_AREA_HEAP, 0);
        assert_eq!(v[1].contents, Contents::CowOnly);
        assert_eq!(v[1].entry.fdflags, Some(libc::O_RDONLY as u32));
        assert_eq!(v[2].contents, Contents::Shmem);
        assert_eq!(v[2].entry.shmid, 2048);
        assert_ne!(v[2].entry.flags & libc::MAP_SHARED as u32, 0);
        assert_ne!(v[3].entry.flags & libc::MAP_GROWSDOWN as u32, 0);
        assert_eq!(v[4].contents, Contents::Whole);
        assert_ne!(v[4].status() & VMA_AREA_VDSO, 0);
        // A malloc arena: MAP_NORESERVE kept, the others have none.
        assert_eq!(v[5].contents, Contents::Anon);
        assert_ne!(v[5].entry.flags & libc::MAP_NORESERVE as u32, 0);
        assert_eq!(v[0].entry.flags & libc::MAP_NORESERVE as u32, 0);
    }

    /// CRIU 4.x records the kernel's special mappings as private anonymous
    /// ones and [vvar] + [vvar_vclock] as one area; its restore fails on
    /// anything else ("Can't restore ... mapping", vdso ELF checks).
    #[test]
    fn special_mappings_as_criu_records_them() {
        let smaps = "\
7f3ea3467000-7f3ea346b000 r--p 00000000 00:00 0                          [vvar]
Size:                 16 kB
VmFlags: rd mr pf io de dd
7f3ea346b000-7f3ea346d000 r--p 00000000 00:00 0                          [vvar_vclock]
Size:                  8 kB
VmFlags: rd mr pf io de dd
7f3ea346d000-7f3ea346f000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
VmFlags: rd ex mr mw me de sd
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
VmFlags: ex
";
        let all = parse_smaps(smaps).unwrap();
        let mut v: Vec<Vma> = all.iter().map(|s| classify(1, s).unwrap()).collect();
        for x in &v {
            assert_ne!(x.status() & VMA_ANON_PRIVATE, 0, "{:x}", x.start());
            assert_ne!(x.entry.flags & libc::MAP_ANONYMOUS as u32, 0);
        }
        merge_vvar(&mut v);
        assert_eq!(v.len(), 3);
        assert_eq!((v[0].start(), v[0].end()), (0x7f3ea3467000, 0x7f3ea346d000));
        assert_eq!(
            v[0].status(),
            VMA_AREA_REGULAR | VMA_AREA_VVAR | VMA_ANON_PRIVATE
        );
        assert_eq!(v[0].contents, Contents::None);
        assert_eq!(v[1].contents, Contents::Whole);
        assert_eq!(v[2].status(), VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE);
    }

    fn sysv(start: u64, end: u64, pgoff: u64, shmid: u64, prot: i32) -> VmaEntry {
        VmaEntry {
            start,
            end,
            pgoff,
            shmid,
            prot: prot as u32,
            flags: (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32,
            status: VMA_AREA_REGULAR | VMA_ANON_SHARED | VMA_AREA_SYSVIPC,
            fd: -1,
            madv: None,
            fdflags: None,
        }
    }

    #[test]
    fn sysv_vma_as_criu_records_it() {
        let smaps = "\
7f11f106b000-7f11f106c000 rw-s 00000000 00:01 32769                      /SYSV0000abcd (deleted)
Size:                  4 kB
VmFlags: rd wr sh mr mw me ms sd
";
        let all = parse_smaps(smaps).unwrap();
        let v = classify(1, &all[0]).unwrap();
        assert!(v.is_sysv());
        assert_eq!(
            v.status(),
            VMA_AREA_REGULAR | VMA_ANON_SHARED | VMA_AREA_SYSVIPC
        );
        assert_eq!(v.entry.shmid, 32769);
        assert_eq!(v.contents, Contents::None);
        assert_eq!(
            v.entry.flags,
            (libc::MAP_SHARED | libc::MAP_ANONYMOUS) as u32
        );
    }

    #[test]
    fn sysv_attach_plan() {
        let rw = libc::PROT_READ | libc::PROT_WRITE;
        let ro = libc::PROT_READ;
        let size = |id| match id {
            7 => Some(0x3000),
            9 => Some(0x1800),
            _ => None,
        };
        // Segment 7 attached twice; the first split by mprotect, the second
        // with its middle page unmapped. Segment 9 read-only, tail rounded.
        let vmas = vec![
            sysv(0x10000, 0x11000, 0, 7, rw),
            sysv(0x11000, 0x13000, 0x1000, 7, ro),
            sysv(0x20000, 0x21000, 0, 7, rw),
            sysv(0x22000, 0x23000, 0x2000, 7, rw),
            sysv(0x30000, 0x32000, 0, 9, ro),
        ];
        let a = sysv_attaches(&vmas, size).unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!((a[0].shmid, a[0].base, a[0].len), (7, 0x10000, 0x3000));
        assert_eq!(a[0].flags, 0);
        assert!(a[0].unmap.is_empty());
        assert_eq!(a[0].protect, vec![(0x11000, 0x2000, ro as u64)]);
        assert_eq!(a[1].base, 0x20000);
        assert_eq!(a[1].unmap, vec![(0x21000, 0x1000)]);
        assert!(a[1].protect.is_empty());
        assert_eq!((a[2].base, a[2].len), (0x30000, 0x2000));
        assert_eq!(a[2].flags, libc::SHM_RDONLY as u64);
        assert!(a[2].protect.is_empty());
        // A head unmapped: attached at the base, the head unmapped again.
        let a = sysv_attaches(&[sysv(0x41000, 0x43000, 0x1000, 7, rw)], size).unwrap();
        assert_eq!(a[0].base, 0x40000);
        assert_eq!(a[0].unmap, vec![(0x40000, 0x1000)]);
        // Unknown segment, and a VMA past the segment's end.
        let e = sysv_attaches(&[sysv(0x10000, 0x11000, 0, 8, rw)], size).unwrap_err();
        assert!(e.contains("segment 8"), "{e}");
        assert!(sysv_attaches(&[sysv(0x10000, 0x14000, 0, 7, rw)], size).is_err());
    }
}
