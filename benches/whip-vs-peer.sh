#!/usr/bin/env bash
# Side by side: the same `trackmesh-load whip` load (1 WHIP publisher, N WHEP viewers) against a
# trackmesh node and against another WHIP/WHEP server (the "peer", e.g. Live777), each running
# alone on 127.0.0.1, runs alternated: trackmesh, peer, trackmesh, peer for every N.
#
#   benches/whip-vs-peer.sh PEER_BIN [N...]        (default N: 50 200)
#
# PEER_BIN is any binary that takes `-c CONFIG.toml` in Live777's format (binbat/live777,
# `live777`); the script writes a minimal config to a temp dir. Both servers log at warn level.
# Env: ROUNDS (2: pairs per N), DURATION (20 s), WARMUP (3 s), MEDIA (av), CONCURRENCY (32),
# OUT (target/bench-results/whip-vs-peer-<UTC time>), TRACKMESH_BIN / LOAD_BIN (release
# builds in target/release), ports TM_PORT (18480..18482) and PEER_PORT (17777).
# Needs: the release builds (`cargo build --release -p trackmesh-node -p trackmesh-benches
# --bins`), jq, curl.
set -euo pipefail

if [[ $# -lt 1 ]]; then
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
PEER_BIN=$(realpath "$1")
shift
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(50 200)

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-3}
MEDIA=${MEDIA:-av}
CONCURRENCY=${CONCURRENCY:-32}
TM_PORT=${TM_PORT:-18480}
PEER_PORT=${PEER_PORT:-17777}
TRACKMESH_BIN=${TRACKMESH_BIN:-$ROOT/target/release/trackmesh}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/trackmesh-load}
OUT=${OUT:-$ROOT/target/bench-results/whip-vs-peer-$(date -u +%Y%m%dT%H%M%SZ)}

for b in "$PEER_BIN" "$TRACKMESH_BIN" "$LOAD_BIN"; do
  [[ -x $b ]] || { echo "not an executable: $b" >&2; exit 1; }
done
for t in jq curl; do
  command -v "$t" >/dev/null || { echo "needs $t" >&2; exit 1; }
done
for n in "${SIZES[@]}" "$ROUNDS" "$DURATION" "$WARMUP"; do
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 5000 ]] || { echo "bad number: $n" >&2; exit 2; }
done

mkdir -p "$OUT"
TMP=$(mktemp -d)
SERVER_PID=""
stop_server() {
  if [[ -n $SERVER_PID ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
  fi
}
trap 'stop_server; rm -rf "$TMP"' EXIT

TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
APP=whipbench

# The peer's config: HTTP and ICE host candidates on loopback only, no STUN server, a static
# bearer token, WHIP and WHEP create the stream, warnings only.
cat >"$TMP/peer.toml" <<EOF
ice_servers = []

[http]
listen = "127.0.0.1:$PEER_PORT"

[webrtc]
ice_udp_addrs = ["127.0.0.1:0"]

[auth]
tokens = ["$TOKEN"]

[log]
level = "warn"

[strategy]
auto_create_whip = true
auto_create_whep = true
EOF
cp "$TMP/peer.toml" "$OUT/peer.toml"
sed -i "s/$TOKEN/<random token>/" "$OUT/peer.toml"

# Wait (bounded) until the server answers HTTP on URL.
wait_http() {
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null --max-time 1 "$1"; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited; log: $2" >&2; return 1; }
    sleep 0.1
  done
  echo "server did not answer $1; log: $2" >&2
  return 1
}

start_trackmesh() {
  local log=$1
  # The limits a load test needs (every client comes from 127.0.0.1), as the generator's own
  # node gets them (benches/src/load/scenario/mod.rs, Common::node_args).
  RUST_LOG=warn "$TRACKMESH_BIN" \
    --http "127.0.0.1:$TM_PORT" --media "127.0.0.1:$((TM_PORT + 1))" \
    --gossip "127.0.0.1:$((TM_PORT + 2))" --relay 127.0.0.1:0 \
    --app "$APP:$TOKEN" \
    --max-sessions 10000 --rate-limit 1000 --session-rate-ip 100000 --session-rate-app 100000 \
    --http-max-connections-per-ip 100000 --http-max-connections 100000 \
    >"$log" 2>&1 &
  SERVER_PID=$!
  wait_http "http://127.0.0.1:$TM_PORT/metrics" "$log"
}

start_peer() {
  local log=$1
  (cd "$TMP" && exec "$PEER_BIN" -c "$TMP/peer.toml") >"$log" 2>&1 &
  SERVER_PID=$!
  wait_http "http://127.0.0.1:$PEER_PORT/" "$log"
}

run_one() {
  local server=$1 n=$2 round=$3
  local tag="$server-n$n-r$round"
  local log="$OUT/$tag.server.log"
  local args=()
  if [[ $server == trackmesh ]]; then
    start_trackmesh "$log" || { stop_server; return 0; }
    local base="http://127.0.0.1:$TM_PORT/v1/apps/$APP"
    args=(--whip-url "$base/whip/bench" --whep-url "$base/whep/bench"
      --metrics-url "http://127.0.0.1:$TM_PORT/metrics")
  else
    start_peer "$log" || { stop_server; return 0; }
    local base="http://127.0.0.1:$PEER_PORT"
    args=(--whip-url "$base/whip/bench" --whep-url "$base/whep/bench")
  fi
  echo "== $tag (server pid $SERVER_PID)" >&2
  local rc=0
  TRACKMESH_LOAD_TOKEN=$TOKEN "$LOAD_BIN" --node-bin "$TRACKMESH_BIN" whip --json \
    --subscribers "$n" --media "$MEDIA" --duration "$DURATION" --warmup "$WARMUP" \
    --concurrency "$CONCURRENCY" --server-pid "$SERVER_PID" "${args[@]}" \
    >"$OUT/$tag.json" 2>"$OUT/$tag.stderr" || rc=$?
  stop_server
  if [[ $rc -ne 0 ]]; then
    echo "   failed (exit $rc): $(tail -c 400 "$OUT/$tag.stderr")" >&2
    rm -f "$OUT/$tag.json"
    return 0
  fi
  jq -r --arg tag "$tag" '"   \($tag): \(.extra.viewer_rtp_pkts_per_s) pkt/s received, \(.extra.forwarded_pkts_per_cpu_s) pkt per server CPU-s, \(.extra.rss_per_subscriber_kb) KB RSS/viewer, latency p50 \(.extra.latency_p50_ms) p99 \(.extra.latency_p99_ms) ms, loss \(.groups[0].loss_percent) %, \(.extra.viewers_joined) joined, \(.failures) failed"' \
    "$OUT/$tag.json" >&2
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "trackmesh: $(git -C "$ROOT" rev-parse --short HEAD) $TRACKMESH_BIN"
  echo "peer: $PEER_BIN"
  if git -C "$(dirname "$PEER_BIN")" rev-parse >/dev/null 2>&1; then
    echo "peer commit: $(git -C "$(dirname "$PEER_BIN")" log -1 --oneline)"
  fi
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs) x $(nproc)"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "params: rounds=$ROUNDS duration=${DURATION}s warmup=${WARMUP}s media=$MEDIA concurrency=$CONCURRENCY sizes=${SIZES[*]}"
} | tee "$OUT/meta.txt" >&2

for n in "${SIZES[@]}"; do
  for round in $(seq 1 "$ROUNDS"); do
    run_one trackmesh "$n" "$round"
    run_one peer "$n" "$round"
  done
done

# One row per run, then the medians per server and size.
shopt -s nullglob
files=("$OUT"/*.json)
if [[ ${#files[@]} -eq 0 ]]; then
  echo "no run succeeded" >&2
  exit 1
fi
jq -n -r '
  def med: map(select(. != null)) | sort | length as $n
    | if $n == 0 then null elif $n % 2 == 1 then .[($n - 1) / 2] else (.[$n / 2 - 1] + .[$n / 2]) / 2 end
    | if . == null then null else . * 100 | round / 100 end;
  def row: [.server, .n, .round, .x.viewer_rtp_pkts_per_s, .x.forwarded_pkts_per_cpu_s,
            .x.server_cpu_percent_of_core, .x.rss_per_subscriber_kb, .x.latency_p50_ms,
            .x.latency_p99_ms, .loss, .x.viewers_joined, .failures];
  [inputs | (input_filename | split("/") | last | rtrimstr(".json") | split("-")) as $t
   | {server: $t[0], n: .params.subscribers, round: $t[2], x: .extra,
      loss: .groups[0].loss_percent, failures: .failures}] as $runs
  | "| server | viewers | round | viewer pkt/s | pkt per server CPU-s | server CPU % | RSS KB/viewer | p50 ms | p99 ms | loss % | joined | failed |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ($runs | sort_by(.n, .round, .server)[] | row | map(tostring) | "| " + join(" | ") + " |"),
    "",
    "| viewers | server | runs | median pkt per server CPU-s | median RSS KB/viewer | median p50 ms | median p99 ms | median loss % |",
    "|---|---|---|---|---|---|---|---|",
    ($runs | group_by([.n, .server])[]
      | [.[0].n, .[0].server, length, (map(.x.forwarded_pkts_per_cpu_s) | med),
         (map(.x.rss_per_subscriber_kb) | med), (map(.x.latency_p50_ms) | med),
         (map(.x.latency_p99_ms) | med), (map(.loss) | med)]
      | map(tostring) | "| " + join(" | ") + " |")
' "${files[@]}" | tee "$OUT/summary.md"
echo "results: $OUT" >&2
