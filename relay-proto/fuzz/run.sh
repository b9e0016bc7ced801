#!/usr/bin/env bash
# Runs every cargo-fuzz target of trackmesh-relay-proto for a bounded time.
#
#   FUZZ_SECONDS=20 relay-proto/fuzz/run.sh      # seconds per target (default 20)
#   relay-proto/fuzz/run.sh frame_decoder        # only the named targets
#
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its nightly-only
# sanitizer flags. Installs cargo-fuzz if it is missing (about 80 s on 2 cores).
# Exits non-zero if any target finds a crash (its input is saved under fuzz/artifacts/<target>/).
set -euo pipefail

cd "$(dirname "$0")/.."   # cargo fuzz runs from the crate that has fuzz/
seconds="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

start=$SECONDS
cargo fuzz build
echo "run.sh: built ${#targets[@]} targets in $((SECONDS - start)) s" >&2

failed=()
for target in "${targets[@]}"; do
    echo "run.sh: fuzzing $target for $seconds s" >&2
    mkdir -p "fuzz/corpus/$target"
    if ! cargo fuzz run "$target" -- -max_total_time="$seconds" -timeout=10 -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "run.sh: crashes in: ${failed[*]} (inputs in relay-proto/fuzz/artifacts/)" >&2
    exit 1
fi
echo "run.sh: ${#targets[@]} targets fuzzed ${seconds} s each, no crash" >&2
