//! The `ip`, `nft` and `iptables` commands CRIU's images come from and go
//! back through (`ip addr save`, `nft list ruleset`, ...). Run from a
//! thread inside the namespace: the child is born in it.

use std::io::{Seek as _, Write as _};
use std::process::{Command, Stdio};

/// Run `prog args` with `input` on stdin; its stdout, or an error with its
/// stderr.
pub fn run(prog: &str, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, String> {
    let what = format!("{prog} {}", args.join(" "));
    // Input from a file: `ip route restore` reads its stdin several times
    // (seeks back), as CRIU's tmpfile allows.
    let stdin = match input {
        Some(data) => {
            let mut f: std::fs::File = crate::sys::stub::memfd("stasis-net")
                .map_err(|e| format!("memfd for {what}: {e}"))?
                .into();
            f.write_all(data)
                .and_then(|_| f.seek(std::io::SeekFrom::Start(0)).map(|_| ()))
                .map_err(|e| format!("input of {what}: {e}"))?;
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    let ch = Command::new(prog)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run {what}: {e}"))?;
    let out = ch
        .wait_with_output()
        .map_err(|e| format!("wait for {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        // `ip ... restore` reports objects that already exist (made by the
        // kernel with the links) and goes on.
        tracing::debug!(cmd = %what, stderr = %err.trim(), "tool messages");
    }
    Ok(out.stdout)
}

/// Whether `prog` can be run (looked up in PATH).
pub fn exists(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// `nft list ruleset` output without the tables named `inet
/// stasis_lock_*` (our own network lock, never part of the image).
pub fn strip_lock_tables(ruleset: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in ruleset.split_inclusive('\n') {
        if skipping {
            if line.trim_end() == "}" {
                skipping = false;
            }
            continue;
        }
        if line.starts_with("table inet stasis_lock_") {
            skipping = !line.trim_end().ends_with('}');
            continue;
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_table_left_out() {
        let r = "table inet nlkeep {\n\tchain c {\n\t\ttcp dport 1 drop\n\t}\n}\n\
                 table inet stasis_lock_12 {\n\tchain in {\n\t\ttype filter hook input priority -300; policy accept;\n\t}\n}\n\
                 table ip other {\n}\n";
        let s = strip_lock_tables(r);
        assert!(!s.contains("stasis_lock"), "{s}");
        assert!(s.contains("table inet nlkeep {\n\tchain c {\n\t\ttcp dport 1 drop\n\t}\n}\n"));
        assert!(s.ends_with("table ip other {\n}\n"), "{s}");
    }
}
