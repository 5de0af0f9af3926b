"""`dockyard dev cluster ...`: a local multi-host cluster of network namespaces for trying and testing Dockyard.

Needs root. Each host hN is a network namespace with its own dockerd and agent, joined with the token as a real
host joins; the controller listens on the cluster bridge (10.213.X.1:7465, mutual TLS; joins on 7466), and `up`
points the CLI at it and at admin credentials like `dockyard up` does. See deploy/devcluster.

The product CLI does not import this module: it finds the `dev` group through the `dockyard.cli` entry point
that pyproject.toml declares, and loads it only when `dockyard dev ...` (or the help listing) asks for it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from deploy.devcluster.cluster import DevCluster, find_leftovers, stderr_progress, sweep
from deploy.devcluster.errors import DevClusterError
from deploy.devcluster.layout import default_state_dir
from dockyard.cli.common import output_option
from dockyard.cli.context import LocalContext, config_dir, read_context, write_context
from dockyard.cli.output import emit, emit_object

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
PREVIOUS_CONTEXT = "previous-context.json"

HOST_COLUMNS = [
    ("HOST", "host"),
    ("ADDRESS", "address"),
    ("LINK", "link"),
    ("DOCKERD", "dockerd_pid"),
    ("AGENT", "agent_pid"),
    ("NETNS", "netns"),
    ("DOCKER", "docker_url"),
    ("LABELS", "labels"),
]


def _state_dir_option(fn: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="State dir of the dev cluster (default: the one the CLI context points at).",
    )(fn)


def _run(body: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine; the dev cluster's errors become a one-line error and exit 1."""
    try:
        return asyncio.run(body)
    except DevClusterError as exc:
        raise click.ClickException(str(exc)) from None


def _open(state_dir: Path | None) -> DevCluster:
    if state_dir is None:
        context = read_context()
        if context is None or not (Path(context.state_dir) / "cluster.json").exists():
            raise click.ClickException("no dev cluster is recorded in the CLI context; pass --state-dir")
        state_dir = Path(context.state_dir)
    try:
        return DevCluster.open(state_dir, progress=stderr_progress)
    except DevClusterError as exc:
        raise click.ClickException(str(exc)) from None


def _parse_labels(values: tuple[str, ...]) -> dict[str, dict[str, str]]:
    labels: dict[str, dict[str, str]] = {}
    for value in values:
        host, sep, pair = value.partition(":")
        key, eq, val = pair.partition("=")
        if not sep or not eq or not key or not host:
            raise click.BadParameter(f"{value!r}: write labels as HOST:KEY=VALUE, e.g. h1:zone=a", param_hint="--label")
        labels.setdefault(host, {})[key] = val
    return labels


@click.group()
def dev() -> None:
    """Developer tools."""


@dev.group()
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
    help="Structured log level (progress lines go to stderr regardless).",
)
def cluster(log_level: str) -> None:
    """A local multi-host cluster: each host a network namespace with its own dockerd and agent (needs root)."""
    from dockyard import logs

    logs.configure(log_level, "console", component="devcluster")


@cluster.command()
@click.option("--hosts", type=click.IntRange(1, 50), default=3, show_default=True, help="How many hosts (h1..hN).")
@_state_dir_option
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="HOST:KEY=VALUE",
    help="An agent label of one host (its agent's --label; constraints read it as engine.labels.KEY).",
)
@click.option("--heartbeat-period", type=click.FloatRange(min=0.05), default=None, help="Controller default: 1s.")
@click.option("--heartbeat-grace", type=click.FloatRange(min=1.5), default=None, help="Controller default: 3.")
@click.option("--relist-period", type=click.FloatRange(min=0.5), default=None, help="Agent default: 5s.")
@click.option(
    "--stranger-grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds before an agent removes a container of ours that no task owns. Agent default: 30s.",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    default=("dockyard-test:latest",),
    show_default=True,
    help="Image copied from this machine's dockerd into every host (repeatable).",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=90.0, show_default=True, help="Seconds to wait.")
@output_option
def up(
    hosts: int,
    state_dir: Path | None,
    labels: tuple[str, ...],
    heartbeat_period: float | None,
    heartbeat_grace: float | None,
    relist_period: float | None,
    stranger_grace: float | None,
    images: tuple[str, ...],
    timeout: float,
    output: str,
) -> None:
    """Start a cluster of HOSTS hosts and point the CLI at it."""
    created = _run(
        DevCluster.up(
            hosts,
            state_dir,
            _parse_labels(labels),
            heartbeat_period=heartbeat_period,
            heartbeat_grace=heartbeat_grace,
            relist_period=relist_period,
            stranger_grace=stranger_grace,
            images=images,
            ready_timeout=timeout,
            progress=stderr_progress,
        )
    )
    previous = read_context()
    if previous is not None:
        (created.state_dir / PREVIOUS_CONTEXT).write_text(json.dumps(dataclasses.asdict(previous)) + "\n")
    write_context(
        LocalContext(
            controller=created.controller_address,
            state_dir=str(created.state_dir),
            credentials=str(created.credentials_dir),
        )
    )
    status = created.status()
    if output == "json":
        emit_object(status, output, "")
        return
    emit(status["hosts"], HOST_COLUMNS, output)
    click.echo(
        f"\ncluster {created.cluster_id} is up: controller {created.controller_address}, state in {created.state_dir}\n"
        f"the CLI now points at it with the admin credentials in {created.credentials_dir} (try `dockyard nodes`)\n"
        f"the hosts joined at {created.join_address}; `dockyard join-token` prints the token\n"
        f"a host's docker: docker -H {created.docker_url(created.hosts[0])} ps\n"
        f"a shell in a host's network: nsenter --net=/var/run/netns/{status['hosts'][0]['netns']} sh\n"
        f"stop it with `dockyard dev cluster down`"
    )


@cluster.command()
@_state_dir_option
@click.option("--id", "cluster_id", default=None, help="Sweep a cluster by id alone (when its state dir is gone).")
@click.option("--keep-state", is_flag=True, help="Keep the state file and logs (docker roots go anyway).")
@output_option
def down(state_dir: Path | None, cluster_id: str | None, keep_state: bool, output: str) -> None:
    """Stop the cluster and remove everything it created (idempotent)."""
    if cluster_id is not None and state_dir is None and not (default_state_dir(cluster_id) / "cluster.json").exists():
        directory = default_state_dir(cluster_id)
        swept = _run(sweep(cluster_id, directory))
        report: dict[str, Any] = {
            "cluster_id": cluster_id,
            "swept": swept,
            "leftovers": find_leftovers(cluster_id, directory),
        }
        if not report["leftovers"] and directory.is_dir():
            # Named after the cluster id by `up`: nothing else lives there.
            shutil.rmtree(directory, ignore_errors=True)
            report["swept"].append(f"dir {directory}")
    else:
        if cluster_id is not None and state_dir is None:
            state_dir = default_state_dir(cluster_id)
        opened = _open(state_dir)
        previous = _previous_context(opened.state_dir)
        report = _run(opened.down(remove_state=not keep_state))
        _restore_context(opened.state_dir, previous)
    leftovers = report["leftovers"]
    text = f"cluster {report['cluster_id']} is down" + (
        f"; left behind: {'; '.join(leftovers)}" if leftovers else "; nothing left behind"
    )
    emit_object(report, output, text)
    if leftovers:
        raise click.ClickException(f"{len(leftovers)} thing(s) left behind")


@cluster.command("add-host")
@_state_dir_option
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="An agent label of the new host.")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True, help="Seconds to wait.")
@output_option
def add_host(state_dir: Path | None, labels: tuple[str, ...], timeout: float, output: str) -> None:
    """Add a host (the next hN) that joins with the current token as a real host does; wait until it is ready."""
    pairs: dict[str, str] = {}
    for value in labels:
        key, eq, val = value.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{value!r}: write labels as KEY=VALUE, e.g. zone=a", param_hint="--label")
        pairs[key] = val
    opened = _open(state_dir)
    name = _run(opened.add_host(pairs, wait_seconds=timeout))
    emit_object(
        {"host": name, "action": "add-host", **_host_row(opened, name)},
        output,
        f"{name}: joined as node {opened.node_id(name)} and ready",
    )


def _previous_context(state_dir: Path) -> LocalContext | None:
    try:
        data = json.loads((state_dir / PREVIOUS_CONTEXT).read_text())
        return LocalContext(
            controller=str(data["controller"]),
            state_dir=str(data["state_dir"]),
            credentials=str(data.get("credentials", "")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _restore_context(state_dir: Path, previous: LocalContext | None) -> None:
    """Points the CLI back where it pointed before `up`, if it still points at this cluster."""
    current = read_context()
    if current is None or Path(current.state_dir) != state_dir:
        return
    if previous is not None:
        write_context(previous)
    else:
        (config_dir() / "context.json").unlink(missing_ok=True)


def _host_command(
    name: str, action: Callable[[DevCluster, str], Coroutine[Any, Any, Any]], summary: str, done: str
) -> click.Command:
    @click.command(name=name, help=summary)
    @click.argument("host")
    @_state_dir_option
    @output_option
    def command(host: str, state_dir: Path | None, output: str) -> None:
        opened = _open(state_dir)
        _run(action(opened, host))
        emit_object({"host": host, "action": name, **_host_row(opened, host)}, output, f"{host}: {done}")

    return command


def _host_row(opened: DevCluster, host: str) -> dict[str, Any]:
    rows: list[dict[str, Any]] = opened.status()["hosts"]
    return next(row for row in rows if row["host"] == host)


async def _kill(c: DevCluster, host: str) -> None:
    await c.kill(host)


async def _revive(c: DevCluster, host: str) -> None:
    await c.revive(host)


async def _partition(c: DevCluster, host: str) -> None:
    await c.partition(host)


async def _heal(c: DevCluster, host: str) -> None:
    await c.heal(host)


async def _restart_agent(c: DevCluster, host: str) -> None:
    await c.restart_agent(host)


async def _restart_docker(c: DevCluster, host: str) -> None:
    await c.restart_docker(host)


async def _stop_agent(c: DevCluster, host: str) -> None:
    await c.stop_agent(host, signal.SIGTERM)


async def _start_agent(c: DevCluster, host: str) -> None:
    await c.start_agent(host)


for _name, _action, _summary, _done in (
    (
        "kill",
        _kill,
        "The host dies: link down, then its agent, containers, dockerd and containerd SIGKILLed "
        "(its disk stays; `revive` boots it).",
        "killed",
    ),
    ("revive", _revive, "Boot a killed host again: link up, dockerd, agent.", "revived"),
    ("partition", _partition, "Cut the host off the network (its veth goes down); all keeps running.", "cut off"),
    ("heal", _heal, "Reconnect a partitioned host.", "reconnected"),
    ("restart-agent", _restart_agent, "SIGKILL the host's agent and start it again.", "agent restarted"),
    (
        "restart-docker",
        _restart_docker,
        "Stop the host's dockerd with SIGTERM (Docker stops its containers), then start it again.",
        "dockerd restarted",
    ),
    ("stop-agent", _stop_agent, "Stop the host's agent with SIGTERM (containers keep running).", "agent stopped"),
    ("start-agent", _start_agent, "Start the host's agent unless it runs.", "agent running"),
):
    cluster.add_command(_host_command(_name, _action, _summary, _done))


@cluster.command()
@_state_dir_option
@output_option
def status(state_dir: Path | None, output: str) -> None:
    """Show the cluster's hosts with their processes, addresses and link states."""
    opened = _open(state_dir)
    info = opened.status()
    if output == "json":
        emit_object(info, output, "")
        return
    click.echo(
        f"cluster {info['cluster_id']} ({info['phase']}): controller {info['controller']} "
        f"(pid {info['controller_pid'] or '-'}), subnet {info['subnet']}, state in {info['state_dir']}\n"
        f"joins at {info['join_address'] or '-'} with token {info['join_token'] or '-'}; "
        f"admin credentials in {info['credentials'] or '-'}"
    )
    emit(info["hosts"], HOST_COLUMNS, output)
