#!/usr/bin/env bash
# The multi-region test bed: regions of trackmesh nodes on real (namespaced) networks with
# delay and loss between regions, real str0m clients, cuts of a node and of a whole region.
# Root only. See deploy/sim/README.md.
#
#   sudo deploy/sim/run.sh                                   # 5 regions x 2 nodes, the matrix below
#   sudo deploy/sim/run.sh --regions 3 --nodes-per-region 1 --delay 20 --check   # the CI form
#
# Options:
#   --regions N            2..5 (default 5)
#   --nodes-per-region K   1..3 (default 2)
#   --delay MS             one-way delay of every region pair (default: the matrix below)
#   --loss P               random loss between regions, 0..1 (iptables statistic; default 0)
#   --duration S           measured window, seconds (default 10)
#   --cut-hold S           how long each cut lasts, seconds (default 8)
#   --video-kbps N         each publisher's video bitrate (default 500)
#   --release              use target/release binaries (default target/debug)
#   --json FILE            write the JSON report there (else it stays in the run's directory,
#                          which is kept only with --keep or on failure)
#   --check                exit 1 unless the essentials hold (media across every region pair,
#                          each track crosses each link once, cuts detected and recovered)
#   --keep                 keep the run's directory (topology, logs, report)
# Environment: TRACKMESH_BIN, TRACKMESH_SIM_BIN (binaries; built with cargo when missing).
#
# Everything it makes is named tmsim-<pid>-…, uses only 10.90.0.0/16 and 10.91.0.0/16 inside
# those namespaces, and is removed on exit, also on failure or Ctrl-C. Namespaces left by a run
# that was killed with SIGKILL are removed by the next run.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

# One-way delay in ms, from the row's region to the column's (a rough world: r1 Europe,
# r2 Europe east, r3 US east, r4 US west, r5 Asia). Edit freely; it must stay square.
MATRIX=(
  "0   20  45  80  150"
  "20  0   30  70  120"
  "45  30  0   40  100"
  "80  70  40  0   60"
  "150 120 100 60  0"
)

REGIONS=5
PER_REGION=2
DELAY=""
LOSS=0
DURATION=10
CUT_HOLD=8
VIDEO_KBPS=500
PROFILE=debug
JSON=""
CHECK=()
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --regions) REGIONS="$2"; shift 2 ;;
    --nodes-per-region) PER_REGION="$2"; shift 2 ;;
    --delay) DELAY="$2"; shift 2 ;;
    --loss) LOSS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --cut-hold) CUT_HOLD="$2"; shift 2 ;;
    --video-kbps) VIDEO_KBPS="$2"; shift 2 ;;
    --release) PROFILE=release; shift ;;
    --json) JSON="$2"; shift 2 ;;
    --check) CHECK=(--check); shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done
[[ "$REGIONS" =~ ^[2-5]$ ]] || { echo "--regions must be 2..5" >&2; exit 2; }
[[ "$PER_REGION" =~ ^[1-3]$ ]] || { echo "--nodes-per-region must be 1..3" >&2; exit 2; }
[[ -z "$DELAY" || "$DELAY" =~ ^[0-9]{1,4}$ ]] || { echo "--delay must be whole ms" >&2; exit 2; }
[[ "$LOSS" =~ ^(0|1|0?\.[0-9]+)$ ]] || { echo "--loss must be 0..1" >&2; exit 2; }

[[ $(id -u) == 0 ]] || { echo "the test bed needs root (network namespaces, iptables)" >&2; exit 1; }
for tool in ip iptables; do
  command -v "$tool" >/dev/null || { echo "$tool is needed (apt-get install -y iproute2 iptables)" >&2; exit 1; }
done

NODE_BIN="${TRACKMESH_BIN:-$ROOT/target/$PROFILE/trackmesh}"
SIM_BIN="${TRACKMESH_SIM_BIN:-$ROOT/target/$PROFILE/trackmesh-sim}"
if [[ ! -x "$NODE_BIN" || ! -x "$SIM_BIN" ]]; then
  flag=(); [[ $PROFILE == release ]] && flag=(--release)
  echo "building trackmesh and trackmesh-sim ($PROFILE) ..." >&2
  (cd "$ROOT" && cargo build "${flag[@]}" -p trackmesh-node --bin trackmesh \
     && cargo build "${flag[@]}" -p trackmesh-benches --bin trackmesh-sim) >&2
fi

ID="tmsim-$$"
CORE="$ID-core"
CLI="$ID-cli"
NAMESPACES=()
DELAY_PID=""
DIR="$(mktemp -d -t trackmesh-sim.XXXXXX)"

# SIGKILL whatever runs in a namespace (only this script's own children can be there).
kill_inside() {
  local pid
  for pid in $(ip netns pids "$1" 2>/dev/null | head -n 1000); do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [[ -n "$DELAY_PID" ]] && kill "$DELAY_PID" 2>/dev/null || true
  local ns i
  # Nodes and clients first, the routers last.
  for ((i = ${#NAMESPACES[@]} - 1; i >= 0; i--)); do
    kill_inside "${NAMESPACES[$i]}"
  done
  for ((i = ${#NAMESPACES[@]} - 1; i >= 0; i--)); do
    ns="${NAMESPACES[$i]}"
    ip netns del "$ns" 2>/dev/null || echo "sim: could not delete namespace $ns" >&2
  done
  if [[ $KEEP == 1 || $rc != 0 ]]; then
    echo "sim: logs, topology and report kept in $DIR" >&2
  else
    rm -rf "$DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Test beds of runs that died without cleaning up (their pid is gone).
for ns in $(ip netns list | awk '{print $1}' | grep -E '^tmsim-[0-9]+-' | head -n 1000); do
  pid="${ns#tmsim-}"; pid="${pid%%-*}"
  if [[ ! -d /proc/$pid ]]; then
    kill_inside "$ns"
    ip netns del "$ns" 2>/dev/null || true
  fi
done

add_ns() {
  ip netns add "$1"
  NAMESPACES+=("$1")
  ip -n "$1" link set lo up
}

echo "sim: $REGIONS regions x $PER_REGION nodes, namespaces $ID-*, run directory $DIR"

# The "internet": one router namespace, one uplink per region.
add_ns "$CORE"
ip netns exec "$CORE" sysctl -qw net.ipv4.ip_forward=1
# The clients: one address on every region's LAN, so each client reaches its own region's
# nodes without crossing the internet, and all share one clock.
add_ns "$CLI"

LETTERS=(a b c)
MROWS=()
REGION_JSON=()
NODE_JSON=()
for ((i = 1; i <= REGIONS; i++)); do
  R="$ID-r$i"
  add_ns "$R"
  ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$R" link add br0 type bridge
  ip -n "$R" addr add "10.90.$i.254/24" dev br0
  ip -n "$R" link set br0 up
  # Uplink: "up$i" in the core, "wan" in the region.
  ip -n "$CORE" link add "up$i" type veth peer name wan netns "$R"
  ip -n "$CORE" addr add "10.91.$i.1/30" dev "up$i"
  ip -n "$R" addr add "10.91.$i.2/30" dev wan
  ip -n "$CORE" link set "up$i" up
  ip -n "$R" link set wan up
  ip -n "$R" route add default via "10.91.$i.1"
  ip -n "$CORE" route add "10.90.$i.0/24" via "10.91.$i.2" dev "up$i"
  # The clients' leg into this region.
  ip -n "$CLI" link add "r$i" type veth peer name cli netns "$R"
  ip -n "$R" link set cli master br0
  ip -n "$R" link set cli up
  ip -n "$CLI" addr add "10.90.$i.200/24" dev "r$i"
  ip -n "$CLI" link set "r$i" up
  for ((j = 1; j <= PER_REGION; j++)); do
    N="$ID-r${i}n$j"
    add_ns "$N"
    ip -n "$N" link add eth0 type veth peer name "n$j" netns "$R"
    ip -n "$R" link set "n$j" master br0
    ip -n "$R" link set "n$j" up
    ip -n "$N" addr add "10.90.$i.$j/24" dev eth0
    ip -n "$N" link set eth0 up
    ip -n "$N" route add default via "10.90.$i.254"
    name="r$i${LETTERS[$((j - 1))]}" # r1a, r1b, ...
    NODE_JSON+=("{\"name\":\"$name\",\"region\":\"r$i\",\"ns\":\"$N\",\"ip\":\"10.90.$i.$j\",\"port_ns\":\"$R\",\"port_dev\":\"n$j\"}")
  done
  REGION_JSON+=("{\"name\":\"r$i\",\"lan\":\"10.90.$i.0/24\",\"client_ip\":\"10.90.$i.200\",\"uplink_dev\":\"up$i\",\"uplink_via\":\"10.91.$i.2\"}")
  row=()
  for ((k = 1; k <= REGIONS; k++)); do
    if [[ -n "$DELAY" ]]; then
      [[ $k == "$i" ]] && row+=(0) || row+=("$DELAY")
    else
      read -ra cells <<<"${MATRIX[$((i - 1))]}"
      row+=("${cells[$((k - 1))]}")
    fi
  done
  MROWS+=("$(IFS=,; echo "${row[*]}")")
done
M="$(IFS=';'; echo "${MROWS[*]}")"

# Between regions: loss first (if any), then every packet to the delay process.
if [[ "$LOSS" != 0 ]]; then
  ip netns exec "$CORE" iptables -w 5 -A FORWARD -s 10.90.0.0/16 -d 10.90.0.0/16 \
    -m statistic --mode random --probability "$LOSS" -j DROP
fi
ip netns exec "$CORE" iptables -w 5 -A FORWARD -s 10.90.0.0/16 -d 10.90.0.0/16 -j NFQUEUE --queue-num 0
ip netns exec "$CORE" "$SIM_BIN" delay --matrix "$M" --queue 0 --seconds 7200 2>"$DIR/delay.log" &
DELAY_PID=$!
for _ in $(seq 1 100); do
  grep -q 'ready' "$DIR/delay.log" 2>/dev/null && break
  kill -0 "$DELAY_PID" 2>/dev/null || { echo "the delay process exited:" >&2; cat "$DIR/delay.log" >&2; exit 1; }
  sleep 0.1
done
grep -q 'ready' "$DIR/delay.log" || { echo "the delay process did not start" >&2; exit 1; }
echo "sim: one-way delay matrix (ms) $M, loss $LOSS"

cat >"$DIR/topology.json" <<EOF
{"core":"$CORE","matrix":"$M",
 "regions":[$(IFS=,; echo "${REGION_JSON[*]}")],
 "nodes":[$(IFS=,; echo "${NODE_JSON[*]}")]}
EOF

REPORT="${JSON:-$DIR/report.json}"
RC=0
# In the background, so that a signal to this script runs the cleanup at once (bash defers
# traps until a foreground child exits, but not during `wait`).
ip netns exec "$CLI" env TRACKMESH_BIN="$NODE_BIN" "$SIM_BIN" run \
  --topology "$DIR/topology.json" --duration "$DURATION" --cut-hold "$CUT_HOLD" \
  --video-kbps "$VIDEO_KBPS" --json "$REPORT" "${CHECK[@]}" </dev/null &
wait $! || RC=$?
if ! kill -0 "$DELAY_PID" 2>/dev/null; then
  echo "sim: the delay process died during the run, so the figures are void:" >&2
  tail -n 5 "$DIR/delay.log" >&2
  exit 1
fi
[[ -n "$JSON" || $KEEP == 1 ]] && echo "sim: JSON report: $REPORT"
exit "$RC"
