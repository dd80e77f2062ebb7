//! Logging: CRIU-style verbosity (-v0..-v4) into a log file, errors on stderr.
//!
//! One subscriber per process whose sink and level can change: the swrk
//! server logs each request into the log file that request names.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, EnvFilter, Registry};

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

enum Sink {
    Null,
    Stderr,
    File(File),
}

static SINK: Mutex<Sink> = Mutex::new(Sink::Null);
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

struct SinkWriter;

impl Write for SinkWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match &mut *SINK.lock().unwrap_or_else(|e| e.into_inner()) {
            Sink::Null => Ok(b.len()),
            Sink::Stderr => io::stderr().write(b),
            Sink::File(f) => f.write(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

struct MakeSink;

impl<'a> MakeWriter<'a> for MakeSink {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> SinkWriter {
        SinkWriter
    }
}

fn filter(v: u8) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level(v)))
}

/// Send logs to `file` (if given; "-" is stderr) at verbosity `v`. Without a
/// file, logs go to stderr only when RUST_LOG asks for them. May be called
/// again to switch the file and level.
pub fn init(file: Option<&Path>, v: u8) -> Result<()> {
    let sink = match file {
        Some(p) if p != Path::new("-") => Sink::File(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("{}: cannot open log file", p.display()))?,
        ),
        Some(_) => Sink::Stderr,
        None if std::env::var_os("RUST_LOG").is_some() => Sink::Stderr,
        None => Sink::Null,
    };
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = sink;
    match FILTER.get() {
        Some(h) => {
            let _ = h.reload(filter(v));
        }
        None => {
            let (layer, handle) = reload::Layer::new(filter(v));
            let fmt = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(MakeSink);
            if tracing_subscriber::registry()
                .with(layer)
                .with(fmt)
                .try_init()
                .is_ok()
            {
                let _ = FILTER.set(handle);
            }
        }
    }
    Ok(())
}

/// Stop writing to the current log file.
pub fn close() {
    *SINK.lock().unwrap_or_else(|e| e.into_inner()) = Sink::Null;
}
