"""Fixtures shared by every test folder."""

from __future__ import annotations

import os

import pytest


def require_docker(reason: str) -> None:
    """Skips a test that needs Docker when none runs, except where Docker is promised (CI): there it fails."""
    if os.environ.get("DOCKYARD_REQUIRE_DOCKER") == "1":
        pytest.fail(f"Docker is required here but {reason}")
    pytest.skip(reason)
