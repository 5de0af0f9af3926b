"""Daemon config files: a TOML file whose keys are a command's long option names, used as its defaults.

One home for every option's meaning and default stays the click option itself (its help is the
documentation); the sample files in deploy/config list the same names, and a test keeps them in step.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Final

import click

# sysexits' EX_CONFIG: a daemon that cannot run as configured (a StartupError of the controller, an agent not
# joined) exits with it, and neither its systemd unit nor `dockyard up` restarts it.
EXIT_CONFIG: Final = 78

# Flags that must be given on the command line each time: --init in a config file would make every start
# create a new cluster where the state dir is empty, which is what its absence guards against.
PER_INVOCATION = frozenset({"init"})


def config_file_defaults(ctx: click.Context, _param: click.Parameter, path: Path | None) -> Path | None:
    """Loads a TOML config file as the command's defaults: its keys are the long option names without "--".

    Flags given on the command line still win. A key that is no option, or a file that does not parse, is
    refused naming the key or the line.
    """
    if path is None:
        return None
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise click.BadParameter(f"{path}: {exc.strerror or exc}", param_hint="--config") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path}: {exc}", param_hint="--config") from None
    command = ctx.command
    known = {
        opt.removeprefix("--"): p.name
        for p in command.params
        if p.name and isinstance(p, click.Option)
        for opt in p.opts
        if opt.startswith("--")
    }
    defaults = {}
    for key, value in data.items():
        if key in PER_INVOCATION:
            raise click.BadParameter(
                f"{path}: {key!r} is for one invocation only (pass --{key} on the command line): in a file read "
                "at every start it would defeat what it guards",
                param_hint="--config",
            )
        name = known.get(key)
        if name is None or key == "config":
            raise click.BadParameter(
                f"{path}: {key!r} is not an option of {ctx.info_name} (see --help for the option names)",
                param_hint="--config",
            )
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return path


def config_option() -> click.Option:
    """The --config FILE option shared by the daemons; eager, so its values become the other options' defaults."""
    return click.Option(
        ["--config"],
        type=click.Path(dir_okay=False, exists=True, path_type=Path),
        default=None,
        callback=config_file_defaults,
        is_eager=True,
        expose_value=False,
        help="A TOML file of option values (keys: the long option names without --); flags win over it.",
    )
