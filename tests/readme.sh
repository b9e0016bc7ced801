#!/usr/bin/env bash
# Runs the shell commands README.md marks for checking against a fresh node, and fails when one
# breaks. Called by tests/all.sh after the build step; runs alone too (after
# `cargo build --workspace --bins`).
#
# What is run:
#   <!-- readme-check: node -->  followed by a ```sh block of one command: the node. It is started
#                                in the background with --http 127.0.0.1:0 (the port read from its
#                                ready line), a free loopback gossip port, --relay 127.0.0.1:0,
#                                --media 127.0.0.1:0 and a temporary --state-dir appended.
#   <!-- readme-check -->        followed by a ```sh block: every line that is not blank or a
#                                comment is a command, run in order in one bash with `set -e
#                                -o pipefail` (so `export` carries to later lines). A command
#                                followed by a `# -> TEXT` line must print exactly TEXT.
# In every command `127.0.0.1:7700` becomes the node's address, and `cargo` is a shell function:
# `cargo build --release --bin X` checks the already built X, `cargo run --release --bin X -- ARGS`
# runs it (target/release is the debug build directory: a release build takes many minutes).
# Fails when there is no node block, no command, or when any command fails or prints something
# else than its `# ->` line says. Everything is bounded in time (README_CHECK_TIMEOUT, 120 s).
#
# Environment: README (default README.md), TRACKMESH_BIN_DIR (default target/debug).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
README="${README:-$ROOT/README.md}"
BIN_DIR="${TRACKMESH_BIN_DIR:-$ROOT/target/debug}"
CHECK_TIMEOUT="${README_CHECK_TIMEOUT:-120}"
READY_TIMEOUT=30 # seconds

fail() { echo "readme.sh: $*" >&2; exit 1; }
[[ -f "$README" ]] || fail "no $README"
for bin in trackmesh trackmeshctl; do
  [[ -x "$BIN_DIR/$bin" ]] || fail "$BIN_DIR/$bin not built (cargo build --workspace --bins)"
done

WORK="$(mktemp -d -t trackmesh-readme.XXXXXX)"
NODE_PID=""
cleanup() {
  if [[ -n "$NODE_PID" ]]; then
    kill -KILL "$NODE_PID" 2>/dev/null || true
    wait "$NODE_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Extract the marked blocks: node.txt gets the node block's lines, checks.txt the check blocks'.
mode="" in_block=0
: >"$WORK/node.txt"
: >"$WORK/checks.txt"
node_blocks=0
while IFS= read -r line || [[ -n "$line" ]]; do
  if ((in_block)); then
    if [[ "$line" == '```'* ]]; then
      in_block=0 mode=""
    else
      echo "$line" >>"$WORK/$mode.txt"
    fi
    continue
  fi
  case "$line" in
    '<!-- readme-check: node -->') mode=node; node_blocks=$((node_blocks + 1)) ;;
    '<!-- readme-check -->') mode=checks ;;
    '```sh')
      if [[ -n "$mode" ]]; then in_block=1; fi
      ;;
    '') ;;
    *) mode="" ;; # a marker applies to the block right below it only
  esac
done <"$README"
((in_block == 0)) || fail "a marked block in $README is not closed"

commands() { grep -Ev '^[[:space:]]*(#|$)' "$1" || true; }
[[ $node_blocks == 1 ]] || fail "expected one <!-- readme-check: node --> block, found $node_blocks"
node_cmd="$(commands "$WORK/node.txt")"
[[ $(printf '%s\n' "$node_cmd" | grep -c .) == 1 ]] ||
  fail "the node block must hold one command, it holds: $node_cmd"
n_checks=$(commands "$WORK/checks.txt" | grep -c . || true)
((n_checks > 0)) || fail "no <!-- readme-check --> commands found in $README"

# The commands run in $WORK/repo, where target/release is the built binaries' directory.
mkdir -p "$WORK/repo/target" "$WORK/state"
ln -s "$BIN_DIR" "$WORK/repo/target/release"
cat >"$WORK/prelude.sh" <<'EOF'
cargo() {
  case "$1 $2 $3" in
    "build --release --bin") [[ -x "target/release/$4" ]] || { echo "cargo shim: no $4" >&2; return 1; } ;;
    "run --release --bin")
      local bin="$4"; shift 4
      [[ "${1:-}" == "--" ]] && shift
      # The node's subshell becomes the node, so the PID this script kills is the node's own
      # (a child of the subshell outlived the SIGKILL and kept running after every run).
      if [[ -n "${README_NODE:-}" ]]; then exec "target/release/$bin" "$@"; fi
      "target/release/$bin" "$@" ;;
    *) echo "cargo shim: cannot run: cargo $*" >&2; return 1 ;;
  esac
}
EOF

# Start the node (a few gossip ports are tried: one may be taken between choosing and binding).
http=""
for attempt in 1 2 3; do
  gossip_port=$((20000 + RANDOM % 30000))
  (
    cd "$WORK/repo"
    source "$WORK/prelude.sh"
    README_NODE=1
    eval "$node_cmd --http 127.0.0.1:0 --media 127.0.0.1:0 --relay 127.0.0.1:0 \
      --gossip 127.0.0.1:$gossip_port --state-dir '$WORK/state'"
  ) >"$WORK/node.out" 2>"$WORK/node.log" </dev/null &
  NODE_PID=$!
  for _ in $(seq 1 $((READY_TIMEOUT * 10))); do
    http="$(sed -n 's/^trackmesh ready http=\([^ ]*\).*/\1/p' "$WORK/node.out")"
    [[ -n "$http" ]] && break
    kill -0 "$NODE_PID" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n "$http" ]] && break
  kill -KILL "$NODE_PID" 2>/dev/null || true
  wait "$NODE_PID" 2>/dev/null || true
  NODE_PID=""
  echo "readme.sh: the node did not start (attempt $attempt); its log:" >&2
  tail -n 5 "$WORK/node.log" >&2 || true
done
[[ -n "$http" ]] || fail "the README's node command never became ready: $node_cmd"
echo "readme.sh: node ($node_cmd) ready on $http"

# One script: every command echoed, then run; `# ->` lines compare the previous command's output.
{
  echo 'set -euo pipefail'
  echo "source '$WORK/prelude.sh'"
  pending=""
  flush() {
    if [[ -n "$pending" ]]; then
      printf 'echo %q\n' "\$ $pending"
      printf '%s\n' "$pending"
      pending=""
    fi
  }
  while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line//127.0.0.1:7700/$http}"
    if [[ "$line" =~ ^#\ -\>\ (.*)$ ]]; then
      [[ -n "$pending" ]] || { echo "echo 'readme.sh: a # -> line follows no command' >&2; exit 1"; continue; }
      want="${BASH_REMATCH[1]}"
      printf 'echo %q\n' "\$ $pending"
      printf 'out="$(%s)"\n' "$pending"
      printf 'printf "%%s\\n" "$out"\n'
      printf 'if [[ "$out" != %q ]]; then echo %q >&2; exit 1; fi\n' "$want" "readme.sh: expected: $want"
      pending=""
    elif [[ "$line" =~ ^[[:space:]]*(#|$) ]]; then
      :
    else
      flush
      pending="$line"
    fi
  done <"$WORK/checks.txt"
  flush
} >"$WORK/checks.sh"

echo "readme.sh: running $n_checks commands from $README"
if ! (cd "$WORK/repo" && timeout "$CHECK_TIMEOUT" bash "$WORK/checks.sh") </dev/null; then
  echo "readme.sh: a README command failed (the last one shown above); node log tail:" >&2
  tail -n 20 "$WORK/node.log" >&2 || true
  exit 1
fi
kill -0 "$NODE_PID" 2>/dev/null || fail "the node exited during the checks"
echo "readme.sh: $n_checks passed, 0 failed"
