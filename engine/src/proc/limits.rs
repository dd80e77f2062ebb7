//! `/proc/PID/limits`.

use super::util::{dec, pid_path, read_parse_single};
use super::ProcError;

const FILE: &str = "limits";

/// `RLIM_INFINITY`: how "unlimited" is returned.
pub const RLIM_INFINITY: u64 = u64::MAX;

/// Number of resource limits (`RLIM_NLIMITS`).
pub const RLIM_NLIMITS: usize = 16;

/// Row names, indexed by `RLIMIT_*` number (RLIMIT_CPU = 0 … RLIMIT_RTTIME = 15).
pub const RLIMIT_NAMES: [&str; RLIM_NLIMITS] = [
    "Max cpu time",
    "Max file size",
    "Max data size",
    "Max stack size",
    "Max core file size",
    "Max resident set",
    "Max processes",
    "Max open files",
    "Max locked memory",
    "Max address space",
    "Max file locks",
    "Max pending signals",
    "Max msgqueue size",
    "Max nice priority",
    "Max realtime priority",
    "Max realtime timeout",
];

/// (soft, hard) per resource, indexed by `RLIMIT_*`.
pub type Limits = [(u64, u64); RLIM_NLIMITS];

fn value(s: &str) -> Option<u64> {
    if s == "unlimited" {
        Some(RLIM_INFINITY)
    } else {
        dec(s)
    }
}

/// Parse the text of `/proc/PID/limits`. Rows are recognised by name, not by
/// position or column width; the header and unknown rows are skipped. After
/// the name come the soft and hard values and an optional unit.
pub fn parse_limits(text: &str) -> Result<Limits, ProcError> {
    let mut out = [(0, 0); RLIM_NLIMITS];
    let mut seen = 0u32;
    for (i, line) in text.lines().enumerate() {
        let Some((idx, rest)) = RLIMIT_NAMES.iter().enumerate().find_map(|(idx, name)| {
            let rest = line.strip_prefix(name)?;
            rest.starts_with(' ').then_some((idx, rest))
        }) else {
            continue;
        };
        let bad = |reason| ProcError::bad_line(FILE, i + 1, line, reason);
        let mut t = rest.split_ascii_whitespace();
        let (Some(soft), Some(hard)) = (t.next(), t.next()) else {
            return Err(bad("too few fields"));
        };
        // At most a unit may follow.
        if t.next().is_some() && t.next().is_some() {
            return Err(bad("too many fields"));
        }
        let soft = value(soft).ok_or_else(|| bad("bad soft limit"))?;
        let hard = value(hard).ok_or_else(|| bad("bad hard limit"))?;
        out[idx] = (soft, hard);
        seen |= 1 << idx;
    }
    if let Some(missing) = (0..RLIM_NLIMITS).find(|i| seen & (1 << i) == 0) {
        return Err(ProcError::missing(FILE, RLIMIT_NAMES[missing]));
    }
    Ok(out)
}

/// Read and parse `/proc/<pid>/limits`.
pub fn read_limits(pid: i32) -> Result<Limits, ProcError> {
    read_parse_single(pid_path(pid, "limits"), parse_limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cat /proc/self/limits` on the 6.18 test VM (note the trailing blanks
    /// the kernel pads the unit column with).
    const SAMPLE: &str = "\
Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max file size             unlimited            unlimited            bytes     \n\
Max data size             unlimited            unlimited            bytes     \n\
Max stack size            8388608              unlimited            bytes     \n\
Max core file size        0                    unlimited            bytes     \n\
Max resident set          unlimited            unlimited            bytes     \n\
Max processes             96365                96365                processes \n\
Max open files            20000                20000                files     \n\
Max locked memory         8388608              8388608              bytes     \n\
Max address space         unlimited            unlimited            bytes     \n\
Max file locks            unlimited            unlimited            locks     \n\
Max pending signals       96365                96365                signals   \n\
Max msgqueue size         819200               819200               bytes     \n\
Max nice priority         0                    0                    \n\
Max realtime priority     0                    0                    \n\
Max realtime timeout      unlimited            unlimited            us        \n";

    #[test]
    fn parses_sample() {
        let l = parse_limits(SAMPLE).unwrap();
        assert_eq!(l[libc::RLIMIT_CPU as usize], (RLIM_INFINITY, RLIM_INFINITY));
        assert_eq!(l[libc::RLIMIT_STACK as usize], (8388608, RLIM_INFINITY));
        assert_eq!(l[libc::RLIMIT_CORE as usize], (0, RLIM_INFINITY));
        assert_eq!(l[libc::RLIMIT_NOFILE as usize], (20000, 20000));
        assert_eq!(l[libc::RLIMIT_NPROC as usize], (96365, 96365));
        assert_eq!(l[libc::RLIMIT_MSGQUEUE as usize], (819200, 819200));
        assert_eq!(l[libc::RLIMIT_NICE as usize], (0, 0));
        assert_eq!(l[libc::RLIMIT_RTPRIO as usize], (0, 0));
        assert_eq!(
            l[libc::RLIMIT_RTTIME as usize],
            (RLIM_INFINITY, RLIM_INFINITY)
        );
        assert_eq!(libc::RLIM_INFINITY, RLIM_INFINITY);
    }

    #[test]
    fn robust_to_widths_and_order() {
        // Squeezed columns, reversed order, no units, no header.
        let lines: Vec<&str> = SAMPLE.lines().skip(1).collect();
        let text: String = lines
            .iter()
            .rev()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ") + "\n")
            .collect();
        assert_eq!(parse_limits(&text).unwrap(), parse_limits(SAMPLE).unwrap());
    }

    #[test]
    fn errors() {
        let e = parse_limits(&SAMPLE.replace(
            "Max open files            20000",
            "Max open files            lots",
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("limits: bad line 9: \"Max open files"),
            "{e}"
        );
        assert!(e.to_string().ends_with("(bad soft limit)"), "{e}");
        let text: String = SAMPLE
            .lines()
            .filter(|l| !l.starts_with("Max nice"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            parse_limits(&text).unwrap_err().to_string(),
            "limits: missing Max nice priority"
        );
        let e = parse_limits("Max cpu time 1\n").unwrap_err();
        assert!(e.to_string().ends_with("(too few fields)"), "{e}");
        let e = parse_limits("Max cpu time 1 2 seconds extra\n").unwrap_err();
        assert!(e.to_string().ends_with("(too many fields)"), "{e}");
    }

    #[test]
    fn live_self() {
        let l = read_limits(std::process::id() as i32).unwrap();
        for (i, (soft, hard)) in l.iter().enumerate() {
            assert!(soft <= hard, "{}", RLIMIT_NAMES[i]);
        }
        let nofile =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(l[libc::RLIMIT_NOFILE as usize], nofile);
    }
}
