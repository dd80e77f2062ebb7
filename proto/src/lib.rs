//! CRIU-compatible image schemas and the image container format.
