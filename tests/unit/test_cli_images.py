"""`dockyard image push` pieces that need no cluster: each node's outcome and the plain progress lines."""

from __future__ import annotations

import pytest

from dockyard.cli.images import _display, _Lines, _Quiet, result_row
from dockyard.v1 import controller_pb2 as cpb


def test_each_outcome_is_named() -> None:
    loaded = cpb.PushImageProgress(node_id="n" * 20, hostname="h1", total=2048, bytes_done=2048, done=True)
    present = cpb.PushImageProgress(node_id="n2", hostname="h2", total=2048, done=True, already_present=True)
    failed = cpb.PushImageProgress(node_id="n3", hostname="h3", total=2048, done=True, error="session ended")
    assert result_row(loaded) | {"size": ""} == {
        "node_id": "n" * 20,
        "short_id": "n" * 12,
        "hostname": "h1",
        "result": "loaded",
        "bytes": 2048,
        "size": "",
        "error": "",
    }
    assert result_row(present)["result"] == "present" and result_row(present)["bytes"] == 0
    assert result_row(failed)["result"] == "failed" and result_row(failed)["error"] == "session ended"


def test_plain_lines_say_when_a_node_starts_and_how_it_ended(capsys: pytest.CaptureFixture[str]) -> None:
    lines = _Lines()
    for progress in (
        cpb.PushImageProgress(node_id="n1", hostname="h1", total=4096),
        cpb.PushImageProgress(node_id="n1", hostname="h1", total=4096, bytes_done=1024),
        cpb.PushImageProgress(node_id="n1", hostname="h1", total=4096, bytes_done=4096, done=True),
        cpb.PushImageProgress(node_id="n2", hostname="h2", total=4096, done=True, error="no space left"),
    ):
        lines.show(progress)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("h1: pushing ")
    assert err[1:] == ["h1: loaded", "h2: failed: no space left"]


def test_json_output_shows_no_progress() -> None:
    assert isinstance(_display("json"), _Quiet)
