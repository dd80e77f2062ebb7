//! `/proc/PID/auxv`: the ELF auxiliary vector (binary).

use super::util::{pid_path, read_bytes};
use super::ProcError;

const FILE: &str = "auxv";

/// `AT_NULL`: the terminating key.
pub const AT_NULL: u64 = 0;

/// Parse the bytes of `/proc/PID/auxv`: native-endian `(u64 key, u64 value)`
/// pairs up to and **including** the terminating `(AT_NULL, 0)` pair, which
/// is kept so the vector can be written back verbatim at restore. Bytes
/// after the terminator are ignored. Empty input (kernel threads) gives an
/// empty vector.
pub fn parse_auxv(bytes: &[u8]) -> Result<Vec<(u64, u64)>, ProcError> {
    let mut out = Vec::with_capacity(bytes.len() / 16);
    for pair in bytes.chunks(16) {
        let Ok(pair) = <[u8; 16]>::try_from(pair) else {
            return Err(ProcError::malformed(
                FILE,
                format!("truncated entry at byte {}", out.len() * 16),
            ));
        };
        let (k, v) = pair.split_at(8);
        let key = u64::from_ne_bytes(k.try_into().unwrap_or_default());
        let val = u64::from_ne_bytes(v.try_into().unwrap_or_default());
        out.push((key, val));
        if key == AT_NULL {
            return Ok(out);
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    Err(ProcError::malformed(FILE, "no AT_NULL terminator"))
}

/// The value of the first entry with `key` (e.g. `libc::AT_SYSINFO_EHDR`).
pub fn auxv_get(auxv: &[(u64, u64)], key: u64) -> Option<u64> {
    auxv.iter().find(|&&(k, _)| k == key).map(|&(_, v)| v)
}

/// Words of `mm_entry.mm_saved_auxv` CRIU's x86-64 restore accepts at most
/// (its `AT_VECTOR_SIZE`); it refuses longer vectors as corrupted.
pub const CRIU_AUXV_WORDS: usize = 44;

/// `auxv` as `mm_entry.mm_saved_auxv` words, the way CRIU saves it: without
/// the `AT_NULL` terminator (PR_SET_MM_MAP zero-fills and terminates the
/// kernel's copy) and at most [`CRIU_AUXV_WORDS`] words, so CRIU's restore
/// takes our images. Only /proc/PID/auxv reads the saved copy; the program's
/// own (on its stack) is restored with its memory.
pub fn criu_saved_auxv(auxv: &[(u64, u64)]) -> Vec<u64> {
    auxv.iter()
        .take_while(|&&(k, _)| k != AT_NULL)
        .flat_map(|&(k, v)| [k, v])
        .take(CRIU_AUXV_WORDS)
        .collect()
}

/// Read and parse `/proc/<pid>/auxv`.
pub fn read_auxv(pid: i32) -> Result<Vec<(u64, u64)>, ProcError> {
    parse_auxv(&read_bytes(&pid_path(pid, "auxv"))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/self/auxv of a Python process on the 6.18 test VM (hex).
    const SAMPLE_HEX: &str = "210000000000000000a068d2437f00003300000000000000300e0000000000001000000000000000fffb8b1f00000000060000000000000000100000000000001100000000000000640000000000000003000000000000004020e682cd5500000400000000000000380000000000000005000000000000000d00000000000000070000000000000000c068d2437f00000800000000000000000000000000000009000000000000006030e682cd5500000b0000000000000000000000000000000c0000000000000000000000000000000d0000000000000000000000000000000e00000000000000000000000000000017000000000000000000000000000000190000000000000099802153fe7f00001a0000000000000002000000000000001f00000000000000cf9f2153fe7f00000f00000000000000a9802153fe7f00001b000000000000001c000000000000001c00000000000000200000000000000000000000000000000000000000000000";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn parses_sample() {
        let a = parse_auxv(&unhex(SAMPLE_HEX)).unwrap();
        assert_eq!(a.len(), 23);
        assert_eq!(a[0], (libc::AT_SYSINFO_EHDR, 0x7f43d268a000));
        assert_eq!(*a.last().unwrap(), (AT_NULL, 0));
        assert_eq!(auxv_get(&a, libc::AT_PAGESZ), Some(4096));
        assert_eq!(auxv_get(&a, libc::AT_PHNUM), Some(13));
        assert_eq!(auxv_get(&a, libc::AT_ENTRY), Some(0x55cd82e63060));
        assert_eq!(auxv_get(&a, libc::AT_UID), Some(0));
        assert_eq!(auxv_get(&a, 0xdead), None);
    }

    #[test]
    fn edge_cases() {
        assert!(parse_auxv(&[]).unwrap().is_empty());
        // Trailing bytes after AT_NULL ignored.
        let mut b = unhex(SAMPLE_HEX);
        b.extend_from_slice(&[0xff; 40]);
        assert_eq!(parse_auxv(&b).unwrap().len(), 23);
        let e = parse_auxv(&b[..20]).unwrap_err();
        assert_eq!(e.to_string(), "auxv: truncated entry at byte 16");
        let e = parse_auxv(&b[..32]).unwrap_err();
        assert_eq!(e.to_string(), "auxv: no AT_NULL terminator");
    }

    /// CRIU's restore refuses more than 44 words ("Image corrupted").
    #[test]
    fn criu_words() {
        let a = parse_auxv(&unhex(SAMPLE_HEX)).unwrap();
        let w = criu_saved_auxv(&a);
        assert_eq!(w.len(), 44);
        assert_eq!(&w[..2], &[libc::AT_SYSINFO_EHDR, 0x7f43d268a000]);
        assert!(!w.chunks(2).any(|p| p[0] == AT_NULL));
        let short = [(libc::AT_PAGESZ, 4096), (AT_NULL, 0)];
        assert_eq!(criu_saved_auxv(&short), vec![libc::AT_PAGESZ, 4096]);
        let long: Vec<(u64, u64)> = (1..40).map(|k| (k, k)).collect();
        assert_eq!(criu_saved_auxv(&long).len(), CRIU_AUXV_WORDS);
        assert!(criu_saved_auxv(&[]).is_empty());
    }

    #[test]
    fn live_self() {
        let a = read_auxv(std::process::id() as i32).unwrap();
        assert_eq!(*a.last().unwrap(), (AT_NULL, 0));
        assert_eq!(auxv_get(&a, libc::AT_PAGESZ), Some(4096));
        assert!(auxv_get(&a, libc::AT_SYSINFO_EHDR).is_some());
    }
}
