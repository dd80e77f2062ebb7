//! Thin, safe wrappers over the raw kernel interfaces the engine needs.
