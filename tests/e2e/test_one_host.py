"""A one-host cluster end to end: every check counts real containers on the real dockerd."""

from __future__ import annotations

import json
import signal
import subprocess
import textwrap
import urllib.request
from pathlib import Path

from tests.e2e.harness import Cluster, free_port, wait_for


def write_spec(path: Path, replicas: int = 3, name: str = "sleeper", extra: str = "") -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            services:
              {name}:
                image: dockyard-test:latest
                command: ["sleep", "3600"]
                replicas: {replicas}
                stop_grace_period: 1s
            """
        )
        + extra
    )
    return path


def test_apply_scale_and_remove(cluster: Cluster, tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "sleeper.yaml", replicas=3)
    result = cluster.json("apply", "-f", str(spec))
    assert (result["outcome"], result["exit_code"]) == ("ok", 0)
    [row] = result["services"]
    assert (row["service"], row["action"], row["revision"], row["healthy"], row["desired"]) == (
        "sleeper",
        "created",
        1,
        3,
        3,
    )
    running = cluster.running("sleeper")
    assert len(running) == 3
    tasks = cluster.json("ps", "sleeper")
    assert sorted(t["slot"] for t in tasks) == [1, 2, 3]
    assert {t["container_id"] for t in tasks} == {c.id for c in running}
    assert all(t["state"] == "running" and t["node"] == f"e2e-{cluster.port}" for t in tasks)
    for container in running:
        assert container.labels["dockyard.service.name"] == "sleeper"
        assert container.labels["dockyard.node.id"] == cluster.node_id
        assert container.labels["dockyard.task.id"] in {t["id"] for t in tasks}

    cluster.cli("scale", "sleeper", "1")
    assert len(cluster.running("sleeper")) == 1
    assert len(cluster.containers()) == 1, "scaled-down containers are removed, not just stopped"

    cluster.cli("rm", "sleeper")
    assert cluster.containers() == []
    assert cluster.json("services") == []


def test_killed_container_is_replaced(cluster: Cluster, tmp_path: Path) -> None:
    cluster.cli("apply", "-f", str(write_spec(tmp_path / "s.yaml", replicas=1, extra=_fast_restart())))
    [victim] = cluster.running("sleeper")
    subprocess.run(["docker", "kill", victim.id], check=True, capture_output=True)
    replacement = wait_for(
        lambda: [c for c in cluster.running("sleeper") if c.id != victim.id], 30, "a replacement container"
    )
    assert len(replacement) == 1
    history = cluster.json("ps", "sleeper", "--all")
    failed = [t for t in history if t["container_id"] == victim.id]
    assert failed and failed[0]["state"] == "failed" and "137" in failed[0]["error"]
    assert len(cluster.running("sleeper")) == 1


def _fast_restart() -> str:
    return "    restart: {condition: any, delay: 0s}\n"


def test_controller_restart_leaves_containers_untouched(cluster: Cluster, tmp_path: Path) -> None:
    cluster.cli("apply", "-f", str(write_spec(tmp_path / "s.yaml", replicas=3)))
    before = {c.id: c for c in cluster.running("sleeper")}
    assert len(before) == 3
    cluster.stop("controller")
    cluster.start_controller()
    wait_for(lambda: cluster.cli("nodes", "-o", "json", check=False).stdout.count('"ready"') == 1, 30, "node ready")
    tasks = cluster.json("ps", "sleeper")
    assert {t["container_id"] for t in tasks} == set(before)
    after = {c.id: c for c in cluster.running("sleeper")}
    assert set(after) == set(before)
    assert all(c.restart_count == 0 and c.started_at == before[c.id].started_at for c in after.values())


def test_agent_sigkill_adopts_containers(cluster: Cluster, tmp_path: Path) -> None:
    cluster.cli("apply", "-f", str(write_spec(tmp_path / "s.yaml", replicas=2)))
    before = {c.id: c.started_at for c in cluster.running("sleeper")}
    cluster.stop("agent", signal.SIGKILL)
    cluster.start_agent()
    wait_for(lambda: cluster.cli("nodes", "-o", "json", check=False).stdout.count('"ready"') == 1, 30, "node ready")
    # Give the agent a full re-list and a resync with the controller before judging.
    wait_for(lambda: all(t["state"] == "running" for t in cluster.json("ps", "sleeper")), 30, "tasks running")
    after = {c.id: c.started_at for c in cluster.running("sleeper")}
    assert after == before
    assert len(cluster.containers()) == 2


def test_bad_spec_changes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.cli("apply", "-f", str(write_spec(tmp_path / "good.yaml", replicas=2)))
    before = sorted(c.id for c in cluster.containers())
    services_before = cluster.json("services")
    bad = write_spec(tmp_path / "bad.yaml", replicas=-1)
    result = cluster.cli("apply", "-f", str(bad), check=False)
    assert result.returncode != 0
    assert "services.sleeper.replicas: must be an integer from 0 to 10000, got -1" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(c.id for c in cluster.containers()) == before
    assert cluster.json("services") == services_before
    scaled = cluster.cli("scale", "sleeper", "20000", check=False)
    assert scaled.returncode != 0
    assert "replicas: must be an integer from 0 to 10000, got 20000" in scaled.stderr
    assert cluster.json("services") == services_before


def test_example_web_service_answers(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    example = (Path(__file__).resolve().parents[2] / "examples" / "web.yaml").read_text()
    spec = tmp_path / "web.yaml"
    spec.write_text(example.replace('"8080:80/tcp"', f'"{port}:80/tcp"'))
    cluster.cli("apply", "-f", str(spec))

    def fetch() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return ""

    page = wait_for(fetch, 30, "the example page")
    assert "Hello from Dockyard" in page


def test_a_large_spec_reaches_real_containers_once_per_revision(cluster: Cluster, tmp_path: Path) -> None:
    """Tasks carry no spec copy; the agent gets each revision's spec once and Docker gets all of it."""
    payload = "p" * (100 * 1024)
    extra = f"    env:\n      PAYLOAD: {payload}\n"
    spec = write_spec(tmp_path / "fat.yaml", replicas=3, name="fat", extra=extra)
    cluster.cli("apply", "-f", str(spec))
    running = cluster.running("fat")
    assert len(running) == 3
    for container in running:
        inspected = subprocess.run(
            ["docker", "inspect", "--format", "{{json .Config.Env}}", container.id],
            check=True,
            capture_output=True,
            text=True,
        )
        assert f"PAYLOAD={payload}" in json.loads(inspected.stdout)
    # The API shows tasks without copies; the full view fills each from its revision.
    basic = cluster.json("ps", "fat")
    assert len(basic) == 3 and all("PAYLOAD" not in json.dumps(t) for t in basic)
    cluster.cli("rm", "fat")
