#!/usr/bin/env bash
# The main job: set up, start an all-in-one cluster on this host, deploy the example web service.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if .venv/bin/dockyard nodes >/dev/null 2>&1; then
  echo "a cluster already answers; deploying to it" >&2
else
  .venv/bin/dockyard up --detach
fi
.venv/bin/dockyard apply -f examples/web.yaml
.venv/bin/dockyard ps web
echo
echo "The example answers at http://127.0.0.1:8080/ (try: curl -s http://127.0.0.1:8080/)"
echo "Use .venv/bin/dockyard (or activate .venv) for more: dockyard services, dockyard nodes, dockyard scale web 3"
