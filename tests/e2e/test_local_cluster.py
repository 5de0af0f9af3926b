"""`dockyard up --detach` and `dockyard down` on the real dockerd: containers outlive the cluster processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, free_port, wait_for
from tests.e2e.test_one_host import write_spec


@pytest.fixture
def local_env(tmp_path: Path, test_image: str) -> Iterator[dict[str, str]]:
    """An environment whose config home is private, so the recorded context is this test's own."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("DOCKYARD_CONTROLLER", None)
    yield env
    subprocess.run(_cli("down", "--state-dir", str(tmp_path / "state")), env=env, check=False, capture_output=True)
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=dockyard.service.name=updown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], check=False, capture_output=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dockyard.cli.main", *args]


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(_cli(*args), env=env, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result


def _container_ids() -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-q", "--no-trunc", "--filter", "label=dockyard.service.name=updown"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(out.split())


def test_up_detach_down_and_up_again(local_env: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    listen = f"127.0.0.1:{free_port()}"
    join = ("--join-listen", f"127.0.0.1:{free_port()}")  # off the default 7466, which other runs may hold
    up = json.loads(
        _run(local_env, "up", "--detach", "--state-dir", str(state), "--listen", listen, *join, "-o", "json").stdout
    )
    assert up["controller"] == listen
    assert (state / "dockyard.pid").exists()
    context = json.loads((tmp_path / "config" / "dockyard" / "context.json").read_text())
    assert context["controller"] == listen, "later commands find the controller without flags"
    assert context["credentials"] == str(state / "admin"), "and its admin credentials, made by `dockyard up`"

    spec = write_spec(tmp_path / "updown.yaml", replicas=2, name="updown")
    _run(local_env, "apply", "-f", str(spec))
    before = _container_ids()
    assert len(before) == 2

    down = json.loads(_run(local_env, "down", "-o", "json").stdout)
    assert down["stopped"] is True
    assert not (state / "dockyard.pid").exists()
    assert _container_ids() == before, "down leaves containers running"
    failed = subprocess.run(_cli("ps"), env=local_env, capture_output=True, text=True, check=False)
    assert failed.returncode != 0
    assert "cannot reach the controller" in failed.stderr
    assert "Traceback" not in failed.stderr

    _run(local_env, "up", "--detach", "--state-dir", str(state), "--listen", listen, *join)
    wait_for(
        lambda: [t["state"] for t in json.loads(_run(local_env, "ps", "-o", "json").stdout)] == ["running"] * 2,
        30,
        "both tasks running again",
    )
    assert _container_ids() == before, "the restarted cluster adopts the same containers"
    _run(local_env, "rm", "updown")
    assert _container_ids() == []
