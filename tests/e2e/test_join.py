"""A host joins with nothing but the token and the controller's address, then runs real containers."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import ROOT, Cluster, wait_for


def test_a_host_joins_with_the_token_and_the_address_only(tmp_path: Path, test_image: str) -> None:
    cluster = Cluster(root=tmp_path)
    cluster.start_controller()
    agent_dir = tmp_path / "agent"
    try:
        # The operator's side: the token and the command to run on the new host, from the CLI.
        wait_for(lambda: cluster.cli("join-token", "-o", "json", check=False).returncode == 0, 30, "the controller")
        printed = cluster.json("join-token")
        assert printed["command"].startswith(f"dockyard-agent join --token {printed['token']} ")
        # The host's side: exactly that command (the address from the printed command), nothing else.
        join_address = printed["command"].rsplit(" ", 1)[1]
        assert join_address == cluster.join_address
        joined = subprocess.run(
            [sys.executable, "-m", "agent.main", "join", "--token", printed["token"], join_address,
             "--state-dir", str(agent_dir)],
            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        )  # fmt: skip
        assert joined.returncode == 0, joined.stderr
        membership = json.loads((agent_dir / "cluster.json").read_text())
        assert joined.stdout.startswith(f"joined cluster {membership['cluster_id']} as node {membership['node_id']}")
        assert stat.S_IMODE((agent_dir / "node.key").stat().st_mode) == 0o600
        cluster.start_agent()  # `dockyard-agent --state-dir DIR`: the address comes from the join

        def ready() -> bool:
            nodes = json.loads(cluster.cli("nodes", "-o", "json").stdout)
            return any(n["id"] == membership["node_id"] and n["status"] == "ready" for n in nodes)

        wait_for(ready, 30, "the joined node ready")
        spec = tmp_path / "web.yaml"
        spec.write_text(
            f"services:\n  joined:\n    image: {test_image}\n    command: [sleep, '3600']\n    replicas: 1\n"
        )
        cluster.cli("apply", "-f", str(spec))
        wait_for(lambda: len(cluster.running("joined")) == 1, 30, "the container running on the real dockerd")
        # A second join with the same token and this host's name is refused: the name is taken.
        again = subprocess.run(
            [sys.executable, "-m", "agent.main", "join", "--token", printed["token"], join_address,
             "--state-dir", str(tmp_path / "again"), "--hostname", cluster.json("nodes")[0]["hostname"]],
            capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
        )  # fmt: skip
        assert again.returncode == 1 and "ALREADY_EXISTS: hostname:" in again.stderr, again.stderr
    finally:
        cluster.stop("agent")
        cluster.stop("controller")
        if (agent_dir / "cluster.json").exists():
            cluster.remove_containers()
