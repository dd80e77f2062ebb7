//! Round-trips a populated instance of every group-A message through
//! ImageWriter/ImageReader, and pins a few encodings byte by byte.
//!
//! One module per image family; shared helpers in `common`.

mod common;
mod encoding;
mod files;
mod misc;
mod mm;
mod ns;
mod task;
