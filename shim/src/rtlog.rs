//! runc-style logging for the runtime commands: logrus text
//! (`time="…" level=error msg="…"`) or JSON lines (`{"level","msg","time"}`,
//! what containerd's shim reads back from log.json), to stderr or --log.

use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

struct Logrus {
    json: bool,
}

struct Msg(String);

impl Visit for Msg {
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        if f.name() == "message" {
            self.0 = format!("{v:?}");
        } else {
            self.0.push_str(&format!(" {}={v:?}", f.name()));
        }
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        if f.name() == "message" {
            self.0 = v.to_string();
        } else {
            self.0.push_str(&format!(" {}={v}", f.name()));
        }
    }
}

pub fn now() -> String {
    let s = stasis_oci::util::rfc3339_nano(SystemTime::now());
    match s.find('.') {
        Some(i) => format!("{}Z", &s[..i]),
        None => s,
    }
}

impl<S, N> FormatEvent<S, N> for Logrus
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        ev: &Event<'_>,
    ) -> fmt::Result {
        let mut m = Msg(String::new());
        ev.record(&mut m);
        let level = match *ev.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            _ => "debug",
        };
        if self.json {
            let v = serde_json::json!({"level": level, "msg": m.0, "time": now()});
            writeln!(w, "{v}")
        } else {
            writeln!(w, "time={:?} level={level} msg={:?}", now(), m.0)
        }
    }
}

/// Returns true when logs go to a file (errors must then also be printed
/// on stderr, as runc does).
pub fn init(file: Option<&Path>, json: bool, debug: bool) -> Result<bool> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(if debug {
            "debug"
        } else {
            "info,stasis_engine=warn"
        })
    });
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .event_format(Logrus { json });
    match file {
        Some(p) if p != Path::new("/dev/stderr") => {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("{}: cannot open log file", p.display()))?;
            fmt.with_writer(std::sync::Mutex::new(f)).try_init().ok();
            Ok(true)
        }
        _ => {
            fmt.with_writer(std::io::stderr).try_init().ok();
            Ok(false)
        }
    }
}
