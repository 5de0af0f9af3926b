"""`dockyard up` and `dockyard down`: the all-in-one local cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from dockyard import pki
from dockyard.addresses import JOIN_PORT, connect_address, join_listen_for
from dockyard.cli.common import output_option
from dockyard.cli.context import (
    ADMIN_STEM,
    LocalContext,
    default_state_dir,
    local_credentials_dir,
    read_context,
    write_context,
)
from dockyard.cli.output import emit_object
from dockyard.cli.polling import poll_until
from dockyard.client import ApiError, Client
from dockyard.limits import DEFAULT_CONTROLLER
from dockyard.local.pidfile import read_pid, write_pid
from dockyard.local.preflight import address_problem
from dockyard.v1 import types_pb2 as pb

READY_TIMEOUT = 60.0


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the store, agent state, pid file and logs live (default: ~/.local/share/dockyard).",
)
@click.option("--listen", default=DEFAULT_CONTROLLER, show_default=True, help="Controller address.")
@click.option(
    "--join-listen", default="", help=f"Where hosts join with the token [default: the --listen host, port {JOIN_PORT}]."
)
@click.option("--detach", "-d", is_flag=True, help="Run in the background; logs go to STATE_DIR/dockyard.log.")
@click.option("--docker-url", default=None, help="Docker socket for the local agent.")
@click.option("--hostname", default="", help="Name the local node registers as.")
@click.option("--label", "labels", multiple=True, help="Label KEY=VALUE for the local node (repeatable).")
@output_option
def up(
    state_dir: Path | None,
    listen: str,
    join_listen: str,
    detach: bool,
    docker_url: str | None,
    hostname: str,
    labels: tuple[str, ...],
    output: str,
) -> None:
    """Run a controller and a local agent on this host (embedded SQLite state)."""
    from dockyard.local.supervisor import ChildFailed, LocalCluster, supervise

    state = (state_dir or default_state_dir()).resolve()
    pid_path = state / "dockyard.pid"
    running = read_pid(pid_path)
    if running is not None:
        raise click.ClickException(f"already running (pid {running}) with state in {state}; run `dockyard down` first")
    address = connect_address(listen)
    problem = address_problem(listen) or address_problem(join_listen or join_listen_for(listen))
    if problem is not None:
        raise click.ClickException(problem)
    if detach:
        background = _start_detached(state, listen, join_listen, docker_url, hostname, labels)
        write_context(
            LocalContext(controller=address, state_dir=str(state), credentials=str(local_credentials_dir(state)))
        )
        node = asyncio.run(_wait_ready(address, local_credentials_dir(state), READY_TIMEOUT, background.check))
        info = {
            "controller": address,
            "state_dir": str(state),
            "pid": read_pid(pid_path),
            "log": str(state / "dockyard.log"),
            "node": node,
        }
        emit_object(
            info,
            output,
            f"Dockyard is up: controller {address}, node {node}, state in {state}\n"
            f"logs: {state / 'dockyard.log'}; stop with `dockyard down`",
        )
        return
    from dockyard import logs

    logs.configure("info", "console", component="supervisor")
    state.mkdir(parents=True, exist_ok=True)
    write_pid(pid_path, os.getpid())
    write_context(LocalContext(controller=address, state_dir=str(state), credentials=str(local_credentials_dir(state))))
    cluster = LocalCluster(
        state_dir=state, listen=listen, join_listen=join_listen, docker_url=docker_url, hostname=hostname, labels=labels
    )
    try:
        asyncio.run(supervise(cluster))
    except ChildFailed as exc:
        # The child's own line says what is wrong and what to do; restarting would fail the same way.
        raise click.ClickException(str(exc)) from None
    finally:
        if read_pid(pid_path) == os.getpid():
            pid_path.unlink()


@dataclass(frozen=True)
class _Background:
    """A detached `dockyard up` and where its log starts for this run."""

    process: subprocess.Popen[bytes]
    log: Path
    log_offset: int

    def check(self) -> None:
        """Raises ClickException with the background's own one-line error once it has exited."""
        code = self.process.poll()
        if code is None:
            return
        with open(self.log, "rb") as log_file:
            log_file.seek(self.log_offset)
            lines = log_file.read().decode(errors="replace").splitlines()
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        # A ClickException in the background ends its log with "Error: <the one line>".
        if last.startswith("Error: "):
            raise click.ClickException(last.removeprefix("Error: "))
        raise click.ClickException(f"the cluster exited (code {code}); see {self.log}")


def _start_detached(
    state: Path, listen: str, join_listen: str, docker_url: str | None, hostname: str, labels: tuple[str, ...]
) -> _Background:
    """Starts `dockyard up` in its own session, logging to STATE/dockyard.log; returns once it has a pid file."""
    state.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "dockyard.cli.main", "up", "--state-dir", str(state), "--listen", listen]
    if join_listen:
        argv += ["--join-listen", join_listen]
    if docker_url:
        argv += ["--docker-url", docker_url]
    if hostname:
        argv += ["--hostname", hostname]
    for label in labels:
        argv += ["--label", label]
    log_path = state / "dockyard.log"
    with open(log_path, "ab") as log_file:
        offset = log_file.tell()
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    background = _Background(process, log_path, offset)
    deadline = time.monotonic() + 10
    while read_pid(state / "dockyard.pid") is None:
        background.check()
        if time.monotonic() > deadline:
            raise click.ClickException(f"the cluster did not start; see {log_path}")
        time.sleep(0.05)
    return background


async def _wait_ready(
    address: str, credentials_dir: Path, wait_seconds: float, check: Callable[[], None] = lambda: None
) -> str:
    """Waits until the admin credentials exist, the controller answers and a node is ready; returns that
    node's host name.

    check() is called on every round and may raise to give up early (the cluster exited).
    """
    last = "the controller did not answer"
    client: Client | None = None

    async def ready_node() -> str | None:
        nonlocal last, client
        check()
        if client is None:
            try:
                credentials = pki.Credentials.load(credentials_dir, ADMIN_STEM)
            except pki.PkiError:
                last = "no admin credentials yet"
                return None
            client = Client(address, deadline=2.0, credentials=credentials)
        try:
            for node in await client.list_nodes():
                if node.status == pb.NODE_STATUS_READY:
                    return node.description.hostname or node.id
            last = "no node is ready yet"
        except ApiError as exc:
            last = str(exc)
        return None

    try:
        return await poll_until(ready_node, within=wait_seconds, waiting_for=lambda: f"for a ready node: {last}")
    except ApiError as exc:
        raise click.ClickException(f"the cluster is not ready: {exc}") from None
    finally:
        if client is not None:
            await client.__aexit__(None, None, None)


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="State directory of the cluster to stop (default: the one `dockyard up` recorded).",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=30.0, show_default=True)
@output_option
def down(state_dir: Path | None, timeout: float, output: str) -> None:
    """Stop the local controller and agent; containers keep running."""
    if state_dir is None:
        context = read_context()
        state_dir = Path(context.state_dir) if context else default_state_dir()
    pid_path = state_dir.resolve() / "dockyard.pid"
    pid = read_pid(pid_path)
    if pid is None:
        emit_object({"stopped": False, "state_dir": str(state_dir)}, output, f"not running (state in {state_dir})")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while read_pid(pid_path) is not None and _alive(pid):
        if time.monotonic() > deadline:
            _kill_group(pid)
            break
        time.sleep(0.05)
    emit_object(
        {"stopped": True, "pid": pid, "state_dir": str(state_dir)},
        output,
        f"stopped (pid {pid}); containers keep running",
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(pid: int) -> None:
    """Kills a detached cluster's whole process group (it leads its own session), or the one process."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
