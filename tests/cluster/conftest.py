"""The `dev_cluster` fixture: a real multi-host cluster of network namespaces, one dockerd and agent per host.

Function scope: bringing up three hosts takes about 3 s (the dockerds start in parallel) and tearing them down
about 2 s, cheap enough for every test to get a pristine cluster it may break at will. Parametrize it
indirectly to change the hosts or options:

    @pytest.mark.parametrize("dev_cluster", [{"hosts": 2, "labels": {"h1": {"zone": "a"}}}], indirect=True)

The labels are the agents' own (`--label`): constraints read them as engine.labels.zone; node.labels.zone is
an operator label (`dockyard node label`). The hosts join with the token as real hosts do, and the CLI calls
present the admin credentials the cluster made (ClusterHarness.env).

Needs root, network namespaces, dockerd and the test image on the machine's dockerd; skips without them,
and fails instead where DOCKYARD_REQUIRE_DOCKER=1 (CI).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.devcluster import DevCluster, find_leftovers
from tests.cluster.harness import ROOT, ClusterHarness
from tests.conftest import require_docker

TEST_IMAGE = "dockyard-test:latest"


@pytest.fixture(scope="session")
def dev_cluster_prerequisites() -> str:
    """Checks what a dev cluster needs and builds the test image; returns the image name."""
    if os.geteuid() != 0:
        require_docker("the dev cluster needs root")
    missing = [tool for tool in ("ip", "nsenter", "unshare", "dockerd", "docker") if shutil.which(tool) is None]
    if missing:
        require_docker(f"the dev cluster needs {', '.join(missing)}")
    if subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False).returncode != 0:
        require_docker("network namespaces are not available (unshare --net fails)")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        require_docker("docker info fails")
    subprocess.run(["bash", str(ROOT / "scripts" / "build-test-image.sh")], check=True, capture_output=True)
    return TEST_IMAGE


@pytest.fixture
def dev_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, dev_cluster_prerequisites: str
) -> Iterator[ClusterHarness]:
    """A running dev cluster (3 hosts unless parametrized); always torn down, and nothing may be left behind."""
    options = dict(getattr(request, "param", None) or {})
    hosts = int(options.pop("hosts", 3))
    cluster = asyncio.run(DevCluster.up(hosts=hosts, images=(dev_cluster_prerequisites,), **options))
    harness = ClusterHarness(cluster, config_home=tmp_path / "config")
    try:
        yield harness
    finally:
        if cluster.state_dir.exists():
            print(harness.logs())  # shown only when the test fails
        report = asyncio.run(cluster.down())
        leftovers = report["leftovers"] or find_leftovers(cluster.cluster_id, cluster.state_dir)
        assert leftovers == [], f"dev cluster {cluster.cluster_id} left behind: {leftovers}"
