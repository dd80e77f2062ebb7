//! Turning SIGINT, SIGTERM, SIGHUP and SIGQUIT into a flag, so that a dump
//! or restore interrupted by the user stops at the next safe point and
//! cleans up (detaches the tree it froze, kills the tree it half built)
//! instead of dying mid-operation.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Install the flag-setting handler for the termination signals.
pub fn catch_termination() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an
        // atomic, which is async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            // No SA_RESTART: a blocking wait returns EINTR and sees the flag.
            sa.sa_flags = 0;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Has a termination signal arrived since [`catch_termination`]?
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
