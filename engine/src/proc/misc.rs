//! Small single-value `/proc` files: personality, comm, loginuid,
//! oom_score_adj, cmdline, `/proc/sys/kernel/pid_max`, setgroups,
//! uid_map/gid_map.

use std::path::PathBuf;

use super::util::{dec, hex_u32, pid_path, read_bytes, read_parse, read_parse_single, tid_path};
use super::ProcError;

/// Trim the single trailing newline of a one-value file.
fn one_line(text: &str) -> &str {
    text.strip_suffix('\n').unwrap_or(text)
}

fn single<T>(
    file: &'static str,
    text: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ProcError> {
    let v = one_line(text);
    parse(v.trim()).ok_or_else(|| ProcError::bad_line(file, 1, v, "bad value"))
}

/// `/proc/PID/personality`: hex (`00000000`).
pub fn parse_personality(text: &str) -> Result<u32, ProcError> {
    single("personality", text, hex_u32)
}

/// `/proc/PID/comm`: the name with its trailing newline removed. The kernel
/// does not escape it, so it may contain anything but NUL.
pub fn parse_comm(text: &str) -> String {
    one_line(text).to_owned()
}

/// `/proc/PID/loginuid`: decimal; 4294967295 (`u32::MAX`) means unset.
pub fn parse_loginuid(text: &str) -> Result<u32, ProcError> {
    single("loginuid", text, dec)
}

/// `/proc/PID/oom_score_adj`: -1000…1000.
pub fn parse_oom_score_adj(text: &str) -> Result<i32, ProcError> {
    single("oom_score_adj", text, dec)
}

/// `/proc/PID/cmdline`: NUL-separated arguments. A trailing NUL is dropped,
/// so empty arguments are kept (`a\0\0` is `["a", ""]`). A process that
/// rewrote its argument area may lack the final NUL; the text is then split
/// as is. Invalid UTF-8 is replaced with U+FFFD.
pub fn parse_cmdline(bytes: &[u8]) -> Vec<String> {
    if bytes.is_empty() {
        return Vec::new();
    }
    let b = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    b.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// `/proc/sys/kernel/pid_max`.
pub fn parse_pid_max(text: &str) -> Result<u32, ProcError> {
    single("pid_max", text, dec)
}

/// `/proc/PID/setgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setgroups {
    Allow,
    Deny,
}

/// `/proc/PID/setgroups`: `allow` or `deny`.
pub fn parse_setgroups(text: &str) -> Result<Setgroups, ProcError> {
    single("setgroups", text, |v| match v {
        "allow" => Some(Setgroups::Allow),
        "deny" => Some(Setgroups::Deny),
        _ => None,
    })
}

/// One line of `uid_map`/`gid_map`: `inside outside count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdMapEntry {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id in the parent namespace (of the reader).
    pub outside: u32,
    pub count: u32,
}

/// `/proc/PID/uid_map` or `gid_map` (columns are right-aligned with spaces).
pub fn parse_id_map(text: &str) -> Result<Vec<IdMapEntry>, ProcError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut t = line.split_ascii_whitespace();
        let mut n = || t.next().and_then(dec::<u32>);
        let e = (|| {
            Some(IdMapEntry {
                inside: n()?,
                outside: n()?,
                count: n()?,
            })
        })();
        match e {
            Some(e) if t.next().is_none() => out.push(e),
            _ => {
                return Err(ProcError::bad_line(
                    "id_map",
                    i + 1,
                    line,
                    "expected 3 numbers",
                ))
            }
        }
    }
    Ok(out)
}

pub fn read_personality(pid: i32) -> Result<u32, ProcError> {
    read_parse_single(pid_path(pid, "personality"), parse_personality)
}

pub fn read_comm(pid: i32) -> Result<String, ProcError> {
    read_parse_single(pid_path(pid, "comm"), |t| Ok(parse_comm(t)))
}

pub fn read_comm_tid(pid: i32, tid: i32) -> Result<String, ProcError> {
    read_parse_single(tid_path(pid, tid, "comm"), |t| Ok(parse_comm(t)))
}

pub fn read_loginuid(pid: i32) -> Result<u32, ProcError> {
    read_parse_single(pid_path(pid, "loginuid"), parse_loginuid)
}

pub fn read_oom_score_adj(pid: i32) -> Result<i32, ProcError> {
    read_parse_single(pid_path(pid, "oom_score_adj"), parse_oom_score_adj)
}

pub fn read_cmdline(pid: i32) -> Result<Vec<String>, ProcError> {
    Ok(parse_cmdline(&read_bytes(&pid_path(pid, "cmdline"))?))
}

pub fn read_pid_max() -> Result<u32, ProcError> {
    read_parse(PathBuf::from("/proc/sys/kernel/pid_max"), parse_pid_max)
}

pub fn read_setgroups(pid: i32) -> Result<Setgroups, ProcError> {
    read_parse_single(pid_path(pid, "setgroups"), parse_setgroups)
}

pub fn read_uid_map(pid: i32) -> Result<Vec<IdMapEntry>, ProcError> {
    read_parse(pid_path(pid, "uid_map"), parse_id_map)
}

pub fn read_gid_map(pid: i32) -> Result<Vec<IdMapEntry>, ProcError> {
    read_parse(pid_path(pid, "gid_map"), parse_id_map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_values() {
        // Values from the test VM.
        assert_eq!(parse_personality("00000000\n").unwrap(), 0);
        // ADDR_NO_RANDOMIZE (setarch -R).
        assert_eq!(parse_personality("00040000\n").unwrap(), 0x0004_0000);
        assert_eq!(parse_loginuid("4294967295").unwrap(), u32::MAX);
        assert_eq!(parse_oom_score_adj("0\n").unwrap(), 0);
        assert_eq!(parse_oom_score_adj("-1000\n").unwrap(), -1000);
        assert_eq!(parse_pid_max("32768\n").unwrap(), 32768);
        assert_eq!(parse_setgroups("allow\n").unwrap(), Setgroups::Allow);
        assert_eq!(parse_setgroups("deny\n").unwrap(), Setgroups::Deny);
        let e = parse_oom_score_adj("abc\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "oom_score_adj: bad line 1: \"abc\" (bad value)"
        );
        assert!(parse_setgroups("maybe\n").is_err());
        assert!(parse_personality("").is_err());
    }

    #[test]
    fn comm() {
        assert_eq!(parse_comm("cat\n"), "cat");
        assert_eq!(parse_comm("a) (b\\c\nd)\n"), "a) (b\\c\nd)");
        assert_eq!(parse_comm(""), "");
    }

    #[test]
    fn cmdline() {
        // /proc/self/cmdline of `python3 cap.py a "b c" ''`.
        let b = b"/root/.pyenv/versions/3.11.7/bin/python3\0cap.py\0a\0b c\0\0";
        assert_eq!(
            parse_cmdline(b),
            [
                "/root/.pyenv/versions/3.11.7/bin/python3",
                "cap.py",
                "a",
                "b c",
                ""
            ]
        );
        assert!(parse_cmdline(b"").is_empty());
        assert_eq!(
            parse_cmdline(b"nginx: worker process"),
            ["nginx: worker process"]
        );
        assert_eq!(parse_cmdline(b"\0"), [""]);
        assert_eq!(parse_cmdline(b"a\xffb\0"), ["a\u{fffd}b"]);
    }

    #[test]
    fn id_map() {
        // Initial user namespace on the test VM.
        let m = parse_id_map("         0          0 4294967295\n").unwrap();
        assert_eq!(
            m,
            [IdMapEntry {
                inside: 0,
                outside: 0,
                count: u32::MAX
            }]
        );
        let m = parse_id_map("0 100000 65536\n65536 1000 1\n").unwrap();
        assert_eq!(
            m[1],
            IdMapEntry {
                inside: 65536,
                outside: 1000,
                count: 1
            }
        );
        assert!(parse_id_map("").unwrap().is_empty());
        let e = parse_id_map("0 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "id_map: bad line 1: \"0 1\" (expected 3 numbers)"
        );
        assert!(parse_id_map("0 1 2 3\n").is_err());
    }

    #[test]
    fn live_self() {
        let pid = std::process::id() as i32;
        read_personality(pid).unwrap();
        assert!(!read_comm(pid).unwrap().is_empty());
        assert_eq!(read_comm_tid(pid, pid).unwrap(), read_comm(pid).unwrap());
        read_loginuid(pid).unwrap();
        let adj = read_oom_score_adj(pid).unwrap();
        assert!((-1000..=1000).contains(&adj));
        let args = read_cmdline(pid).unwrap();
        let exe = std::env::args().next().unwrap();
        assert_eq!(args[0], exe);
        assert!(read_pid_max().unwrap() >= 301);
        read_setgroups(pid).unwrap();
        assert!(!read_uid_map(pid).unwrap().is_empty());
        assert!(!read_gid_map(pid).unwrap().is_empty());
    }
}
