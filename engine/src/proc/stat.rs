//! `/proc/PID/stat` and `/proc/PID/task/TID/stat`.

use super::util::{pid_path, read_parse_single, tid_path};
use super::ProcError;

const FILE: &str = "stat";

/// `PF_KTHREAD` in [`Stat::flags`]: the task is a kernel thread.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Number of fields after `comm` (fields 3..=52 of proc(5)).
const TAIL_FIELDS: usize = 50;

/// All 52 fields of `/proc/PID/stat` (proc(5) numbering in the comments).
///
/// The mm fields (`start_code`…`env_end`, plus `start_stack`) are what
/// `PR_SET_MM_MAP` needs at restore. The kernel prints them as 0 for tasks
/// without an mm or when the reader lacks ptrace access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// (1)
    pub pid: i32,
    /// (2) raw `comm`, without the parentheses; may contain spaces, `)` and
    /// even newlines.
    pub comm: String,
    /// (3)
    pub state: char,
    /// (4)
    pub ppid: i32,
    /// (5)
    pub pgrp: i32,
    /// (6)
    pub session: i32,
    /// (7)
    pub tty_nr: i32,
    /// (8)
    pub tpgid: i32,
    /// (9) `PF_*` flags.
    pub flags: u32,
    /// (10)
    pub minflt: u64,
    /// (11)
    pub cminflt: u64,
    /// (12)
    pub majflt: u64,
    /// (13)
    pub cmajflt: u64,
    /// (14) clock ticks.
    pub utime: u64,
    /// (15)
    pub stime: u64,
    /// (16)
    pub cutime: i64,
    /// (17)
    pub cstime: i64,
    /// (18)
    pub priority: i64,
    /// (19)
    pub nice: i64,
    /// (20)
    pub num_threads: i64,
    /// (21) always 0.
    pub itrealvalue: i64,
    /// (22) clock ticks since boot.
    pub starttime: u64,
    /// (23) bytes.
    pub vsize: u64,
    /// (24) pages.
    pub rss: i64,
    /// (25)
    pub rsslim: u64,
    /// (26)
    pub start_code: u64,
    /// (27)
    pub end_code: u64,
    /// (28)
    pub start_stack: u64,
    /// (29)
    pub kstkesp: u64,
    /// (30)
    pub kstkeip: u64,
    /// (31) obsolete decimal signal masks; use `status` instead.
    pub signal: u64,
    /// (32)
    pub blocked: u64,
    /// (33)
    pub sigignore: u64,
    /// (34)
    pub sigcatch: u64,
    /// (35)
    pub wchan: u64,
    /// (36)
    pub nswap: u64,
    /// (37)
    pub cnswap: u64,
    /// (38)
    pub exit_signal: i32,
    /// (39)
    pub processor: i32,
    /// (40)
    pub rt_priority: u32,
    /// (41) `SCHED_*`.
    pub policy: u32,
    /// (42)
    pub delayacct_blkio_ticks: u64,
    /// (43)
    pub guest_time: u64,
    /// (44)
    pub cguest_time: i64,
    /// (45)
    pub start_data: u64,
    /// (46)
    pub end_data: u64,
    /// (47)
    pub start_brk: u64,
    /// (48)
    pub arg_start: u64,
    /// (49)
    pub arg_end: u64,
    /// (50)
    pub env_start: u64,
    /// (51)
    pub env_end: u64,
    /// (52) as reported by waitpid(2).
    pub exit_code: i32,
}

impl Stat {
    /// True when `PF_KTHREAD` is set.
    pub fn is_kthread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// Parse the text of `/proc/PID/stat` (or `task/TID/stat`). `comm` is found
/// between the first `(` and the **last** `)`. Extra trailing fields added
/// by future kernels are ignored.
pub fn parse_stat(text: &str) -> Result<Stat, ProcError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    // The whole file is one logical line (comm may hold a raw newline).
    let bad = |reason| ProcError::bad_line(FILE, 1, text, reason);
    let open = text.find(" (").ok_or_else(|| bad("no '(' before comm"))?;
    let close = text.rfind(')').ok_or_else(|| bad("no ')' after comm"))?;
    if close < open + 2 {
        return Err(bad("no ')' after comm"));
    }
    let pid = text[..open].parse().map_err(|_| bad("bad pid"))?;
    let comm = &text[open + 2..close];
    let rest = text[close + 1..]
        .strip_prefix(' ')
        .ok_or_else(|| bad("no fields after comm"))?;

    let mut f = [""; TAIL_FIELDS];
    let mut n = 0;
    for tok in rest.split_ascii_whitespace() {
        if n == TAIL_FIELDS {
            break;
        }
        f[n] = tok;
        n += 1;
    }
    if n < TAIL_FIELDS {
        return Err(bad("too few fields"));
    }
    // Field `i` in proc(5) numbering (3..=52).
    fn num<T: std::str::FromStr>(f: &[&str; TAIL_FIELDS], i: usize) -> Option<T> {
        super::util::dec(f[i - 3])
    }
    let parsed: Option<Stat> = (|| {
        let mut state_chars = f[0].chars();
        let state = state_chars.next()?;
        if state_chars.next().is_some() {
            return None;
        }
        Some(Stat {
            pid,
            comm: comm.to_owned(),
            state,
            ppid: num(&f, 4)?,
            pgrp: num(&f, 5)?,
            session: num(&f, 6)?,
            tty_nr: num(&f, 7)?,
            tpgid: num(&f, 8)?,
            flags: num(&f, 9)?,
            minflt: num(&f, 10)?,
            cminflt: num(&f, 11)?,
            majflt: num(&f, 12)?,
            cmajflt: num(&f, 13)?,
            utime: num(&f, 14)?,
            stime: num(&f, 15)?,
            cutime: num(&f, 16)?,
            cstime: num(&f, 17)?,
            priority: num(&f, 18)?,
            nice: num(&f, 19)?,
            num_threads: num(&f, 20)?,
            itrealvalue: num(&f, 21)?,
            starttime: num(&f, 22)?,
            vsize: num(&f, 23)?,
            rss: num(&f, 24)?,
            rsslim: num(&f, 25)?,
            start_code: num(&f, 26)?,
            end_code: num(&f, 27)?,
            start_stack: num(&f, 28)?,
            kstkesp: num(&f, 29)?,
            kstkeip: num(&f, 30)?,
            signal: num(&f, 31)?,
            blocked: num(&f, 32)?,
            sigignore: num(&f, 33)?,
            sigcatch: num(&f, 34)?,
            wchan: num(&f, 35)?,
            nswap: num(&f, 36)?,
            cnswap: num(&f, 37)?,
            exit_signal: num(&f, 38)?,
            processor: num(&f, 39)?,
            rt_priority: num(&f, 40)?,
            policy: num(&f, 41)?,
            delayacct_blkio_ticks: num(&f, 42)?,
            guest_time: num(&f, 43)?,
            cguest_time: num(&f, 44)?,
            start_data: num(&f, 45)?,
            end_data: num(&f, 46)?,
            start_brk: num(&f, 47)?,
            arg_start: num(&f, 48)?,
            arg_end: num(&f, 49)?,
            env_start: num(&f, 50)?,
            env_end: num(&f, 51)?,
            exit_code: num(&f, 52)?,
        })
    })();
    parsed.ok_or_else(|| bad("bad field value"))
}

/// Read and parse `/proc/<pid>/stat`.
pub fn read_stat(pid: i32) -> Result<Stat, ProcError> {
    read_parse_single(pid_path(pid, "stat"), parse_stat)
}

/// Read and parse `/proc/<pid>/task/<tid>/stat`.
pub fn read_stat_tid(pid: i32, tid: i32) -> Result<Stat, ProcError> {
    read_parse_single(tid_path(pid, tid, "stat"), parse_stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cat /proc/self/stat` on the 6.18 test VM.
    const CAT: &str = "5083 (cat) R 5080 5080 4356 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 28177 3133440 387 18446744073709551615 94656856924160 94656856944041 140734236699504 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94656856960048 94656856961664 94657069850624 140734236707553 140734236707573 140734236707573 140734236708843 0\n";

    /// `/proc/2/stat` (kthreadd).
    const KTHREADD: &str = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 11 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    /// Python after prctl(PR_SET_NAME, "a) (b\\c\nd)"): comm holds `)`, `(`,
    /// a backslash and a raw newline.
    const WEIRD: &str = "6308 (a) (b\\c\nd)) R 6295 6295 4356 0 -1 4194304 2897 6547 1 0 5 3 4 2 20 0 1 0 42097 17149952 3414 18446744073709551615 93986618994688 93986618995029 140734141042304 0 0 0 0 16781312 2 0 0 0 17 1 0 0 0 0 0 93986619006384 93986619007000 93986648768512 140734141044652 140734141045017 140734141045017 140734141046735 0\n";

    #[test]
    fn parses_cat() {
        let s = parse_stat(CAT).unwrap();
        assert_eq!(s.pid, 5083);
        assert_eq!(s.comm, "cat");
        assert_eq!(s.state, 'R');
        assert_eq!(
            (s.ppid, s.pgrp, s.session, s.tty_nr, s.tpgid),
            (5080, 5080, 4356, 0, -1)
        );
        assert_eq!(s.flags, 4194304);
        assert!(!s.is_kthread());
        assert_eq!(s.minflt, 100);
        assert_eq!((s.priority, s.nice, s.num_threads), (20, 0, 1));
        assert_eq!(s.starttime, 28177);
        assert_eq!(s.vsize, 3133440);
        assert_eq!(s.rss, 387);
        assert_eq!(s.rsslim, u64::MAX);
        assert_eq!(s.start_code, 94656856924160);
        assert_eq!(s.end_code, 94656856944041);
        assert_eq!(s.start_stack, 140734236699504);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(s.processor, 1);
        assert_eq!((s.rt_priority, s.policy), (0, 0));
        assert_eq!(s.start_data, 94656856960048);
        assert_eq!(s.end_data, 94656856961664);
        assert_eq!(s.start_brk, 94657069850624);
        assert_eq!(s.arg_start, 140734236707553);
        assert_eq!(s.arg_end, 140734236707573);
        assert_eq!(s.env_start, 140734236707573);
        assert_eq!(s.env_end, 140734236708843);
        assert_eq!(s.exit_code, 0);
    }

    #[test]
    fn parses_kthread() {
        let s = parse_stat(KTHREADD).unwrap();
        assert!(s.is_kthread());
        assert_eq!(s.comm, "kthreadd");
        assert_eq!(s.sigignore, 2147483647);
        assert_eq!(s.start_code, 0);
    }

    #[test]
    fn weird_comm() {
        let s = parse_stat(WEIRD).unwrap();
        assert_eq!(s.comm, "a) (b\\c\nd)");
        assert_eq!(s.pid, 6308);
        assert_eq!(s.ppid, 6295);
        assert_eq!(s.sigignore, 16781312);
        assert_eq!(s.env_end, 140734141046735);
        // Empty comm and comm that is just ")".
        let s = parse_stat(&CAT.replace("(cat)", "()")).unwrap();
        assert_eq!(s.comm, "");
        let s = parse_stat(&CAT.replace("(cat)", "())")).unwrap();
        assert_eq!(s.comm, ")");
        let s = parse_stat(&CAT.replace("(cat)", "(x) R 1 2 ()")).unwrap();
        assert_eq!(s.comm, "x) R 1 2 (");
    }

    #[test]
    fn extra_trailing_fields_ignored() {
        let text = format!("{} 7 8 9\n", CAT.trim_end());
        assert_eq!(parse_stat(&text).unwrap(), parse_stat(CAT).unwrap());
    }

    #[test]
    fn errors() {
        let e = parse_stat("5083 (cat) R 5080\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "stat: bad line 1: \"5083 (cat) R 5080\" (too few fields)"
        );
        assert!(parse_stat("5083 cat R").is_err());
        assert!(parse_stat("x (cat) R").is_err());
        let e = parse_stat(&CAT.replace(" 28177 ", " -5 ")).unwrap_err();
        assert!(e.to_string().contains("bad field value"), "{e}");
        assert!(parse_stat(&CAT.replace(") R ", ") RR ")).is_err());
        assert!(parse_stat("").is_err());
    }

    #[test]
    fn live_self() {
        let pid = std::process::id() as i32;
        let s = read_stat(pid).unwrap();
        assert_eq!(s.pid, pid);
        assert!(!s.is_kthread());
        assert!(s.start_code > 0 && s.end_code > s.start_code);
        assert!(s.arg_end > s.arg_start);
        let t = read_stat_tid(pid, pid).unwrap();
        assert_eq!(t.pid, pid);
    }
}
