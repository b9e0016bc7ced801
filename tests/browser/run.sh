#!/usr/bin/env bash
# Browser end-to-end tests: install what they need (idempotent), then run them one file at a time with
# Node's built-in test runner. Exits non-zero on any failure.
#   TRACKMESH_BIN=/path/to/trackmesh  (default: <workspace>/target/debug/trackmesh; build it first)
#   VERBOSE=1                         (page console on stderr)
#   ./run.sh [test files...]          (default: all *.test.mjs)
set -euo pipefail
cd "$(dirname "$0")"
./install.sh
if [ "$#" -gt 0 ]; then files=("$@"); else files=(*.test.mjs); fi
exec node --test --test-concurrency=1 --test-timeout=120000 "${files[@]}"
