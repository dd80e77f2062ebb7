//! Small helpers: time stamps, /proc readers, signal names.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use crate::error::{bail, IoCtx, Result};

/// Go's RFC3339Nano in UTC (trailing zeros of the fraction dropped), as runc
/// prints `created`.
pub fn rfc3339_nano(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, dd) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let ns = d.subsec_nanos();
    if ns != 0 {
        let f = format!("{ns:09}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to (year, month, day) (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// State letter and start time (clock ticks since boot) of `pid`, from
/// /proc/PID/stat. None when the process is gone.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    let start = f.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Is `pid` still the process that was started at `start` and not a zombie?
pub fn alive(pid: i32, start: u64) -> bool {
    match proc_stat(pid) {
        Some((st, t)) => t == start && st != 'Z' && st != 'X',
        None => false,
    }
}

/// A signal by number, name (`KILL`) or full name (`SIGKILL`), as runc
/// accepts it.
pub fn parse_signal(s: &str) -> Result<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| crate::Error::msg(format!("unknown signal {s:?}")));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    match name.parse::<Signal>() {
        Ok(sig) => Ok(sig),
        Err(_) => bail!("unknown signal {s:?}"),
    }
}

pub fn read_trim(p: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(p).at(p)?.trim().to_string())
}

pub fn write_file(p: &Path, data: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(p, data).at(p)
}

/// A user name for `uid` from /etc/passwd, else the number.
pub fn user_name(uid: u32) -> String {
    if let Ok(s) = std::fs::read_to_string("/etc/passwd") {
        for l in s.lines() {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() > 2 && f[2] == uid.to_string() {
                return f[0].to_string();
            }
        }
    }
    format!("#{uid}")
}

/// Runs `f` in a forked, single-threaded child and returns what it
/// returned. For callers with threads of their own (the containerd shim):
/// checkpoint and restore ptrace, wait for and join the namespaces of
/// their tasks, which another thread's `waitpid(-1)` or a shared fs
/// context would break. The child's children outlive it (re-parented to
/// the caller's subreaper); the child itself may be reaped by the caller's
/// reaper, so the answer travels over a pipe, not the exit status.
pub fn in_child(f: impl FnOnce() -> Result<String>) -> Result<String> {
    use std::io::{Read, Write};
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| crate::Error::msg(format!("pipe2: {e}")))?;
    match crate::sys::fork().map_err(|e| crate::Error::msg(format!("fork: {e}")))? {
        crate::sys::ForkResult::Child => {
            drop(r);
            let msg = match f() {
                Ok(s) => format!("O{s}"),
                Err(e) => format!("E{e}"),
            };
            let _ = std::fs::File::from(w).write_all(msg.as_bytes());
            crate::sys::exit_now(0)
        }
        crate::sys::ForkResult::Parent { child } => {
            drop(w);
            let mut out = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut out);
            let _ = nix::sys::wait::waitpid(child, None);
            match out.split_at_checked(1) {
                Some(("O", s)) => Ok(s.to_string()),
                Some(("E", e)) => Err(crate::Error::msg(e)),
                _ => bail!("helper process {child} died without an answer"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_format() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 843_585_860);
        assert_eq!(rfc3339_nano(t), "2023-11-14T22:13:20.84358586Z");
        assert_eq!(rfc3339_nano(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert!(parse_signal("NOPE").is_err());
    }
}
