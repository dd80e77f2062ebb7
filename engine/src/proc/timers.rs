//! `/proc/PID/timers`: the POSIX timers (timer_create) of a process.

use super::util::{dec, hex_u64, pid_path, read_parse};
use super::ProcError;

const FILE: &str = "timers";

/// The notification method in `notify: <method>/<pid|tid>.<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerNotify {
    /// `signal`: SIGEV_SIGNAL
    Signal,
    /// `none`: SIGEV_NONE
    None,
    /// `thread`: SIGEV_THREAD (glibc implements it with SIGEV_THREAD_ID, so
    /// this is rarely seen)
    Thread,
}

/// One POSIX timer. `it_value`/`it_interval` are not in this file; get them
/// with timer_gettime() from inside the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixTimer {
    /// Kernel timer id (`ID:`), as returned by timer_create.
    pub id: i32,
    /// `sigev_signo`.
    pub signo: i32,
    /// `sigev_value` (hex).
    pub sigval: u64,
    pub notify: TimerNotify,
    /// `tid.N` (SIGEV_THREAD_ID set) rather than `pid.N`.
    pub thread_id: bool,
    /// The pid or tid after the dot (in the reader's pid namespace).
    pub notify_pid: i32,
    /// `ClockID:`; negative values are CPU-time clocks.
    pub clock_id: i32,
}

impl PosixTimer {
    /// The `sigev_notify` value to pass to timer_create at restore.
    pub fn sigev_notify(&self) -> i32 {
        let base = match self.notify {
            TimerNotify::Signal => libc::SIGEV_SIGNAL,
            TimerNotify::None => libc::SIGEV_NONE,
            TimerNotify::Thread => libc::SIGEV_THREAD,
        };
        if self.thread_id {
            base | libc::SIGEV_THREAD_ID
        } else {
            base
        }
    }
}

#[derive(Default)]
struct Partial {
    id: i32,
    signal: Option<(i32, u64)>,
    notify: Option<(TimerNotify, bool, i32)>,
    clock_id: Option<i32>,
}

impl Partial {
    fn finish(self) -> Option<PosixTimer> {
        let (signo, sigval) = self.signal?;
        let (notify, thread_id, notify_pid) = self.notify?;
        Some(PosixTimer {
            id: self.id,
            signo,
            sigval,
            notify,
            thread_id,
            notify_pid,
            clock_id: self.clock_id?,
        })
    }
}

fn parse_notify(v: &str) -> Option<(TimerNotify, bool, i32)> {
    let (how, target) = v.split_once('/')?;
    let notify = match how {
        "signal" => TimerNotify::Signal,
        "none" => TimerNotify::None,
        "thread" => TimerNotify::Thread,
        _ => return None,
    };
    let (kind, n) = target.split_once('.')?;
    let thread_id = match kind {
        "tid" => true,
        "pid" => false,
        _ => return None,
    };
    Some((notify, thread_id, dec(n)?))
}

/// Parse the text of `/proc/PID/timers`. Each timer starts with an `ID:`
/// line; `signal:`, `notify:` and `ClockID:` are mandatory.
pub fn parse_timers(text: &str) -> Result<Vec<PosixTimer>, ProcError> {
    let mut out = Vec::new();
    let mut cur: Option<(usize, Partial)> = None;
    let finish =
        |cur: Option<(usize, Partial)>, out: &mut Vec<PosixTimer>| -> Result<(), ProcError> {
            if let Some((start, p)) = cur {
                let t = p.finish().ok_or_else(|| {
                    ProcError::bad_line(
                        FILE,
                        start,
                        text.lines().nth(start - 1).unwrap_or(""),
                        "incomplete timer",
                    )
                })?;
                out.push(t);
            }
            Ok(())
        };
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |reason| ProcError::bad_line(FILE, i + 1, line, reason);
        let (key, v) = line.split_once(':').ok_or_else(|| bad("no colon"))?;
        let v = v.trim();
        if key == "ID" {
            finish(cur.take(), &mut out)?;
            let id = dec(v).ok_or_else(|| bad("bad id"))?;
            cur = Some((
                i + 1,
                Partial {
                    id,
                    ..Default::default()
                },
            ));
            continue;
        }
        let (_, p) = cur.as_mut().ok_or_else(|| bad("key before ID"))?;
        match key {
            "signal" => {
                let sig = v
                    .split_once('/')
                    .and_then(|(s, val)| Some((dec(s)?, hex_u64(val)?)));
                p.signal = Some(sig.ok_or_else(|| bad("bad signal"))?);
            }
            "notify" => p.notify = Some(parse_notify(v).ok_or_else(|| bad("bad notify"))?),
            "ClockID" => p.clock_id = Some(dec(v).ok_or_else(|| bad("bad clock id"))?),
            _ => {}
        }
    }
    finish(cur, &mut out)?;
    Ok(out)
}

/// Read and parse `/proc/<pid>/timers`.
pub fn read_timers(pid: i32) -> Result<Vec<PosixTimer>, ProcError> {
    read_parse(pid_path(pid, "timers"), parse_timers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Four timers created from Python on the 6.18 test VM: SIGEV_SIGNAL
    /// with sigval 0x1234 on CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIGEV_NONE on
    /// CLOCK_BOOTTIME_ALARM (7), and the default sigevent (SIGALRM).
    const SAMPLE: &str = "\
ID: 3
signal: 14/0000000000000000
notify: signal/pid.5593
ClockID: 0
ID: 2
signal: 0/0000000000000000
notify: none/pid.5593
ClockID: 7
ID: 1
signal: 14/0000000000000000
notify: signal/tid.5593
ClockID: 0
ID: 0
signal: 12/0000000000001234
notify: signal/pid.5593
ClockID: 1
";

    #[test]
    fn parses_sample() {
        let t = parse_timers(SAMPLE).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[3],
            PosixTimer {
                id: 0,
                signo: 12,
                sigval: 0x1234,
                notify: TimerNotify::Signal,
                thread_id: false,
                notify_pid: 5593,
                clock_id: 1
            }
        );
        assert_eq!(t[3].sigev_notify(), libc::SIGEV_SIGNAL);
        assert_eq!(
            t[2].sigev_notify(),
            libc::SIGEV_SIGNAL | libc::SIGEV_THREAD_ID
        );
        assert!(t[2].thread_id);
        assert_eq!(t[1].notify, TimerNotify::None);
        assert_eq!(t[1].sigev_notify(), libc::SIGEV_NONE);
        assert_eq!(t[1].clock_id, 7);
        assert_eq!(t[0].id, 3);
    }

    #[test]
    fn edge_cases() {
        assert!(parse_timers("").unwrap().is_empty());
        let t = parse_timers("ID: 5\nsignal: 10/ff\nnotify: thread/pid.1\nClockID: -6\n").unwrap();
        assert_eq!(t[0].clock_id, -6);
        assert_eq!(t[0].sigev_notify(), libc::SIGEV_THREAD);
    }

    #[test]
    fn errors() {
        let e = parse_timers("ID: 3\nsignal: 14/0\nClockID: 0\nID: 4\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "timers: bad line 1: \"ID: 3\" (incomplete timer)"
        );
        let e = parse_timers("signal: 14/0\n").unwrap_err();
        assert!(e.to_string().ends_with("(key before ID)"), "{e}");
        let e = parse_timers("ID: 3\nnotify: signal/xid.5\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "timers: bad line 2: \"notify: signal/xid.5\" (bad notify)"
        );
        let e = parse_timers("ID: 3\nsignal: 14\n").unwrap_err();
        assert!(e.to_string().ends_with("(bad signal)"), "{e}");
    }

    #[test]
    fn live_self() {
        // The test process normally has no POSIX timers; the file must parse.
        read_timers(std::process::id() as i32).unwrap();
    }
}
