"""Named volumes on the real dockerd: created labelled by the agent, and their data outlives the container."""

from __future__ import annotations

import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dockyard import labels
from tests.e2e.harness import Cluster, wait_for


@pytest.fixture
def volume(cluster: Cluster) -> Iterator[str]:
    """A volume name no other run uses; the volume is removed once the cluster's containers are."""
    name = f"e2e-data-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        cluster.remove_containers()
        subprocess.run(["docker", "volume", "rm", "-f", name], capture_output=True, check=False)


def docker(*argv: str) -> str:
    return subprocess.run(["docker", *argv], check=True, capture_output=True, text=True).stdout


def test_a_named_volume_is_made_labelled_and_keeps_its_data_when_the_container_is_killed(
    cluster: Cluster, volume: str, tmp_path: Path
) -> None:
    spec = tmp_path / "db.yaml"
    spec.write_text(
        textwrap.dedent(
            f"""\
            services:
              db:
                image: dockyard-test:latest
                command: ["sleep", "3600"]
                mounts:
                  - {{type: volume, source: {volume}, target: /data, labels: {{tier: db}}}}
                  - {{type: tmpfs, target: /scratch, tmpfs: {{size: 1m}}}}
            """
        )
    )
    applied = cluster.cli("apply", "-f", str(spec), "--timeout", "60", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr + cluster.logs()
    wait_for(lambda: len(cluster.running("db")) == 1, 30, "db running")
    [first] = cluster.running("db")

    made = docker("volume", "inspect", "--format", "{{json .Labels}}", volume)
    for key, value in {labels.MANAGED: "true", labels.VOLUME: volume, "tier": "db"}.items():
        assert f'"{key}":"{value}"' in made, made
    docker("exec", first.id, "sh", "-c", "echo kept > /data/f")
    assert "size=1024k" in docker("exec", first.id, "grep", " /scratch ", "/proc/mounts")

    docker("kill", first.id)
    wait_for(lambda: [c.id for c in cluster.running("db")] not in ([], [first.id]), 60, "a replacement container")
    [second] = cluster.running("db")
    assert second.id != first.id
    assert docker("exec", second.id, "cat", "/data/f") == "kept\n", "the replacement sees the volume's data"
