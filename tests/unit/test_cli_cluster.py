"""The deploying commands against the whole controller (orchestrator, scheduler, dispatcher) and an agent on a
fake runtime, in process (tests.component.harness.FakeCluster): what apply, rollback and plan say and how they
exit when the real roles roll out, roll back and run jobs. Health comes from the fake runtime's scripted
checks (["CMD-SHELL", "exit N"] settles at once); tests/e2e/test_cli_deploy.py does the same on real Docker.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from dockyard.cli.exitcodes import ExitCode
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster, cluster_cli
from tests.polling import eventually

HEALTHY = '["CMD-SHELL", "exit 0"]'
SICK = '["CMD-SHELL", "echo no answer on /up; exit 1"]'


@pytest.fixture
async def one_host(tmp_path: Path) -> AsyncIterator[FakeCluster]:
    """A controller and one agent (host h1) on a fake runtime, its node ready."""
    cluster = FakeCluster(root=tmp_path / "cluster")
    await cluster.start_controller()
    try:
        await cluster.start_agent("h1")
        async with cluster.client() as client:

            async def ready() -> bool:
                return any(n.status == pb.NODE_STATUS_READY for n in await client.list_nodes())

            await eventually(ready, what="h1 ready")
        yield cluster
    finally:
        await cluster.close()


def parsed(result: Result) -> Any:
    """The JSON document a command printed; the in-process controller's and agent's log lines share stdout."""
    offset = 0
    for line in result.stdout.splitlines(keepends=True):
        if line[:1] in ("{", "["):
            return json.JSONDecoder().raw_decode(result.stdout, offset)[0]
        offset += len(line)
    raise AssertionError(f"no JSON document in {result.stdout!r}")


def web(path: Path, check: str = HEALTHY, version: str = "one", replicas: int = 2) -> str:
    path.write_text(
        f"services:\n  web:\n    image: {IMAGE}\n    command: [serve]\n    replicas: {replicas}\n"
        f"    env: {{VERSION: {version}}}\n    stop_grace_period: 0s\n"
        "    restart: {delay: 0s, max_delay: 0s}\n"
        f"    healthcheck: {{test: {check}, retries: 1}}\n"
        "    update: {parallelism: 1, order: start-first, monitor: 0s, failure_action: rollback}\n"
    )
    return str(path)


async def test_apply_rolls_out_healthy_and_a_failing_rollout_rolls_back_with_exit_3(
    one_host: FakeCluster, tmp_path: Path
) -> None:
    created = await cluster_cli(one_host, "apply", "-f", web(tmp_path / "one.yaml"), "-o", "json")
    assert created.exit_code == ExitCode.OK, created.output
    [row] = parsed(created)["services"]
    assert (row["action"], row["healthy"], row["failed"]) == ("created", 2, 0)

    updated = await cluster_cli(one_host, "apply", "-f", web(tmp_path / "two.yaml", version="two"), "-o", "json")
    assert updated.exit_code == ExitCode.OK, updated.output
    assert parsed(updated)["services"][0]["rollout"] == "completed"

    bad = await cluster_cli(one_host, "apply", "-f", web(tmp_path / "bad.yaml", check=SICK, version="three"))
    assert bad.exit_code == ExitCode.ROLLED_BACK, bad.output
    assert "Error: web: rolled back: rollback to revision 2" in bad.stderr

    tasks = parsed(await cluster_cli(one_host, "ps", "web", "-o", "json"))
    assert [(t["state"], t["health"]) for t in tasks] == [("running", "healthy")] * 2
    inspected = parsed(await cluster_cli(one_host, "service", "inspect", "web", "-o", "json"))
    assert (inspected["rollout"], inspected["spec"]["env"]) == ("rollback_completed", {"VERSION": "two"})
    failed = parsed(await cluster_cli(one_host, "ps", "web", "--all", "-o", "json"))
    assert any(t["cause"] == "unhealthy" and "no answer on /up" in t["error"] for t in failed)

    history = parsed(await cluster_cli(one_host, "history", "web", "-o", "json"))
    assert [r["revision"] for r in history] == [4, 3, 2, 1]
    assert {"path": "env.VERSION", "old": "three", "new": "two"} in history[0]["changes"]

    back = await cluster_cli(one_host, "rollback", "web", "--to", "1", "-o", "json")
    assert back.exit_code == ExitCode.OK, back.output
    inspected = parsed(await cluster_cli(one_host, "service", "inspect", "web", "-o", "json"))
    assert inspected["spec"]["env"] == {"VERSION": "one"}


async def test_plan_then_apply_at_its_state_revision(one_host: FakeCluster, tmp_path: Path) -> None:
    path = web(tmp_path / "one.yaml")
    planned = await cluster_cli(one_host, "plan", "-f", path, "-o", "json")
    assert planned.exit_code == ExitCode.CHANGES, planned.output
    document = parsed(planned)
    assert [(t["kind"], t["node"]) for t in document["services"][0]["tasks"]] == [("start", "h1")] * 2
    applied = await cluster_cli(one_host, "apply", "-f", path, "--if-revision", str(document["state_revision"]))
    assert applied.exit_code == ExitCode.OK, applied.output
    again = await cluster_cli(one_host, "plan", "-f", path)
    assert again.exit_code == ExitCode.OK, again.output


async def test_a_job_is_waited_for_by_its_exit(one_host: FakeCluster, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(f'services:\n  migrate:\n    image: {IMAGE}\n    command: ["sh", "-c", "exit 0"]\n    mode: job\n')
    done = await cluster_cli(one_host, "apply", "-f", str(path), "-o", "json")
    assert done.exit_code == ExitCode.OK, done.output
    assert parsed(done)["services"][0]["completed"] == 1

    broken = tmp_path / "broken.yaml"
    broken.write_text(
        f'services:\n  broken:\n    image: {IMAGE}\n    command: ["sh", "-c", "exit 3"]\n    mode: job\n'
        "    restart: {condition: none}\n"
    )
    failed = await cluster_cli(one_host, "apply", "-f", str(broken))
    assert failed.exit_code == ExitCode.JOB_FAILED, failed.output
    assert "Error: broken: job failed: broken.1: failed (exit 3): exited with code 3" in failed.stderr


async def test_service_rebalance_waits_until_the_spread_holds(one_host: FakeCluster, tmp_path: Path) -> None:
    created = await cluster_cli(one_host, "apply", "-f", web(tmp_path / "web.yaml", replicas=4))
    assert created.exit_code == ExitCode.OK, created.output
    await one_host.start_agent("h2")
    async with one_host.client() as client:

        async def both_ready() -> bool:
            return sum(n.status == pb.NODE_STATUS_READY for n in await client.list_nodes()) == 2

        await eventually(both_ready, what="h2 ready")
    tasks = parsed(await cluster_cli(one_host, "ps", "web", "-o", "json"))
    assert [t["node"] for t in tasks] == ["h1"] * 4  # nothing moves by itself

    moved = await cluster_cli(one_host, "service", "rebalance", "web", "-o", "json")
    assert moved.exit_code == ExitCode.OK, moved.output
    assert parsed(moved)["outcome"] == "ok"
    tasks = parsed(await cluster_cli(one_host, "ps", "web", "-o", "json"))
    assert sorted(t["node"] for t in tasks) == ["h1", "h1", "h2", "h2"]
    assert all(t["state"] == "running" and t["health"] == "healthy" for t in tasks)
