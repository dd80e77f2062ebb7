#!/usr/bin/env bash
# Release build: `cargo build --release ARGS...` (the whole workspace
# without ARGS), then `target/release/stasis` linked again, statically.
#
# Why: a small dump or restore takes a few milliseconds, and a dynamically
# linked `stasis` spends about 1 ms of each start in the dynamic loader
# (mapping libc, libm, libgcc_s and resolving their symbols) and in faults
# on their pages. A static binary also runs anywhere (a container's rootfs,
# another machine) without libraries to match.
#
# Cargo cannot link one binary statically by itself: `+crt-static` in the
# config would also apply to the proc-macro crates, which cannot be static.
# `cargo rustc` gives the flags to the final crate only, reusing every
# dependency as built; a later plain `cargo build --release` links the
# dynamic binary again (both work the same).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release "$@"
cargo rustc --release --quiet -p stasis-shim --bin stasis -- \
    -C target-feature=+crt-static -C relocation-model=static
