#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz_targets/ for SECONDS each (default 20).
# Exits non-zero if any target crashes (the crashing input lands in artifacts/).
#
# Stable Rust is enough: RUSTC_BOOTSTRAP=1 unlocks the -Z flags cargo-fuzz uses.
# FUZZ_SANITIZER=none skips AddressSanitizer (faster, still catches panics);
# FUZZ_TARGET_DIR overrides where the instrumented build goes.
set -euo pipefail

secs="${1:-20}"
here="$(cd "$(dirname "$0")" && pwd)"
sanitizer="${FUZZ_SANITIZER:-address}"
target_dir="${FUZZ_TARGET_DIR:-$here/target}"
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cd "$here"
failed=()
ran=0
for src in fuzz_targets/*.rs; do
    ran=$((ran + 1))
    name="$(basename "$src" .rs)"
    mkdir -p "corpus/$name"
    # Checked-in seeds are read-only inputs; new finds go to corpus/ (ignored).
    seeds=()
    if [[ -d "seeds/$name" ]]; then seeds=("seeds/$name"); fi
    echo "== fuzzing $name for ${secs}s (sanitizer: $sanitizer)"
    if ! cargo fuzz run --sanitizer "$sanitizer" --target-dir "$target_dir" "$name" "corpus/$name" "${seeds[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$name")
    fi
done

echo "fuzz: $((ran - ${#failed[@]})) passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
    echo "fuzz targets crashed: ${failed[*]}" >&2
    exit 1
fi
