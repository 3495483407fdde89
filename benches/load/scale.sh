#!/usr/bin/env bash
# Whether a request costs more in a large config: CPU per request of one
# levee build with 1 route and 2 nodes (base), with 10,000 routes before the
# one that matches (routes), and with 1,000 nodes in the backend (nodes),
# round by round in one run, then each median and its ratio to base's.
#
# Usage: benches/load/scale.sh LEVEE [ROUNDS] [SECONDS] [CONNECTIONS]
# The nodes are one levee-node on 0.0.0.0, reached at 127.0.x.y addresses.
# The proxy runs one worker pinned to CPU 0; the node and wrk share CPU 1.
# PEERS=1 adds nginx and HAProxy with the same 2 and 1,000 servers (keep-alive
# to every server) in each round, so the part of the 1,000-node cost that any
# proxy pays (an idle connection to each of 1,000 nodes: cold sockets, cold
# connection state) shows beside levee's.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/load/wrk_ok.sh
. benches/load/peers_config.sh
LEVEE=$1 ROUNDS=${2:-5} DUR=${3:-5} CONNS=${4:-64}
# PORT_OFFSET (a multiple of 100) moves every port, so that runs side by
# side do not collide. Each load script's ports end in its own two digits
# (compare.sh 01, 81-84, 91; ab.sh 05, 85, 95; scale.sh 06, 86, 96), so runs
# of different scripts cannot collide whatever their offsets.
P=${PORT_OFFSET:-0}
NODE_PORT=$((19406+P)) LEVEE_PORT=$((18486+P)) ADMIN_PORT=$((18496+P))
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -q -p levee-testkit --bin levee-node
WORK=$(mktemp -d)
taskset -c 1 target/release/levee-node --listen 0.0.0.0:$NODE_PORT --mode healthy:64 >/dev/null 2>&1 &
NODE=$!
trap 'kill $NODE 2>/dev/null || true; rm -rf "$WORK"' EXIT

config() { # FILE ROUTES NODES
  {
    printf '[server]\nlisten = "127.0.0.1:%s"\nworkers = 1\n' $LEVEE_PORT
    printf '[admin]\nlisten = "127.0.0.1:%s"\n' $ADMIN_PORT
    printf '[[backend]]\nname = "app"\nmax_in_flight = 4096\nmax_queue = 1024\nnodes = [\n'
    for i in $(seq 0 $(($3 - 1))); do
      printf '"127.0.%d.%d:%s",\n' $((i / 250)) $((i % 250 + 1)) $NODE_PORT
    done
    printf ']\n'
    # Every other route is passed over by wrk's GET / with its own Host.
    for i in $(seq 0 $(($2 - 2))); do
      printf '[[route]]\npath_prefix = "/service-%d/"\nbackend = "app"\n' "$i"
      case $((i % 3)) in
        0) printf 'host = "svc%d.example.com"\n' "$i" ;;
        1) printf 'methods = ["POST", "PUT"]\n' ;;
      esac
    done
    printf '[[route]]\npath_prefix = "/"\nbackend = "app"\n'
  } > "$1"
}
config "$WORK/base.toml" 1 2
config "$WORK/routes.toml" 10000 2
config "$WORK/nodes.toml" 1 1000
CASES="base routes nodes"

peers() { # N: nginx and HAProxy configs with N servers (127.0.a.b, as levee's)
  local nodes=() i
  for i in $(seq 0 $(($1 - 1))); do nodes+=("127.0.$((i / 250)).$((i % 250 + 1)):$NODE_PORT"); done
  nginx_config "$WORK/nginx$1.conf" $LEVEE_PORT 8192 "${nodes[@]}"
  haproxy_config "$WORK/haproxy$1.cfg" $LEVEE_PORT 8192 "${nodes[@]}"
}
if [ "${PEERS:-0}" = 1 ]; then
  bash benches/load/install.sh >/dev/null
  peers 2
  peers 1000
  CASES+=" nginx2 nginx1000 haproxy2 haproxy1000"
fi

stat_of() { awk '{print $14, $15}' "/proc/$1/stat"; }
one() { # case -> CPU µs per request: all, user, system
  case $1 in
    nginx*) taskset -c 0 nginx -c "$WORK/$1.conf" -g 'daemon off; master_process off;' >/dev/null 2>&1 & ;;
    haproxy*) taskset -c 0 haproxy -f "$WORK/$1.cfg" >/dev/null 2>&1 & ;;
    *) taskset -c 0 "$LEVEE" run --config "$WORK/$1.toml" >/dev/null 2>&1 & ;;
  esac
  local p=$! u0 s0 u1 s1 out n
  sleep 1
  # A levee that could not bind (another run on these fixed ports) must not
  # let wrk measure someone else's proxy.
  kill -0 "$p" 2>/dev/null || { echo "$1 exited at start: port $LEVEE_PORT in use by another run?" >&2; exit 1; }
  # Warm-up: every node's pool gets its connections.
  taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$LEVEE_PORT/" >/dev/null
  read -r u0 s0 < <(stat_of $p)
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DUR}s" "http://127.0.0.1:$LEVEE_PORT/")
  read -r u1 s1 < <(stat_of $p)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  kill $p; wait $p 2>/dev/null || true
  wrk_ok "$1" "$out"
  awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { f = 1e6 / hz / n; printf "%.2f %.2f %.2f", (u + s) * f, u * f, s * f }'
}
median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "cpu us/request of $LEVEE, ${DUR}s per run, $CONNS connections"
declare -A runs users systems
for r in $(seq 1 "$ROUNDS"); do
  line="round $r:"
  for c in $CASES; do
    o=$(one "$c")
    read -r v u s <<<"$o"
    runs[$c]+=" $v"
    users[$c]+=" $u"
    systems[$c]+=" $s"
    line+=" $c $v"
  done
  echo "$line"
done
b=$(echo "${runs[base]}" | median)
# User and system time apart: what grows in user space is levee's to cut;
# what grows in the kernel (more sockets, colder) any proxy pays.
for c in base routes nodes; do
  m=$(echo "${runs[$c]}" | median) u=$(echo "${users[$c]}" | median) s=$(echo "${systems[$c]}" | median)
  awk -v c="$c" -v m="$m" -v b="$b" -v u="$u" -v s="$s" \
    'BEGIN { printf "%-7s median %6.2f us  ratio to base %.3f  (user %.2f, system %.2f)\n", c, m, m / b, u, s }'
done
for p in nginx haproxy; do
  [ -n "${runs[${p}2]:-}" ] || continue
  two=$(echo "${runs[${p}2]}" | median) many=$(echo "${runs[${p}1000]}" | median)
  awk -v p="$p" -v a="$two" -v b="$many" 'BEGIN { printf "%-7s 2 servers %6.2f us  1,000 servers %6.2f us  ratio %.3f\n", p, a, b, b / a }'
done
