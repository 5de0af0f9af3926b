#!/usr/bin/env bash
# The test command: set up what the tests need, then lint, type-check and run every test against real Docker.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Docker was just started: a test that finds no Docker must fail here, not skip.
export DOCKYARD_REQUIRE_DOCKER=1
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python scripts/gen_protos.py --check
.venv/bin/pytest -p no:cacheprovider "$@"
