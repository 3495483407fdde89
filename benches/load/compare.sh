#!/usr/bin/env bash
# Whole-proxy load comparison on loopback: one levee-node app node, then
# levee, nginx and HAProxy in front of it in turn, each driven by wrk.
# Prints requests/s, latency, and the proxy's CPU time per proxied request
# (utime+stime from /proc, so it counts the proxy only, not wrk or the node).
# levee is measured twice in one process: over plain HTTP and over HTTPS on
# its [server.tls] listener (TLS 1.3, a P-256 certificate made for the run;
# wrk keeps its connections, so this is the per-request cost of encryption,
# not of handshakes), and the TLS/plain ratio of CPU per request is printed.
#
# Usage: benches/load/compare.sh [DURATION_SECONDS] [CONNECTIONS] [BODY_BYTES]
# BODY_BYTES: the node's response body size (default 64).
# LEVEE_BASELINE=path/to/another/levee adds a row for that binary in the same
# run (e.g. the build before a change), so before/after is one measurement.
# Every proxy runs one worker, pinned to CPU 0; the node and wrk share CPU 1
# (when the machine has two or more), so the proxies are measured alike.
# Installs wrk, nginx-light and haproxy (benches/load/install.sh) if missing.
# levee-bench covers the plain rows with more scenarios; this script stays
# for the TLS row and LEVEE_BASELINE.
# Traffic goes to 127.0.0.1 only; every process is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-10}
CONNS=${2:-50}
BODY=${3:-64}
# PORT_OFFSET (a multiple of 100) moves every port, so that runs side by
# side do not collide. Each load script's ports end in its own two digits
# (compare.sh 01, 81-84, 91; ab.sh 05, 85, 95; scale.sh 06, 86, 96), so runs
# of different scripts cannot collide whatever their offsets.
P=${PORT_OFFSET:-0}
NODE_PORT=$((19101+P)) LEVEE_PORT=$((18181+P)) ADMIN_PORT=$((18191+P)) NGINX_PORT=$((18182+P)) HAPROXY_PORT=$((18183+P)) TLS_PORT=$((18184+P))
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

bash benches/load/install.sh >/dev/null

cargo build --release --locked -q --bin levee -p levee --bin levee-node -p levee-testkit
if [ "$(nproc)" -ge 2 ]; then PROXY_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); else PROXY_CPU=(); LOAD_CPU=(); fi
"${LOAD_CPU[@]}" target/release/levee-node --listen 127.0.0.1:$NODE_PORT --mode "healthy:$BODY" >/dev/null 2>&1 &
PIDS+=($!)

. benches/load/levee_config.sh
. benches/load/peers_config.sh
. benches/load/wrk_ok.sh
# For a baseline that predates [server.tls].
levee_config "$WORK/levee-plain.toml" $LEVEE_PORT $ADMIN_PORT $NODE_PORT
tls_pair "$WORK"
levee_config "$WORK/levee.toml" $LEVEE_PORT $ADMIN_PORT $NODE_PORT $TLS_PORT

nginx_config "$WORK/nginx.conf" $NGINX_PORT 4096 127.0.0.1:$NODE_PORT
haproxy_config "$WORK/haproxy.cfg" $HAPROXY_PORT 4096 127.0.0.1:$NODE_PORT

wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

printf '%-10s %10s %10s %10s %14s\n' target "req/s" "p50" "p99" "cpu us/req"
run() { # name port [pid [scheme]]
  local name=$1 port=$2 pid=${3:-} scheme=${4:-http} before after out reqs rps p50 p99 cpu="-"
  "${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d1s "$scheme://127.0.0.1:$port/" >/dev/null 2>&1 || true   # warm-up
  [ -n "$pid" ] && before=$(cpu_ticks "$pid")
  out=$("${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$scheme://127.0.0.1:$port/")
  [ -n "$pid" ] && after=$(cpu_ticks "$pid")
  wrk_ok "$name" "$out"
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  if [ -n "$pid" ]; then
    cpu=$(awk -v t=$((after - before)) -v hz="$(getconf CLK_TCK)" -v n="$reqs" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  fi
  printf '%-10s %10s %10s %10s %14s\n' "$name" "$rps" "$p50" "$p99" "$cpu"
  LAST_CPU=$cpu
}

wait_port $NODE_PORT
run direct $NODE_PORT

run_levee() { # name binary config [tls]
  "${PROXY_CPU[@]}" "$2" run --config "$3" >"$WORK/levee.log" 2>&1 &
  LEVEE_PID=$!; PIDS+=($LEVEE_PID)
  wait_port $LEVEE_PORT
  run "$1" $LEVEE_PORT $LEVEE_PID
  if [ -n "${4:-}" ]; then
    local plain=$LAST_CPU
    wait_port $TLS_PORT
    run "$1-tls" $TLS_PORT $LEVEE_PID https
    TLS_RATIO=$(awk -v t="$LAST_CPU" -v p="$plain" 'BEGIN { printf "%.2f", t / p }')
  fi
  kill $LEVEE_PID; wait $LEVEE_PID 2>/dev/null || true
}
if [ -n "${LEVEE_BASELINE:-}" ]; then
  # The same config as the row it is compared with (whose process also
  # serves the TLS row), or the plain one if the baseline predates [server.tls].
  BASE_CONFIG=$WORK/levee.toml
  "$LEVEE_BASELINE" check --config "$BASE_CONFIG" >/dev/null 2>&1 || BASE_CONFIG=$WORK/levee-plain.toml
  run_levee levee-base "$LEVEE_BASELINE" "$BASE_CONFIG"
fi
run_levee levee target/release/levee "$WORK/levee.toml" tls

"${PROXY_CPU[@]}" nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)
wait_port $NGINX_PORT
NGINX_WORKER=$(pgrep -P $NGINX_MASTER | head -1)
run nginx $NGINX_PORT "$NGINX_WORKER"
kill $NGINX_MASTER; wait $NGINX_MASTER 2>/dev/null || true

"${PROXY_CPU[@]}" haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 &
HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)
wait_port $HAPROXY_PORT
run haproxy $HAPROXY_PORT $HAPROXY_PID
echo "levee CPU per request, TLS / plain: $TLS_RATIO"
echo "($DURATION s per target, $CONNS connections, wrk -t1, $BODY-byte responses, one run on this machine)"
