#!/usr/bin/env bash
# Runs the `route` fuzz target (request::parse, route, then the routing invariant of
# tests/support/route_invariant.rs) for a bounded time: one process, one job.
#
#   fuzz/run.sh [seconds]      default 600
#
# Needs cargo-fuzz and a nightly toolchain (`cargo +nightly fuzz`). The seeds are
# fuzz/corpus/route/seed-*; what libFuzzer adds next to them is not committed (.gitignore).
# Exits non-zero when the target crashes; the input is then in fuzz/artifacts/route/.
# SANITIZER=none skips AddressSanitizer (faster; the route code is safe Rust).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"
case "$secs" in
  '' | *[!0-9]*) echo "usage: $0 [seconds]" >&2; exit 2 ;;
esac
mkdir -p corpus/route artifacts/route
cargo +nightly fuzz run --debug-assertions --sanitizer "${SANITIZER:-address}" route corpus/route -- \
  -max_total_time="$secs" \
  -dict=route.dict \
  -max_len=4096 \
  -timeout=10 \
  -rss_limit_mb=2048 \
  -print_final_stats=1
echo "fuzz/run.sh: route ran ${secs}s without a crash"
