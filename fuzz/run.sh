#!/usr/bin/env bash
# Runs every cargo-fuzz target of trackmesh (node/fuzz and relay-proto/fuzz), one at a time,
# and prints per target: executions, exec/s and crashes.
#
#   fuzz/run.sh                          # 10^7 executions per target (FUZZ_RUNS)
#   FUZZ_RUNS=100000 fuzz/run.sh         # executions per target
#   FUZZ_SECONDS=5 fuzz/run.sh           # seconds per target instead (CI)
#   FUZZ_PROFILE=dev fuzz/run.sh         # unoptimised build (CI: quicker to build)
#   FUZZ_CORPUS_SAMPLE=40 fuzz/run.sh    # start from at most 40 of each kept corpus (CI)
#   FUZZ_RUNS=10000000 FUZZ_SECONDS=900 fuzz/run.sh   # whichever limit comes first
#   fuzz/run.sh node/demux relay-proto/handshake   # only the named targets
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only sanitizer
# flags. Installs cargo-fuzz if it is missing. Each target starts from the corpus kept in the
# repository (<crate>/fuzz/corpus/<target>, read only) and writes what it finds to
# target/fuzz-corpus/, emptied at the start of each run (so a CI run loads only the kept corpus);
# fold that back with `cargo fuzz cmin` after a long run (see SECURITY.md). Logs go to
# target/fuzz-logs/. Exits non-zero if any target crashes; the input is saved under
# <crate>/fuzz/artifacts/<target>/.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
crates=(node relay-proto)
export RUSTC_BOOTSTRAP=1

limit=()
what=()
if [ -n "${FUZZ_RUNS:-}" ] || [ -z "${FUZZ_SECONDS:-}" ]; then
    limit+=(-runs="${FUZZ_RUNS:-10000000}")
    what+=("${FUZZ_RUNS:-10000000} executions")
fi
if [ -n "${FUZZ_SECONDS:-}" ]; then
    limit+=(-max_total_time="$FUZZ_SECONDS")
    what+=("$FUZZ_SECONDS s")
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

# Both fuzz crates build into one target dir, so what they share is built once. FUZZ_PROFILE=dev
# builds without optimisation: minutes less to build, fewer executions a second; the right trade
# for CI's few seconds a target, not for long runs.
build=(--target-dir "$root/target/fuzz")
case "${FUZZ_PROFILE:-release}" in
    release) ;;
    # cargo-fuzz turns debug assertions (and so overflow checks) on in both builds; like its
    # optimised build, line tables only, enough for a crash's trace.
    dev)
        build+=(--dev)
        export CARGO_PROFILE_DEV_DEBUG=line-tables-only
        ;;
    *) echo "fuzz/run.sh: FUZZ_PROFILE is release or dev, not ${FUZZ_PROFILE}" >&2; exit 2 ;;
esac

logs="$root/target/fuzz-logs"
scratch="$root/target/fuzz-corpus"
mkdir -p "$logs"

# crate/target pairs: the arguments, or every target of every crate.
selected=()
for crate in "${crates[@]}"; do
    for target in $(cd "$root/$crate" && cargo fuzz list); do
        if [ "$#" -eq 0 ] || printf '%s\n' "$@" | grep -qx "$crate/$target"; then
            selected+=("$crate/$target")
        fi
    done
done
if [ "$#" -gt 0 ] && [ "${#selected[@]}" -ne "$#" ]; then
    echo "fuzz/run.sh: unknown target among: $* (known: crate/target, e.g. node/demux)" >&2
    exit 2
fi

for crate in "${crates[@]}"; do
    if printf '%s\n' "${selected[@]}" | grep -q "^$crate/"; then
        # cargo-fuzz has no --locked: a fuzz crate's lock file that lags the workspace's would
        # be re-resolved here, against the network, to whatever is newest. Refuse instead.
        if ! (cd "$root/$crate/fuzz" && cargo tree --locked -q >/dev/null); then
            echo "fuzz/run.sh: $crate/fuzz/Cargo.lock is out of date: run \`cargo tree\` in $crate/fuzz and commit it" >&2
            exit 2
        fi
        start=$SECONDS
        (cd "$root/$crate" && cargo fuzz build "${build[@]}")
        echo "fuzz/run.sh: built $crate/fuzz in $((SECONDS - start)) s" >&2
    fi
done

# libFuzzer's final stats line: "stat::<name>: <value>".
stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -1; }

results=()
failed=()
for sel in "${selected[@]}"; do
    crate="${sel%%/*}"
    target="${sel#*/}"
    log="$logs/${crate}-${target}.log"
    rm -rf "${scratch:?}/$crate/$target"
    mkdir -p "$scratch/$crate/$target" "$root/$crate/fuzz/corpus/$target"
    echo "fuzz/run.sh: fuzzing $sel for ${what[*]} (log: $log)" >&2
    start=$SECONDS
    status=0
    # FUZZ_CORPUS_SAMPLE=N: start from every k-th of the kept inputs, at most N, not all of
    # them. An unoptimised build replays some corpora at 2-4 inputs/s, which took 92-170 s a
    # target in CI for a 5 s smoke run; long runs load the whole corpus.
    corpus=("fuzz/corpus/$target")
    kept="$root/$crate/fuzz/corpus/$target"
    n=$(find "$kept" -maxdepth 1 -type f | wc -l)
    if [ -n "${FUZZ_CORPUS_SAMPLE:-}" ] && [ "$n" -gt "$FUZZ_CORPUS_SAMPLE" ]; then
        every=$(( (n + FUZZ_CORPUS_SAMPLE - 1) / FUZZ_CORPUS_SAMPLE ))
        find "$kept" -maxdepth 1 -type f | sort | awk -v k="$every" 'NR % k == 1' \
            | while read -r f; do cp "$f" "$scratch/$crate/$target/"; done
        corpus=()
        echo "fuzz/run.sh: $sel starts from $(find "$scratch/$crate/$target" -type f | wc -l) of its $n kept inputs" >&2
    fi
    (cd "$root/$crate" && cargo fuzz run "${build[@]}" "$target" "$scratch/$crate/$target" "${corpus[@]}" \
        -- "${limit[@]}" -timeout=10 -print_final_stats=1) >"$log" 2>&1 || status=$?
    crashes=$(grep -c "Test unit written to" "$log" || true)
    if [ "$status" -ne 0 ]; then
        failed+=("$sel")
        [ "$crashes" -eq 0 ] && crashes="?"   # failed without an input (build error, ...)
        tail -40 "$log" >&2
    fi
    results+=("$(printf '%-28s %14s %10s %8s %8s' "$sel" "$(stat number_of_executed_units "$log")" \
        "$(stat average_exec_per_sec "$log")" "$((SECONDS - start))" "$crashes")")
done

printf '\n%-28s %14s %10s %8s %8s\n' target executions exec/s seconds crashes
printf '%s\n' "${results[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz/run.sh: failures in: ${failed[*]} (inputs in <crate>/fuzz/artifacts/<target>/)" >&2
    exit 1
fi
