"""Host loss, partitions, fencing and node operations on three namespace hosts, counted on every host's dockerd."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

from tests.cluster.harness import ClusterHarness
from tests.e2e.harness import wait_for


def spec(path: Path, name: str, replicas: int | None = 3, extra: str = "") -> Path:
    """Writes a sleeper service spec (1 s grace, immediate restarts) and returns its path."""
    replicas_line = f"    replicas: {replicas}\n" if replicas is not None else ""
    path.write_text(
        textwrap.dedent(
            f"""\
            services:
              {name}:
                image: dockyard-test:latest
                command: ["sleep", "3600"]
                stop_grace_period: 1s
                restart: {{condition: any, delay: 0s}}
            """
        )
        + replicas_line
        + extra
    )
    return path


def running_by_host(cluster: ClusterHarness, service: str, hosts: list[str] | None = None) -> dict[str, list[str]]:
    """The running container ids of a service on each host's own dockerd."""
    return {h: sorted(c.id for c in cluster.running(h, service)) for h in (hosts or cluster.hosts)}


def host_of_slot(cluster: ClusterHarness, service: str) -> dict[str, str]:
    """Maps each host to the id of the task it runs."""
    return {t["node"]: t["id"] for t in cluster.json("ps", service)}


def test_a_dead_host_is_marked_down_and_its_work_moves_fast(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    dev_cluster.cli("apply", "-f", str(spec(tmp_path / "s.yaml", "web")))
    before = running_by_host(dev_cluster, "web")
    assert all(len(ids) == 1 for ids in before.values()), before
    started = time.monotonic()
    dev_cluster.kill("h1")
    survivors = ["h2", "h3"]
    wait_for(
        lambda: sum(len(v) for v in running_by_host(dev_cluster, "web", survivors).values()) == 3,
        15,
        "three web containers on h2 and h3",
    )
    moved_after = time.monotonic() - started
    assert dev_cluster.node_statuses()["h1"] == "down"
    tasks = dev_cluster.json("ps", "web", "--all")
    lost = [t for t in tasks if t["state"] == "lost"]
    assert [t["node"] for t in lost] == ["h1"]
    after = running_by_host(dev_cluster, "web", survivors)
    for host in survivors:
        assert set(before[host]) <= set(after[host]), "survivors' containers are untouched"
    assert moved_after < 15


def test_partition_heal_stops_only_the_stale_copy(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    dev_cluster.cli("apply", "-f", str(spec(tmp_path / "s.yaml", "web")))
    before = running_by_host(dev_cluster, "web")
    stale = before["h1"][0]
    dev_cluster.partition("h1")
    wait_for(lambda: dev_cluster.node_statuses()["h1"] == "down", 15, "h1 marked down")
    wait_for(
        lambda: sum(len(v) for v in running_by_host(dev_cluster, "web", ["h2", "h3"]).values()) == 3,
        15,
        "replacement running on h2 or h3",
    )
    replacements = running_by_host(dev_cluster, "web", ["h2", "h3"])
    assert running_by_host(dev_cluster, "web", ["h1"])["h1"] == [stale], "cut off, h1 keeps running (keep policy)"
    dev_cluster.heal("h1")
    wait_for(lambda: dev_cluster.node_statuses()["h1"] == "ready", 15, "h1 back")
    wait_for(lambda: not dev_cluster.running("h1", "web"), 5, "the stale copy on h1 stopped")
    assert running_by_host(dev_cluster, "web", ["h2", "h3"]) == replacements, "replacements are never stopped"
    wait_for(lambda: not dev_cluster.containers("h1", **{"dockyard.service.name": "web"}), 5, "the stale copy removed")
    generations = sorted(
        int(c.labels["dockyard.generation"]) for h in ("h2", "h3") for c in dev_cluster.running(h, "web")
    )
    assert generations == [1, 1, 2], "the replacement carries the next fencing generation"


def test_stop_after_disconnect_stops_the_container_on_the_cut_off_host(
    dev_cluster: ClusterHarness, tmp_path: Path
) -> None:
    extra = "    placement: {max_replicas_per_node: 1}\n    on_disconnect: {stop_after: 2s}\n"
    dev_cluster.cli("apply", "-f", str(spec(tmp_path / "s.yaml", "single", replicas=1, extra=extra)))
    [host] = [h for h, ids in running_by_host(dev_cluster, "single").items() if ids]
    dev_cluster.partition(host)
    wait_for(lambda: not dev_cluster.running(host, "single"), 10, f"the agent on {host} stopping its container")
    others = [h for h in dev_cluster.hosts if h != host]
    wait_for(lambda: sum(len(v) for v in running_by_host(dev_cluster, "single", others).values()) == 1, 15, "moved")
    dev_cluster.heal(host)
    wait_for(lambda: dev_cluster.node_statuses()[host] == "ready", 15, f"{host} back")
    assert sum(len(v) for v in running_by_host(dev_cluster, "single").values()) == 1


def test_drain_pause_activate_label_and_remove(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    dev_cluster.cli("apply", "-f", str(spec(tmp_path / "s.yaml", "web")))
    assert all(len(v) == 1 for v in running_by_host(dev_cluster, "web").values())

    dev_cluster.cli("node", "drain", "h2")
    counts = running_by_host(dev_cluster, "web")
    assert counts["h2"] == []
    assert len(counts["h1"]) + len(counts["h3"]) == 3
    assert dev_cluster.json("nodes")[1]["availability"] == "drain"

    dev_cluster.cli("node", "pause", "h3")
    dev_cluster.cli("node", "activate", "h2")
    dev_cluster.cli("scale", "web", "5")
    counts = running_by_host(dev_cluster, "web")
    assert len(counts["h3"]) <= 2, "a paused node takes no new task"
    assert sum(len(v) for v in counts.values()) == 5

    dev_cluster.cli("node", "activate", "h3")
    dev_cluster.cli("node", "label", "h3", "zone=edge")
    pinned = "    placement: {constraints: [node.labels.zone == edge]}\n"
    dev_cluster.cli("apply", "-f", str(spec(tmp_path / "edge.yaml", "edge", replicas=2, extra=pinned)))
    edge = running_by_host(dev_cluster, "edge")
    assert (len(edge["h1"]), len(edge["h2"]), len(edge["h3"])) == (0, 0, 2)
    assert dev_cluster.json("nodes")[2]["labels"]["zone"] == "edge"

    refused = dev_cluster.cli("node", "rm", "h1", check=False)
    assert refused.returncode != 0
    assert "is ready" in refused.stderr
    dev_cluster.stop_agent("h1")
    wait_for(lambda: dev_cluster.node_statuses()["h1"] == "down", 15, "h1 down")
    dev_cluster.cli("node", "rm", "h1")
    assert "h1" not in dev_cluster.node_statuses()
    wait_for(
        lambda: sum(len(v) for v in running_by_host(dev_cluster, "web", ["h2", "h3"]).values()) == 5,
        20,
        "h1's web tasks moved",
    )


def test_global_service_follows_nodes_and_pending_reasons_explain(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    extra = "    mode: global\n    placement: {constraints: [node.labels.role == edge]}\n"
    dev_cluster.cli("apply", "-f", str(spec(tmp_path / "g.yaml", "probe", replicas=None, extra=extra)), "--detach")
    dev_cluster.cli("node", "label", "h1", "role=edge")
    dev_cluster.cli("node", "label", "h3", "role=edge")
    wait_for(
        lambda: {h: len(v) for h, v in running_by_host(dev_cluster, "probe").items()} == {"h1": 1, "h2": 0, "h3": 1},
        20,
        "one probe on each edge host",
    )
    dev_cluster.cli("node", "label", "h3", "role-")
    dev_cluster.cli("node", "label", "h2", "role=edge")
    wait_for(
        lambda: {h: len(v) for h, v in running_by_host(dev_cluster, "probe").items()} == {"h1": 1, "h2": 1, "h3": 0},
        20,
        "the probe following the labels",
    )

    impossible = "    placement: {constraints: [node.labels.gpu == yes]}\n"
    dev_cluster.cli("apply", "-f", str(spec(tmp_path / "gpu.yaml", "gpu", replicas=1, extra=impossible)), "--detach")
    reason = wait_for(
        lambda: [t["message"] for t in dev_cluster.json("ps", "gpu") if "no suitable node" in t["message"]],
        10,
        "a pending reason",
    )
    assert "3 nodes" in reason[0]
    assert "node.labels.gpu == yes" in reason[0]
    inspect = dev_cluster.json("service", "inspect", "gpu")
    assert inspect["pending"][0]["reason"] == reason[0]
    assert "Traceback" not in dev_cluster.cli("service", "inspect", "gpu").stdout


def test_no_node_is_marked_down_under_normal_load(dev_cluster: ClusterHarness, tmp_path: Path) -> None:
    dev_cluster.cli("apply", "-f", str(spec(tmp_path / "s.yaml", "busy", replicas=12)))
    dev_cluster.cli("scale", "busy", "3")
    dev_cluster.cli("scale", "busy", "9")
    log = (dev_cluster.cluster.state_dir / "controller.log").read_text()
    assert "node down" not in log
    assert set(dev_cluster.node_statuses().values()) == {"ready"}
