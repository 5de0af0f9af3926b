"""Fixtures for in-process cluster tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.component.harness import ApiUnderTest, FakeCluster, start_api


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
