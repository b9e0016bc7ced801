#!/usr/bin/env bash
# Reruns the whole benchmark set: the criterion micro-benchmarks and the gossip-at-scale run.
# Results: target/criterion/ (criterion's estimates) and target/bench-results/ (logs, JSON).
# Usage: benches/run.sh [extra criterion args, e.g. a filter such as 'fanout']
# (with extra args only the criterion benches run, not the gossip measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/bench-results
mkdir -p "$out"

# Short measurement windows: the whole set takes a few minutes on 2 cores (plus the build).
crit=(--warm-up-time 1 --measurement-time 3 --noplot "$@")

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
  echo "rustc: $(rustc --version)"
} | tee "$out/machine.txt"

cargo bench -p trackmesh-benches --bench relay_proto -- "${crit[@]}" 2>&1 | tee "$out/relay_proto.txt"
cargo bench -p trackmesh-benches --bench engine -- "${crit[@]}" 2>&1 | tee "$out/engine.txt"
if [ $# -eq 0 ]; then
  cargo run --release -p trackmesh-benches --bin gossip-scale -- --members 50,100 --window 10 \
    | tee "$out/gossip.json"
fi
echo "results in $out/ and target/criterion/"
