#!/usr/bin/env bash
# Runs each fuzz target briefly: ./smoke.sh [seconds per target, default 20].
# Skips (exit 0) when `cargo +nightly fuzz` is not available.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz smoke: skipped (needs a nightly toolchain and cargo-fuzz:" \
    "rustup toolchain install nightly && cargo install cargo-fuzz --locked)"
  exit 0
fi

mkdir -p corpus/config corpus/headers corpus/gate_head corpus/gate_chunked corpus/client_chunked corpus/node_response
cp ../config/*.toml corpus/config/ 2>/dev/null || true

status=0
for target in config headers gate_head gate_chunked client_chunked node_response; do
  extra=()
  case "$target" in
    config) extra=(-dict=dict/config.dict) ;;
    gate_* | client_chunked | node_response) extra=(-dict=dict/http.dict) ;;
  esac
  echo "== fuzz $target for ${secs}s"
  if ! cargo +nightly fuzz run "$target" "corpus/$target" -- \
    -max_total_time="$secs" "${extra[@]}"; then
    echo "fuzz $target: FAILED (input saved under fuzz/artifacts/$target/)"
    status=1
  fi
done
exit "$status"
