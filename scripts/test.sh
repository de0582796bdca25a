#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, then format check, the
# dependency policy (cargo deny), clippy with warnings as errors, every test (unit, integration
# over real sockets, doc examples).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# A one-off run gains nothing from incremental compilation, whose caches grow to tens of GiB.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo deny (licenses, bans, sources; advisories need GitHub, unreachable here)"
# The licence checks read each crate's files: have every crate downloaded first.
cargo fetch --locked
cargo deny --locked check licenses bans sources
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== tests"
# Benchmarks are compiled by clippy above and run by bench/, not here.
cargo nextest run --workspace --locked --no-fail-fast
echo "== doc examples"
cargo test --workspace --doc --locked
