//! The error type shared by every `/proc` parser and reader.

use std::io;
use std::path::PathBuf;

/// Longest excerpt of an offending line kept in [`ProcError::BadLine`].
const MAX_EXCERPT: usize = 200;

/// Errors from parsing or reading `/proc` files.
///
/// Messages are lowercase and name the file kind, e.g.
/// `maps: bad line 3: "garbage" (bad address range)`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Reading the file failed (the task may have exited: see [`ProcError::is_gone`]).
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A line could not be parsed. `line` is 1-based; `text` is the line,
    /// cut to 200 bytes.
    #[error("{file}: bad line {line}: {text:?} ({reason})")]
    BadLine {
        file: &'static str,
        line: usize,
        text: String,
        reason: &'static str,
    },
    /// A mandatory key, row or field is absent.
    #[error("{file}: missing {what}")]
    Missing {
        file: &'static str,
        what: &'static str,
    },
    /// The file as a whole is malformed (binary files, single-value files).
    #[error("{file}: {reason}")]
    Malformed { file: &'static str, reason: String },
}

impl ProcError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        ProcError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn bad_line(
        file: &'static str,
        line: usize,
        text: &str,
        reason: &'static str,
    ) -> Self {
        let mut end = text.len().min(MAX_EXCERPT);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        ProcError::BadLine {
            file,
            line,
            text: text[..end].to_owned(),
            reason,
        }
    }

    pub(crate) fn missing(file: &'static str, what: &'static str) -> Self {
        ProcError::Missing { file, what }
    }

    pub(crate) fn malformed(file: &'static str, reason: impl Into<String>) -> Self {
        ProcError::Malformed {
            file,
            reason: reason.into(),
        }
    }

    /// True when the file could not be read because the task (or the fd, or
    /// the thread) no longer exists: `ENOENT` or `ESRCH`. Dumpers racing with
    /// exiting tasks use this to skip rather than fail.
    pub fn is_gone(&self) -> bool {
        match self {
            ProcError::Io { source, .. } => {
                source.kind() == io::ErrorKind::NotFound
                    || source.raw_os_error() == Some(libc::ESRCH)
            }
            _ => false,
        }
    }
}
