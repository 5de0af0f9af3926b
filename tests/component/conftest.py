"""Fixtures for in-process cluster tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.component.harness import FakeCluster


@pytest.fixture
async def fake_cluster(tmp_path: Path) -> AsyncIterator[FakeCluster]:
    """A started controller with no agents yet."""
    cluster = FakeCluster(root=tmp_path)
    await cluster.start_controller()
    try:
        yield cluster
    finally:
        await cluster.close()
