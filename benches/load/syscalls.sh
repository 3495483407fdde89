#!/usr/bin/env bash
# Where a proxied request's CPU goes, for levee, nginx and HAProxy in one run:
# user and system CPU per request of the proxy (from /proc), TCP segments per
# request on loopback (nstat; all sockets, so client, proxy and node alike),
# and the proxy's system calls per request by kind (perf tracepoints). When
# the proxies make the same calls and send the same segments, their system
# time is alike and only user time can set them apart.
#
# Usage: benches/load/syscalls.sh [SECONDS] [CONNECTIONS] [BODY_BYTES]
# Each proxy runs one worker pinned to CPU 0; the node and wrk share CPU 1.
# CPU and segments come from a pass without tracing (tracepoints slow system
# calls), the system calls from a second pass of the same length.
# Needs root (or perf_event_paranoid <= -1) for the syscall tracepoints;
# installs wrk, nginx-light and haproxy (install.sh) and linux-perf if missing.
# LEVEE=path/to/levee measures that binary instead of target/release/levee.
# Traffic goes to 127.0.0.1 only; every process is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${1:-5}
CONNS=${2:-64}
BODY=${3:-64}
# PORT_OFFSET: see compare.sh. This script's ports end in 07, 87-89 and 97.
P=${PORT_OFFSET:-0}
NODE_PORT=$((19107+P)) LEVEE_PORT=$((18187+P)) NGINX_PORT=$((18188+P)) HAPROXY_PORT=$((18189+P)) ADMIN_PORT=$((18197+P))
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

bash benches/load/install.sh >/dev/null
if ! command -v perf >/dev/null; then
  SUDO=
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends linux-perf >/dev/null
fi
command -v nstat >/dev/null || { echo "nstat (iproute2) is missing" >&2; exit 1; }
if [ -n "${LEVEE:-}" ]; then
  cargo build --release --locked -q --bin levee-node -p levee-testkit
else
  cargo build --release --locked -q --bin levee -p levee --bin levee-node -p levee-testkit
  LEVEE=target/release/levee
fi

if [ "$(nproc)" -ge 2 ]; then PROXY_CPU=(taskset -c 0); LOAD_CPU=(taskset -c 1); else PROXY_CPU=(); LOAD_CPU=(); fi
"${LOAD_CPU[@]}" target/release/levee-node --listen 127.0.0.1:$NODE_PORT --mode "healthy:$BODY" >/dev/null 2>&1 &
PIDS+=($!)

. benches/load/levee_config.sh
. benches/load/peers_config.sh
. benches/load/wrk_ok.sh
levee_config "$WORK/levee.toml" $LEVEE_PORT $ADMIN_PORT $NODE_PORT
nginx_config "$WORK/nginx.conf" $NGINX_PORT 4096 127.0.0.1:$NODE_PORT
haproxy_config "$WORK/haproxy.cfg" $HAPROXY_PORT 4096 127.0.0.1:$NODE_PORT

wait_port() { for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 did not open" >&2; return 1; }
# The syscalls counted, by kind.
KINDS=(recv:recvfrom,read,readv,recvmsg send:sendto,write,writev,sendmsg epoll_wait:epoll_wait,epoll_pwait,epoll_pwait2 epoll_ctl:epoll_ctl other:getsockopt,setsockopt,accept4,connect,close,futex)
EVENTS=$(for k in "${KINDS[@]}"; do tr ',' '\n' <<<"${k#*:}"; done | sed 's/^/syscalls:sys_enter_/' | paste -sd,)

wrk_run() { # port seconds -> wrk's output
  "${LOAD_CPU[@]}" wrk -t1 -c"$CONNS" -d"$2s" "http://127.0.0.1:$1/"
}
requests() { echo "$1" | awk '/requests in/ {print $1}'; }

printf '%-8s %9s %8s %8s %9s %9s' proxy "req/s" "user us" "sys us" "segments" "pure ACK"
for k in "${KINDS[@]}"; do printf ' %10s' "${k%%:*}"; done
printf '\n'
measure() { # name port pid
  local name=$1 port=$2 pid=$3 out n u0 s0 u1 s1 hz
  hz=$(getconf CLK_TCK)
  wrk_run "$port" 1 >/dev/null 2>&1 || true   # warm-up
  nstat -n >/dev/null
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  out=$(wrk_run "$port" "$DURATION")
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  nstat -z TcpOutSegs TcpExtTCPPureAcks >"$WORK/nstat"
  wrk_ok "$name" "$out"
  n=$(requests "$out")
  printf '%-8s %9s %8.2f %8.2f %9.3f %9.3f' "$name" "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
    "$(awk -v t=$((u1 - u0)) -v hz="$hz" -v n="$n" 'BEGIN { print t / hz * 1e6 / n }')" \
    "$(awk -v t=$((s1 - s0)) -v hz="$hz" -v n="$n" 'BEGIN { print t / hz * 1e6 / n }')" \
    "$(awk -v n="$n" '$1 == "TcpOutSegs" { print $2 / n }' "$WORK/nstat")" \
    "$(awk -v n="$n" '$1 == "TcpExtTCPPureAcks" { print $2 / n }' "$WORK/nstat")"
  # The traced pass: perf counts while wrk runs (perf starts first, so it
  # sees the whole of wrk's run; its extra second is idle and adds nothing).
  perf stat -x, -e "$EVENTS" -p "$pid" -o "$WORK/perf" -- sleep $((DURATION + 1)) &
  local perf_pid=$!
  sleep 0.3
  out=$(wrk_run "$port" "$DURATION")
  wait $perf_pid
  wrk_ok "$name" "$out"
  n=$(requests "$out")
  for k in "${KINDS[@]}"; do
    awk -F, -v n="$n" -v calls=",${k#*:}," '
      { split($3, e, "sys_enter_"); if (index(calls, "," e[2] ",")) s += $1 }
      END { printf " %10.3f", s / n }' "$WORK/perf"
  done
  printf '\n'
}

wait_port $NODE_PORT
"${PROXY_CPU[@]}" "$LEVEE" run --config "$WORK/levee.toml" >"$WORK/levee.log" 2>&1 &
LEVEE_PID=$!; PIDS+=($LEVEE_PID)
wait_port $LEVEE_PORT
measure levee $LEVEE_PORT $LEVEE_PID
kill $LEVEE_PID; wait $LEVEE_PID 2>/dev/null || true

"${PROXY_CPU[@]}" nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
NGINX_MASTER=$!; PIDS+=($NGINX_MASTER)
wait_port $NGINX_PORT
measure nginx $NGINX_PORT "$(pgrep -P $NGINX_MASTER | head -1)"
kill $NGINX_MASTER; wait $NGINX_MASTER 2>/dev/null || true

"${PROXY_CPU[@]}" haproxy -f "$WORK/haproxy.cfg" -db >/dev/null 2>&1 &
HAPROXY_PID=$!; PIDS+=($HAPROXY_PID)
wait_port $HAPROXY_PORT
measure haproxy $HAPROXY_PORT $HAPROXY_PID
echo "(per proxied request; $DURATION s per pass, $CONNS connections, wrk -t1, $BODY-byte responses; segments: all TCP segments sent on the machine, client and node included)"
