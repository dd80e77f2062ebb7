//! OCI container support (bundles, state, archives) built on `stasis-engine`.
//!
//! The runtime lives here once the OCI runtime issue is taken up; for now the
//! crate only fixes the dependency direction `engine <- oci <- shim`.
#![deny(unsafe_code)]

pub use stasis_engine as engine;
