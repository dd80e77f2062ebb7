//! Errors of the runtime library: one line, naming the object.

use std::fmt::Display;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Msg(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: nix::errno::Errno,
    },
    #[error("container does not exist")]
    NotExist,
    #[error("container with given ID already exists")]
    Exists,
}

impl Error {
    pub fn msg(m: impl Display) -> Self {
        Error::Msg(m.to_string())
    }
}

/// Attach a path to an I/O error.
pub trait IoCtx<T> {
    fn at(self, p: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoCtx<T> for std::io::Result<T> {
    fn at(self, p: impl AsRef<Path>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: p.as_ref().to_path_buf(),
            source,
        })
    }
}

/// Name the failed system call (and its object).
pub trait SysCtx<T> {
    fn what(self, w: impl Display) -> Result<T>;
}

impl<T> SysCtx<T> for nix::Result<T> {
    fn what(self, w: impl Display) -> Result<T> {
        self.map_err(|source| Error::Sys {
            what: w.to_string(),
            source,
        })
    }
}

macro_rules! bail {
    ($($t:tt)*) => { return Err($crate::error::Error::Msg(format!($($t)*))) };
}
pub(crate) use bail;
