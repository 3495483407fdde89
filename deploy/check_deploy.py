#!/usr/bin/env python3
"""Cross-checks for deploy/validate.sh: the deployment files against each
other and against what levee really exports. Needs PyYAML (validate.sh runs
it from its venv); everything else is the standard library.

  check_deploy.py free-ports N
  check_deploy.py scrape ADMIN_ADDR OUT_METRICS OUT_STATUS
  check_deploy.py metrics METRICS STATUS_JSON FILE...
  check_deploy.py dashboard-rules DASHBOARD OUT_RULES
  check_deploy.py compose COMPOSE_CONFIG_YAML COMPOSE_TOML PROMETHEUS_YML DOCKERFILE
  check_deploy.py k8s CONFIGMAP DEPLOYMENT SERVICE DOCKERFILE OUT_TOML

Each prints what it checked and exits 1 with a reason on a mismatch.
"""

import json
import re
import socket
import sys
import time
import tomllib
import urllib.error
import urllib.request

import yaml

failures = []


def fail(msg):
    failures.append(msg)
    print(f"  FAIL {msg}")


def done(what):
    if failures:
        print(f"{what}: {len(failures)} problem(s)")
        sys.exit(1)
    print(f"{what}: ok")


# --- levee's /metrics ---------------------------------------------------------

def free_ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def scrape(admin, out_metrics, out_status):
    """Waits up to 20 s for /readyz, then saves /metrics and /status."""
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"http://{admin}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            print(f"levee's admin listener {admin} was not ready within 20 s")
            sys.exit(1)
        time.sleep(0.2)
    for path, out in (("/metrics", out_metrics), ("/status", out_status)):
        with urllib.request.urlopen(f"http://{admin}{path}", timeout=5) as r:
            with open(out, "wb") as f:
                f.write(r.read())
    print(f"scraped http://{admin}/metrics and /status")


LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text):
    """{sample name: {label: {values}}} from Prometheus/OpenMetrics text."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s", line)
        if not m:
            continue
        labels = samples.setdefault(m.group(1), {})
        for k, v in LABEL_RE.findall(m.group(2) or ""):
            labels.setdefault(k, set()).add(v)
    return samples


def expressions(path):
    """(where, PromQL) pairs of an alert rules file or a Grafana dashboard."""
    with open(path) as f:
        if path.endswith(".json"):
            dash = json.load(f)
            out = []

            def walk(panels):
                for p in panels:
                    for t in p.get("targets", []):
                        if t.get("expr"):
                            out.append((f'{path}: panel "{p.get("title")}" {t.get("refId")}', t["expr"]))
                    walk(p.get("panels", []))

            walk(dash.get("panels", []))
            for v in dash.get("templating", {}).get("list", []):
                q = v.get("definition") or ""
                m = re.match(r"label_values\((.*),\s*([a-zA-Z_]+)\)$", q)
                if m:
                    # As a query grouping by the label, so the label is checked too.
                    out.append((f"{path}: variable {v['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
            return out
        doc = yaml.safe_load(f)
        return [
            (f"{path}: {r.get('alert') or r.get('record')}", r["expr"])
            for g in doc["groups"]
            for r in g["rules"]
        ]


# Labels Prometheus adds (target labels) or that a query may name without
# levee exporting them.
PROM_LABELS = {"instance", "job", "__name__"}

SELECTOR_RE = re.compile(r"\b(levee_[a-zA-Z0-9_]+)\s*(\{[^}]*\})?")
MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
GROUPING_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def check_metrics(metrics_path, status_path, files):
    with open(metrics_path) as f:
        samples = parse_exposition(f.read())
    if not samples:
        fail(f"{metrics_path}: no samples")
    checked = set()
    for path in files:
        for where, expr in expressions(path):
            names = []
            for m in SELECTOR_RE.finditer(expr):
                name, sel = m.group(1), m.group(2) or ""
                names.append(name)
                checked.add(name)
                if name not in samples:
                    fail(f"{where}: {name} is not in levee's /metrics")
                    continue
                for label, op, value in MATCHER_RE.findall(sel):
                    if label in PROM_LABELS:
                        continue
                    if label not in samples[name]:
                        fail(f"{where}: {name} has no label {label!r}")
                    elif op == "=" and "$" not in value and value not in samples[name][label]:
                        fail(f"{where}: {name}{{{label}}} never has the value {value!r} "
                             f"(it has {sorted(samples[name][label])})")
            known = set(PROM_LABELS) | {"le"}
            for n in names:
                known |= set(samples.get(n, {}))
            for group in GROUPING_RE.findall(expr):
                for label in filter(None, (x.strip() for x in group.split(","))):
                    if label not in known:
                        fail(f"{where}: grouping label {label!r} is on none of {sorted(set(names))}")
    print(f"  {len(checked)} levee metric names referenced, each checked against a live scrape "
          f"({len(samples)} sample names)")

    # The config hash is published in both places the docs name.
    with open(status_path) as f:
        status = json.load(f)
    status_hash = (status.get("config") or {}).get("hash")
    metric_hashes = samples.get("levee_config_info", {}).get("hash", set())
    if not status_hash or metric_hashes != {status_hash}:
        fail(f"/status config.hash {status_hash!r} != levee_config_info hash {sorted(metric_hashes)}")
    else:
        print(f"  /status config.hash == levee_config_info{{hash}} == {status_hash}")
    done("metric names")


def dashboard_rules(dashboard, out):
    """Writes the dashboard's queries as recording rules, with Grafana's
    variables filled in, so `promtool check rules` parses them."""
    subst = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "1h",
        "$instance": ".*",
        "$backend": ".*",
        "$route": ".*",
    }
    rules = []
    for i, (where, expr) in enumerate(expressions(dashboard)):
        for k, v in subst.items():
            expr = expr.replace(k, v)
        if "$" in expr:
            fail(f"{where}: unknown variable in {expr!r}")
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    with open(out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
    print(f"  {len(rules)} dashboard queries written to {out}")
    done("dashboard queries")


# --- docker-compose.yml and Dockerfile ----------------------------------------

def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


def exposed_ports(dockerfile):
    ports = set()
    with open(dockerfile) as f:
        for line in f:
            if line.strip().upper().startswith("EXPOSE "):
                ports |= {int(p.split("/")[0]) for p in line.split()[1:]}
    return ports


def check_dockerfile(dockerfile, cfg, what):
    ports = exposed_ports(dockerfile)
    for key in ("server", "admin"):
        p = port_of(cfg[key]["listen"])
        if p not in ports:
            fail(f"{dockerfile}: EXPOSE {sorted(ports)} lacks {what} {key}.listen port {p}")


def check_compose(compose_yaml, toml_path, prom_path, dockerfile):
    with open(compose_yaml) as f:
        compose = yaml.safe_load(f)
    with open(toml_path, "rb") as f:
        cfg = tomllib.load(f)
    services = compose["services"]

    def cmd(svc):
        c = svc.get("command") or []
        return c.split() if isinstance(c, str) else c

    def entry(svc):
        e = svc.get("entrypoint") or []
        return e.split() if isinstance(e, str) else e

    # The levee-node services, by service name and --listen port.
    nodes = {}
    for name, svc in services.items():
        if entry(svc)[:1] != ["levee-node"]:
            continue
        c = cmd(svc)
        listen = c[c.index("--listen") + 1] if "--listen" in c else "127.0.0.1:9001"
        if not listen.startswith("0.0.0.0:"):
            fail(f"{name}: --listen {listen} is not reachable from levee's container")
        nodes[f"{name}:{port_of(listen)}"] = name
        if "--control" in c:
            control = c[c.index("--control") + 1]
            if port_of(control) == port_of(listen):
                fail(f"{name}: --control {control} shares the node's port: levee's traffic would reach it")
            published = [int(p["target"]) if isinstance(p, dict)
                         else int(str(p).rsplit(":", 1)[-1].split("/")[0])
                         for p in svc.get("ports", [])]
            if port_of(control) not in published:
                fail(f"{name}: --control port {port_of(control)} is not published (ports {published})")
            print(f"  {name}: control interface on {port_of(control)}, published")
        print(f"  {name}: {name}:{port_of(listen)} mode {c[c.index('--mode') + 1] if '--mode' in c else 'healthy'}")
    configured = [n for b in cfg["backend"] for n in b["nodes"]]
    if sorted(configured) != sorted(nodes):
        fail(f"{toml_path} nodes {sorted(configured)} != compose node services {sorted(nodes)}")

    levee = services.get("levee")
    if levee is None:
        fail("no service named levee")
        done("docker-compose.yml vs config")
    c = cmd(levee)
    conf = c[c.index("--config") + 1] if "--config" in c else "/etc/levee/levee.toml"
    mounted = False
    for v in levee.get("volumes", []):
        src = v.get("source", "") if isinstance(v, dict) else v.split(":")[0]
        dst = v.get("target", "") if isinstance(v, dict) else v.split(":")[1]
        if conf.startswith(dst.rstrip("/") + "/") and src.rstrip("/").endswith("/config"):
            mounted = conf[len(dst.rstrip("/")) + 1:] == toml_path.rsplit("/", 1)[-1]
    if not mounted:
        fail(f"levee's --config {conf} is not {toml_path} through a mount of the config/ directory")
    published = set()
    for p in levee.get("ports", []):
        published.add(int(p["target"]) if isinstance(p, dict) else int(str(p).rsplit(":", 1)[-1]))
    for key in ("server", "admin"):
        listen = cfg[key]["listen"]
        if not listen.startswith("0.0.0.0:"):
            fail(f"{toml_path}: {key}.listen {listen} is not reachable from outside the container")
        if port_of(listen) not in published:
            fail(f"levee publishes {sorted(published)}, not {key}.listen's port {port_of(listen)}")
    admin_port = port_of(cfg["admin"]["listen"])
    hc = " ".join(levee.get("healthcheck", {}).get("test", []))
    if f"/{admin_port} " not in hc or "/healthz" not in hc:
        fail(f"levee's healthcheck does not ask /healthz on the admin port {admin_port}: {hc}")

    with open(prom_path) as f:
        prom = yaml.safe_load(f)
    targets = [t for sc in prom["scrape_configs"] for s in sc.get("static_configs", []) for t in s["targets"]]
    if f"levee:{admin_port}" not in targets:
        fail(f"{prom_path} does not scrape levee:{admin_port} (targets {targets})")
    check_dockerfile(dockerfile, cfg, toml_path)
    done("docker-compose.yml vs config/compose.toml, prometheus.yml, Dockerfile")


# --- Kubernetes ---------------------------------------------------------------

def seconds(duration):
    total = 0.0
    for n, unit in re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)", duration):
        total += float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_k8s(configmap, deployment, service, dockerfile, out_toml):
    with open(configmap) as f:
        cm = yaml.safe_load(f)
    with open(deployment) as f:
        dep = yaml.safe_load(f)
    with open(service) as f:
        svc = yaml.safe_load(f)
    text = cm["data"]["levee.toml"]
    with open(out_toml, "w") as f:
        f.write(text)
    cfg = tomllib.loads(text)

    spec = dep["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "levee"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    admin = cfg.get("admin", {}).get("listen", "127.0.0.1:9901")
    if not (admin.startswith("0.0.0.0:") or admin.startswith("[::]:")):
        fail(f"{configmap}: admin.listen {admin} cannot be probed (must be 0.0.0.0)")
    if ports.get("admin") != port_of(admin):
        fail(f"containerPort admin {ports.get('admin')} != admin.listen port {port_of(admin)}")
    if ports.get("http") != port_of(cfg["server"]["listen"]):
        fail(f"containerPort http {ports.get('http')} != server.listen port {port_of(cfg['server']['listen'])}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") not in ("admin", port_of(admin)):
            fail(f"{probe} is not GET {path} on the admin port")

    grace = seconds(cfg["server"].get("shutdown_grace", "30s"))
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    pause = 0.0
    if "exec" in pre_stop and pre_stop["exec"]["command"][:1] == ["sleep"]:
        pause = float(pre_stop["exec"]["command"][1])
    elif "sleep" in pre_stop:
        pause = float(pre_stop["sleep"]["seconds"])
    term = spec.get("terminationGracePeriodSeconds", 30)
    if not term > pause + grace:
        fail(f"terminationGracePeriodSeconds {term} is not longer than preStop {pause}s + shutdown_grace {grace}s")
    else:
        print(f"  terminationGracePeriodSeconds {term} > preStop {pause:g}s + shutdown_grace {grace:g}s")

    mount = next((m for m in container.get("volumeMounts", []) if m["name"] == "config"), None)
    vol = next((v for v in spec.get("volumes", []) if v["name"] == "config"), {})
    if mount is None or "subPath" in mount:
        fail("the config must be mounted as a directory (a subPath mount never sees ConfigMap updates)")
    if vol.get("configMap", {}).get("name") != cm["metadata"]["name"]:
        fail(f"the config volume is not the ConfigMap {cm['metadata']['name']}")
    args = container.get("args", [])
    conf = args[args.index("--config") + 1] if "--config" in args else "/etc/levee/levee.toml"
    if mount and conf != mount["mountPath"].rstrip("/") + "/levee.toml":
        fail(f"--config {conf} is not levee.toml in the mount {mount['mountPath']}")
    for key in ("requests", "limits"):
        if not container.get("resources", {}).get(key):
            fail(f"the container has no resource {key}")

    selector = dep["spec"]["selector"]["matchLabels"]
    if svc["spec"]["selector"] != selector:
        fail(f"{service}: selector {svc['spec']['selector']} != the Deployment's {selector}")
    target = {p["targetPort"] for p in svc["spec"]["ports"]}
    if target - {"http", ports.get("http")}:
        fail(f"{service}: targetPort {target} is not the http port")
    check_dockerfile(dockerfile, cfg, configmap)
    print(f"  ConfigMap TOML written to {out_toml} for `levee check`")
    done("deploy/kubernetes cross-checks")


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "free-ports":
        free_ports(*args)
    elif cmd == "scrape":
        scrape(*args)
    elif cmd == "metrics":
        check_metrics(args[0], args[1], args[2:])
    elif cmd == "dashboard-rules":
        dashboard_rules(*args)
    elif cmd == "compose":
        check_compose(*args)
    elif cmd == "k8s":
        check_k8s(*args)
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
