"""Pins the agent's import footprint: what `python -m agent.main` loads is what every host keeps in memory.

The agent needs grpc, aiodocker and protobuf; it must not carry the controller, the CLI, the local supervisor,
test tools, or the spec package's YAML reader and validation (it uses only the schema table's defaults and
label prefix). bench/agent_footprint.py measures what this saves.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Module prefixes the agent process must never load.
NOT_IN_THE_AGENT = (
    "controller",
    "dockyard.cli",
    "dockyard.local",
    "dockyard.client",
    "sqlite3",
    # The controller's gRPC services; grpc itself imports only the bare top-level packages.
    "grpc_health.v1",
    "grpc_reflection.v1alpha",
    "grpc_tools.protoc",
    # The spec package loads its exports on first use; the agent needs only the schema table.
    "yaml",
    "dockyard.spec.reader",
    "dockyard.spec.validation",
    "dockyard.spec.loading",
    "pytest",
    "_pytest",
    "hypothesis",
)


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter at ROOT holds after running `statement`."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def offenders(modules: set[str], prefixes: tuple[str, ...]) -> list[str]:
    """The modules that are one of `prefixes` or inside one."""
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes))


def test_the_agent_loads_only_what_it_runs_on() -> None:
    # What `dockyard-agent` runs: its main module, then (in _run, kept out of `join`) the agent and Docker's client.
    modules = loaded_by("import agent.main, agent.agent, agent.runtime.docker")
    # The check sees real imports: the agent's own dependencies are there.
    assert {"grpc", "aiodocker", "agent.runtime.docker", "agent.link"} <= modules
    assert offenders(modules, NOT_IN_THE_AGENT) == []
