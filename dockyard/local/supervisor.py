"""Runs the controller and the local agent as child processes, restarting either if it dies."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dockyard.backoff import Backoff

log = structlog.get_logger()

STOP_TIMEOUT = 20.0


@dataclass(frozen=True)
class LocalCluster:
    """What `dockyard up` runs."""

    state_dir: Path
    listen: str = "127.0.0.1:7465"
    docker_url: str | None = None
    hostname: str = ""
    labels: Sequence[str] = field(default_factory=tuple)
    log_format: str = "console"

    def controller_argv(self) -> list[str]:
        """Returns the controller's command line."""
        return [
            sys.executable,
            "-m",
            "controller.main",
            "--listen",
            self.listen,
            "--state-dir",
            str(self.state_dir / "controller"),
            "--log-format",
            self.log_format,
        ]

    def agent_argv(self) -> list[str]:
        """Returns the local agent's command line."""
        argv = [
            sys.executable,
            "-m",
            "agent.main",
            "--controller",
            self.listen,
            "--state-dir",
            str(self.state_dir / "agent"),
            "--log-format",
            self.log_format,
        ]
        if self.docker_url:
            argv += ["--docker-url", self.docker_url]
        if self.hostname:
            argv += ["--hostname", self.hostname]
        for label in self.labels:
            argv += ["--label", label]
        return argv


async def supervise(cluster: LocalCluster) -> None:
    """Runs both children until SIGTERM or SIGINT, then stops the agent first and the controller last."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    children = {
        "controller": asyncio.create_task(_keep_running("controller", cluster.controller_argv(), stop)),
        "agent": asyncio.create_task(_keep_running("agent", cluster.agent_argv(), stop)),
    }
    await stop.wait()
    log.info("stopping local cluster; containers keep running")
    # The agent goes first so it never sees its controller vanish.
    for name in ("agent", "controller"):
        with contextlib.suppress(asyncio.CancelledError):
            await children[name]


async def _keep_running(name: str, argv: list[str], stop: asyncio.Event) -> None:
    backoff = Backoff(base=0.5, cap=10.0)
    while not stop.is_set():
        process = await asyncio.create_subprocess_exec(*argv)
        log.info("started", child=name, pid=process.pid)
        waiter = asyncio.create_task(process.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            stopper.cancel()
            await _terminate(process, waiter)
            return
        stopper.cancel()
        delay = backoff.next_delay()
        log.error("child exited; restarting", child=name, code=process.returncode, restart_in=round(delay, 2))
        await asyncio.sleep(delay)


async def _terminate(process: asyncio.subprocess.Process, waiter: asyncio.Task[int]) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await asyncio.shield(waiter)
    except TimeoutError:
        process.kill()
        await waiter
