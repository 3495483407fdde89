#!/usr/bin/env bash
# Soak: a release levee in front of nodes that fail in every way the testkit
# knows (stuck, 500s, resets before and mid-answer, dripping bodies), under
# mixed HTTP/1.1 traffic full of client aborts, wrk's steady load, HTTP/2
# requests from curl, and a config reload every 20 s (file rewrite or SIGHUP),
# for MINUTES minutes. Then a quiet period, and a check that levee came back
# to where it started:
#
#   open connections and slots held (bulkheads, queues, nodes): 0
#   file descriptors: at most the start + FD_TOLERANCE (default 4)
#   resident memory: at most the start + RSS_TOLERANCE_MIB (default 32 MiB)
#
# "start" is sampled after a minute of the same traffic and the same quiet
# period, so pools, buffers and the allocator have warmed up. Prints a table
# of samples and exits non-zero if any check fails. Not part of `cargo test`.
#
# usage: tests/soak.sh [MINUTES]   (default 10; needs wrk and curl)
set -euo pipefail

MINUTES=${1:-10}
FD_TOLERANCE=${FD_TOLERANCE:-4}
RSS_TOLERANCE_MIB=${RSS_TOLERANCE_MIB:-32}
WARMUP_SECONDS=${WARMUP_SECONDS:-60}
QUIET_SECONDS=20
RELOAD_EVERY=20
SAMPLE_EVERY=60

cd "$(dirname "$0")/.."
cargo build --release --locked -p levee -p levee-testkit --bin levee --bin levee-node
BIN=target/release
DRIVER=tests/soak_driver.py

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    # Nodes start inside $(node ...), a subshell: their pids are in a file.
    if [ -f "$WORK/node.pids" ]; then
        while read -r p; do kill "$p" 2>/dev/null || true; done <"$WORK/node.pids"
    fi
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

node() { # NAME MODE -> prints the node's address
    local port
    port=$(free_port)
    "$BIN/levee-node" --listen "127.0.0.1:$port" --name "$1" --mode "$2" >"$WORK/$1.log" 2>&1 &
    echo $! >>"$WORK/node.pids"
    echo "127.0.0.1:$port"
}

HEALTHY=$(node healthy healthy:16k)
ERRORS=$(node errors status:500:0.5)
RESET=$(node reset reset-headers)
BIG=$(node big healthy:1m)
RESET_BODY=$(node reset-body reset-body:1m:100k)
DRIP=$(node drip drip:20:1k:100ms)
STUCK=$(node stuck stuck)
PROXY="127.0.0.1:$(free_port)"
ADMIN="127.0.0.1:$(free_port)"

# The config, in two versions a reload alternates between: the mixed
# backend's limit and whether its resetting node is in it.
config() { # VERSION(0|1)
    local extra_node="" limit=64
    if [ "$1" = 1 ]; then extra_node=", \"$RESET\""; limit=96; fi
    cat <<EOF
[server]
listen = "$PROXY"
header_read_timeout = "2s"
idle_timeout = "5s"
workers = 2
h2_keep_alive_interval = "5s"
h2_keep_alive_timeout = "5s"

[admin]
listen = "$ADMIN"

[[backend]]
name = "mixed"
nodes = ["$HEALTHY", "$ERRORS"$extra_node]
timeout = "2s"
connect_timeout = "500ms"
max_in_flight = $limit
max_queue = 32
pool_idle_timeout = "5s"

[[backend]]
name = "slow"
nodes = ["$DRIP", "$STUCK", "$RESET_BODY"]
timeout = "2s"
connect_timeout = "500ms"
body_idle_timeout = "500ms"
max_in_flight = 64
pool_idle_timeout = "5s"

[[backend]]
name = "big"
nodes = ["$BIG"]
timeout = "2s"
connect_timeout = "500ms"
body_idle_timeout = "1s"
pool_idle_timeout = "5s"

[[route]]
path_prefix = "/slow"
backend = "slow"

[[route]]
path_prefix = "/big"
backend = "big"

[[route]]
path_prefix = "/"
backend = "mixed"
EOF
}

config 0 >"$WORK/levee.toml"
"$BIN/levee" run --config "$WORK/levee.toml" >"$WORK/levee.log" 2>&1 &
LEVEE=$!
PIDS+=($LEVEE)
for _ in $(seq 100); do
    curl -fs "http://$ADMIN/readyz" >/dev/null && break
    sleep 0.1
done
curl -fs "http://$ADMIN/readyz" >/dev/null || { echo "levee did not start"; cat "$WORK/levee.log"; exit 1; }

sample() { # LABEL
    printf '%s %s\n' "$1" "$(python3 "$DRIVER" sample "$LEVEE" "$ADMIN")" >>"$WORK/samples"
}

# Everything that runs for SECONDS: abusive clients, wrk, HTTP/2, reloads.
load() { # SECONDS
    local seconds=$1 until version=0 loads=()
    python3 "$DRIVER" traffic "$PROXY" "$seconds" 24 >>"$WORK/traffic" &
    loads+=($!)
    wrk -t1 -c8 -d"${seconds}s" --timeout 5s "http://$PROXY/mixed" >>"$WORK/wrk" 2>&1 &
    loads+=($!)
    until=$((SECONDS + seconds))
    (while [ $SECONDS -lt $until ]; do
        curl -s -o /dev/null -m 3 --http2-prior-knowledge "http://$PROXY/mixed" || true
        curl -s -o /dev/null -m 3 --http2-prior-knowledge "http://$PROXY/slow" || true
        sleep 0.2
    done) &
    loads+=($!)
    local next_reload=$((SECONDS + RELOAD_EVERY)) next_sample=$((SECONDS + SAMPLE_EVERY)) reloads=0
    while [ $SECONDS -lt $until ]; do
        if [ $SECONDS -ge "$next_reload" ]; then
            version=$((1 - version))
            config "$version" >"$WORK/levee.toml.new"
            mv "$WORK/levee.toml.new" "$WORK/levee.toml"
            # Every other reload is a signal (the file watch takes the rest).
            if [ $((reloads % 2)) = 1 ]; then kill -HUP "$LEVEE"; fi
            reloads=$((reloads + 1))
            next_reload=$((SECONDS + RELOAD_EVERY))
        fi
        if [ "${SAMPLING:-0}" = 1 ] && [ $SECONDS -ge "$next_sample" ]; then
            sample "during"
            next_sample=$((SECONDS + SAMPLE_EVERY))
        fi
        sleep 1
    done
    wait "${loads[@]}" || true
    echo "reloads: $reloads" >>"$WORK/traffic"
}

# Idle until connections and slots are back to zero (at most 60 s more).
quiet() {
    sleep "$QUIET_SECONDS"
    for _ in $(seq 60); do
        python3 "$DRIVER" settled "$LEVEE" "$ADMIN" && return
        sleep 1
    done
}

echo "soak: warming up for ${WARMUP_SECONDS}s, then ${MINUTES} min of load" >&2
sample "fresh"
load "$WARMUP_SECONDS"
quiet
sample "start"
SAMPLING=1 load $((MINUTES * 60))
quiet
sample "end"

kill -0 "$LEVEE" || { echo "levee died"; cat "$WORK/levee.log"; exit 1; }

echo "traffic (per abusive-client run):"
cat "$WORK/traffic"
grep -E "Requests/sec|requests in|Non-2xx|Socket errors" "$WORK/wrk" || true
echo "reloads counted by levee: $(curl -fs "http://$ADMIN/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["config"]["reloads"])')"
python3 - "$WORK/samples" "$FD_TOLERANCE" "$RSS_TOLERANCE_MIB" <<'EOF'
import json, sys
path, fd_tol, rss_tol = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rows = []
for line in open(path):
    label, _, doc = line.partition(" ")
    rows.append((label, json.loads(doc)))
print(f"{'sample':8} {'rss MiB':>8} {'fds':>5} {'threads':>7} {'conns':>6} {'slots':>6} {'conns total':>12} {'config':>7}")
for label, s in rows:
    print(f"{label:8} {s['rss_kib']/1024:8.1f} {s['fds']:5} {s['threads']:7} {s['connections']:6} {s['slots']:6} {s['connections_total']:12} {s['config_version']:>7}")
start = next(s for l, s in rows if l == "start")
end = next(s for l, s in rows if l == "end")
failed = []
if end["connections"] != 0:
    failed.append(f"{end['connections']} connections still open")
if end["slots"] != 0:
    failed.append(f"{end['slots']} slots still held")
if end["fds"] > start["fds"] + fd_tol:
    failed.append(f"fds {start['fds']} -> {end['fds']} (tolerance {fd_tol})")
grew = (end["rss_kib"] - start["rss_kib"]) / 1024
if grew > rss_tol:
    failed.append(f"RSS grew {grew:.1f} MiB (tolerance {rss_tol} MiB)")
print(f"end vs start: fds {end['fds'] - start['fds']:+}, RSS {grew:+.1f} MiB, connections {end['connections']}, slots {end['slots']}")
if failed:
    print("SOAK FAILED: " + "; ".join(failed))
    sys.exit(1)
print("soak passed")
EOF
