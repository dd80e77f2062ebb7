//! Shared helpers for stasis workload programs and end-to-end tests.
