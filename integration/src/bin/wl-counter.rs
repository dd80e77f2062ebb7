//! wl-counter STATEDIR: the demo workload.
//!
//! Prints `count N` on stdout (which must be a file, or `/dev/null`) every
//! 100 ms, N counting up from 0, one `write` per line. After `check`, when
//! stdout is a regular file, it verifies that its stdout offset equals the
//! file size and that the file holds exactly `count 0` .. `count N` (no line
//! lost, repeated or overwritten). Role: `root`.

use std::io::Write;
use std::os::unix::fs::FileExt;

use stasis_integration::workload::{sleep_ns, Ctx, Verdict};

fn main() {
    let ctx = Ctx::from_args("wl-counter STATEDIR  (stdout must be a file)");
    let out = std::io::stdout();
    let mut n: u64 = 0;
    let write_line = |n: u64| {
        let mut lock = out.lock();
        let _ = lock.write_all(format!("count {n}\n").as_bytes());
        let _ = lock.flush();
    };
    write_line(n);
    ctx.write_ready("root");
    while !ctx.check_requested() {
        sleep_ns(100_000_000);
        n += 1;
        write_line(n);
    }

    let mut v = Verdict::new();
    // SAFETY: lseek and fstat on our stdout; no memory is shared.
    let (pos, st) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(1, &mut st);
        (libc::lseek(1, 0, libc::SEEK_CUR), st)
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFREG {
        v.eq("stdout offset vs file size", pos, st.st_size);
        // Read the whole file back through /proc/self/fd/1 (stdout is
        // write-only): exactly `count 0` .. `count n`, nothing else.
        let want: String = (0..=n).map(|i| format!("count {i}\n")).collect();
        match std::fs::File::open("/proc/self/fd/1") {
            Ok(f) => {
                let mut buf = vec![0u8; st.st_size.max(0) as usize];
                match f.read_exact_at(&mut buf, 0) {
                    Ok(()) if buf == want.as_bytes() => {}
                    Ok(()) => {
                        let got = String::from_utf8_lossy(&buf);
                        let first_bad = got
                            .lines()
                            .zip(want.lines())
                            .position(|(a, b)| a != b)
                            .unwrap_or(got.lines().count().min(want.lines().count()));
                        v.fail(format!(
                            "stdout is not `count 0`..`count {n}` ({} bytes, want {}; first difference at line {first_bad})",
                            buf.len(),
                            want.len()
                        ));
                    }
                    Err(e) => v.fail(format!("read back stdout: {e}")),
                }
            }
            Err(e) => v.fail(format!("open /proc/self/fd/1: {e}")),
        }
    }
    ctx.finish("root", v);
}
