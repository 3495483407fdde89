#!/usr/bin/env python3
"""Traffic and sampling for tests/soak.sh (standard library only).

  soak_driver.py traffic HOST:PORT SECONDS WORKERS
      Mixed HTTP/1.1 clients, many of them abusive, for SECONDS: whole GETs,
      GETs given up mid-answer, heads and bodies dropped half-way, requests
      abandoned before the answer. Prints one line of outcome counts.
  soak_driver.py sample PID ADMIN_HOST:PORT
      One JSON line: levee's RSS, fds, threads, and from /status its open
      connections and the slots held or queued in bulkheads and on nodes.
  soak_driver.py settled PID ADMIN_HOST:PORT
      Exits 0 if no connection is open and no slot held, else 1.
"""

import asyncio
import json
import os
import random
import sys
import time
import urllib.request
from collections import Counter


async def read_status(reader):
    line = await reader.readline()
    parts = line.split()
    return parts[1].decode() if len(parts) > 1 else "none"


async def whole_get(host, port, path):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = await read_status(reader)
        while await reader.read(65536):
            pass
        return f"{path}:{status}"
    finally:
        writer.close()


async def get_then_give_up(host, port, path, after_bytes):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
        await writer.drain()
        got = 0
        while got < after_bytes:
            chunk = await reader.read(min(65536, after_bytes - got))
            if not chunk:
                break
            got += len(chunk)
        return f"{path}:gave-up-mid-answer"
    finally:
        writer.transport.abort()


async def half_head(host, port):
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /mixed HTTP/1.1\r\nHost: soak\r\nX-Half: ")
    await writer.drain()
    await asyncio.sleep(random.random() * 0.3)
    writer.transport.abort()
    return "half-head"


async def half_body(host, port):
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /mixed HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n" + b"a" * 30000)
    await writer.drain()
    await asyncio.sleep(random.random() * 0.3)
    writer.transport.abort()
    return "half-body"


async def abandon(host, port, path):
    _, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(random.random() * 0.5)
    writer.transport.abort()
    return f"{path}:abandoned"


def pick(host, port):
    r = random.random()
    if r < 0.30:
        return whole_get(host, port, "/mixed")
    if r < 0.45:
        return whole_get(host, port, "/slow")
    if r < 0.60:
        return get_then_give_up(host, port, "/big", random.randrange(0, 400_000))
    if r < 0.70:
        return half_head(host, port)
    if r < 0.80:
        return half_body(host, port)
    return abandon(host, port, random.choice(["/slow", "/mixed", "/big"]))


async def traffic(target, seconds, workers):
    host, port = target.rsplit(":", 1)
    port = int(port)
    until = time.monotonic() + seconds
    counts = Counter()

    async def worker():
        while time.monotonic() < until:
            try:
                counts[await asyncio.wait_for(pick(host, port), 10)] += 1
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
                counts[type(e).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())), flush=True)


def figures(pid, admin):
    status = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.split()
    with urllib.request.urlopen(f"http://{admin}/status", timeout=5) as resp:
        doc = json.load(resp)
    slots = 0
    for r in doc.get("routes", []):
        slots += (r.get("in_flight") or 0) + (r.get("queued") or 0)
    for b in doc.get("backends", []):
        slots += (b.get("in_flight") or 0) + (b.get("queued") or 0)
        for n in b.get("nodes", []):
            slots += n.get("in_flight") or 0
    return {
        "rss_kib": int(status["VmRSS"][0]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(status["Threads"][0]),
        "connections": doc.get("connections_open", 0),
        "connections_total": doc.get("connections_total", 0),
        "slots": slots,
        "config_version": doc.get("config_version"),
    }


if __name__ == "__main__":
    if sys.argv[1] == "traffic":
        asyncio.run(traffic(sys.argv[2], float(sys.argv[3]), int(sys.argv[4])))
    elif sys.argv[1] == "sample":
        print(json.dumps(figures(int(sys.argv[2]), sys.argv[3])), flush=True)
    elif sys.argv[1] == "settled":
        f = figures(int(sys.argv[2]), sys.argv[3])
        sys.exit(0 if f["connections"] == 0 and f["slots"] == 0 else 1)
    else:
        sys.exit(__doc__)
