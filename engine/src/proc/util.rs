//! Small helpers shared by the parsers: file reading, number parsing,
//! kernel string unescaping.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use super::ProcError;

/// `/proc/<pid>/<rest>`.
pub(crate) fn pid_path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

/// `/proc/<pid>/task/<tid>/<rest>`.
pub(crate) fn tid_path(pid: i32, tid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/task/{tid}/{rest}"))
}

/// Read a whole file as bytes.
///
/// Not `fs::read`: it asks for the file size first (one more syscall per
/// file), and /proc files have none; a dump reads a few per fd.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, ProcError> {
    read_bytes_as(path, false)
}

/// [`read_bytes`], where `single` says the file is produced whole by its
/// first read (seq_file `single_open` and `simple_read_from_buffer` files:
/// stat, status, fdinfo, limits, ...): a read shorter than asked is then
/// the end, which saves the final empty read (one syscall per file, several
/// per fd of a dump). Multi-record seq files (maps, smaps, mountinfo) may
/// return short reads before their end and must not use it.
fn read_bytes_as(path: &Path, single: bool) -> Result<Vec<u8>, ProcError> {
    use std::io::Read;
    // A plain read loop: `read_to_end` on a File first asks for its size and
    // position (statx + lseek), which /proc files do not know anyway.
    let mut f = fs::File::open(path).map_err(|e| ProcError::io(path, e))?;
    let mut v = vec![0u8; 4096];
    let mut n = 0;
    loop {
        if n == v.len() {
            v.resize(2 * n, 0);
        }
        match f.read(&mut v[n..]) {
            Ok(0) => break,
            Ok(k) => {
                let short = n + k < v.len();
                n += k;
                if single && short {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ProcError::io(path, e)),
        }
    }
    v.truncate(n);
    Ok(v)
}

/// Read a whole file as text. Invalid UTF-8 (possible in file names and
/// `comm`) is replaced with U+FFFD rather than failing the read; callers that
/// need the exact bytes of a path must go through `map_files`/`fd` links.
pub(crate) fn read_text(path: &Path) -> Result<String, ProcError> {
    text_of(read_bytes(path)?)
}

fn text_of(bytes: Vec<u8>) -> Result<String, ProcError> {
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Read a file with [`read_text`] and hand it to `parse`.
pub(crate) fn read_parse<T>(
    path: PathBuf,
    parse: impl FnOnce(&str) -> Result<T, ProcError>,
) -> Result<T, ProcError> {
    let text = read_text(&path)?;
    parse(&text)
}

/// [`read_parse`] for a file produced whole by its first read (see
/// [`read_bytes_as`]).
pub(crate) fn read_parse_single<T>(
    path: PathBuf,
    parse: impl FnOnce(&str) -> Result<T, ProcError>,
) -> Result<T, ProcError> {
    let text = text_of(read_bytes_as(&path, true)?)?;
    parse(&text)
}

pub(crate) fn hex_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

pub(crate) fn hex_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

pub(crate) fn oct_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.starts_with('+') {
        return None;
    }
    u32::from_str_radix(s, 8).ok()
}

/// Parse a decimal number; rejects a leading `+` (the kernel never prints one).
pub(crate) fn dec<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.starts_with('+') {
        return None;
    }
    s.parse().ok()
}

/// Undo the kernel's `mangle_path`/`seq_escape` octal escapes (`\040` for a
/// space, `\011` tab, `\012` newline, `\134` backslash). Borrows when there is
/// nothing to unescape. A backslash not followed by three octal digits is
/// kept as is.
pub(crate) fn unescape_octal(s: &str) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let d = &b[i + 1..i + 4];
            if d.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = u32::from(d[0] - b'0') * 64
                    + u32::from(d[1] - b'0') * 8
                    + u32::from(d[2] - b'0');
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Iterate `key:value` pairs of a whitespace-separated line where a value
/// either follows the colon directly (`ino:40f`) or is the next token
/// (`tfd:        3`). Yields `None` for a token that is not a pair.
pub(crate) fn kv_pairs(s: &str) -> KvPairs<'_> {
    KvPairs {
        it: s.split_ascii_whitespace(),
    }
}

pub(crate) struct KvPairs<'a> {
    it: std::str::SplitAsciiWhitespace<'a>,
}

impl<'a> Iterator for KvPairs<'a> {
    type Item = Option<(&'a str, &'a str)>;

    fn next(&mut self) -> Option<Self::Item> {
        let tok = self.it.next()?;
        let Some((k, v)) = tok.split_once(':') else {
            return Some(None);
        };
        if v.is_empty() {
            Some(self.it.next().map(|v| (k, v)))
        } else {
            Some(Some((k, v)))
        }
    }
}

/// Split the kernel's internal `dev_t` encoding (as printed in fdinfo `sdev`
/// fields: `major << 20 | minor`) into (major, minor).
pub fn kernel_dev_split(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

/// `f` of each of `pids`, in order. With at least `min` pids in each half,
/// the halves run on two threads: reading /proc is mostly kernel time (path
/// walks, permission checks), and the dump waits for it.
pub fn map_halves<T: Send>(pids: &[i32], min: usize, f: impl Fn(i32) -> T + Sync) -> Vec<T> {
    let (a, b) = pids.split_at(pids.len() / 2);
    if a.len() < min {
        return pids.iter().map(|&p| f(p)).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let h = s.spawn(move || a.iter().map(|&p| f(p)).collect::<Vec<T>>());
        let rb: Vec<T> = b.iter().map(|&p| f(p)).collect();
        let mut out = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        out.extend(rb);
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_halves_keeps_order() {
        let pids: Vec<i32> = (1..=21).collect();
        let want: Vec<i32> = pids.iter().map(|p| p * 3).collect();
        // Split (10 in the first half) and not split.
        assert_eq!(map_halves(&pids, 4, |p| p * 3), want);
        assert_eq!(map_halves(&pids, 11, |p| p * 3), want);
        assert!(map_halves(&[], 1, |p| p).is_empty());
    }

    #[test]
    fn unescape() {
        assert_eq!(unescape_octal("/a\\040b"), "/a b");
        assert_eq!(unescape_octal("/a\\134b\\011c\\012"), "/a\\b\tc\n");
        assert!(matches!(unescape_octal("/plain"), Cow::Borrowed(_)));
        assert_eq!(unescape_octal("trail\\04"), "trail\\04");
        assert_eq!(unescape_octal("x\\"), "x\\");
        assert_eq!(unescape_octal("\\999"), "\\999");
    }

    #[test]
    fn kv() {
        let v: Vec<_> =
            kv_pairs("tfd:        3 events: 19 data:                7  pos:0 ino:26ff").collect();
        assert_eq!(
            v,
            vec![
                Some(("tfd", "3")),
                Some(("events", "19")),
                Some(("data", "7")),
                Some(("pos", "0")),
                Some(("ino", "26ff"))
            ]
        );
        assert_eq!(kv_pairs("junk").next(), Some(None));
        assert_eq!(kv_pairs("key:").next(), Some(None));
    }

    #[test]
    fn dev_split() {
        assert_eq!(kernel_dev_split(0xfe0_0000), (254, 0));
        assert_eq!(kernel_dev_split(0x10), (0, 16));
    }
}
