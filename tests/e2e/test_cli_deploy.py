"""Deploys on a one-host cluster of real processes and the real dockerd, through the real CLI: apply waits for
healthy tasks and exits with the documented codes, a failed rollout rolls back on its own and apply says so,
plan predicts and --if-revision guards, history and rollback, jobs. Every check counts real containers."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from dockyard import labels
from dockyard.cli.exitcodes import ExitCode
from tests.e2e.harness import Cluster

# Probes every half second, so a healthy task is healthy within about a second.
HEALTHY = '{test: ["CMD", "true"], interval: 500ms, timeout: 2s, retries: 1}'
SICK = '{test: ["CMD", "false"], interval: 500ms, timeout: 2s, retries: 1}'


def spec(path: Path, health: str = HEALTHY, env: str = "one", replicas: int = 2, extra: str = "") -> Path:
    path.write_text(
        textwrap.dedent(
            f"""\
            services:
              web:
                image: dockyard-test:latest
                command: ["sleep", "3600"]
                replicas: {replicas}
                env: {{VERSION: {env}}}
                stop_grace_period: 1s
                restart: {{delay: 0s, max_delay: 1s}}
                healthcheck: {health}
                update: {{parallelism: 1, order: start-first, monitor: 1s, failure_action: rollback}}
            """
        )
        + extra
    )
    return path


def revisions_running(cluster: Cluster) -> set[int]:
    """The service revisions the running containers of web were made for."""
    return {int(c.labels[labels.REVISION]) for c in cluster.running("web")}


def test_a_rollout_whose_health_check_fails_rolls_back_and_apply_exits_3(cluster: Cluster, tmp_path: Path) -> None:
    """One cluster for the whole story (a cluster costs seconds to start): a healthy deploy, a failing rollout that
    rolls back on its own, its history, a good update, and a requested rollback."""
    applied = cluster.cli("apply", "-f", str(spec(tmp_path / "good.yaml")), "-o", "json")
    document = json.loads(applied.stdout)
    assert (document["outcome"], document["exit_code"]) == ("ok", 0)
    [row] = document["services"]
    assert (row["action"], row["updated"], row["healthy"], row["failed"]) == ("created", 2, 2, 0)
    tasks = cluster.json("ps", "web")
    assert [(t["state"], t["health"], t["attempt"]) for t in tasks] == [("running", "healthy", 0)] * 2

    bad = cluster.cli("apply", "-f", str(spec(tmp_path / "bad.yaml", health=SICK, env="two")), check=False)

    assert bad.returncode == ExitCode.ROLLED_BACK, bad.stdout + bad.stderr
    assert "Error: web: rolled back" in bad.stderr
    # Every replica runs the old spec again, healthy: containers of revision 1, or of the rollback's
    # revision 3 (the same spec); none of the bad revision 2.
    tasks = cluster.json("ps", "web")
    assert len(tasks) == 2 and all(t["state"] == "running" and t["health"] == "healthy" for t in tasks)
    assert len(cluster.running("web")) == 2
    assert revisions_running(cluster) <= {1, 3}, revisions_running(cluster)
    inspected = cluster.json("service", "inspect", "web")
    assert inspected["rollout"] == "rollback_completed"
    assert inspected["spec"]["env"] == {"VERSION": "one"}
    history = cluster.json("history", "web")
    assert [r["revision"] for r in history] == [3, 2, 1]
    assert history[0]["change_cause"].startswith("rollback to revision 1")
    assert {"path": "env.VERSION", "old": "two", "new": "one"} in history[0]["changes"]

    cluster.cli("apply", "-f", str(spec(tmp_path / "three.yaml", env="three")))
    rolled = cluster.cli("rollback", "web", "-o", "json", check=False)
    assert rolled.returncode == ExitCode.OK, rolled.stderr
    assert json.loads(rolled.stdout)["outcome"] == "ok"
    assert cluster.json("service", "inspect", "web")["spec"]["env"] == {"VERSION": "one"}
    assert len(cluster.running("web")) == 2


def test_plan_predicts_the_change_and_if_revision_guards_the_apply(cluster: Cluster, tmp_path: Path) -> None:
    cluster.cli("apply", "-f", str(spec(tmp_path / "one.yaml")))
    unchanged = cluster.cli("plan", "-f", str(tmp_path / "one.yaml"), check=False)
    assert unchanged.returncode == ExitCode.OK, unchanged.stdout + unchanged.stderr

    two = spec(tmp_path / "two.yaml", env="two")
    planned = cluster.cli("plan", "-f", str(two), check=False)
    assert planned.returncode == ExitCode.CHANGES, planned.stderr
    assert "env.VERSION: one -> two" in planned.stdout
    document = json.loads(cluster.cli("plan", "-f", str(two), "-o", "json", check=False).stdout)
    state = document["state_revision"]
    assert f"planned against state revision {state} (apply with --if-revision {state})" in planned.stdout
    started = [t for t in document["services"][0]["tasks"] if t["kind"] == "start"]
    assert {t["node"] for t in started} == {f"e2e-{cluster.port}"}

    applied = cluster.cli("apply", "-f", str(two), "--if-revision", str(state), check=False)
    assert applied.returncode == ExitCode.OK, applied.stderr
    three = spec(tmp_path / "three.yaml", env="three")
    stale = cluster.cli("apply", "-f", str(three), "--if-revision", str(state), check=False)
    assert stale.returncode == ExitCode.ERROR
    assert "services.web: changed at store revision" in stale.stderr and f"after {state} (planned)" in stale.stderr
    assert cluster.json("service", "inspect", "web")["spec"]["env"] == {"VERSION": "two"}


def test_a_job_is_waited_for_by_its_exit(cluster: Cluster, tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        'services:\n  migrate:\n    image: dockyard-test:latest\n    command: ["sh", "-c", "exit 0"]\n    mode: job\n'
    )
    done = cluster.cli("apply", "-f", str(path), "-o", "json", check=False)
    assert done.returncode == ExitCode.OK, done.stderr
    assert json.loads(done.stdout)["services"][0]["completed"] == 1

    path.write_text(
        'services:\n  migrate:\n    image: dockyard-test:latest\n    command: ["sh", "-c", "exit 3"]\n'
        "    mode: job\n    restart: {condition: none}\n"
    )
    failed = cluster.cli("apply", "-f", str(path), check=False)
    assert failed.returncode == ExitCode.JOB_FAILED, failed.stderr
    assert "exit 3" in failed.stderr
    rows = cluster.json("ps", "migrate", "--all")
    assert any(r["state"] == "failed" and r["exit_code"] == 3 and r["cause"] == "task" for r in rows)
