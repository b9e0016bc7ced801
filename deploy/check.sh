#!/usr/bin/env bash
# Check the deployment files (deploy/check.py) against a live node's /metrics.
#
#   deploy/check.sh                                   build target/debug/trackmesh if missing,
#                                                     start it on 127.0.0.1, check everything
#   deploy/check.sh --metrics deploy/testdata/contract-metrics.txt
#                                                     check against the contract's metric list
#   deploy/check.sh --metrics http://HOST:PORT/metrics   check against a running node
#
# Installs PyYAML with pip when it is missing. Uses promtool, systemd-analyze and kubectl
# (kustomize) when they are on PATH; promtool comes with Debian's `prometheus` package.
# Environment: TRACKMESH_BIN (node binary; default target/debug/trackmesh).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "deploy/check.sh: needs Python 3.11 or newer (tomllib)" >&2
  exit 1
fi
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  echo "deploy/check.sh: installing PyYAML ..." >&2
  "$PY" -m pip install --quiet --disable-pip-version-check pyyaml >&2 ||
    "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages pyyaml >&2
fi

wants_node=1
for arg in "$@"; do
  case "$arg" in --metrics | --metrics=*) wants_node=0 ;; esac
done
BIN="${TRACKMESH_BIN:-$ROOT/target/debug/trackmesh}"
if [[ $wants_node == 1 && ! -x "$BIN" ]]; then
  echo "deploy/check.sh: building the node (cargo build -p trackmesh-node --bin trackmesh) ..." >&2
  (cd "$ROOT" && cargo build -p trackmesh-node --bin trackmesh) >&2
fi

exec "$PY" "$ROOT/deploy/check.py" --bin "$BIN" "$@"
