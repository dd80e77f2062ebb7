//! Logging: CRIU-style verbosity (-v0..-v4) into a log file, errors on stderr.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::{Context, Result};
use tracing_subscriber::EnvFilter;

/// CRIU levels: 0 none, 1 errors, 2 warnings (default), 3 info, 4 debug.
fn level(v: u8) -> &'static str {
    match v {
        0 => "off",
        1 => "error",
        2 => "warn",
        3 => "info",
        _ => "debug",
    }
}

/// Send logs to `file` (if given) at verbosity `v`. Without a file, warnings
/// and errors go to stderr only when RUST_LOG asks for them.
pub fn init(file: Option<&Path>, v: u8) -> Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level(v)));
    match file {
        Some(p) if p != Path::new("-") => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("{}: cannot open log file", p.display()))?;
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(f)
                .try_init()
                .ok();
        }
        Some(_) => {
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init()
                .ok();
        }
        None => {
            if std::env::var_os("RUST_LOG").is_some() {
                tracing_subscriber::fmt()
                    .with_env_filter(filter)
                    .with_writer(std::io::stderr)
                    .try_init()
                    .ok();
            }
        }
    }
    Ok(())
}
