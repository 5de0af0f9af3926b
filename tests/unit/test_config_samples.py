"""The sample config files in deploy/config/ document every option of their daemon, and only real ones.

A sample is TOML whose settings are all commented out: a line `# KEY = VALUE` shows an option's built-in
default, or, followed by `# example`, the form of an option whose default is computed at run time (it has none
to show). The options are read from the click command objects themselves, so an option added to
`dockyard-controller` or `dockyard-agent` without a line in its sample fails here, and so does a sample line
whose option was renamed or removed, or whose shown default is not the command's.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import click
import pytest

from agent.main import main as agent_main
from controller.main import main as controller_main

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "deploy" / "config"
COMMANDS: dict[str, click.Command] = {"controller": controller_main, "agent": agent_main}

# Options that have no place in a config file, with the reason.
NOT_IN_SAMPLE = {
    # The option that names the file itself.
    "config": "names the file",
    # `--init` makes a new cluster (CA and store) where the state dir has none. It is for one first start: in a
    # file read at every start it would let a controller pointed at a wrong or wiped state dir come up as a
    # new, empty cluster under a new CA, the very accident the check exists to stop.
    "init": "per invocation: the first start only",
}
# `# key = value` or `# key = value  # example`, as the samples write a setting.
_SETTING = re.compile(r"^# (?P<key>[a-z][a-z0-9-]*) = (?P<value>.+?)(?P<example>\s+# example)?$")


def _daemon_command(command: click.Command) -> click.Command:
    """The command that runs the daemon: the group itself, or its `run` subcommand if it has one."""
    if isinstance(command, click.Group) and "run" in command.commands:
        return command.commands["run"]
    return command


def _options(command: click.Command) -> dict[str, click.Option]:
    """The daemon's options by long name without "--" (what a config key is), the group's included."""
    params = list(command.params)
    daemon = _daemon_command(command)
    if daemon is not command:
        params += daemon.params
    options = {}
    for param in params:
        if isinstance(param, click.Option):
            long_names = [opt[2:] for opt in param.opts if opt.startswith("--")]
            assert long_names, f"{param.name}: an option without a long name cannot be configured"
            options[long_names[0]] = param
    return options


def _settings(role: str) -> dict[str, tuple[str, bool]]:
    """The sample's settings: key -> (the TOML value as written, whether it is marked as an example)."""
    settings: dict[str, tuple[str, bool]] = {}
    for line in (SAMPLES / f"{role}.toml").read_text().splitlines():
        match = _SETTING.match(line)
        if match:
            assert match["key"] not in settings, f"{role}.toml: {match['key']} is set twice"
            settings[match["key"]] = (match["value"], match["example"] is not None)
    return settings


def _uncommented(role: str, tmp_path: Path) -> Path:
    """Writes the sample with every setting uncommented, as an operator who changes them all would."""
    lines = []
    for line in (SAMPLES / f"{role}.toml").read_text().splitlines():
        lines.append(line[2:] if _SETTING.match(line) else line)
    path = tmp_path / f"{role}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_only_the_two_samples_are_shipped() -> None:
    """A new sample must be added to COMMANDS, and so to the checks below."""
    assert sorted(path.stem for path in SAMPLES.glob("*.toml")) == sorted(COMMANDS)


@pytest.mark.parametrize("role", sorted(COMMANDS))
def test_every_sample_key_is_an_option(role: str) -> None:
    """A key that is no option of the command would be refused at start: the sample must not teach one."""
    options = _options(COMMANDS[role])
    unknown = sorted(set(_settings(role)) - set(options))
    assert unknown == [], f"{role}.toml sets what dockyard-{role} has no option for"
    assert not set(_settings(role)) & set(NOT_IN_SAMPLE), f"{role}.toml sets a per-invocation option"


@pytest.mark.parametrize("role", sorted(COMMANDS))
def test_every_option_is_in_its_sample(role: str) -> None:
    """An option added to the command needs its documented line in the sample."""
    missing = sorted(set(_options(COMMANDS[role])) - set(_settings(role)) - set(NOT_IN_SAMPLE))
    assert missing == [], f"deploy/config/{role}.toml does not document these options of dockyard-{role}"


@pytest.mark.parametrize("role", sorted(COMMANDS))
def test_every_setting_has_a_comment(role: str) -> None:
    """Each setting line follows at least one line of prose that says what it does."""
    lines = (SAMPLES / f"{role}.toml").read_text().splitlines()
    for index, line in enumerate(lines):
        if _SETTING.match(line):
            above = lines[index - 1] if index else ""
            assert above.startswith("# ") and not _SETTING.match(above), f"{role}.toml: {line!r} has no comment"


@pytest.mark.parametrize("role", sorted(COMMANDS))
def test_shown_defaults_are_the_commands_defaults(role: str, tmp_path: Path) -> None:
    """The sample, every setting uncommented, loads through --config and changes nothing but the examples.

    So each shown default is the one the command really has (in the type it converts to), each value parses,
    and an example stands only where the command has no default to show.
    """
    daemon = _daemon_command(COMMANDS[role])
    settings = _settings(role)
    sample = _uncommented(role, tmp_path)
    tomllib.loads(sample.read_text())  # a TOML error here names its line
    defaults = daemon.make_context(f"dockyard-{role}", []).params
    loaded = daemon.make_context(f"dockyard-{role}", ["--config", str(sample)]).params
    options = _options(COMMANDS[role])
    for key, (value, example) in settings.items():
        name = options[key].name
        assert name is not None
        if example:
            assert defaults[name] is None, f"{role}.toml: {key} has a default to show, not an example"
        else:
            assert loaded[name] == defaults[name], f"{role}.toml: {key} = {value} is not the default"
