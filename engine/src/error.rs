//! The engine's error type: one enum, every variant naming the object it is about.

use std::io;
use std::path::PathBuf;

use stasis_proto::image::ImageError;

use crate::proc::ProcError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("pid {pid}: {what}: {source}")]
    Task {
        pid: i32,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("pid {0}: no such process")]
    NoProcess(i32),
    #[error("pid {pid}: {why}")]
    Unsupported { pid: i32, why: String },
    #[error("pid {pid} fd {fd}: {why}")]
    Fd { pid: i32, fd: i32, why: String },
    #[error("{image}: {why}")]
    BadImage { image: String, why: String },
    #[error("interrupted by a signal; everything was undone")]
    Interrupted,
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An I/O error about a file or directory.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The pid the error is about, if any.
    pub fn pid(&self) -> Option<i32> {
        match self {
            Error::Task { pid, .. }
            | Error::NoProcess(pid)
            | Error::Unsupported { pid, .. }
            | Error::Fd { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// A syscall or ptrace request about a task failed.
    pub fn task(pid: i32, what: impl Into<String>, source: io::Error) -> Self {
        Error::Task {
            pid,
            what: what.into(),
            source,
        }
    }

    pub fn unsupported(pid: i32, why: impl Into<String>) -> Self {
        Error::Unsupported {
            pid,
            why: why.into(),
        }
    }

    pub fn bad_image(image: impl Into<String>, why: impl Into<String>) -> Self {
        Error::BadImage {
            image: image.into(),
            why: why.into(),
        }
    }
}

/// Stop at a safe point if the user asked us to (SIGINT, SIGTERM, ...).
pub fn check_interrupt() -> Result<()> {
    if crate::sys::sig::interrupted() {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Attach a task context to an `io::Result`.
pub trait TaskCtx<T> {
    fn task_ctx(self, pid: i32, what: &str) -> Result<T>;
}

impl<T> TaskCtx<T> for io::Result<T> {
    fn task_ctx(self, pid: i32, what: &str) -> Result<T> {
        self.map_err(|e| Error::task(pid, what, e))
    }
}

/// Attach a path to an `io::Result`.
pub trait PathCtx<T> {
    fn path_ctx(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> PathCtx<T> for io::Result<T> {
    fn path_ctx(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
