#!/usr/bin/env bash
# Alternating A/B of two levee builds on the same node and config: ROUNDS
# rounds of (A, B), each SECONDS of wrk at CONNECTIONS, printing each run's
# CPU per request (utime + stime from /proc, split user/system). On a noisy
# machine single runs move by ±20%; compare medians over the rounds.
#
# Usage: benches/load/ab.sh LEVEE_A LEVEE_B [ROUNDS] [SECONDS] [CONNECTIONS] [BODY_BYTES]
# BODY_BYTES: the node's response body size (default 64).
# B_ACCESS_LOG=1 runs B with the access log on (to a file), A with it off:
# give the same binary twice to measure the log's cost.
# The proxy runs one worker pinned to CPU 0; the node and wrk share CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=$1 B=$2 ROUNDS=${3:-6} DUR=${4:-5} CONNS=${5:-64} BODY=${6:-64}
# PORT_OFFSET (a multiple of 100) moves every port, so that runs side by
# side do not collide. Each load script's ports end in its own two digits
# (compare.sh 01, 81-84, 91; ab.sh 05, 85, 95; scale.sh 06, 86, 96), so runs
# of different scripts cannot collide whatever their offsets.
P=${PORT_OFFSET:-0}
NODE_PORT=$((19305+P)) LEVEE_PORT=$((18385+P)) ADMIN_PORT=$((18395+P))
bash benches/load/install.sh >/dev/null
cargo build --release --locked -q -p levee-testkit --bin levee-node
WORK=$(mktemp -d)
. benches/load/levee_config.sh
. benches/load/wrk_ok.sh
levee_config "$WORK/a.toml" $LEVEE_PORT $ADMIN_PORT $NODE_PORT
LEVEE_ACCESS_LOG=${B_ACCESS_LOG:+$WORK/access.log} \
  levee_config "$WORK/b.toml" $LEVEE_PORT $ADMIN_PORT $NODE_PORT
taskset -c 1 target/release/levee-node --listen 127.0.0.1:$NODE_PORT --mode "healthy:$BODY" >/dev/null 2>&1 &
NODE=$!
trap 'kill $NODE 2>/dev/null || true; rm -rf "$WORK"' EXIT
sleep 0.5
kill -0 $NODE 2>/dev/null || { echo "levee-node exited at start: port $NODE_PORT in use by another run?" >&2; exit 1; }
stat_of() { awk -v f="$2" '{print $f}' "/proc/$1/stat"; }
one() { # binary config -> "total (u user s system)" µs per request
  rm -f "$WORK/access.log"
  taskset -c 0 "$1" run --config "$2" >/dev/null 2>&1 &
  local p=$! bu bs au as out n
  sleep 0.4
  # A levee that could not bind (another run on these fixed ports) must not
  # let wrk measure someone else's proxy.
  kill -0 "$p" 2>/dev/null || { echo "levee exited at start: port $LEVEE_PORT in use by another run?" >&2; exit 1; }
  taskset -c 1 wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$LEVEE_PORT/" >/dev/null
  bu=$(stat_of $p 14); bs=$(stat_of $p 15)
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$LEVEE_PORT/")
  au=$(stat_of $p 14); as=$(stat_of $p 15)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  dropped=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | awk '/^levee_access_log_dropped_total/ {print $2}')
  kill $p; wait $p 2>/dev/null || true
  wrk_ok "$1" "$out"
  awk -v u=$((au - bu)) -v s=$((as - bs)) -v n="$n" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { printf "%.1f (u %.1f s %.1f)", (u + s) / hz * 1e6 / n, u / hz * 1e6 / n, s / hz * 1e6 / n }'
  if [ -f "$WORK/access.log" ]; then
    printf " [%s req, %s log lines, %s dropped]" "$n" "$(wc -l < "$WORK/access.log")" "$dropped"
  fi
}
echo "cpu us/request, A=$A B=$B${B_ACCESS_LOG:+ (B with the access log on)}, ${DUR}s per run, $CONNS connections, $BODY-byte responses"
for r in $(seq 1 "$ROUNDS"); do
  a=$(one "$A" "$WORK/a.toml")
  b=$(one "$B" "$WORK/b.toml")
  echo "round $r: A $a  B $b"
done
