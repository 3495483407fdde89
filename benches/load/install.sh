#!/usr/bin/env bash
# Installs what the load tools compare levee with, from Debian's packages:
# nginx (nginx-light) and HAProxy for levee-bench, wrk for compare.sh and
# ab.sh, taskset (util-linux) for pinning. Skips what is already installed.
# Run as root or with sudo. Debian may start the packaged nginx on port 80;
# the harness runs its own instances on loopback ports and does not use it.
set -euo pipefail
has() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
need=()
has nginx || need+=(nginx-light)
has haproxy || need+=(haproxy)
has wrk || need+=(wrk)
has taskset || need+=(util-linux)
if [ ${#need[@]} -eq 0 ]; then
  echo "nginx, haproxy, wrk and taskset are installed"
  exit 0
fi
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
