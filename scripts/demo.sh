#!/usr/bin/env bash
# The main job on the bundled example: set up (once), then copy the shop
# example into a temporary git repo and run its tests step by step. The failing
# test pauses and the attach command is printed; Ctrl-C ends the run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --demo
exec "${CARGO_TARGET_DIR:-target}/debug/stepkernel" demo --python "$PWD/.venv/bin/python" "$@"
