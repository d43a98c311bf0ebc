#!/usr/bin/env bash
# The whole test suite: installs what it needs, then lint, Rust tests, the
# fidelity comparison and the end-to-end tests against real Jupyter clients.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy -q --workspace --all-targets -- -D warnings

echo "== cargo test"
cargo test -q --workspace 2>&1 | grep -v '^$'

echo "== python tests (worker engine, end-to-end with real clients)"
export STEPKERNEL_BIN="$PWD/target/debug/stepkernel"
.venv/bin/python -m pytest -q -p no:cacheprovider worker/tests tests "$@"
