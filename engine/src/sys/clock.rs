//! Clock reads for time namespace offsets.

use std::io;

use super::cvt;

/// `clock_gettime(clock)` as (seconds, nanoseconds).
pub fn gettime(clock: libc::clockid_t) -> io::Result<(i64, i64)> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which we own.
    cvt(unsafe { libc::clock_gettime(clock, &mut ts) } as libc::c_long)?;
    Ok((ts.tv_sec, ts.tv_nsec))
}

#[cfg(test)]
mod tests {
    #[test]
    fn monotonic_moves() {
        let a = super::gettime(libc::CLOCK_MONOTONIC).unwrap();
        let b = super::gettime(libc::CLOCK_MONOTONIC).unwrap();
        assert!(b >= a);
    }
}
