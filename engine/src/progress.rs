//! Progress bars for long operations, drawn only when asked (the CLI asks
//! when stderr is a terminal) and only for work big enough to notice.

use indicatif::{ProgressBar, ProgressStyle};

/// Below this many bytes an operation is too quick to be worth a bar.
const MIN_BYTES: u64 = 64 << 20;

/// A byte-counting bar; a no-op when disabled.
#[derive(Clone)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    pub fn new(enabled: bool, total: u64, what: String) -> Progress {
        if !enabled || total < MIN_BYTES {
            return Progress(None);
        }
        let pb = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}",
        ) {
            pb.set_style(style.progress_chars("=> "));
        }
        pb.set_message(what);
        Progress(Some(pb))
    }

    pub fn inc(&self, n: u64) {
        if let Some(pb) = &self.0 {
            pb.inc(n);
        }
    }

    pub fn finish(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}
