"""Host policy on the real dockerd: the agent's default policy refuses a privileged host port, and says why."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.e2e.harness import Cluster


def test_port_80_is_refused_before_any_container_and_apply_and_ps_say_why(cluster: Cluster, tmp_path: Path) -> None:
    spec = tmp_path / "web.yaml"
    spec.write_text(
        textwrap.dedent(
            """\
            services:
              web:
                image: dockyard-test:latest
                command: ["sleep", "3600"]
                ports: ["80:8080"]
                restart: {condition: none}
            """
        )
    )
    applied = cluster.cli("apply", "-f", str(spec), "--timeout", "60", check=False)
    reason = (
        "refused by this host's policy: services.web.ports[0].published: host port 80/tcp is not allowed on this "
        "host (allow-host-ports is 1024-65535)"
    )
    assert applied.returncode == 5, applied.stdout + applied.stderr
    assert f"web.1: refused 3 times in a row: rejected (host fault): {reason}" in applied.stderr

    rejected = [t for t in cluster.json("ps", "--all") if t["state"] == "rejected"]
    assert len(rejected) >= 3
    assert all(t["error"].startswith(reason) and t["cause"] == "host" for t in rejected)
    assert all(t["container_id"] is None for t in rejected)
    assert cluster.containers() == [], "no container was created on the host"
