#!/usr/bin/env python3
"""Driver for tests/status_page.sh: starts three levee-node app nodes (one
answering 500) and levee in front of them, opens the failing node's
breakers with traffic, renders the admin page in headless Chromium and
checks the DOM names that node as ejected and why, and shows the backend's
admission (limit against max_in_flight, phase) and failover budget as
/status gives them. Standard library only.

usage: status_page_driver.py --levee BIN --node BIN --chromium BIN --screenshot PNG
"""

import argparse
import html.parser
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CONFIG = """
[server]
listen = "127.0.0.1:{proxy}"

[admin]
listen = "127.0.0.1:{admin}"

[[backend]]
name = "app"
nodes = [{nodes}]
connect_timeout = "200ms"
timeout = "2s"
max_ejected_percent = 50
load_balancing = "round_robin"
failover_max_share = 0.5

[backend.breaker]
consecutive_failures = 3
open_for = "60s"
jitter = 0.0

[backend.retry]
max_retries = 0

[[route]]
name = "all"
path_prefix = "/"
backend = "app"
"""


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def fetch(url, method="GET", timeout=5):
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_ready(admin, log, limit=30.0):
    until = time.monotonic() + limit
    while time.monotonic() < until:
        try:
            if fetch(f"http://{admin}/readyz", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    with open(log) as f:
        sys.exit(f"levee not ready on {admin} within {limit}s; its log:\n{f.read()}")


class Dom(html.parser.HTMLParser):
    """The rendered page's node rows, breakers, alerts, each backend's
    admission and failover budget, and the render count."""

    def __init__(self):
        super().__init__()
        self.rows = {}  # node addr -> state
        self.breakers = {}  # node addr -> [(class, state, why)]
        self.alerts = {}  # node addr -> text
        self.renders = 0
        self._row = None
        self._breaker = None
        self._why = False
        self._alert = None
        self.spans = {}  # (backend, class) -> [attrs, text]
        self._backend = None
        self._span = None
        self._span_depth = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "meta" and "data-backend" in a:
            self._backend = a["data-backend"]
        if tag == "span" and self._span is not None:
            self._span_depth += 1
        elif tag == "span" and self._backend and a.get("class") in ("admission", "failover-budget"):
            self._span = [a, ""]
            self.spans[(self._backend, a["class"])] = self._span
            self._span_depth = 1
        if tag == "body":
            self.renders = int(a.get("data-renders", "0"))
        if tag == "tr" and "data-node" in a:
            self._row = a["data-node"]
            self.rows[self._row] = a.get("data-state")
        if tag == "div" and a.get("class") == "breaker" and self._row:
            self._breaker = [a.get("data-class"), a.get("data-state"), ""]
            self.breakers.setdefault(self._row, []).append(self._breaker)
        if tag == "span" and a.get("class") == "why":
            self._why = True
        if tag == "div" and a.get("class") == "node-alert":
            self._alert = a.get("data-node")
            self.alerts[self._alert] = ""

    def handle_endtag(self, tag):
        if tag == "span" and self._span is not None:
            self._span_depth -= 1
            if self._span_depth == 0:
                self._span = None
        if tag == "div" and self._span is None:
            self._backend = None
        if tag == "tr":
            self._row = None
        if tag == "span":
            self._why = False
        if tag == "div":
            self._alert = None

    def handle_data(self, data):
        if self._span is not None:
            self._span[1] += data
        if self._why and self._breaker is not None:
            self._breaker[2] += data
        if self._alert:
            self.alerts[self._alert] += data


def chromium(binary, profile, url, *flags):
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=4000",
           *flags, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)


def main():
    ap = argparse.ArgumentParser()
    for flag in ("--levee", "--node", "--chromium", "--screenshot"):
        ap.add_argument(flag, required=True)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="levee-status-page-")
    procs = []
    try:
        proxy, admin, *nodes = free_ports(5)
        modes = ["healthy", "healthy", "status:500"]
        for i, (port, mode) in enumerate(zip(nodes, modes)):
            procs.append(subprocess.Popen(
                [args.node, "--listen", f"127.0.0.1:{port}", "--name", f"n{i}", "--mode", mode],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        failing = f"127.0.0.1:{nodes[2]}"
        config = os.path.join(work, "levee.toml")
        with open(config, "w") as f:
            f.write(CONFIG.format(proxy=proxy, admin=admin,
                                  nodes=", ".join(f'"127.0.0.1:{p}"' for p in nodes)))
        log_path = os.path.join(work, "levee.log")
        with open(log_path, "w") as log:
            procs.append(subprocess.Popen([args.levee, "run", "--config", config],
                                          stdout=log, stderr=log))
        admin = f"127.0.0.1:{admin}"
        wait_ready(admin, log_path)

        # Round robin: the failing node gets every third call of each
        # class, so 30 GETs and 30 POSTs open both of its breakers.
        for method in ("GET", "POST"):
            for _ in range(30):
                fetch(f"http://127.0.0.1:{proxy}/items", method)
        status = json.loads(fetch(f"http://{admin}/status")[1])
        states = {n["addr"]: n["state"] for n in status["backends"][0]["nodes"]}
        if states.get(failing) != "ejected":
            sys.exit(f"precondition: {failing} should be ejected on /status, got {states}")
        print(f"-- /status: {states}")

        profile = os.path.join(work, "profile")
        dom_text = chromium(args.chromium, profile, f"http://{admin}/", "--dump-dom").stdout
        dom = Dom()
        dom.feed(dom_text)
        problems = []
        if dom.renders < 2:
            problems.append(f"the page rendered {dom.renders} times, expected >= 2 (refresh every second)")
        if dom.rows.get(failing) != "ejected":
            problems.append(f"row of {failing}: {dom.rows.get(failing)!r}, expected 'ejected'")
        opened = [b for b in dom.breakers.get(failing, []) if b[1] == "open"]
        if len(opened) != 2 or not all("consecutive-failures" in b[2] for b in opened):
            problems.append(f"breakers of {failing}: {dom.breakers.get(failing)}")
        if "is ejected" not in dom.alerts.get(failing, ""):
            problems.append(f"no alert naming {failing} as ejected: {dom.alerts}")
        for addr in (f"127.0.0.1:{p}" for p in nodes[:2]):
            if dom.rows.get(addr) != "active":
                problems.append(f"row of {addr}: {dom.rows.get(addr)!r}, expected 'active'")
        # The backend's admission and failover budget, as /status has them.
        want = status["backends"][0]["admission"]
        attrs, text = dom.spans.get(("app", "admission"), ({}, ""))
        limit, ceiling = int(want["limit"]), want["ceiling"]
        if (attrs.get("data-phase"), attrs.get("data-limit"), attrs.get("data-ceiling")) != (
                want["phase"], str(limit), str(int(ceiling))) or \
                f"limit {limit} of max_in_flight {int(ceiling)}" not in text:
            problems.append(f"admission of app: {attrs} {text!r}, /status has {want}")
        budget = status["backends"][0]["failover_budget"]
        attrs, text = dom.spans.get(("app", "failover-budget"), ({}, ""))
        if (attrs.get("data-max-share"), attrs.get("data-max-in-flight")) != (
                "0.5", str(budget["max_in_flight"])) or "failover budget 50% of the limit" not in text:
            problems.append(f"failover budget of app: {attrs} {text!r}, /status has {budget}")
        if problems:
            print(dom_text[:4000], file=sys.stderr)
            sys.exit("status page: " + "; ".join(problems))
        print(f"-- rendered DOM after {dom.renders} refreshes: {failing} ejected; "
              f"alert: {dom.alerts[failing].strip()}")
        for cls, state, why in dom.breakers[failing]:
            print(f"   {cls}: {state}: {why}")
        for kind in ("admission", "failover-budget"):
            print(f"   app {kind}: {dom.spans[('app', kind)][1].strip()}")

        chromium(args.chromium, profile, f"http://{admin}/",
                 f"--screenshot={args.screenshot}", "--window-size=1500,900", "--hide-scrollbars")
        if not os.path.getsize(args.screenshot):
            sys.exit("empty screenshot")
        print(f"-- screenshot: {os.path.abspath(args.screenshot)}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        subprocess.run(["rm", "-rf", work], check=False)


if __name__ == "__main__":
    main()
