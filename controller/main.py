"""The dockyard-controller command."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click
import structlog

from controller.server import Controller, ControllerConfig
from dockyard import logs

log = structlog.get_logger()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--listen", default="127.0.0.1:7465", show_default=True, help="Address for agents and the API.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("/var/lib/dockyard/controller"),
    show_default=True,
    help="Where the SQLite store lives.",
)
@click.option("--heartbeat-period", type=click.FloatRange(min=0.05), default=1.0, show_default=True)
@click.option(
    "--heartbeat-grace",
    type=click.FloatRange(min=1.5),
    default=3.0,
    show_default=True,
    help="Heartbeat periods of silence before a node is marked down.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@click.option("--log-format", type=click.Choice(["console", "json"]), default="console")
def main(
    listen: str,
    state_dir: Path,
    heartbeat_period: float,
    heartbeat_grace: float,
    log_level: str,
    log_format: str,
) -> None:
    """Runs the Dockyard controller in the foreground."""
    logs.configure(log_level, log_format, component="controller")
    config = ControllerConfig(
        listen=listen,
        state_dir=state_dir,
        heartbeat_period=heartbeat_period,
        heartbeat_grace_periods=heartbeat_grace,
    )
    asyncio.run(_serve(config))


async def _serve(config: ControllerConfig) -> None:
    controller = Controller(config)
    await controller.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(controller.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
    log.info("controller stopping")
    waiter.cancel()
    stopper.cancel()
    await controller.stop()


if __name__ == "__main__":
    main()
