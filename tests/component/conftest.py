"""Fixtures for in-process cluster tests."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TextIO, cast

import pytest
import structlog

from tests.component.harness import ApiUnderTest, FakeCluster, start_api


class _Bound:
    """Writes to one stream, whatever sys.stdout becomes later."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()


@pytest.fixture(autouse=True)
def _logs_apart_from_the_cli() -> Iterator[None]:
    """Logs of the in-process controller and agents go to the test's own output, bound now.

    Unconfigured, structlog prints to whatever sys.stdout is at each call, and a CLI invoked in-process
    (CliRunner) swaps it for its own: a log line from an agent during the call would land in the command's
    output and break its --output json.
    """
    # A wrapper: structlog prints to the current sys.stdout whenever it is given the stream it imported.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _Bound(sys.stdout))))
    yield
    structlog.reset_defaults()


@pytest.fixture
async def fake_cluster(tmp_path: Path) -> AsyncIterator[FakeCluster]:
    """A started controller with no agents yet."""
    cluster = FakeCluster(root=tmp_path)
    await cluster.start_controller()
    try:
        yield cluster
    finally:
        await cluster.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiUnderTest]:
    """The API alone over a real gRPC server and store (a test module may define its own `api`)."""
    server = await start_api(tmp_path)
    try:
        yield server
    finally:
        await server.close()
