//! `/proc/PID/status` and `/proc/PID/task/TID/status`.

use super::util::{dec, hex_u64, oct_u32, pid_path, read_parse_single, tid_path};
use super::ProcError;

const FILE: &str = "status";

/// The fields of `/proc/PID/status` a dumper needs. Unknown keys (Vm*,
/// Speculation*, Cpus_allowed, …) are ignored.
///
/// `name`, `state`, `tgid`, `pid`, `ppid`, `uid` and `gid` are mandatory;
/// every other field defaults to zero/empty when its line is absent, except
/// the ones that are `Option` because absence means "unknown".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// `Name:` with the kernel's `\n` / `\\` escapes undone.
    pub name: String,
    /// `Umask:` (octal); absent for kernel threads on some kernels.
    pub umask: Option<u32>,
    /// The state letter of `State:` (`R`, `S`, `D`, `T`, `t`, `Z`, `X`, `I`, …).
    pub state: char,
    pub tgid: i32,
    pub ngid: i32,
    pub pid: i32,
    pub ppid: i32,
    pub tracer_pid: i32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// Real, effective, saved, filesystem.
    pub gid: [u32; 4],
    pub fd_size: u32,
    pub groups: Vec<u32>,
    /// One entry per pid-namespace level, outermost first.
    pub ns_tgid: Vec<i32>,
    pub ns_pid: Vec<i32>,
    pub ns_pgid: Vec<i32>,
    pub ns_sid: Vec<i32>,
    /// `Kthread:` (6.x kernels); `None` when the line is absent.
    pub kthread: Option<bool>,
    pub threads: u32,
    /// `SigQ:` queued / limit.
    pub sig_q: (u64, u64),
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// Seccomp mode: 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
    /// `Seccomp_filters:`; `None` when absent.
    pub seccomp_filters: Option<u32>,
}

impl Status {
    /// True for kernel threads (`Kthread: 1`). False when the line is
    /// absent (pre-6.x kernels): there, use [`super::Stat::is_kthread`]
    /// (the `PF_KTHREAD` flag) instead.
    pub fn is_kthread(&self) -> bool {
        self.kthread.unwrap_or(false)
    }

    /// The pid as seen from the innermost pid namespace (last `NSpid` entry),
    /// or `pid` when `NSpid` is absent.
    pub fn inner_pid(&self) -> i32 {
        self.ns_pid.last().copied().unwrap_or(self.pid)
    }
}

/// Undo the escaping `proc_task_name(…, escape=true)` applies to `Name:`:
/// only `\n` and `\\` are escaped there.
fn unescape_name(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.clone().next() {
            Some('n') => {
                out.push('\n');
                it.next();
            }
            Some('\\') => {
                out.push('\\');
                it.next();
            }
            _ => out.push('\\'),
        }
    }
    out
}

fn list<T: std::str::FromStr>(v: &str) -> Option<Vec<T>> {
    v.split_ascii_whitespace().map(dec).collect()
}

fn quad(v: &str) -> Option<[u32; 4]> {
    let mut it = v.split_ascii_whitespace();
    let mut out = [0u32; 4];
    for slot in &mut out {
        *slot = dec(it.next()?)?;
    }
    if it.next().is_some() {
        return None;
    }
    Some(out)
}

/// Parse the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Result<Status, ProcError> {
    let mut st = Status::default();
    let mut seen = 0u8;
    const NAME: u8 = 1;
    const STATE: u8 = 2;
    const TGID: u8 = 4;
    const PID: u8 = 8;
    const PPID: u8 = 16;
    const UID: u8 = 32;
    const GID: u8 = 64;
    for (idx, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |reason| ProcError::bad_line(FILE, idx + 1, line, reason);
        let Some((key, raw)) = line.split_once(':') else {
            return Err(bad("no colon"));
        };
        // Name keeps its spaces (and may contain tabs); others are trimmed.
        if key == "Name" {
            st.name = unescape_name(raw.strip_prefix('\t').unwrap_or(raw));
            seen |= NAME;
            continue;
        }
        let v = raw.trim();
        let ok: Option<()> = (|| {
            match key {
                "Umask" => st.umask = Some(oct_u32(v)?),
                "State" => {
                    st.state = v.chars().next()?;
                    seen |= STATE;
                }
                "Tgid" => {
                    st.tgid = dec(v)?;
                    seen |= TGID;
                }
                "Ngid" => st.ngid = dec(v)?,
                "Pid" => {
                    st.pid = dec(v)?;
                    seen |= PID;
                }
                "PPid" => {
                    st.ppid = dec(v)?;
                    seen |= PPID;
                }
                "TracerPid" => st.tracer_pid = dec(v)?,
                "Uid" => {
                    st.uid = quad(v)?;
                    seen |= UID;
                }
                "Gid" => {
                    st.gid = quad(v)?;
                    seen |= GID;
                }
                "FDSize" => st.fd_size = dec(v)?,
                "Groups" => st.groups = list(v)?,
                "NStgid" => st.ns_tgid = list(v)?,
                "NSpid" => st.ns_pid = list(v)?,
                "NSpgid" => st.ns_pgid = list(v)?,
                "NSsid" => st.ns_sid = list(v)?,
                "Kthread" => st.kthread = Some(dec::<u8>(v)? != 0),
                "Threads" => st.threads = dec(v)?,
                "SigQ" => {
                    let (a, b) = v.split_once('/')?;
                    st.sig_q = (dec(a)?, dec(b)?);
                }
                "SigPnd" => st.sig_pnd = hex_u64(v)?,
                "ShdPnd" => st.shd_pnd = hex_u64(v)?,
                "SigBlk" => st.sig_blk = hex_u64(v)?,
                "SigIgn" => st.sig_ign = hex_u64(v)?,
                "SigCgt" => st.sig_cgt = hex_u64(v)?,
                "CapInh" => st.cap_inh = hex_u64(v)?,
                "CapPrm" => st.cap_prm = hex_u64(v)?,
                "CapEff" => st.cap_eff = hex_u64(v)?,
                "CapBnd" => st.cap_bnd = hex_u64(v)?,
                "CapAmb" => st.cap_amb = hex_u64(v)?,
                "NoNewPrivs" => st.no_new_privs = dec::<u8>(v)? != 0,
                "Seccomp" => st.seccomp = dec(v)?,
                "Seccomp_filters" => st.seccomp_filters = Some(dec(v)?),
                _ => {}
            }
            Some(())
        })();
        if ok.is_none() {
            return Err(bad("bad value"));
        }
    }
    for (bit, what) in [
        (NAME, "Name"),
        (STATE, "State"),
        (TGID, "Tgid"),
        (PID, "Pid"),
        (PPID, "PPid"),
        (UID, "Uid"),
        (GID, "Gid"),
    ] {
        if seen & bit == 0 {
            return Err(ProcError::missing(FILE, what));
        }
    }
    Ok(st)
}

/// Read and parse `/proc/<pid>/status`.
pub fn read_status(pid: i32) -> Result<Status, ProcError> {
    read_parse_single(pid_path(pid, "status"), parse_status)
}

/// Read and parse `/proc/<pid>/task/<tid>/status`.
pub fn read_status_tid(pid: i32, tid: i32) -> Result<Status, ProcError> {
    read_parse_single(tid_path(pid, tid, "status"), parse_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cat /proc/self/status` on the 6.18 test VM.
    const CAT: &str = "Name:\tcat
Umask:\t0022
State:\tR (running)
Tgid:\t5082
Ngid:\t0
Pid:\t5082
PPid:\t5080
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t256
Groups:\t\x20
NStgid:\t5082
NSpid:\t5082
NSpgid:\t5080
NSsid:\t4356
Kthread:\t0
VmPeak:\t    3060 kB
VmSize:\t    3060 kB
VmLck:\t       0 kB
VmPin:\t       0 kB
VmHWM:\t    1760 kB
VmRSS:\t    1760 kB
RssAnon:\t     108 kB
RssFile:\t    1652 kB
RssShmem:\t       0 kB
VmData:\t     360 kB
VmStk:\t     132 kB
VmExe:\t      20 kB
VmLib:\t    1528 kB
VmPTE:\t      44 kB
VmSwap:\t       0 kB
HugetlbPages:\t       0 kB
CoreDumping:\t0
THP_enabled:\t1
untag_mask:\t0xffffffffffffffff
Threads:\t1
SigQ:\t0/96365
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000000000
SigIgn:\t0000000000000000
SigCgt:\t0000000000000000
CapInh:\t0000000000000000
CapPrm:\t000001fffeffffff
CapEff:\t000001fffeffffff
CapBnd:\t000001fffeffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t0
Seccomp_filters:\t0
Speculation_Store_Bypass:\tthread vulnerable
SpeculationIndirectBranch:\tconditional enabled
Cpus_allowed:\t3
Cpus_allowed_list:\t0-1
Mems_allowed:\t00000000,00000001
Mems_allowed_list:\t0
voluntary_ctxt_switches:\t0
nonvoluntary_ctxt_switches:\t0
";

    /// `/proc/2/status` (kthreadd) on the same VM.
    const KTHREADD: &str = "Name:\tkthreadd
Umask:\t0022
State:\tS (sleeping)
Tgid:\t2
Ngid:\t0
Pid:\t2
PPid:\t0
TracerPid:\t0
Uid:\t0\t0\t0\t0
Gid:\t0\t0\t0\t0
FDSize:\t64
Groups:\t\x20
NStgid:\t2
NSpid:\t2
NSpgid:\t0
NSsid:\t0
Kthread:\t1
Threads:\t1
SigQ:\t0/96365
SigPnd:\t0000000000000000
ShdPnd:\t0000000000000000
SigBlk:\t0000000000000000
SigIgn:\tffffffffffffffff
SigCgt:\t0000000000000000
CapInh:\t0000000000000000
CapPrm:\t000001ffffffffff
CapEff:\t000001ffffffffff
CapBnd:\t000001ffffffffff
CapAmb:\t0000000000000000
NoNewPrivs:\t0
Seccomp:\t0
Seccomp_filters:\t0
Speculation_Store_Bypass:\tthread vulnerable
SpeculationIndirectBranch:\tconditional enabled
Cpus_allowed:\t3
Cpus_allowed_list:\t0-1
voluntary_ctxt_switches:\t58
nonvoluntary_ctxt_switches:\t0
";

    #[test]
    fn parses_cat() {
        let s = parse_status(CAT).unwrap();
        assert_eq!(s.name, "cat");
        assert_eq!(s.umask, Some(0o022));
        assert_eq!(s.state, 'R');
        assert_eq!(
            (s.tgid, s.pid, s.ppid, s.ngid, s.tracer_pid),
            (5082, 5082, 5080, 0, 0)
        );
        assert_eq!(s.uid, [0; 4]);
        assert_eq!(s.fd_size, 256);
        assert!(s.groups.is_empty());
        assert_eq!(s.ns_pid, vec![5082]);
        assert_eq!(s.ns_pgid, vec![5080]);
        assert_eq!(s.ns_sid, vec![4356]);
        assert_eq!(s.kthread, Some(false));
        assert!(!s.is_kthread());
        assert_eq!(s.threads, 1);
        assert_eq!(s.sig_q, (0, 96365));
        assert_eq!(s.cap_eff, 0x1fffeffffff);
        assert_eq!(s.cap_bnd & (1 << 24), 0); // no CAP_SYS_RESOURCE here
        assert!(!s.no_new_privs);
        assert_eq!(s.seccomp, 0);
        assert_eq!(s.seccomp_filters, Some(0));
    }

    #[test]
    fn parses_kthread() {
        let s = parse_status(KTHREADD).unwrap();
        assert_eq!(s.kthread, Some(true));
        assert!(s.is_kthread());
        assert_eq!(s.sig_ign, u64::MAX);
        assert_eq!(s.ppid, 0);
    }

    #[test]
    fn nested_pid_ns_groups_and_escaped_name() {
        // Task in a child pid namespace seen from outside; name set with
        // prctl(PR_SET_NAME, "a) (b\\c\nd)"); setgroups([0, 10, 100]).
        let text =
            "Name:\ta) (b\\\\c\\nd)\nState:\tS (sleeping)\nTgid:\t5223\nPid:\t5223\nPPid:\t5221\n\
                    Uid:\t1000\t1001\t1002\t1003\nGid:\t5\t6\t7\t8\nGroups:\t0 10 100 \n\
                    NStgid:\t5223\t1\nNSpid:\t5223\t1\nNSpgid:\t5219\t0\nNSsid:\t4356\t0\n\
                    Seccomp:\t2\nNoNewPrivs:\t1\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.name, "a) (b\\c\nd)");
        assert_eq!(s.groups, vec![0, 10, 100]);
        assert_eq!(s.ns_tgid, vec![5223, 1]);
        assert_eq!(s.inner_pid(), 1);
        assert_eq!(s.ns_pgid, vec![5219, 0]);
        assert_eq!(s.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(s.gid, [5, 6, 7, 8]);
        assert_eq!(s.seccomp, 2);
        assert!(s.no_new_privs);
        // Optional lines absent.
        assert_eq!(s.umask, None);
        assert_eq!(s.kthread, None);
        assert_eq!(s.seccomp_filters, None);
    }

    #[test]
    fn name_with_spaces_and_tabs() {
        let s = parse_status("Name:\tmy  prog\tx\nState:\tS\nTgid:\t1\nPid:\t1\nPPid:\t0\nUid:\t0 0 0 0\nGid:\t0 0 0 0\n")
            .unwrap();
        assert_eq!(s.name, "my  prog\tx");
        assert_eq!(s.state, 'S');
    }

    #[test]
    fn errors() {
        let e = parse_status("Name:\tx\nUid:\t0 0 0\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "status: bad line 2: \"Uid:\\t0 0 0\" (bad value)"
        );
        let e = parse_status("Name:\tx\nno colon here\n").unwrap_err();
        assert!(e.to_string().starts_with("status: bad line 2: "), "{e}");
        let e =
            parse_status("Name:\tx\nState:\tR\nTgid:\t1\nPid:\t1\nUid:\t0 0 0 0\nGid:\t0 0 0 0\n")
                .unwrap_err();
        assert_eq!(e.to_string(), "status: missing PPid");
        let e = parse_status(&CAT.replace("SigBlk:\t0000000000000000", "SigBlk:\tzz")).unwrap_err();
        assert!(matches!(e, ProcError::BadLine { line: 41, .. }), "{e}");
    }

    #[test]
    fn live_self() {
        let s = read_status(std::process::id() as i32).unwrap();
        assert_eq!(s.pid, std::process::id() as i32);
        assert_eq!(s.tgid, s.pid);
        assert!(s.threads >= 1);
        assert_eq!(s.kthread, Some(false));
        let t = read_status_tid(s.pid, s.pid).unwrap();
        assert_eq!(t.pid, s.pid);
    }

    #[test]
    fn live_kthreadd() {
        // pid 2 is kthreadd in the initial pid namespace; skip elsewhere.
        if let Ok(s) = read_status(2) {
            if s.name == "kthreadd" {
                assert!(s.is_kthread());
            }
        }
    }
}
