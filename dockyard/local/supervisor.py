"""Runs the controller and the local agent as child processes, restarting either if it dies.

A child that exits with EX_CONFIG (78) is not restarted: it says that starting again with the same state
and flags fails the same way (a damaged store, an address in use). The supervisor then stops the other
child and raises ChildFailed with the last line the child wrote to stderr, which is its one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from dockyard import pki
from dockyard.addresses import JOIN_PORT, connect_address, host_of, join_listen_for, split_listen, with_port
from dockyard.backoff import Backoff
from dockyard.cli.context import local_credentials_dir
from dockyard.config_file import EXIT_CONFIG
from dockyard.limits import DEFAULT_CONTROLLER

__all__ = ["EXIT_CONFIG", "STOP_TIMEOUT", "ChildFailed", "LocalCluster", "supervise", "supervise_children"]

log = structlog.get_logger()

STOP_TIMEOUT = 20.0
# How much of a child's stderr is kept to find its last line.
_TAIL_BYTES: Final = 8192
_CHUNK: Final = 65536


class ChildFailed(Exception):
    """A child exited with EX_CONFIG; str() is the last line it wrote to stderr (its reason)."""

    def __init__(self, child: str, message: str) -> None:
        """Keeps which child failed and its one-line reason."""
        super().__init__(message)
        self.child = child


@dataclass(frozen=True)
class LocalCluster:
    """What `dockyard up` runs."""

    state_dir: Path
    listen: str = DEFAULT_CONTROLLER
    join_listen: str = ""  # empty: the listen host, addresses.JOIN_PORT
    docker_url: str | None = None
    hostname: str = ""
    labels: Sequence[str] = field(default_factory=tuple)
    log_format: str = "console"

    @property
    def credentials_dir(self) -> Path:
        """Where the admin credentials for the CLI are written."""
        return local_credentials_dir(self.state_dir)

    @property
    def join_address(self) -> str:
        """Where the local agent joins: the join address's port on the address the CLI dials."""
        join = split_listen(self.join_listen or join_listen_for(self.listen))
        return with_port(host_of(connect_address(self.listen)), join[1] if join is not None else JOIN_PORT)

    def controller_argv(self) -> list[str]:
        """Returns the controller's command line; --init makes the cluster on the first start."""
        return [
            sys.executable,
            "-m",
            "controller.main",
            *self._init(),
            "--listen",
            self.listen,
            "--join-listen",
            self.join_listen or join_listen_for(self.listen),
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
            connect_address(self.listen),
            "--state-dir",
            str(self.state_dir / "agent"),
            "--log-format",
            self.log_format,
        ]
        if self.docker_url:
            argv += ["--docker-url", self.docker_url]
        for label in self.labels:
            argv += ["--label", label]
        return argv

    def _init(self) -> list[str]:
        """--init on the first start only: when neither a store nor a joined agent is here. A controller dir
        emptied under a joined agent must not come back as a new cluster (the agent would never connect)."""
        controller_dir = self.state_dir / "controller"
        fresh = not controller_dir.exists() or not any(controller_dir.iterdir())
        return ["--init"] if fresh and not (self.state_dir / "agent" / pki.CLUSTER_FILE).exists() else []

    async def prepare_agent(self) -> None:
        """Before the agent's first start: admin credentials for the CLI, and the host joined with the token,
        as `dockyard-controller admin-cert` and `dockyard-agent join` do on a real host. Retries until the
        controller has made its CA and answers on the join address.
        """
        controller_dir = self.state_dir / "controller"
        agent_dir = self.state_dir / "agent"
        backoff = Backoff(base=0.1, cap=1.0)
        while True:
            try:
                if not (self.credentials_dir / f"{pki.ADMIN_STEM}.crt").exists():
                    await _tool(
                        "controller.main",
                        "admin-cert",
                        "--state-dir",
                        str(controller_dir),
                        "--out",
                        str(self.credentials_dir),
                    )
                if not (agent_dir / pki.CLUSTER_FILE).exists():
                    token = await _tool("controller.main", "join-token", "--state-dir", str(controller_dir))
                    hostname = ["--hostname", self.hostname] if self.hostname else []
                    # The token in the environment, not on the command line every local user can read.
                    await _tool(
                        "agent.main",
                        "join",
                        "--state-dir",
                        str(agent_dir),
                        *hostname,
                        self.join_address,
                        env={"DOCKYARD_JOIN_TOKEN": token},
                    )
                return
            except _ToolFailed as exc:
                log.info("waiting for the controller before the agent starts", step=str(exc))
                await asyncio.sleep(backoff.next_delay())


async def supervise(cluster: LocalCluster) -> None:
    """Runs the controller and the agent until SIGTERM or SIGINT, then stops the agent first.

    Raises ChildFailed, after stopping the other child, when one exits with EX_CONFIG.
    """
    await supervise_children(
        [("controller", cluster.controller_argv(), None), ("agent", cluster.agent_argv(), cluster.prepare_agent)]
    )


Prepare = Callable[[], Coroutine[Any, Any, None]]


class _ToolFailed(Exception):
    """A one-shot command (admin-cert, join-token, join) failed; str() is its last line."""


async def _tool(module: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Runs `python -m module args` (env added to ours), returns its stdout; _ToolFailed with its last stderr
    line otherwise."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        raise _ToolFailed(lines[-1] if lines else f"{module} {args[0]} exited with {process.returncode}")
    return out.decode().strip()


async def supervise_children(children: Sequence[tuple[str, Sequence[str], Prepare | None]]) -> None:
    """Runs each (name, argv, prepare), restarting any that exits, until SIGTERM or SIGINT; stops them in
    reverse order. prepare, when given, is awaited before the child's first start.

    Each child's stderr passes through to ours. Raises ChildFailed, after stopping the others, when a child
    exits with EX_CONFIG.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        running = {
            name: asyncio.create_task(_keep_running(name, list(argv), stop, prepare), name=f"supervise-{name}")
            for name, argv, prepare in children
        }
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([stopper, *running.values()], return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        failed = next((task for task in running.values() if task.done() and task.exception() is not None), None)
        if failed is None:
            log.info("stopping local cluster; containers keep running")
        stop.set()
        # The agent goes first so it never sees its controller vanish.
        for name, _, _ in reversed(children):
            try:
                await running[name]
            except Exception as exc:
                if running[name] is not failed:
                    log.error("child failed while stopping", child=name, error=str(exc))
        if failed is not None:
            raise failed.exception()  # type: ignore[misc]
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _keep_running(name: str, argv: list[str], stop: asyncio.Event, prepare: Prepare | None = None) -> None:
    """Runs and restarts one child until stop is set; ChildFailed when it exits with EX_CONFIG."""
    backoff = Backoff(base=0.5, cap=10.0)
    if prepare is not None:
        preparing = asyncio.create_task(prepare())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({preparing, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not preparing.done():
            preparing.cancel()
            return
        preparing.result()
    while not stop.is_set():
        process = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
        log.info("started", child=name, pid=process.pid)
        assert process.stderr is not None
        tail = asyncio.create_task(_pass_through(process.stderr))
        waiter = asyncio.create_task(process.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            await _terminate(process, waiter)
            await _last_words(tail)
            return
        last_line = await _last_words(tail)
        if process.returncode == EXIT_CONFIG:
            log.error("child cannot start as configured; not restarting", child=name, code=process.returncode)
            raise ChildFailed(name, last_line or f"the {name} exited with code {EXIT_CONFIG} (configuration error)")
        delay = backoff.next_delay()
        log.error("child exited; restarting", child=name, code=process.returncode, restart_in=round(delay, 2))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()


async def _pass_through(stream: asyncio.StreamReader) -> bytes:
    """Copies a child's stderr to ours until EOF; returns the last bytes of it."""
    tail = b""
    while chunk := await stream.read(_CHUNK):
        _write_stderr(chunk)
        tail = (tail + chunk)[-_TAIL_BYTES:]
    return tail


def _write_stderr(data: bytes) -> None:
    """Writes bytes to file descriptor 2, where the child's stderr went before it was piped through us."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(2, view)
        except BlockingIOError:
            # A non-blocking stderr that is full (a slow terminal or pipe): wait until it drains, briefly.
            select.select([], [2], [], 1.0)
            continue
        except OSError:
            return  # stderr closed: the tail is still kept for the child's last line
        view = view[written:]


async def _last_words(tail: asyncio.Task[bytes]) -> str:
    """Returns the last non-empty line the child wrote to stderr ("" if none, or if its pipe stays open)."""
    try:
        # A grandchild could hold the pipe open; the line that matters was written before the exit.
        async with asyncio.timeout(2.0):
            data = await tail
    except TimeoutError:
        return ""
    lines = [line.strip() for line in data.decode(errors="replace").splitlines()]
    return next((line for line in reversed(lines) if line), "")


async def _terminate(process: asyncio.subprocess.Process, waiter: asyncio.Task[int]) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await asyncio.shield(waiter)
    except TimeoutError:
        process.kill()
        await waiter
