//! OCI hooks: the program gets the container state on stdin; a non-zero
//! exit or a timeout fails the hook.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::Hook;

use crate::error::{bail, Result};

pub fn run_all(kind: &str, hooks: Option<&Vec<Hook>>, state: &str) -> Result<()> {
    for h in hooks.into_iter().flatten() {
        run(kind, h, state)?;
    }
    Ok(())
}

fn run(kind: &str, h: &Hook, state: &str) -> Result<()> {
    let path = h.path();
    let mut cmd = Command::new(path);
    if let Some(args) = h.args() {
        if let Some((a0, rest)) = args.split_first() {
            cmd.arg0(a0).args(rest);
        }
    }
    cmd.env_clear();
    for e in h.env().iter().flatten() {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => bail!("{kind} hook {}: {e}", path.display()),
    };
    if let Some(mut i) = child.stdin.take() {
        // A hook may exit without reading its stdin.
        let _ = i.write_all(state.as_bytes());
    }
    let deadline = h
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => bail!("{kind} hook {}: {st}", path.display()),
            Ok(None) => {}
            Err(e) => bail!("{kind} hook {}: {e}", path.display()),
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{kind} hook {}: timed out after {}s",
                path.display(),
                h.timeout().unwrap_or(0)
            )
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
