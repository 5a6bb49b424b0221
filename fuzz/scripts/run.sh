#!/usr/bin/env bash
# Builds the fuzz targets on stable Rust (libFuzzer with sanitizer coverage, overflow checks and
# debug assertions on, no sanitizer) and runs each for a while; cargo-fuzz on nightly does the
# same with `cargo +nightly fuzz run TARGET`. Seeds the corpora first (scripts/seed-corpus.sh).
# A crash is written to fuzz/artifacts/TARGET/ and fails the script.
#
#   fuzz/scripts/run.sh                          # every target, 60 s each
#   SECONDS_EACH=300 fuzz/scripts/run.sh policy_parse agent_config
set -euo pipefail
cd "$(dirname "$0")/.."
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(policy_parse controller_config agent_config cgminer_parse)
seconds="${SECONDS_EACH:-60}"
triple=x86_64-unknown-linux-gnu

# --target keeps the instrumentation flags off build scripts and proc macros.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
export CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true
unset CARGO_TARGET_DIR
cargo build --release --locked --target "$triple" $(printf -- '--bin %s ' "${targets[@]}")

scripts/seed-corpus.sh
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "fuzz: $t for ${seconds}s"
  "target/$triple/release/$t" "corpus/$t" -max_total_time="$seconds" -max_len=65536 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 | tail -25
done
