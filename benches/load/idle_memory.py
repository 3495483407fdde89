#!/usr/bin/env python3
"""Memory per idle keep-alive client connection, for levee, nginx and HAProxy.

Opens N client connections to each proxy on loopback, sends one request on
each (so every connection has served a request and sits idle in keep-alive),
then reads the proxy's resident memory (RSS, summed over its processes) and
reports (RSS with N idle connections - RSS before) / N.

Usage: benches/load/idle_memory.py [N]   (run benches/load/compare.sh once
first: it builds levee and installs nginx and haproxy). Loopback only; every
process it starts is stopped on exit.
"""
import os, socket, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE, LEVEE, ADMIN, NGINX, HAPROXY = 19201, 18281, 18291, 18282, 18283
work = tempfile.mkdtemp()
procs = []


def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    procs.append(p)
    return p


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def measure(name, port, pids):
    before = rss_kib(pids)
    conns = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for _ in range(N):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(5)
        s.sendall(req)
        data = s.recv(4096)
        assert data.startswith(b"HTTP/1.1 200"), data[:40]
        conns.append(s)
    time.sleep(1.0)
    after = rss_kib(pids)
    per = (after - before) * 1024 / N
    print(f"{name:<8} {before:>9} KiB {after:>9} KiB {per:>10.0f} B/conn")
    for s in conns:
        s.close()


try:
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16 * N + 1024
    limit = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    start([f"{ROOT}/target/release/levee-node", "--listen", f"127.0.0.1:{NODE}", "--mode", "healthy:64"])
    wait_port(NODE)
    with open(f"{work}/levee.toml", "w") as f:
        f.write(f"""[server]
listen = "127.0.0.1:{LEVEE}"
max_connections = {4 * N}
[admin]
listen = "127.0.0.1:{ADMIN}"
[[backend]]
name = "app"
nodes = ["127.0.0.1:{NODE}"]
[[route]]
path_prefix = "/"
backend = "app"
""")
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections {4 * N}; }}
http {{
  access_log off;
  keepalive_timeout 75s;
  upstream app {{ server 127.0.0.1:{NODE}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{NGINX};
    location / {{ proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
    with open(f"{work}/haproxy.cfg", "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn {4 * N}
defaults
  mode http
  timeout connect 1s
  timeout client 75s
  timeout server 30s
  timeout http-keep-alive 75s
frontend fe
  bind 127.0.0.1:{HAPROXY}
  default_backend app
backend app
  server n1 127.0.0.1:{NODE}
""")
    print(f"{N} idle keep-alive connections, each after one request (RSS before, after, per connection)")
    levee = start([f"{ROOT}/target/release/levee", "run", "--config", f"{work}/levee.toml"])
    wait_port(LEVEE)
    measure("levee", LEVEE, [levee.pid])
    levee.terminate()
    nginx = start(["nginx", "-c", f"{work}/nginx.conf", "-g", "daemon off;"])
    wait_port(NGINX)
    measure("nginx", NGINX, [nginx.pid] + children(nginx.pid))
    nginx.terminate()
    haproxy = start(["haproxy", "-f", f"{work}/haproxy.cfg", "-db"])
    wait_port(HAPROXY)
    measure("haproxy", HAPROXY, [haproxy.pid])
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
