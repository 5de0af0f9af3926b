"""A one-host cluster of real processes on the real dockerd, driven through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.runtime.base import ContainerInfo
from agent.runtime.docker import DockerRuntime
from dockyard import labels, pki
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "ROOT",
    "Cluster",
    "agent_join",
    "controller_tool",
    "free_port",
    "run_cli",
    "spawn_controller",
    "wait_for",
    "wait_for_file",
]


def free_port() -> int:
    """Returns a TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def controller_tool(root: Path, *args: str) -> str:
    """Runs a `dockyard-controller` subcommand on root/controller (admin-cert, join-token); returns its output."""
    command = [sys.executable, "-m", "controller.main", *args, "--state-dir", str(root / "controller")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60, check=False)
    if result.returncode != 0:
        raise AssertionError(f"dockyard-controller {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout.strip()


def wait_for_file(path: Path, within: float = 20) -> None:
    """Waits until path exists (a controller writes its CA at start)."""
    wait_for(path.exists, within, f"{path}")


def agent_join(root: Path, state_dir: Path, join_address: str, hostname: str) -> None:
    """Joins a host as `dockyard-agent join` does, with the token the controller in root/controller keeps."""
    wait_for_file(root / "controller" / "ca.crt")
    token = controller_tool(root, "join-token")
    command = [sys.executable, "-m", "agent.main", "join", "--token", token, "--state-dir", str(state_dir)]

    def joined() -> bool:
        result = subprocess.run(
            [*command, "--hostname", hostname, join_address],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
            check=False,
        )
        return result.returncode == 0

    wait_for(joined, 30, f"{hostname} to join")


def run_cli(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Runs the dockyard CLI with env; when check is set a failure raises with the CLI's stderr."""
    result = subprocess.run(
        [sys.executable, "-m", "dockyard.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"dockyard {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def spawn_controller(address: str, root: Path, *options: str) -> subprocess.Popen[bytes]:
    """Starts `python -m controller.main --init` on address, its state in root/controller, output to
    root/controller.log; options add to (or, --join-listen, replace) the defaults.
    """
    command = [
        sys.executable,
        "-m",
        "controller.main",
        "--init",
        "--listen",
        address,
        "--state-dir",
        str(root / "controller"),
    ]
    with open(root / "controller.log", "ab") as log:
        return subprocess.Popen(
            [*command, *options],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )


@dataclass
class Cluster:
    """A controller and an agent as separate processes, each restartable, with its own state and port."""

    root: Path
    port: int = field(default_factory=free_port)
    join_port: int = field(default_factory=free_port)
    controller: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The controller's address."""
        return f"127.0.0.1:{self.port}"

    @property
    def join_address(self) -> str:
        """The controller's join address."""
        return f"127.0.0.1:{self.join_port}"

    @property
    def credentials(self) -> Path:
        """The admin credentials directory (made once the controller has its CA)."""
        path = self.root / "admin"
        if not (path / "admin.crt").exists():
            wait_for_file(self.root / "controller" / "ca.crt")
            controller_tool(self.root, "admin-cert", "--out", str(path))
        return path

    @property
    def env(self) -> dict[str, str]:
        """The environment for CLI calls: this cluster's controller and admin credentials, a private config home."""
        return {
            **os.environ,
            "DOCKYARD_CONTROLLER": self.address,
            "DOCKYARD_CREDENTIALS": str(self.credentials),
            "XDG_CONFIG_HOME": str(self.root / "config"),
        }

    def admin(self) -> pki.Credentials:
        """The admin credentials, for in-process clients."""
        return pki.Credentials.load(self.credentials, "admin")

    def start_controller(self) -> None:
        """Starts the controller process."""
        self.controller = spawn_controller(self.address, self.root, "--join-listen", self.join_address)

    def start_agent(self) -> None:
        """Starts the agent process, joining the host first if it has not joined yet."""
        state_dir = self.root / "agent"
        if not (state_dir / "cluster.json").exists():
            agent_join(self.root, state_dir, self.join_address, f"e2e-{self.port}")
        with open(self.root / "agent.log", "ab") as log:
            self.agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "agent.main",  # the controller's address is the one the join recorded
                    "--state-dir",
                    str(self.root / "agent"),
                    "--relist-period",
                    "1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )

    @property
    def node_id(self) -> str:
        """The agent's node id (known once the agent has started)."""
        path = self.root / "agent" / "cluster.json"
        wait_for(path.exists, 10, "the agent's node id")
        return str(json.loads(path.read_text())["node_id"])

    def stop(self, which: str, sig: int = signal.SIGTERM) -> None:
        """Stops the controller or the agent with a signal and waits for it."""
        process: subprocess.Popen[bytes] | None = getattr(self, which)
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Runs the dockyard CLI against this cluster."""
        return run_cli(self.env, *args, check=check, timeout=timeout)

    def json(self, *args: str) -> Any:
        """Runs a CLI command with --output json and parses it."""
        return json.loads(self.cli(*args, "--output", "json").stdout)

    def containers(self, **extra: str) -> list[ContainerInfo]:
        """Every container of this cluster's node on the real dockerd (running or not)."""
        return asyncio.run(_list({labels.NODE_ID: self.node_id, **extra}))

    def running(self, service: str) -> list[ContainerInfo]:
        """The running containers of one service."""
        return [c for c in self.containers(**{labels.SERVICE_NAME: service}) if c.state == "running"]

    def logs(self) -> str:
        """The tail of both processes' logs, for failure messages."""
        parts = []
        for name in ("controller", "agent"):
            path = self.root / f"{name}.log"
            if path.exists():
                parts.append(f"--- {name} ---\n" + "\n".join(path.read_text().splitlines()[-40:]))
        return "\n".join(parts)

    def remove_containers(self) -> None:
        """Removes every container this cluster's node made."""
        asyncio.run(_remove({labels.NODE_ID: self.node_id}))


async def _list(selector: dict[str, str]) -> list[ContainerInfo]:
    runtime = DockerRuntime()
    try:
        return await runtime.list(selector)
    finally:
        await runtime.close()


async def _remove(selector: dict[str, str]) -> None:
    runtime = DockerRuntime()
    try:
        for info in await runtime.list(selector):
            await runtime.remove(info.id)
    finally:
        await runtime.close()
