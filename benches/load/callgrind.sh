#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind, for one
# or more levee binaries in turn: the figure that moves when the code does,
# where wall-clock CPU per request on a shared machine moves by ±10 % from
# run to run. Kernel work (about three quarters of a request's CPU) is not
# counted: see syscalls.sh for that share.
#
# Usage: benches/load/callgrind.sh [SECONDS] [CONNECTIONS] BINARY...
# For each binary: levee under valgrind --tool=callgrind (instrumentation
# off while it starts and during a 2 s warm-up), one node, wrk -t1 at
# CONNECTIONS for SECONDS with instrumentation on; then the instructions
# counted over the requests wrk completed, and the functions that cost the
# most (self) per request. BODY (default 64) sets the node's body bytes;
# TOP (default 15) how many functions are listed; KEEP=dir keeps the
# callgrind.out files there for callgrind_annotate.
# Installs valgrind (and wrk) if missing. Traffic goes to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-8}
CONNS=${2:-64}
shift 2 || { echo "usage: $0 SECONDS CONNECTIONS BINARY..." >&2; exit 2; }
[ $# -ge 1 ] || { echo "usage: $0 SECONDS CONNECTIONS BINARY..." >&2; exit 2; }
BODY=${BODY:-64}
TOP=${TOP:-15}
# PORT_OFFSET: see compare.sh. This script's ports end in 61, 62 and 71.
P=${PORT_OFFSET:-0}
NODE_PORT=$((19171+P)) LEVEE_PORT=$((18161+P)) ADMIN_PORT=$((18162+P))
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

bash benches/load/install.sh >/dev/null
if ! command -v valgrind >/dev/null || ! command -v callgrind_annotate >/dev/null; then
  SUDO=
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends valgrind >/dev/null
fi
cargo build --release --locked -q --bin levee-node -p levee-testkit

if [ "$(nproc)" -ge 2 ]; then PROXY_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); else PROXY_CPU=(); LOAD_CPU=(); fi
"${LOAD_CPU[@]}" target/release/levee-node --listen 127.0.0.1:$NODE_PORT --mode "healthy:$BODY" >/dev/null 2>&1 &
PIDS+=($!)
. benches/load/levee_config.sh
levee_config "$WORK/levee.toml" $LEVEE_PORT $ADMIN_PORT $NODE_PORT

i=0
for bin in "$@"; do
  i=$((i + 1))
  bin=$(readlink -f "$bin")
  out="$WORK/callgrind.out.$i"
  "${PROXY_CPU[@]}" valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
    "$bin" run --config "$WORK/levee.toml" >"$WORK/levee.$i.log" 2>&1 &
  vpid=$!
  PIDS+=($vpid)
  for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/$LEVEE_PORT) 2>/dev/null && break; sleep 0.1; done
  "${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$LEVEE_PORT/" >/dev/null 2>&1 || true
  callgrind_control -i on $vpid >/dev/null
  run=$("${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$LEVEE_PORT/")
  callgrind_control -i off $vpid >/dev/null
  kill -INT $vpid
  for _ in $(seq 1 100); do kill -0 $vpid 2>/dev/null || break; sleep 0.1; done
  kill $vpid 2>/dev/null || true
  wait $vpid 2>/dev/null || true
  if [[ $run != *"requests in"* || $run == *Non-2xx* ]]; then
    echo "$bin: wrk failed or got errors:" >&2
    echo "$run" >&2
    exit 1
  fi
  reqs=$(awk '/requests in/ {print $1}' <<<"$run")
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(",", "", $1); print $1; seen = 1}')
  echo "== $bin"
  awk -v t="$total" -v n="$reqs" 'BEGIN { printf "%d requests, %.0f instructions per request\n", n, t / n }'
  # Self cost by function, its inlined parts (listed by file) summed.
  callgrind_annotate --auto=no --inclusive=no --threshold=100 "$out" 2>/dev/null |
    awk -v n="$reqs" '
      /file:function/ { on = 1; next }
      on && /^ *[0-9,]+ \(/ {
        ir = $1; gsub(",", "", ir)
        fn = $0; sub(/^[^)]*\)  */, "", fn); sub(/ \[.*$/, "", fn); sub(/^[^:]*:/, "", fn)
        cost[fn] += ir
      }
      END { for (fn in cost) printf "%8.0f  %s\n", cost[fn] / n, substr(fn, 1, 110) }' |
    sort -rn | awk -v top="$TOP" 'NR <= top'
  if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/"; fi
done
