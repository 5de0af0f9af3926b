"""The dockyard-agent command."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click

from agent.agent import Agent
from agent.config import AgentConfig
from agent.runtime.docker import DockerRuntime
from dockyard import logs
from dockyard.limits import DEFAULT_CONTROLLER


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r}: write labels as KEY=VALUE", param_hint="--label")
        labels[key] = val
    return labels


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--controller", default=DEFAULT_CONTROLLER, show_default=True, help="The controller's address.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/dockyard/agent"),
    show_default=True,
    help="Where the node id and the task book live.",
)
@click.option("--docker-url", default=None, help="Docker socket, e.g. unix:///var/run/docker.sock.")
@click.option("--hostname", default="", help="Name to register as (default: Docker's host name).")
@click.option("--label", "label_values", multiple=True, help="Node label KEY=VALUE (repeatable).")
@click.option("--heartbeat-period", type=click.FloatRange(min=0.05), default=1.0, show_default=True)
@click.option("--relist-period", type=click.FloatRange(min=0.5), default=5.0, show_default=True)
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
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--log-format", type=click.Choice(["console", "json"]), default="console")
def main(
    controller: str,
    state_dir: Path,
    docker_url: str | None,
    hostname: str,
    label_values: tuple[str, ...],
    heartbeat_period: float,
    relist_period: float,
    stranger_grace: float,
    connect_timeout: float,
    log_level: str,
    log_format: str,
) -> None:
    """Runs the Dockyard agent for this host in the foreground."""
    logs.configure(log_level, log_format, component="agent")
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
    )
    asyncio.run(_run(config))


async def _run(config: AgentConfig) -> None:
    runtime = DockerRuntime(config.docker_url)
    agent = Agent(config, runtime)
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


if __name__ == "__main__":
    main()
