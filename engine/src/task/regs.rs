//! x86_64 register state <-> core-*.img (`thread_info_x86`).
//!
//! General-purpose registers map field by field. The FPU/XSAVE area is kept
//! twice: split into CRIU's fields (so crit and CRIU read it) and whole as the
//! `stasis_xsave` extension, which restore prefers because it also carries
//! components CRIU's schema has no room for.

use libc::user_regs_struct;
use stasis_proto::criu::{UserX86FpregsEntry, UserX86RegsEntry, UserX86XsaveEntry};

/// Offset of the XSAVE header (xstate_bv) in the standard format.
const XSAVE_HDR: usize = 512;
/// AVX upper halves (component 2) always sit here in the standard format.
const YMMH_OFF: usize = 576;
const YMMH_LEN: usize = 256;

pub fn regs_to_image(r: &user_regs_struct) -> UserX86RegsEntry {
    UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(stasis_proto::criu::UserX86RegsMode::Native as i32),
    }
}

pub fn regs_from_image(e: &UserX86RegsEntry) -> user_regs_struct {
    user_regs_struct {
        r15: e.r15,
        r14: e.r14,
        r13: e.r13,
        r12: e.r12,
        rbp: e.bp,
        rbx: e.bx,
        r11: e.r11,
        r10: e.r10,
        r9: e.r9,
        r8: e.r8,
        rax: e.ax,
        rcx: e.cx,
        rdx: e.dx,
        rsi: e.si,
        rdi: e.di,
        orig_rax: e.orig_ax,
        rip: e.ip,
        cs: e.cs,
        eflags: e.flags,
        rsp: e.sp,
        ss: e.ss,
        fs_base: e.fs_base,
        gs_base: e.gs_base,
        ds: e.ds,
        es: e.es,
        fs: e.fs,
        gs: e.gs,
    }
}

fn u16_at(b: &[u8], off: usize) -> u32 {
    u16::from_le_bytes([b[off], b[off + 1]]) as u32
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
fn words(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Split an XSAVE area (at least the 512-byte FXSAVE part) into CRIU's fields.
pub fn xsave_to_image(x: &[u8]) -> UserX86FpregsEntry {
    let mut e = UserX86FpregsEntry {
        cwd: u16_at(x, 0),
        swd: u16_at(x, 2),
        twd: u16_at(x, 4),
        fop: u16_at(x, 6),
        rip: u64_at(x, 8),
        rdp: u64_at(x, 16),
        mxcsr: u32_at(x, 24),
        mxcsr_mask: u32_at(x, 28),
        st_space: words(&x[32..160]),
        xmm_space: words(&x[160..416]),
        padding: words(&x[416..512]),
        xsave: None,
        stasis_xsave: Some(x.to_vec()),
    };
    if x.len() >= YMMH_OFF + YMMH_LEN {
        e.xsave = Some(UserX86XsaveEntry {
            xstate_bv: u64_at(x, XSAVE_HDR),
            ymmh_space: words(&x[YMMH_OFF..YMMH_OFF + YMMH_LEN]),
            ..Default::default()
        });
    }
    e
}

fn put_u16(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 2].copy_from_slice(&(v as u16).to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}
fn put_words(b: &mut [u8], off: usize, w: &[u32], max: usize) {
    for (i, v) in w.iter().take(max).enumerate() {
        put_u32(b, off + i * 4, *v);
    }
}

/// Rebuild an XSAVE area of `size` bytes for this CPU. The raw extension wins
/// when it has exactly the size the kernel expects; otherwise the legacy and
/// AVX state is rebuilt from CRIU's fields and other components start in their
/// init state (their xstate_bv bits are cleared).
pub fn xsave_from_image(e: &UserX86FpregsEntry, size: usize) -> Vec<u8> {
    if let Some(raw) = &e.stasis_xsave {
        if raw.len() == size {
            return raw.clone();
        }
    }
    let mut x = vec![0u8; size.max(512)];
    put_u16(&mut x, 0, e.cwd);
    put_u16(&mut x, 2, e.swd);
    put_u16(&mut x, 4, e.twd);
    put_u16(&mut x, 6, e.fop);
    put_u64(&mut x, 8, e.rip);
    put_u64(&mut x, 16, e.rdp);
    put_u32(&mut x, 24, e.mxcsr);
    put_u32(&mut x, 28, e.mxcsr_mask);
    put_words(&mut x, 32, &e.st_space, 32);
    put_words(&mut x, 160, &e.xmm_space, 64);
    if let Some(xs) = &e.xsave {
        if x.len() >= YMMH_OFF + YMMH_LEN {
            // x87 | SSE | AVX only: other components were not kept.
            put_u64(&mut x, XSAVE_HDR, xs.xstate_bv & 0x7);
            put_words(&mut x, YMMH_OFF, &xs.ymmh_space, 64);
        }
    } else if x.len() >= XSAVE_HDR + 8 {
        put_u64(&mut x, XSAVE_HDR, 0x3);
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpregs_round_trip() {
        // SAFETY-free zeroed construction through Default is not available for
        // libc structs, so build one field by field.
        let mut r: user_regs_struct = regs_from_image(&UserX86RegsEntry::default());
        r.rip = 0x401000;
        r.rsp = 0x7ffc_0000_1000;
        r.orig_rax = u64::MAX;
        r.fs_base = 0x7f00_dead_beef;
        let back = regs_from_image(&regs_to_image(&r));
        assert_eq!(back.rip, r.rip);
        assert_eq!(back.rsp, r.rsp);
        assert_eq!(back.orig_rax, r.orig_rax);
        assert_eq!(back.fs_base, r.fs_base);
    }

    #[test]
    fn xsave_split_and_rebuild() {
        let mut x = vec![0u8; 1024];
        for (i, b) in x.iter_mut().enumerate().take(512) {
            *b = (i * 7) as u8;
        }
        put_u64(&mut x, XSAVE_HDR, 0x7);
        for i in 0..YMMH_LEN {
            x[YMMH_OFF + i] = i as u8 ^ 0x5a;
        }
        let e = xsave_to_image(&x);
        assert_eq!(e.st_space.len(), 32);
        assert_eq!(e.xmm_space.len(), 64);
        assert_eq!(e.xsave.as_ref().unwrap().ymmh_space.len(), 64);
        // Exact size: the raw copy comes back.
        assert_eq!(xsave_from_image(&e, 1024), x);
        // Other size: rebuilt from the split fields.
        let mut e2 = e.clone();
        e2.stasis_xsave = None;
        let y = xsave_from_image(&e2, 1024);
        assert_eq!(&y[..416], &x[..416]);
        assert_eq!(
            &y[YMMH_OFF..YMMH_OFF + YMMH_LEN],
            &x[YMMH_OFF..YMMH_OFF + YMMH_LEN]
        );
        assert_eq!(u64_at(&y, XSAVE_HDR), 0x7);
    }
}
