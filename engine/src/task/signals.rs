//! Signal state: actions (per process), masks and pending queues (per thread
//! and shared), sigaltstacks (per thread).

use stasis_proto::criu::{SaEntry, SiginfoEntry, SignalQueueEntry};

use crate::error::Result;
use crate::task::remote::{Call, Remote};

pub const NSIG: u32 = 64;
/// Size of the kernel's `struct sigaction` for rt_sigaction(2).
pub const KSIGACTION_LEN: u64 = 32;

/// Signals whose action can be read and set (all but SIGKILL and SIGSTOP),
/// in the order sa_entry records appear in core-*.img.
pub fn settable() -> impl Iterator<Item = u32> {
    (1..=NSIG).filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32)
}

/// The action of `sig` among `actions` (in [`settable`] order, as in the
/// images).
pub fn action_of(actions: &[SaEntry], sig: i32) -> Option<&SaEntry> {
    settable()
        .zip(actions)
        .find(|&(s, _)| s == sig as u32)
        .map(|(_, a)| a)
}

/// Whether a process with this `SigIgn` mask ignores SIGTRAP. Remote calls
/// must not raise one then (a forced SIGTRAP resets an ignored one to
/// SIG_DFL): no single steps and no int3 batches, only syscall stops.
pub fn ignores_trap(sig_ign: u64) -> bool {
    sig_ign & (1 << (libc::SIGTRAP - 1)) != 0
}

/// The ignored SIGTRAP among `actions` (images order), if it is: a restore
/// sets it only after its last single step (see [`ignores_trap`]).
pub fn ignored_trap(actions: &[SaEntry]) -> Option<&SaEntry> {
    action_of(actions, libc::SIGTRAP).filter(|sa| sa.sigaction == libc::SIG_IGN as u64)
}

/// Decode a kernel `struct sigaction` {handler, flags, restorer, mask}.
pub fn decode_ksigaction(b: &[u8]) -> SaEntry {
    let w = |i: usize| u64::from_ne_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
    SaEntry {
        sigaction: w(0),
        flags: w(1),
        restorer: w(2),
        mask: w(3),
        compat_sigaction: None,
        mask_extended: None,
    }
}

pub fn encode_ksigaction(e: &SaEntry) -> [u8; 32] {
    let mut b = [0u8; 32];
    for (i, v) in [e.sigaction, e.flags, e.restorer, e.mask]
        .iter()
        .enumerate()
    {
        b[i * 8..i * 8 + 8].copy_from_slice(&v.to_ne_bytes());
    }
    b
}

/// Remote rt_sigaction calls reading every settable signal's action into
/// `out` + sig * 32. Flags and restorer matter even for SIG_DFL and SIG_IGN
/// (e.g. SA_NOCLDWAIT, or a program checking its own dispositions), so every
/// signal is asked.
pub fn action_calls(out: u64) -> Vec<Call> {
    settable()
        .map(|sig| {
            let at = out + sig as u64 * KSIGACTION_LEN;
            (libc::SYS_rt_sigaction, [sig as u64, 0, at, 8, 0, 0])
        })
        .collect()
}

/// Decode what [`action_calls`] left at `out`.
pub fn read_actions(r: &Remote, out: u64) -> Result<Vec<SaEntry>> {
    let mut buf = vec![0u8; ((NSIG + 1) as u64 * KSIGACTION_LEN) as usize];
    r.read(out, &mut buf)?;
    Ok(settable()
        .map(|sig| {
            let o = (sig as u64 * KSIGACTION_LEN) as usize;
            decode_ksigaction(&buf[o..o + 32])
        })
        .collect())
}

/// A pending-signal queue from raw siginfos.
pub fn queue(infos: impl IntoIterator<Item = [u8; 128]>) -> Option<SignalQueueEntry> {
    let signals: Vec<SiginfoEntry> = infos
        .into_iter()
        .map(|i| SiginfoEntry {
            siginfo: i.to_vec(),
        })
        .collect();
    (!signals.is_empty()).then_some(SignalQueueEntry { signals })
}

pub fn signo(info: &[u8]) -> i32 {
    i32::from_ne_bytes(info[0..4].try_into().unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settable_skips_kill_and_stop() {
        let v: Vec<u32> = settable().collect();
        assert_eq!(v.len(), 62);
        assert!(!v.contains(&9) && !v.contains(&19));
    }

    #[test]
    fn ksigaction_round_trip() {
        let e = SaEntry {
            sigaction: 0x401234,
            flags: (libc::SA_SIGINFO | 0x0400_0000) as u64,
            restorer: 0x7f00_0000_1000,
            mask: 1 << 9,
            ..Default::default()
        };
        assert_eq!(decode_ksigaction(&encode_ksigaction(&e)), e);
    }

    #[test]
    fn action_of_counts_past_kill_and_stop() {
        // Entries in settable() order: the one of signal s is at s - 1 below
        // SIGKILL (9), s - 2 up to SIGSTOP (19), s - 3 above.
        let acts: Vec<SaEntry> = settable()
            .map(|s| SaEntry {
                sigaction: s as u64,
                ..Default::default()
            })
            .collect();
        for sig in [libc::SIGTRAP, libc::SIGUSR1, libc::SIGTERM, 20, 64] {
            assert_eq!(action_of(&acts, sig).map(|a| a.sigaction), Some(sig as u64));
        }
        assert!(action_of(&acts, libc::SIGKILL).is_none());
        assert!(action_of(&acts, libc::SIGSTOP).is_none());
        assert!(action_of(&acts[..3], libc::SIGTRAP).is_none());
    }

    #[test]
    fn trap_ignored() {
        // SigIgn bit n-1 is signal n: SIGTRAP is 5.
        assert!(ignores_trap(0x10));
        assert!(!ignores_trap(0x1000));
        let mut acts: Vec<SaEntry> = settable().map(|_| SaEntry::default()).collect();
        assert!(ignored_trap(&acts).is_none());
        acts[libc::SIGTRAP as usize - 1].sigaction = libc::SIG_IGN as u64;
        assert!(ignored_trap(&acts).is_some());
        acts[libc::SIGTRAP as usize - 1].sigaction = 0x401000;
        assert!(ignored_trap(&acts).is_none());
    }
}
