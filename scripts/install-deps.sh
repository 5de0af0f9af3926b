#!/usr/bin/env bash
# Installs the system packages Dockyard's tests and local cluster need, when missing (Debian).
set -euo pipefail
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
{ [ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static; } || need+=(busybox-static)
command -v mosquitto >/dev/null 2>&1 || need+=(mosquitto)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v file >/dev/null 2>&1 || need+=(file)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
