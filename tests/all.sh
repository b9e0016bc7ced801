#!/usr/bin/env bash
# Runs every trackmesh test: formatting and lints, Rust unit, property and integration tests
# (single node and clusters of real node processes), bounded fuzzing of the node's and the relay
# protocol's decoders, and the browser end-to-end tests in headless Debian Chromium. Installs what the tests need when it is
# missing (rustfmt/clippy components, iptables, nats-server, cargo-fuzz, Debian's chromium, the npm packages), so it works on a
# fresh machine with no stdin. CI runs exactly this (see .ci/run). The network-fault tests
# (tests/tests/it/faults_netns.rs) and the multi-region test bed (deploy/sim) need root: they
# build network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's heading says how long the run has taken so far, so a CI log shows where the time goes.
step() { printf '\n== %s == (%d s)\n' "$*" "$SECONDS"; }

step "toolchain components"
for c in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done

step "iptables (the network-fault tests cut and degrade links with it)"
if ! command -v iptables >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables
fi
command -v iptables >/dev/null 2>&1 || { echo "all.sh: iptables still missing" >&2; exit 1; }

step "nats-server (the audio egress test publishes to it)"
if ! command -v nats-server >/dev/null 2>&1; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nats-server
fi
command -v nats-server >/dev/null 2>&1 || { echo "all.sh: nats-server still missing" >&2; exit 1; }
# Debian's package enables a system service; the test starts its own server on a free port.

step "format"
cargo fmt --all -- --check

step "lints"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build the node"
cargo build --workspace --bins --locked
export TRACKMESH_BIN="$PWD/target/debug/trackmesh"

step "README commands (quickstart and operations) against a fresh node"
bash tests/readme.sh

step "unit and integration tests"
cargo test --workspace --locked

step "multi-region test bed, CI form: 3 regions x 1 node, 20 ms, a region cut (deploy/sim, root)"
TRACKMESH_SIM_BIN="$PWD/target/debug/trackmesh-sim" \
  bash deploy/sim/run.sh --regions 3 --nodes-per-region 1 --delay 20 --duration 8 --cut-hold 6 --check

step "fuzzing: node and relay-proto targets (bounded: FUZZ_SECONDS per target)"
FUZZ_SECONDS="${FUZZ_SECONDS:-5}" FUZZ_PROFILE="${FUZZ_PROFILE:-dev}" FUZZ_CORPUS_SAMPLE="${FUZZ_CORPUS_SAMPLE:-40}" \
  bash fuzz/run.sh

step "deployment files (compose, Kubernetes, Prometheus, Grafana against a live /metrics)"
bash deploy/check.sh

step "browser end-to-end tests"
bash tests/browser/run.sh

step "all tests passed"
