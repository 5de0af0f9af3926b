#!/usr/bin/env bash
# Prepares a bare machine: system packages, a running dockerd, the local test image, and .venv with Dockyard.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/start-dockerd.sh
bash scripts/build-test-image.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
