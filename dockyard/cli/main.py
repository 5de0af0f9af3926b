"""The `dockyard` command.

Besides its own commands it offers the command groups that installed packages declare under the
`dockyard.cli` entry point group (pyproject.toml: ``[project.entry-points."dockyard.cli"]``), such as
`dockyard dev` from deploy/devcluster. Those are imported only when named, so the product CLI neither
imports dev tooling nor pays for it on every call.
"""

from __future__ import annotations

import functools
from importlib import metadata

import click

from dockyard import __version__
from dockyard.cli.cluster import down, up
from dockyard.cli.node import node
from dockyard.cli.nodes import nodes
from dockyard.cli.service import service
from dockyard.cli.workloads import apply, ps, rm, scale, services

__all__ = ["ENTRY_POINT_GROUP", "cli", "main"]

ENTRY_POINT_GROUP = "dockyard.cli"


@functools.cache
def _entry_points() -> dict[str, metadata.EntryPoint]:
    """The installed `dockyard.cli` entry points by command name; the first one found wins a name."""
    found: dict[str, metadata.EntryPoint] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return found


class _Dockyard(click.Group):
    """The top-level group: the built-in commands, then the entry points' groups, loaded when named."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Names the built-in commands and every installed entry point's command."""
        return sorted({*super().list_commands(ctx), *_entry_points()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Returns a built-in command, else imports the entry point of that name; a built-in wins a clash."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry = _entry_points().get(cmd_name)
        if entry is None:
            return None
        try:
            loaded = entry.load()
        except Exception as exc:
            raise click.ClickException(f"`dockyard {cmd_name}` ({entry.value}) failed to load: {exc}") from exc
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"`dockyard {cmd_name}` ({entry.value}) is not a click command")
        return loaded


@click.group(cls=_Dockyard, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dockyard")
def cli() -> None:
    """Dockyard: run containers across a small fleet of hosts."""


for command in (up, down, apply, services, ps, nodes, node, service, scale, rm):
    cli.add_command(command)


def main() -> None:
    """Entry point of the console script."""
    cli()


if __name__ == "__main__":
    main()
