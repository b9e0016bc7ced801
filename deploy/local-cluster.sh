#!/usr/bin/env bash
# Start a 3-node, 2-region trackmesh cluster on 127.0.0.1 for trying it out by hand:
#   node a (region eu): http :7700  media :7701  gossip :7702  relay :7703
#   node b (region eu): http :7710  media :7711  gossip :7712  relay :7713
#   node c (region us): http :7720  media :7721  gossip :7722  relay :7723
# One app (demo / demo-secret), one cluster secret, one admin token. Publish on one node's demo
# page and pull on another's. Ctrl-C (or any exit) stops every node.
#
#   deploy/local-cluster.sh            run until Ctrl-C
#   deploy/local-cluster.sh --check    start, wait until every node sees all three live, stop, exit 0
#
# Environment: TRACKMESH_BIN (node binary; default: target/debug/trackmesh, built with cargo if
# missing), TRACKMESH_PORT_BASE (default 7700; node i uses BASE+10*i .. BASE+10*i+3, and from
# BASE+10*i+4 one media port per engine worker after the first), TRACKMESH_WORKERS (engine
# workers per node, 1 to 7; default 2),
# LOCAL_CLUSTER_DIR (logs; default a temporary directory), RUST_LOG (default info).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CHECK=0
case "${1:-}" in
  --check) CHECK=1 ;;
  -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
  "") ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

BASE="${TRACKMESH_PORT_BASE:-7700}"
APP_ID="demo"
APP_SECRET="demo-secret"
CLUSTER_SECRET="local-cluster-secret"
ADMIN_TOKEN="local-admin-token"
HOST="127.0.0.1"
NAMES=(a b c)
REGIONS=(eu eu us)
CONVERGE_TIMEOUT=30 # seconds

BIN="${TRACKMESH_BIN:-$ROOT/target/debug/trackmesh}"
if [[ ! -x "$BIN" ]]; then
  echo "building the node (cargo build -p trackmesh-node) ..." >&2
  (cd "$ROOT" && cargo build -p trackmesh-node --bin trackmesh) >&2
fi
if [[ ! -x "$BIN" ]]; then
  echo "node binary $BIN not found" >&2
  exit 1
fi

if [[ -n "${LOCAL_CLUSTER_DIR:-}" ]]; then
  LOG_DIR="$LOCAL_CLUSTER_DIR"
  TEMP_LOGS=0
else
  LOG_DIR="$(mktemp -d -t trackmesh-local-cluster.XXXXXX)"
  TEMP_LOGS=1
fi
mkdir -p "$LOG_DIR"

PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  # Give them a moment to exit cleanly, then make sure.
  for _ in $(seq 1 20); do
    local alive=0
    for pid in "${PIDS[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [[ $alive == 0 ]] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port() { echo $((BASE + 10 * $1 + $2)); } # node index, 0 http / 1 media / 2 gossip / 3 relay / 4.. workers' media

for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"
  args=(
    --node-id "$name"
    --region "${REGIONS[$i]}"
    --http "$HOST:$(port "$i" 0)"
    --media "$HOST:$(port "$i" 1)"
    --workers "${TRACKMESH_WORKERS:-2}"
    --worker-ports "$(port "$i" 4)"
    --gossip "$HOST:$(port "$i" 2)"
    --relay "$HOST:$(port "$i" 3)"
    --app "$APP_ID:$APP_SECRET"
    --cluster-secret "$CLUSTER_SECRET"
    --admin-token "$ADMIN_TOKEN"
  )
  # Everyone seeds everyone else, so any node may start first or be restarted alone.
  for j in "${!NAMES[@]}"; do
    [[ $j == "$i" ]] || args+=(--seed "$HOST:$(port "$j" 2)")
  done
  RUST_LOG="${RUST_LOG:-info}" "$BIN" "${args[@]}" >"$LOG_DIR/$name.out" 2>"$LOG_DIR/$name.log" </dev/null &
  PIDS+=($!)
done

# Wait for each node's ready line.
for i in "${!NAMES[@]}"; do
  name="${NAMES[$i]}"
  for _ in $(seq 1 200); do
    grep -q '^trackmesh ready ' "$LOG_DIR/$name.out" 2>/dev/null && break
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "node $name exited; its log ($LOG_DIR/$name.log):" >&2
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      exit 1
    fi
    sleep 0.1
  done
  if ! grep -q '^trackmesh ready ' "$LOG_DIR/$name.out"; then
    echo "node $name printed no ready line within 20 s; log: $LOG_DIR/$name.log" >&2
    exit 1
  fi
  echo "node $name: $(grep -m1 '^trackmesh ready ' "$LOG_DIR/$name.out")"
done

# Does node i list node j as live in /admin/cluster? (No jq needed: members are flat objects.)
sees_live() {
  local name="${NAMES[$2]}"
  curl -fsS --max-time 2 --noproxy '*' -H "Authorization: Bearer $ADMIN_TOKEN" \
    "http://$HOST:$(port "$1" 0)/admin/cluster" 2>/dev/null | tr -d ' \n' |
    grep -Eq "\{[^{}]*\"nodeId\":\"$name\"[^{}]*\"live\":true|\{[^{}]*\"live\":true[^{}]*\"nodeId\":\"$name\""
}

converged=0
start=$(date +%s)
for _ in $(seq 1 $((CONVERGE_TIMEOUT * 5))); do
  all=1
  for i in "${!NAMES[@]}"; do
    for j in "${!NAMES[@]}"; do
      if [[ $j != "$i" ]] && ! sees_live "$i" "$j"; then
        all=0
        break 2
      fi
    done
  done
  if [[ $all == 1 ]]; then converged=1; break; fi
  sleep 0.2
done
if [[ $converged != 1 ]]; then
  echo "the cluster did not converge within ${CONVERGE_TIMEOUT} s; logs in $LOG_DIR" >&2
  for i in "${!NAMES[@]}"; do
    echo "--- /admin/cluster on ${NAMES[$i]}:" >&2
    curl -sS --max-time 2 --noproxy '*' -H "Authorization: Bearer $ADMIN_TOKEN" \
      "http://$HOST:$(port "$i" 0)/admin/cluster" >&2 || true
    echo >&2
  done
  exit 1
fi
echo "all ${#NAMES[@]} nodes live everywhere after $(($(date +%s) - start)) s"

if [[ $CHECK == 1 ]]; then
  echo "check passed; stopping the cluster"
  stop_all
  [[ $TEMP_LOGS == 1 ]] && rm -rf "$LOG_DIR"
  exit 0
fi

cat <<EOF

trackmesh local cluster is running (logs: $LOG_DIR)

  demo pages (app id: $APP_ID, app secret: $APP_SECRET):
    node a (eu)  http://$HOST:$(port 0 0)/
    node b (eu)  http://$HOST:$(port 1 0)/
    node c (us)  http://$HOST:$(port 2 0)/
  API base:      http://$HOST:$(port 0 0)/v1/apps/$APP_ID   (any node answers any session)
  admin:         curl -H 'Authorization: Bearer $ADMIN_TOKEN' http://$HOST:$(port 0 0)/admin/cluster
                 curl -H 'Authorization: Bearer $ADMIN_TOKEN' http://$HOST:$(port 0 0)/admin/relay

  Publish on one page, copy the session id and track names, pull them on another node's page.
  Stop with Ctrl-C (all three nodes are stopped).
EOF

# Wait until interrupted, or until a node dies.
while :; do
  for i in "${!NAMES[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      echo "node ${NAMES[$i]} exited; its log tail ($LOG_DIR/${NAMES[$i]}.log):" >&2
      tail -n 30 "$LOG_DIR/${NAMES[$i]}.log" >&2 || true
      exit 1
    fi
  done
  sleep 1
done
