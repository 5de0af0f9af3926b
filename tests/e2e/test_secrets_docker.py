"""Secrets and configs on the real dockerd: files on the agent's tmpfs, bound read-only with owner and mode.

The agent mounts its tmpfs under its state dir (it runs as root here); the test unmounts it at the end.
"""

from __future__ import annotations

import contextlib
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.files import FILES_DIR, is_tmpfs
from tests.e2e.harness import Cluster, wait_for

SECRET = "e2e-secret-value-7f3a"


@pytest.fixture
def files_mount(cluster: Cluster) -> Iterator[Path]:
    path = cluster.root / "agent" / FILES_DIR
    try:
        yield path
    finally:
        cluster.remove_containers()
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True)


def docker_exec(container_id: str, *argv: str) -> str:
    return subprocess.run(["docker", "exec", container_id, *argv], check=True, capture_output=True, text=True).stdout


def test_a_secret_and_a_config_are_files_in_the_container_and_nowhere_on_disk(
    cluster: Cluster, files_mount: Path, tmp_path: Path
) -> None:
    secret_file = tmp_path / "pw.txt"
    secret_file.write_text(SECRET)
    cluster.cli("secret", "create", "db_password", "-f", str(secret_file))
    config_file = tmp_path / "app.conf"
    config_file.write_text("mode=prod\n")
    cluster.cli("config", "create", "app_conf", "-f", str(config_file))
    spec = tmp_path / "web.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            services:
              web:
                image: dockyard-test:latest
                command: ["sleep", "3600"]
                secrets:
                  - {source: db_password, uid: "1000", gid: "1001", mode: 0400}
                configs:
                  - {source: app_conf, target: /etc/app.conf}
            """
        )
    )
    applied = cluster.cli("apply", "-f", str(spec), "--timeout", "60", check=False)
    assert applied.returncode == 0, applied.stdout + applied.stderr + cluster.logs()
    wait_for(lambda: len(cluster.running("web")) == 1, 30, "web running")
    [container] = cluster.running("web")

    assert docker_exec(container.id, "cat", "/run/secrets/db_password") == SECRET
    mode, _, uid, gid, *_ = docker_exec(container.id, "ls", "-ln", "/run/secrets/db_password").split()
    assert (mode, uid, gid) == ("-r--------", "1000", "1001")
    assert docker_exec(container.id, "cat", "/etc/app.conf") == "mode=prod\n"
    # Read-only in the container.
    denied = subprocess.run(
        ["docker", "exec", container.id, "sh", "-c", "echo x > /etc/app.conf"], capture_output=True, check=False
    )
    assert denied.returncode != 0

    assert is_tmpfs(files_mount), "the agent's files are on a tmpfs"
    on_disk = [p for p in cluster.root.rglob("*") if p.is_file() and not p.is_relative_to(files_mount)]
    assert not [p for p in on_disk if SECRET.encode() in p.read_bytes() and p != secret_file]
    # No API answer nor log carries it.
    assert SECRET not in cluster.cli("secret", "ls", "--output", "json").stdout
    assert SECRET not in cluster.logs()
