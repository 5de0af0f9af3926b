"""The supervisor of `dockyard up` with real child processes: restart on a crash, stop on EX_CONFIG."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from dockyard.local.supervisor import EXIT_CONFIG, ChildFailed, supervise_children


def child(starts: Path, body: str) -> list[str]:
    """Returns the argv of a Python child that appends its pid to `starts`, then runs body."""
    prelude = f"import os, sys, time\nopen({str(starts)!r}, 'a').write(f'{{os.getpid()}}\\n')\n"
    return [sys.executable, "-c", prelude + body]


def pids(starts: Path) -> list[int]:
    """Returns the pid of every start recorded in the file."""
    return [int(line) for line in starts.read_text().split()] if starts.exists() else []


def gone(pid: int) -> bool:
    """Tells whether the process has exited (and been reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def fail_with(reason: str, code: int = EXIT_CONFIG) -> str:
    """Returns a child body that logs a little, says reason on stderr and exits with code."""
    return f"print('log line', file=sys.stderr)\nprint({reason!r}, file=sys.stderr)\nsys.exit({code})\n"


async def test_a_child_exiting_with_ex_config_stops_everything_with_its_line(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    controller, agent = tmp_path / "controller.starts", tmp_path / "agent.starts"
    reason = "dockyard-controller: /x/controller.db: not a SQLite database; restore a backup"
    children = [
        # Waits until the agent runs, so the failure has something to stop.
        (
            "controller",
            child(controller, f"while not os.path.exists({str(agent)!r}): time.sleep(0.01)\n" + fail_with(reason)),
            None,
        ),
        ("agent", child(agent, "import signal\nsignal.pause()  # until the supervisor stops it\n"), None),
    ]
    with pytest.raises(ChildFailed) as caught:
        await supervise_children(children)
    assert str(caught.value) == reason
    assert caught.value.child == "controller"
    assert len(pids(controller)) == 1, "a child that exits with EX_CONFIG is not restarted"
    (agent_pid,) = pids(agent)
    assert gone(agent_pid), "the other child is stopped"
    assert reason in capfd.readouterr().err, "the child's stderr passes through"


async def test_a_crashing_child_is_restarted(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    # Crashes on its first start; on the second it fails for good, which ends the test.
    body = f"if len(open({str(starts)!r}).read().split()) < 2:\n    sys.exit(1)\n" + fail_with("second start: done")
    with pytest.raises(ChildFailed, match="second start: done"):
        await supervise_children([("controller", child(starts, body), None)])
    assert len(pids(starts)) == 2


async def test_a_silent_child_still_gets_a_reason(tmp_path: Path) -> None:
    starts = tmp_path / "starts"
    with pytest.raises(ChildFailed, match="the agent exited with code 78"):
        await supervise_children([("agent", child(starts, "sys.exit(78)\n"), None)])
    assert len(pids(starts)) == 1
