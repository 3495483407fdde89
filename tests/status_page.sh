#!/usr/bin/env bash
# The admin status page in a real browser: starts levee in front of three
# levee-node app nodes, one answering 500 to everything, sends traffic until
# that node's breakers open, loads http://ADMIN/ in headless Chromium, and
# checks the rendered DOM (after the page's refreshes from /status) shows
# that node as ejected with its breakers open and why. Saves a screenshot
# and prints its path.
#
#   bash tests/status_page.sh            (CI runs it from .ci/run)
#
# Installs Debian's chromium when missing (as root: CI's case). The
# screenshot goes to $LEVEE_SCREENSHOT_DIR (default target/status-page/),
# outside git.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR=never

browser() {
  command -v chromium || command -v chromium-browser || true
}
if [ -z "$(browser)" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "tests/status_page.sh: needs chromium; install it or run as root" >&2
    exit 1
  fi
  echo "-- installing chromium (Debian)"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
CHROMIUM="$(browser)"

echo "-- cargo build (debug levee, levee-node)"
cargo build --locked -q -p levee -p levee-testkit --bin levee --bin levee-node
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
OUT="${LEVEE_SCREENSHOT_DIR:-$TARGET_DIR/status-page}"
mkdir -p "$OUT"

exec python3 tests/status_page_driver.py \
  --levee "$TARGET_DIR/debug/levee" \
  --node "$TARGET_DIR/debug/levee-node" \
  --chromium "$CHROMIUM" \
  --screenshot "$OUT/status-page.png"
