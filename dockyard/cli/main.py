"""The `dockyard` command.

Besides its own commands it offers the command groups that installed packages declare under the
`dockyard.cli` entry point group (pyproject.toml: ``[project.entry-points."dockyard.cli"]``), such as
`dockyard dev` from deploy/devcluster. Those are imported only when named, so the product CLI neither
imports dev tooling nor pays for it on every call. Its own commands load the same way: `dockyard apply`
imports what apply needs, not the cluster supervisor or the node views (about 50 ms of every call).
"""

from __future__ import annotations

import functools
import importlib
from importlib import metadata

import click

from dockyard import __version__

__all__ = ["ENTRY_POINT_GROUP", "cli", "main"]

ENTRY_POINT_GROUP = "dockyard.cli"

# The built-in commands: name -> the module that defines it (under the same attribute name).
_BUILTINS = {
    "up": "dockyard.cli.cluster",
    "down": "dockyard.cli.cluster",
    "apply": "dockyard.cli.workloads",
    "plan": "dockyard.cli.planning",
    "history": "dockyard.cli.history",
    "rollback": "dockyard.cli.history",
    "services": "dockyard.cli.workloads",
    "ps": "dockyard.cli.workloads",
    "scale": "dockyard.cli.workloads",
    "rm": "dockyard.cli.workloads",
    "nodes": "dockyard.cli.nodes",
    "node": "dockyard.cli.node",
    "service": "dockyard.cli.service",
    "join-token": "dockyard.cli.security",
    "secret": "dockyard.cli.secrets",
    "config": "dockyard.cli.secrets",
    "registry": "dockyard.cli.registry",
    "stack": "dockyard.cli.stacks",
    "image": "dockyard.cli.images",
    "network": "dockyard.cli.networks",
    "volume": "dockyard.cli.volumes",
}


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
        return sorted({*_BUILTINS, *_entry_points()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Returns a built-in command, else imports the entry point of that name; a built-in wins a clash."""
        home = _BUILTINS.get(cmd_name)
        if home is not None:
            command = getattr(importlib.import_module(home), cmd_name.replace("-", "_"))
            assert isinstance(command, click.Command), home
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
@click.option(
    "--credentials",
    default=None,
    metavar="DIR",
    help="Admin credentials (ca.crt, admin.crt, admin.key) [default: $DOCKYARD_CREDENTIALS, then what "
    "`dockyard up` recorded].",
)
def cli(credentials: str | None) -> None:
    """Dockyard: run containers across a small fleet of hosts."""
    del credentials  # read by the commands through the root context (dockyard.cli.common)


def main() -> None:
    """Entry point of the console script."""
    cli()


if __name__ == "__main__":
    main()
