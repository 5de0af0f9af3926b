"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.component.harness import ApiInThread


def require_docker(reason: str) -> None:
    """Skips a test that needs Docker when none runs, except where Docker is promised (CI): there it fails."""
    if os.environ.get("DOCKYARD_REQUIRE_DOCKER") == "1":
        pytest.fail(f"Docker is required here but {reason}")
    pytest.skip(reason)


@pytest.fixture
def cli_api(tmp_path: Path) -> Iterator[ApiInThread]:
    """The real API on a thread of its own, its state under tmp_path/controller, for tests that run the CLI."""
    from tests.component.harness import ApiInThread  # here, so that test folders that never use it need not load it

    state = tmp_path / "controller"
    state.mkdir()
    with ApiInThread(state) as server:
        yield server
