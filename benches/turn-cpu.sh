#!/usr/bin/env bash
# The TURN CPU figure of BENCHMARKS.md: node CPU per forwarded RTP packet with every client
# relayed through the node's embedded TURN server, against the same load direct. One publisher
# (audio + light video, as the integration tests send) and SUBS subscribers on one node
# process, SECS seconds each. PROFILE is the node binary's; the clients (the test harness) are
# always a debug build, and only the node process's CPU is measured.
#
#   benches/turn-cpu.sh [SUBS] [SECS] [debug|release]
set -euo pipefail
cd "$(dirname "$0")/.."
subs="${1:-10}"
secs="${2:-10}"
profile="${3:-release}"
flag=()
[ "$profile" = release ] && flag=(--release)
cargo build "${flag[@]}" -p trackmesh-node --bin trackmesh
TRACKMESH_BIN="$PWD/target/$profile/trackmesh" \
TRACKMESH_TURN_BENCH_SUBS="$subs" TRACKMESH_TURN_BENCH_SECS="$secs" \
  cargo test -p trackmesh-tests --test it -- --ignored --nocapture --exact \
  turn::turn_relayed_media_cpu_against_direct 2>&1 | grep '^{'
