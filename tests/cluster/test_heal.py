"""Heal time: a partitioned host's stale copies go within a few seconds of its network coming back."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

from tests.cluster.harness import ClusterHarness
from tests.polling import wait_for

REPLICAS = 6
# The agent is back in its session within its redial cap (1.5 s) of the network returning, and the stale
# copies exit at once on SIGTERM: about 1-1.5 s here. Before the fix the same test measured 2.9-4.2 s
# (redial backoff capped at 5 s), and about 12 s was reported where dials hang instead of failing fast
# (gRPC's own 20 s connect timeout and reconnect backoff). No redial delay of 2.5 s or more passes.
HEAL_BOUND = 2.5
FAILED_DIALS = 5  # heal once the agent has been redialling this many times, as after a real outage


def _sleepers(path: Path) -> Path:
    """Writes a service of REPLICAS sleepers that exit as soon as they are told to stop; returns its path."""
    path.write_text(
        textwrap.dedent(
            f"""\
            services:
              web:
                image: dockyard-test:latest
                command: ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
                replicas: {REPLICAS}
            """
        )
    )
    return path


def _running(cluster: ClusterHarness, hosts: list[str]) -> int:
    """How many web containers run on these hosts, each counted on the host's own dockerd."""
    return sum(len(cluster.running(host, "web")) for host in hosts)


def _failed_dials(cluster: ClusterHarness, host: str) -> int:
    """How many dials to the controller the host's agent has logged as failed."""
    return cluster.cluster.paths(host).agent_log.read_text().count("failed_dials=")


def test_a_healed_host_drops_its_stale_copies_within_seconds(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    dev_cluster.cli("apply", "-f", str(_sleepers(tmp_path / "web.yaml")), "--detach")
    wait_for(lambda: _running(dev_cluster, dev_cluster.hosts) == REPLICAS, 20, "every replica running")
    stale = len(dev_cluster.running("h1", "web"))
    assert stale == REPLICAS // 3, "spread puts two copies on every host"
    failed_before = _failed_dials(dev_cluster, "h1")
    dev_cluster.partition("h1")
    wait_for(lambda: dev_cluster.node_statuses()["h1"] == "down", 15, "h1 marked down")
    wait_for(lambda: _running(dev_cluster, ["h2", "h3"]) == REPLICAS, 15, "h1's replicas replaced on h2 and h3")
    # Heal right after a failed dial once the agent has been redialling for a while: a redial delay that
    # grows with every failure (or gRPC's own reconnect backoff) is at its longest here.
    wait_for(
        lambda: _failed_dials(dev_cluster, "h1") >= failed_before + FAILED_DIALS, 30, "h1's agent failing to redial"
    )
    assert len(dev_cluster.running("h1", "web")) == stale, "cut off, h1 keeps its copies running"

    dev_cluster.heal("h1")
    healed = time.monotonic()
    wait_for(lambda: not dev_cluster.running("h1", "web"), 20, "h1's stale copies stopped", every=0.05)
    seconds = time.monotonic() - healed
    print(f"heal: h1's {stale} stale copies gone {seconds:.2f}s after the network came back")

    assert seconds < HEAL_BOUND, f"stale copies outlived the heal by {seconds:.1f}s"
    assert _running(dev_cluster, dev_cluster.hosts) == REPLICAS
    assert dev_cluster.node_statuses()["h1"] == "ready"
