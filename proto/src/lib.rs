//! CRIU-compatible image schemas and the image container format.
//!
//! * [`criu`]: prost types generated from `protos/*.proto`, wire-compatible
//!   with CRIU's image format v1.1 (same field numbers, types and labels),
//!   e.g. [`criu::CoreEntry`], [`criu::PstreeEntry`], [`criu::CriuReq`].
//! * [`image`]: the on-disk container (magics, length-prefixed entries,
//!   raw payloads) with [`ImageReader`] and [`ImageWriter`].

/// Generated protobuf types (package `criu`).
///
/// Message and field names follow CRIU (`core_entry` becomes `CoreEntry`,
/// fields keep their snake_case names). proto2 `required` fields are plain
/// values, `optional` ones are `Option`s, enums are stored as `i32` with
/// typed accessors.
#[allow(clippy::all, missing_docs, rustdoc::all)]
pub mod criu {
    include!(concat!(env!("OUT_DIR"), "/criu.rs"));
}

pub mod image;

pub use image::{
    decode_all, decode_one, encode_image, image_desc, image_kind, magic, Entries, Header,
    ImageDesc, ImageError, ImageReader, ImageWriter, DEFAULT_MAX_ENTRY, IMAGES_V1_1, IMAGE_DESCS,
    IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC,
};
