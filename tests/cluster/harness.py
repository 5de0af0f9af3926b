"""A dev cluster (deploy.devcluster) driven from synchronous tests: the real CLI, and each host's own dockerd."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from agent.runtime.base import ContainerInfo, ContainerState
from agent.runtime.docker import DockerRuntime
from deploy.devcluster import DevCluster
from deploy.devcluster.dockerd import tail
from tests.e2e.harness import run_cli

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


@dataclass
class ClusterHarness:
    """The dev cluster, plus helpers: CLI calls against it, containers per host, faults as plain calls."""

    cluster: DevCluster
    config_home: Path

    @property
    def hosts(self) -> list[str]:
        """h1..hN."""
        return self.cluster.hosts

    @property
    def env(self) -> dict[str, str]:
        """The environment for CLI calls: this cluster's controller and admin credentials, a private config home."""
        return {
            **os.environ,
            "DOCKYARD_CONTROLLER": self.cluster.controller_address,
            "DOCKYARD_CREDENTIALS": str(self.cluster.credentials_dir),
            "XDG_CONFIG_HOME": str(self.config_home),
        }

    def run(self, body: Coroutine[Any, Any, T]) -> T:
        """Runs one of the cluster's coroutines to completion."""
        return asyncio.run(body)

    # ----- the CLI -------------------------------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs the dockyard CLI against this cluster."""
        return run_cli(self.env, *args, check=check, timeout=timeout)

    def json(self, *args: str) -> Any:
        """Runs a CLI command with --output json and parses it."""
        return json.loads(self.cli(*args, "--output", "json").stdout)

    def dev(self, command: str, *args: str) -> Any:
        """Runs `dockyard dev cluster COMMAND ... --state-dir` on this cluster with --output json."""
        return self.json("dev", "cluster", command, *args, "--state-dir", str(self.cluster.state_dir))

    def node_statuses(self) -> dict[str, str]:
        """Host name -> status, as `dockyard nodes` shows them."""
        return {n["hostname"]: n["status"] for n in self.json("nodes")}

    # ----- each host's dockerd -------------------------------------------------------------------------------

    def containers(self, host: str, **labels: str) -> list[ContainerInfo]:
        """Every container on the host's own dockerd with these labels (running or not)."""
        return self.run(_list(self.cluster.docker_url(host), labels))

    def running(self, host: str, service: str) -> list[ContainerInfo]:
        """The running containers of one service on one host."""
        found = self.containers(host, **{"dockyard.service.name": service})
        return [c for c in found if c.state == ContainerState.RUNNING]

    # ----- faults and life cycle -----------------------------------------------------------------------------

    def kill(self, host: str) -> None:
        """The host dies (see DevCluster.kill)."""
        self.run(self.cluster.kill(host))

    def revive(self, host: str) -> None:
        """A killed host boots again."""
        self.run(self.cluster.revive(host))

    def partition(self, host: str) -> None:
        """Cuts the host off the network."""
        self.run(self.cluster.partition(host))

    def heal(self, host: str) -> None:
        """Reconnects a partitioned host."""
        self.run(self.cluster.heal(host))

    def restart_agent(self, host: str) -> None:
        """SIGKILLs the host's agent and starts it again."""
        self.run(self.cluster.restart_agent(host))

    def restart_docker(self, host: str) -> None:
        """Stops the host's dockerd with SIGTERM and starts it again."""
        self.run(self.cluster.restart_docker(host))

    def stop_agent(self, host: str, sig: int = signal.SIGTERM) -> None:
        """Signals the host's agent (and waits for it to exit unless the signal is SIGSTOP/SIGCONT)."""
        self.run(self.cluster.stop_agent(host, sig))

    def start_agent(self, host: str) -> None:
        """Starts the host's agent unless it runs."""
        self.run(self.cluster.start_agent(host))

    def stop_controller(self) -> None:
        """Stops the controller; agents and containers keep running."""
        self.run(self.cluster.stop_controller())

    def start_controller(self) -> None:
        """Starts the controller again with the same state."""
        self.run(self.cluster.start_controller())

    def down(self) -> dict[str, Any]:
        """Tears the cluster down (idempotent) and returns the report."""
        return self.run(self.cluster.down())

    def logs(self, lines: int = 30) -> str:
        """The tails of the controller's and every host's logs, for failure messages."""
        state = self.cluster.state_dir
        parts = [f"--- controller ---\n{tail(state / 'controller.log', lines)}"]
        for host in self.hosts:
            paths = self.cluster.paths(host)
            parts.append(f"--- {host} agent ---\n{tail(paths.agent_log, lines)}")
            parts.append(f"--- {host} dockerd ---\n{tail(paths.dockerd_log, lines // 2)}")
        return "\n".join(parts)


async def _list(url: str, labels: dict[str, str]) -> list[ContainerInfo]:
    runtime = DockerRuntime(url)
    try:
        return await runtime.list(labels)
    finally:
        await runtime.close()
