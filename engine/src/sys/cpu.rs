//! CPU facts that decide whether a register image fits this machine.
//!
//! The XSAVE area written by the kernel for ptrace (`NT_X86_XSTATE`) has a
//! layout fixed by the enabled feature set (XCR0). A dumped XSAVE blob can
//! be loaded back only if its size and features are compatible here.

use core::arch::x86_64::{__cpuid_count, CpuidResult};

/// Offset in a ptrace XSAVE buffer of the XCR0 the kernel stored there
/// (`xstate_fx_sw_bytes[0]`, inside the FXSAVE `sw_reserved` area).
pub const XSTATE_XCR0_OFFSET: usize = 464;
/// Offset of the XSAVE header's `xstate_bv` (features present in the buffer).
pub const XSTATE_BV_OFFSET: usize = 512;

/// `cpuid` with a subleaf.
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    // SAFETY: cpuid exists on every x86_64 CPU and has no side effects.
    // (The intrinsic is a safe fn on newer toolchains, hence the allow.)
    #[allow(unused_unsafe)]
    unsafe {
        __cpuid_count(leaf, subleaf)
    }
}

/// Whether the OS enabled XSAVE (CPUID.1:ECX.OSXSAVE), i.e. `xgetbv` works.
pub fn osxsave() -> bool {
    cpuid(1, 0).ecx & (1 << 27) != 0
}

fn has_leaf_0xd() -> bool {
    cpuid(0, 0).eax >= 0xd && osxsave()
}

/// Leaf 0xD subleaf 0, if there is one. Asked once: every register
/// dump and restore of a thread needs it, and cpuid traps to the
/// hypervisor in a VM.
fn leaf_0xd() -> Option<CpuidResult> {
    static LEAF: std::sync::OnceLock<Option<CpuidResult>> = std::sync::OnceLock::new();
    *LEAF.get_or_init(|| has_leaf_0xd().then(|| cpuid(0xd, 0)))
}

/// XSAVE area size (standard format) for the features enabled in XCR0
/// (CPUID leaf 0xD subleaf 0, EBX). `None` without XSAVE.
pub fn xsave_size() -> Option<u32> {
    leaf_0xd().map(|r| r.ebx)
}

/// XSAVE area size for every feature the CPU supports (leaf 0xD, ECX).
pub fn xsave_max_size() -> Option<u32> {
    leaf_0xd().map(|r| r.ecx)
}

/// Feature mask the CPU supports in XCR0 (leaf 0xD subleaf 0, EDX:EAX).
pub fn xfeatures_supported() -> Option<u64> {
    leaf_0xd().map(|r| u64::from(r.eax) | (u64::from(r.edx) << 32))
}

/// XCR0, the feature set the kernel enabled (`xgetbv(0)`). `None` if the OS
/// has not enabled XSAVE, in which case only x87/SSE (FXSAVE) state exists.
pub fn xcr0() -> Option<u64> {
    if !osxsave() {
        return None;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so xgetbv with ECX=0 is allowed at CPL3; it
    // only reads XCR0 into EDX:EAX.
    unsafe {
        core::arch::asm!(
            "xgetbv",
            in("ecx") 0u32,
            out("eax") lo,
            out("edx") hi,
            options(nomem, nostack, preserves_flags),
        );
    }
    Some(u64::from(lo) | (u64::from(hi) << 32))
}

fn read_u64(buf: &[u8], off: usize) -> Option<u64> {
    let b = buf.get(off..off + 8)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// The XCR0 recorded by the kernel in a ptrace XSAVE buffer.
pub fn xstate_xcr0(xstate: &[u8]) -> Option<u64> {
    read_u64(xstate, XSTATE_XCR0_OFFSET)
}

/// `xstate_bv` of a ptrace XSAVE buffer: which components hold live state.
pub fn xstate_bv(xstate: &[u8]) -> Option<u64> {
    read_u64(xstate, XSTATE_BV_OFFSET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xsave_facts_are_consistent() {
        let (Some(size), Some(xcr0), Some(sup)) = (xsave_size(), xcr0(), xfeatures_supported())
        else {
            eprintln!("skipped: no XSAVE");
            return;
        };
        // x87 and SSE are always enabled; XCR0 is a subset of the supported set.
        assert_eq!(xcr0 & 3, 3);
        assert_eq!(xcr0 & !sup, 0);
        // Legacy area (512) + header (64) at least.
        assert!(size >= 576, "{size}");
        assert!(xsave_max_size().unwrap() >= size);
    }

    #[test]
    fn xstate_offsets() {
        let mut buf = vec![0u8; 576];
        buf[464..472].copy_from_slice(&0x602e7u64.to_le_bytes());
        buf[512..520].copy_from_slice(&0x2a2u64.to_le_bytes());
        assert_eq!(xstate_xcr0(&buf), Some(0x602e7));
        assert_eq!(xstate_bv(&buf), Some(0x2a2));
        assert_eq!(xstate_bv(&buf[..100]), None);
    }
}
