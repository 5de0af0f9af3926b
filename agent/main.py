"""The dockyard-agent command: with no subcommand it runs the agent; `join` makes this host a node first;
`cleanup-network` removes Dockyard's network state from a host whose node is gone."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import socket
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

import click

from agent.config import AgentConfig
from agent.identity import NotJoined, join
from agent.policy import BIND_PATHS, HOST_PORTS, HOST_PROTOCOLS, HostPolicy, PolicyError
from dockyard import logs, pki
from dockyard.addresses import is_loopback
from dockyard.config_file import EXIT_CONFIG, config_option
from dockyard.limits import DEFAULT_CONTROLLER

if TYPE_CHECKING:
    from agent.network.cleanup import Cleanup

PROG = "dockyard-agent"
DEFAULT_STATE_DIR = Path("/var/lib/dockyard/agent")
_STATE_DIR_TYPE = click.Path(file_okay=False, path_type=Path)


class _Failure(click.ClickException):
    """A one-line failure printed as `dockyard-agent: <message>`; exits 1."""


class _ConfigFailure(_Failure):
    """The agent cannot run as configured (not joined, --insecure off loopback): restarting would fail the same
    way, so it exits with EX_CONFIG, which the unit and `dockyard up` do not restart."""

    exit_code = EXIT_CONFIG

    def show(self, file: IO[str] | None = None) -> None:
        """Prints the one line to stderr."""
        click.echo(f"{PROG}: {self.message}", file=file or sys.stderr)


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: write labels as KEY=VALUE", param_hint="--label")
        labels[key] = val
    return labels


@click.group(
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Run with no command to start the agent in the foreground (after `join`, unless --insecure).",
)
@click.option(
    "--controller",
    default="",
    help=f"The controller's API address [default: the one `join` recorded; with --insecure {DEFAULT_CONTROLLER}].",
)
@click.option(
    "--state-dir",
    type=_STATE_DIR_TYPE,
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the node's identity, certificates and task book live.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext to a loopback controller run with --insecure, no certificates: experiments only.",
)
@click.option("--docker-url", default=None, help="Docker socket, e.g. unix:///var/run/docker.sock.")
@click.option("--hostname", default="", help="With --insecure: the name to register as (default: Docker's).")
@click.option(
    "--label",
    "label_values",
    multiple=True,
    help="Agent label KEY=VALUE (repeatable); constraints read them as engine.labels.KEY.",
)
@click.option(
    "--heartbeat-period",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between heartbeats until the controller's welcome sets its own period.",
)
@click.option(
    "--relist-period",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="Seconds between full re-lists of this host's containers, which catch what Docker's events missed.",
)
@click.option(
    "--stranger-grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds a container labelled for this node but for no known task may stay before it is removed.",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=AgentConfig.connect_timeout,
    show_default=True,
    help="Seconds a dial to the controller may take before it is abandoned and made again.",
)
@click.option(HOST_PORTS.option, default=HOST_PORTS.default, show_default=True, help=HOST_PORTS.help)
@click.option(HOST_PROTOCOLS.option, default=HOST_PROTOCOLS.default, show_default=True, help=HOST_PROTOCOLS.help)
@click.option(BIND_PATHS.option, default=BIND_PATHS.default, show_default=True, help=BIND_PATHS.help)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--log-format", type=click.Choice(["console", "json"]), default="console")
@click.pass_context
def main(
    ctx: click.Context,
    controller: str,
    state_dir: Path,
    insecure: bool,
    docker_url: str | None,
    hostname: str,
    label_values: tuple[str, ...],
    heartbeat_period: float,
    relist_period: float,
    stranger_grace: float,
    connect_timeout: float,
    allow_host_ports: str,
    allow_host_protocols: str,
    allow_bind_paths: str,
    log_level: str,
    log_format: str,
) -> None:
    """Runs the Dockyard agent for this host in the foreground, or joins this host to a cluster."""
    ctx.obj = state_dir
    if ctx.invoked_subcommand is not None:
        return
    logs.configure(log_level, log_format, component="agent")
    try:
        policy = HostPolicy.from_settings(
            host_ports=allow_host_ports, host_protocols=allow_host_protocols, bind_paths=allow_bind_paths
        )
    except PolicyError as exc:
        raise click.BadParameter(exc.problem, param_hint=exc.setting.option) from exc
    if insecure and not is_loopback(controller or DEFAULT_CONTROLLER):
        raise _ConfigFailure(f"--insecure: refused for {controller}; plaintext is for a loopback controller only")
    config = AgentConfig(
        controller=controller,
        state_dir=state_dir,
        docker_url=docker_url,
        hostname=hostname,
        labels=_labels(label_values),
        heartbeat_period=heartbeat_period,
        relist_period=relist_period,
        stranger_grace=stranger_grace,
        connect_timeout=connect_timeout,
        insecure=insecure,
        policy=policy,
    )
    try:
        asyncio.run(_run(config))
    except NotJoined as exc:
        raise _ConfigFailure(str(exc)) from None


main.params.insert(0, config_option())


async def _run(config: AgentConfig) -> None:
    # Imported here: `dockyard-agent join` needs neither the agent nor Docker's client (a quicker join).
    from agent.agent import Agent
    from agent.network.host import HostNetwork
    from agent.runtime.docker import DockerRuntime

    runtime = DockerRuntime(config.docker_url)
    try:
        agent = Agent(config, runtime, host_network=HostNetwork())
    except BaseException:
        await runtime.close()
        raise
    runner = asyncio.create_task(agent.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.cancel)
    try:
        await runner
    except asyncio.CancelledError:
        pass
    finally:
        await runtime.close()


@main.command("join")
@click.argument("controller")
@click.option("--token", required=True, envvar="DOCKYARD_JOIN_TOKEN", help="The join token (`dockyard join-token`).")
@click.option("--hostname", default="", help="The node's host name, fixed at join [default: this host's name].")
@click.option(
    "--state-dir", type=_STATE_DIR_TYPE, default=None, help=f"Where to keep the identity [{DEFAULT_STATE_DIR}]."
)
@click.option(
    "--rejoin",
    is_flag=True,
    help="Join again although this host has joined: it becomes a new node, and the old node's containers "
    "here are removed after the stranger grace.",
)
@click.pass_context
def join_command(
    ctx: click.Context, controller: str, token: str, hostname: str, state_dir: Path | None, rejoin: bool
) -> None:
    """Join this host to the cluster whose controller's join address is CONTROLLER (HOST, or HOST:PORT).

    The controller is checked against the CA digest in the token before anything is sent; the node's key,
    certificate and the controller's address are written to the state dir. Start the agent afterwards.
    """
    directory = state_dir if state_dir is not None else ctx.find_root().obj
    assert isinstance(directory, Path)
    try:
        membership = asyncio.run(join(directory, controller, token, hostname or socket.gethostname(), rejoin=rejoin))
    except NotJoined as exc:
        raise _Failure(str(exc)) from None
    except pki.PkiError as exc:  # a malformed token
        raise _Failure(str(exc)) from None
    click.echo(
        f"joined cluster {membership.cluster_id} as node {membership.node_id}; controller {membership.controller}"
    )


@main.command("cleanup-network")
@click.option("--state-dir", type=_STATE_DIR_TYPE, default=None, help=f"The agent's state dir [{DEFAULT_STATE_DIR}].")
@click.option("--docker-url", default=None, help="Docker socket, e.g. unix:///var/run/docker.sock.")
@click.option(
    "--docker-networks/--no-docker-networks",
    default=True,
    show_default=True,
    help="Also remove Dockyard's Docker networks that no container uses.",
)
@click.option(
    "--netns",
    default=None,
    help="Clean this named network namespace (ip netns) instead of this process's, for a host kept in one.",
)
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
def cleanup_network_command(
    ctx: click.Context,
    state_dir: Path | None,
    docker_url: str | None,
    docker_networks: bool,
    netns: str | None,
    output: str,
) -> None:
    """Remove Dockyard's network state from this host: run it with the agent stopped, once its node is removed.

    Removes the routes of Dockyard's protocol, the dky-vxlan device, the DOCKYARD-* chains and the jumps to
    them, Dockyard's Docker networks no container uses, and the network map and DNS table in the state dir.
    The agent never does this by itself (docs/design/network.md, "Cleaning a host"). Exits 1 if anything
    could not be removed (listed), 0 otherwise.
    """
    directory = state_dir if state_dir is not None else ctx.find_root().obj
    assert isinstance(directory, Path)
    logs.configure("info", "console", component="agent")  # to stderr: stdout is the answer (-o json)
    done = asyncio.run(_clean_network(directory, docker_url, netns, docker_networks))
    if output == "json":
        click.echo(json.dumps(dataclasses.asdict(done), indent=2))
    else:
        click.echo("cleared: the routes of Dockyard's protocol, dky-vxlan, the DOCKYARD-* chains and their jumps")
        for name in done.networks_removed:
            click.echo(f"docker network {name} removed")
        for name in done.networks_in_use:
            click.echo(f"docker network {name} kept: containers still use it; remove them and run this again")
        for path in done.files_removed:
            click.echo(f"{path} removed")
        for problem in done.problems:
            click.echo(f"{PROG}: {problem}", err=True)
    if done.problems:
        ctx.exit(1)


async def _clean_network(state_dir: Path, docker_url: str | None, netns: str | None, docker: bool) -> Cleanup:
    # Imported here, as in _run: `join` and `--help` need neither netlink nor Docker's client.
    from agent.network.cleanup import clean_host
    from agent.network.host import HostNetwork
    from agent.runtime.docker import DockerRuntime

    runtime = DockerRuntime(docker_url) if docker else None
    try:
        return await clean_host(HostNetwork(netns=netns), runtime, state_dir)
    finally:
        if runtime is not None:
            await runtime.close()


if __name__ == "__main__":
    main(prog_name=PROG)
