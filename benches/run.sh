#!/usr/bin/env bash
# Reruns the whole benchmark set behind BENCHMARKS.md:
#   micro   criterion micro-benchmarks (relay-proto codec, engine fan-out, demux, str0m frame vs RTP mode)
#   gossip  chitchat at 50 and 100 members in one process
#   load    trackmesh-load scenarios against release node processes on 127.0.0.1
#   sim     the multi-region test bed's full scenario (deploy/sim/run.sh; root; not part of all)
#   plot    SVG charts of the load JSON reports in target/bench-results/ into benches/charts/
#           (packets/s per core and p99 latency against subscribers, join storm over time)
# Usage: benches/run.sh [all|micro|gossip|load|sim|plot] (default all: every step but plot; about
# 20 minutes after the build).
# Results: target/bench-results/ (machine line, logs, one text and one JSON report per load run)
# and target/criterion/. Run it on an otherwise idle machine: the load generator and the nodes
# share its cores.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
case "$what" in all | micro | gossip | load | sim | plot) ;; *)
  echo "usage: $0 [all|micro|gossip|load|sim|plot]" >&2
  exit 2
  ;;
esac
out=target/bench-results
mkdir -p "$out"

if [ "$what" = plot ]; then
  # Drawing three charts needs no optimisation: the debug build is the quicker one to have.
  cargo run -q -p trackmesh-benches --bin trackmesh-plot -- --results "$out" --out benches/charts
  exit 0
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
  echo "kernel: $(uname -r)"
  echo "rustc: $(rustc --version)"
} | tee "$out/machine.txt"

if [ "$what" = all ] || [ "$what" = micro ]; then
  # Short measurement windows: the benches take a few minutes on 2 cores.
  crit=(--warm-up-time 1 --measurement-time 3 --noplot)
  cargo bench -p trackmesh-benches --bench relay_proto -- "${crit[@]}" 2>&1 | tee "$out/relay_proto.txt"
  cargo bench -p trackmesh-benches --bench engine -- "${crit[@]}" 2>&1 | tee "$out/engine.txt"
  cargo bench -p trackmesh-benches --bench str0m_modes -- "${crit[@]}" 2>&1 | tee "$out/str0m_modes.txt"
  cargo bench -p trackmesh-benches --bench packet_path -- "${crit[@]}" 2>&1 | tee "$out/packet_path.txt"
fi

if [ "$what" = all ] || [ "$what" = gossip ]; then
  cargo run --release -p trackmesh-benches --bin gossip-scale -- --members 50,100 --window 10 \
    | tee "$out/gossip.json"
fi

if [ "$what" = all ] || [ "$what" = load ]; then
  cargo build --release --bins
  load=target/release/trackmesh-load
  export TRACKMESH_BIN=target/release/trackmesh
  # One scenario: the text report to the terminal and a file, the JSON report to another file.
  run() {
    local name=$1
    shift
    echo "== trackmesh-load $* ($name)"
    "$load" "$@" | tee "$out/load-$name.txt"
    "$load" "$@" --json >"$out/load-$name.json"
  }
  # Each scenario runs twice (text, then JSON): two samples of every figure.
  for media in audio video; do
    for n in 50 200 500; do
      run "fanout-$media-$n" fanout --media "$media" --subscribers "$n" --duration 15
    done
  done
  run fanout-av-200 fanout --media av --subscribers 200 --duration 15
  run relay-equal relay --subscribers 3 --local-subscribers 3 --duration 15
  run relay relay --duration 15
  run hub hub --subscribers 40 --duration 15
  run join-storm-500 join-storm --sessions 500
  run churn churn --duration 20
  run soak soak --duration 60
fi
if [ "$what" = sim ]; then
  cargo build --release --bins
  bash deploy/sim/run.sh --release --regions 5 --nodes-per-region 2 --json "$out/sim.json" \
    | tee "$out/sim.txt"
fi
echo "results in $out/ and target/criterion/"
