"""The systemd units in deploy/systemd/ are valid, say what the install guide relies on, and stay hardened.

`systemd-analyze verify` loads a unit file the way PID 1 would (it works in a container whose PID 1 is not
systemd) and prints a line for every unknown key, bad value or missing ExecStart binary, but exits 0 for most
of them: so the test asserts that it prints nothing at all. The units run `/opt/dockyard/bin/...` (the venv of
docs/install.md), which does not exist here; verify runs on copies whose ExecStart names this venv's
installed entry points instead, the same programs under another path.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller.errors import EXIT_CONFIG

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
# Where docs/install.md puts the venv, and so the entry points the units run.
INSTALL_BIN = "/opt/dockyard/bin/"
# `systemd-analyze security` scores exposure from 0.0 (locked down) to 10.0 and takes its threshold in tenths.
# Both units score under 2.0 with systemd 252; a unit that loses a protection crosses 2.5.
EXPOSURE_THRESHOLD = 25
# Each unit: its entry point, and what it must start after (network-online.target for both: agents dial the
# controller across the network; docker.service for the agent, which drives this host's containers).
EXPECTED = {
    "dockyard-controller": ("dockyard-controller", {"network-online.target"}),
    "dockyard-agent": ("dockyard-agent", {"network-online.target", "docker.service"}),
}


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return path


def _entry_point(name: str) -> str:
    """Returns the installed entry point `name` beside this interpreter (pip install -e . puts it there)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found is not None, f"{name} is not installed beside {sys.executable}: run `pip install -e .`"
    return found


def _local_copies(tmp_path: Path) -> list[Path]:
    """Copies both units into tmp_path with ExecStart pointing at this venv's entry points."""
    copies = []
    for unit, (program, _) in EXPECTED.items():
        text = (UNITS / f"{unit}.service").read_text()
        assert text.count(f"ExecStart={INSTALL_BIN}{program} ") == 1, f"{unit}: ExecStart is not {INSTALL_BIN}{program}"
        copy = tmp_path / f"{unit}.service"
        copy.write_text(text.replace(f"{INSTALL_BIN}{program} ", f"{_entry_point(program)} "))
        copies.append(copy)
    return copies


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


class _UnitParser(configparser.ConfigParser):
    """Reads a unit file: keys keep their case, a key given twice (SystemCallFilter=) keeps its last value."""

    def __init__(self) -> None:
        super().__init__(strict=False, interpolation=None, delimiters=("=",))

    def optionxform(self, optionstr: str) -> str:
        """Keeps the key as written (ConfigParser lowercases by default)."""
        return optionstr


def _sections(unit: str) -> tuple[configparser.SectionProxy, configparser.SectionProxy]:
    """Returns the unit's [Unit] and [Service] sections."""
    parser = _UnitParser()
    parser.read_string((UNITS / f"{unit}.service").read_text())
    return parser["Unit"], parser["Service"]


def test_only_the_two_units_are_shipped() -> None:
    """A new unit file must be added to EXPECTED, and so to the checks below."""
    assert sorted(path.stem for path in UNITS.glob("*.service")) == sorted(EXPECTED)


def test_verify_prints_nothing(tmp_path: Path) -> None:
    """systemd-analyze verify has no complaint, not even a warning, about either unit."""
    analyze = _systemd_analyze()
    result = _run([analyze, "verify", "--man=no", *map(str, _local_copies(tmp_path))])
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_would_report_a_bad_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key in a copy is reported on the output the test reads."""
    analyze = _systemd_analyze()
    copy = _local_copies(tmp_path)[0]
    copy.write_text(copy.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    result = _run([analyze, "verify", "--man=no", str(copy)])
    assert "Unknown key 'NoNewPrivilege'" in result.stdout + result.stderr


@pytest.mark.parametrize("unit", sorted(EXPECTED))
def test_hardening_keeps_its_score(unit: str, tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates each unit's exposure under the threshold."""
    analyze = _systemd_analyze()
    copy = next(path for path in _local_copies(tmp_path) if path.stem == unit)
    result = _run([analyze, "security", "--offline=yes", f"--threshold={EXPOSURE_THRESHOLD}", str(copy)])
    if "--offline" in result.stderr and "unrecognized option" in result.stderr:
        pytest.skip("this systemd-analyze has no offline security check (systemd < 250)")
    summary = result.stdout.strip().splitlines()[-1:] or [result.stderr]
    assert result.returncode == 0, f"{unit}: {summary[0]}"


@pytest.mark.parametrize("unit", sorted(EXPECTED))
def test_unit_runs_the_installed_program_with_its_config(unit: str) -> None:
    """ExecStart runs the guide's venv entry point with /etc/dockyard/<role>.toml, from the guide's directories."""
    program, after = EXPECTED[unit]
    role = program.removeprefix("dockyard-")
    section_unit, service = _sections(unit)
    assert service["ExecStart"] == f"{INSTALL_BIN}{program} --config /etc/dockyard/{role}.toml"
    assert service["StateDirectory"] == f"dockyard/{role}"
    assert service["ConfigurationDirectory"] == "dockyard"
    assert set(section_unit["After"].split()) == after
    assert set(section_unit["Wants"].split()) == after


@pytest.mark.parametrize("unit", sorted(EXPECTED))
def test_a_configuration_error_is_not_restarted(unit: str) -> None:
    """Restart=on-failure, except the exit code a start with the same state and flags would repeat."""
    _, service = _sections(unit)
    assert service["Restart"] == "on-failure"
    assert str(EXIT_CONFIG) in service["RestartPreventExitStatus"].split()


def test_the_install_guide_sets_up_what_the_units_expect() -> None:
    """docs/install.md makes the venv the units run from, installs both units, and puts the configs they read."""
    guide = (ROOT / "docs" / "install.md").read_text()
    assert f"python3 -m venv {INSTALL_BIN.removesuffix('/bin/')}\n" in guide
    for unit, (program, _) in EXPECTED.items():
        role = program.removeprefix("dockyard-")
        assert f"deploy/systemd/{unit}.service" in guide
        assert f"deploy/config/{role}.toml /etc/dockyard/" in guide
