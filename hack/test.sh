#!/usr/bin/env bash
# The whole check, as CI runs it (.ci/run): set-up, release build, format,
# lints, unit tests, then the end-to-end tests.
#
# The end-to-end tests (integration/tests) need root: they checkpoint and
# restore real process trees. As non-root they print "skipped: needs root"
# and pass. As root, STASIS_TESTS_REQUIRED=1 turns any skip (for example a
# missing stasis binary) into a failure.
#
# They run with --test-threads=1: each test makes the test process a child
# subreaper and reaps the restored trees re-parented to it; tests running in
# parallel would reap (steal) each other's children. (The harness also holds
# a lock per test binary, so a plain `cargo test` does not break either.)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==== %s ====\n' "$*"; }

step "set-up (hack/setup.sh)"
bash hack/setup.sh

step "build: hack/build.sh --workspace --all-targets (stasis linked statically)"
bash hack/build.sh --workspace --all-targets

step "format: cargo fmt --all -- --check"
cargo fmt --all -- --check

step "lint: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if command -v shellcheck >/dev/null; then
    step "lint: shellcheck"
    shellcheck hack/*.sh .ci/run
fi

step "unit tests: cargo test --release --workspace --exclude stasis-integration"
cargo test --release --workspace --exclude stasis-integration

step "end-to-end tests: cargo test --release -p stasis-integration -- --test-threads=1"
export STASIS_BIN="$PWD/target/release/stasis"
if [[ $(id -u) -eq 0 ]]; then
    export STASIS_TESTS_REQUIRED=1
else
    echo "not root: the root-only tests will print 'skipped: needs root' and pass"
fi
cargo test --release -p stasis-integration --no-fail-fast -- --test-threads=1
