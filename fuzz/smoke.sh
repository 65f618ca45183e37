#!/usr/bin/env bash
# Runs every fuzz target for a bounded time from the committed seed corpus (CI runs this).
#   FUZZ_SECONDS=600 bash fuzz/smoke.sh            # longer
#   bash fuzz/smoke.sh harmony_stream              # one target
#   FUZZ_BUILD=dev FUZZ_SECONDS=15 bash fuzz/smoke.sh   # what CI runs
set -euo pipefail
cd "$(dirname "$0")"
# cargo-fuzz, pinned, installed once into the test cache (outside the checkout, keyed by
# version) unless one is on PATH already.
CARGO_FUZZ_VERSION=0.13.2
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  root=${HARMONY_PROXY_TEST_CACHE:-$HOME/.cache/harmony-proxy}/cargo-fuzz-$CARGO_FUZZ_VERSION
  [ -x "$root/bin/cargo-fuzz" ] || cargo install --quiet --locked --root "$root" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
  export PATH="$root/bin:$PATH"
fi
# The instrumented build (a release build of the whole proxy) is kept outside the checkout
# too, so a fresh clone rebuilds only what changed.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${HARMONY_PROXY_TEST_CACHE:-$HOME/.cache/harmony-proxy}/fuzz-target}
# Lets the stable toolchain pass the -Z flags cargo-fuzz uses.
export RUSTC_BOOTSTRAP=1
secs=${FUZZ_SECONDS:-60}
# FUZZ_BUILD=dev (what CI's short smoke run uses): an unoptimized build, with debug assertions
# and overflow checks, that compiles in a fraction of the release build's time on a new
# machine and runs fewer inputs a second; release (the default) for long runs.
build=()
[ "${FUZZ_BUILD:-release}" = dev ] && build=(--dev)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(harmony_stream sse_decode config request responses_request messages_request)
for t in "${targets[@]}"; do
  work=$(mktemp -d)
  cp corpus/"$t"/seed-* "$work"/
  echo "fuzz: $t for ${secs}s"
  if cargo fuzz run ${build[@]+"${build[@]}"} --sanitizer none "$t" "$work" -- -max_total_time="$secs" -max_len=16384 -rss_limit_mb=4096 -print_final_stats=1 > "$work.log" 2>&1; then
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units)" "$work.log" || tail -n 3 "$work.log"
  else
    tail -n 60 "$work.log"
    echo "fuzz: $t FOUND A FAILURE (the input is in fuzz/artifacts/$t; make it a named regression test)"
    exit 1
  fi
  rm -rf "$work" "$work.log"
done
echo "fuzz: all targets clean"
