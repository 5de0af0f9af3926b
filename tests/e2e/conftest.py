"""Fixtures for end-to-end tests on the real dockerd."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_docker
from tests.e2e.harness import ROOT, Cluster, wait_for


@pytest.fixture(scope="session")
def test_image() -> str:
    """Makes sure Docker answers and the busybox test image exists."""
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        require_docker("docker info fails")
    subprocess.run(["bash", str(ROOT / "scripts" / "build-test-image.sh")], check=True, capture_output=True)
    return "dockyard-test:latest"


@pytest.fixture
def cluster(tmp_path: Path, test_image: str) -> Iterator[Cluster]:
    """A running one-host cluster; its containers are removed afterwards."""
    cluster = Cluster(root=tmp_path)
    cluster.start_controller()
    cluster.start_agent()
    try:
        wait_for(lambda: _ready(cluster), 30, "the node to be ready")
        yield cluster
    finally:
        cluster.stop("agent")
        cluster.stop("controller")
        cluster.remove_containers()
        print(cluster.logs())


def _ready(cluster: Cluster) -> bool:
    result = cluster.cli("nodes", "--output", "json", check=False)
    return result.returncode == 0 and '"status": "ready"' in result.stdout
