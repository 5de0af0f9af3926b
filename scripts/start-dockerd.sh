#!/usr/bin/env bash
# Starts the host's dockerd when it does not answer (removing a stale pid file first), and waits for it.
set -euo pipefail
if docker info >/dev/null 2>&1; then
  exit 0
fi
pidfile=/var/run/docker.pid
if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "removing stale $pidfile" >&2
  rm -f "$pidfile"
fi
if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "starting dockerd (log: /var/log/dockerd.log)" >&2
  setsid nohup dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
fi
for _ in $(seq 1 120); do
  if docker info >/dev/null 2>&1; then
    exit 0
  fi
  sleep 0.5
done
echo "dockerd did not come up within 60s; last log lines:" >&2
tail -n 20 /var/log/dockerd.log >&2 || true
exit 1
