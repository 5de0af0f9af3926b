"""The dev cluster end to end: three namespaced hosts, one replica on each host's own dockerd, nothing left after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from deploy.devcluster import procs
from tests.cluster.harness import ROOT, ClusterHarness
from tests.e2e.test_one_host import write_spec


def traces_of(cluster_id: str) -> list[str]:
    """What the machine's own tools show of the cluster: namespaces, links, mounts, processes."""
    marker = f"dy-{cluster_id}"
    found: list[str] = []
    for argv in (["ip", "netns", "list"], ["ip", "-o", "link", "show"], ["ps", "-eo", "pid,args"]):
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        found += [f"{argv[0]} {argv[1]}: {line.strip()}" for line in out.splitlines() if marker in line]
    found += [f"mount: {line}" for line in Path("/proc/self/mountinfo").read_text().splitlines() if marker in line]
    rules = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True, check=False).stdout
    found += [f"iptables: {line}" for line in rules.splitlines() if marker in line]
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        found += [f"cgroup: {p}" for p in hierarchy.glob(f"{marker}-*")]
    return found


# Dials a port nothing listens on: "refused" proves the packet got there and back, a timeout that it was dropped.
_PROBE = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=2)
except ConnectionRefusedError:
    print("reached")
except OSError as exc:
    print(f"not reached: {exc}")
"""


def reaches(harness: ClusterHarness, source: str, target: str) -> str:
    """What a TCP dial from one host's namespace to another host's address found."""
    address = harness.cluster.address(target)
    result = harness.run(harness.cluster.exec(source, sys.executable, "-c", _PROBE, address, check=False))
    return result.stdout.strip() or result.stderr.strip()


def test_three_hosts_run_one_replica_each_and_down_leaves_nothing(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    # Hosts reach each other through the bridge, not only the controller (the machine's FORWARD DROP would
    # drop the frames the bridge switches between them without the cluster's rule; see devcluster/network.py).
    assert [reaches(dev_cluster, "h1", "h2"), reaches(dev_cluster, "h3", "h1")] == ["reached", "reached"]
    nodes = dev_cluster.json("nodes")
    assert sorted((n["hostname"], n["status"]) for n in nodes) == [("h1", "ready"), ("h2", "ready"), ("h3", "ready")]
    node_ids = {n["hostname"]: n["id"] for n in nodes}
    status = dev_cluster.dev("status")
    assert [(h["host"], h["link"]) for h in status["hosts"]] == [("h1", "up"), ("h2", "up"), ("h3", "up")]
    assert all(h["dockerd_pid"] and h["agent_pid"] for h in status["hosts"])

    result = dev_cluster.json("apply", "-f", str(write_spec(tmp_path / "sleeper.yaml", replicas=3)))
    assert (result["outcome"], result["exit_code"]) == ("ok", 0)
    [row] = result["services"]
    assert (row["service"], row["action"], row["revision"], row["healthy"], row["desired"]) == (
        "sleeper",
        "created",
        1,
        3,
        3,
    )
    for host in dev_cluster.hosts:
        running = dev_cluster.running(host, "sleeper")
        assert len(running) == 1, f"{host} runs {len(running)} sleeper containers"
        assert running[0].labels["dockyard.node.id"] == node_ids[host]
    assert sorted(t["node"] for t in dev_cluster.json("ps", "sleeper")) == ["h1", "h2", "h3"]

    cluster_id = dev_cluster.cluster.cluster_id
    assert traces_of(cluster_id), "the checks below would not see the cluster at all"
    report = dev_cluster.down()
    assert report["leftovers"] == []
    assert traces_of(cluster_id) == []
    assert not dev_cluster.cluster.state_dir.exists()
    assert dev_cluster.down()["leftovers"] == [], "down again is a no-op"


def test_cli_up_points_the_cli_at_the_cluster_and_down_restores_it(
    tmp_path: Path, dev_cluster_prerequisites: str
) -> None:
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    env.pop("DOCKYARD_CONTROLLER", None)

    def dockyard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dockyard.cli.main", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=180,
            check=False,
        )

    # The keeper that `up` starts outlives `up`: while this runs, orphans become our children, so we reap it.
    procs.become_subreaper()
    try:
        up = dockyard("dev", "cluster", "up", "--hosts", "1", "--label", "h1:zone=a", "-o", "json")
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        try:
            assert [(h["host"], h["labels"]) for h in info["hosts"]] == [("h1", {"zone": "a"})]
            nodes = dockyard("nodes", "-o", "json")
            assert nodes.returncode == 0, nodes.stderr
            assert [(n["hostname"], n["status"], n["labels"]) for n in json.loads(nodes.stdout)] == [
                ("h1", "ready", {"zone": "a"})
            ]
            wrong = dockyard("dev", "cluster", "kill", "h7")
            assert wrong.returncode == 1
            assert wrong.stderr.strip() == f"Error: unknown host 'h7'; cluster {info['cluster_id']} has h1"

            # TLS as in a real deployment: the CLI context holds the admin credentials `up` made, the host
            # joined with the token, and a host added later joins with the current (here: rotated) token.
            context = json.loads((tmp_path / "config" / "dockyard" / "context.json").read_text())
            assert context["credentials"] == info["credentials"] == f"{info['state_dir']}/admin"
            assert info["join_token"].startswith("DKY1-")
            rotated = dockyard("join-token", "--rotate", "--quiet")
            assert rotated.returncode == 0, rotated.stderr
            assert rotated.stdout.strip() != info["join_token"]
            added = dockyard("dev", "cluster", "add-host", "--label", "zone=b", "-o", "json")
            assert added.returncode == 0, added.stderr
            assert json.loads(added.stdout)["host"] == "h2"
            status = json.loads(dockyard("dev", "cluster", "status", "-o", "json").stdout)
            assert status["join_token"] == rotated.stdout.strip()
            joined = {h["host"]: h["node_id"] for h in status["hosts"]}
            assert dockyard("dev", "cluster", "restart-agent", "h1").returncode == 0
            nodes = dockyard("nodes", "-o", "json")
            assert sorted((n["hostname"], n["id"], n["labels"]) for n in json.loads(nodes.stdout)) == [
                ("h1", joined["h1"], {"zone": "a"}),
                ("h2", joined["h2"], {"zone": "b"}),
            ], "a restarted agent keeps the identity it joined with"
            h1_log = (Path(info["state_dir"]) / "h1" / "agent.log").read_text()
            assert h1_log.count("joined cluster") == 1, "h1 joined once"
        finally:
            down = dockyard("dev", "cluster", "down", "-o", "json")
            procs.reap(info["keeper_pid"])
    finally:
        procs.become_subreaper(False)
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["leftovers"] == []
    assert traces_of(info["cluster_id"]) == []
    assert not (tmp_path / "config" / "dockyard" / "context.json").exists(), "the context is restored (to none)"
