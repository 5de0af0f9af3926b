"""The `dockyard` command."""

from __future__ import annotations

import click

from dockyard import __version__
from dockyard.cli.cluster import down, up
from dockyard.cli.dev import dev
from dockyard.cli.node import node
from dockyard.cli.nodes import nodes
from dockyard.cli.service import service
from dockyard.cli.workloads import apply, ps, rm, scale, services


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dockyard")
def cli() -> None:
    """Dockyard: run containers across a small fleet of hosts."""


for command in (up, down, apply, services, ps, nodes, node, service, scale, rm):
    cli.add_command(command)
cli.add_command(dev)


def main() -> None:
    """Entry point of the console script."""
    cli()


if __name__ == "__main__":
    main()
