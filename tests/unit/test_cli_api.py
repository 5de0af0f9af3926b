"""The deploying commands against the real API over gRPC (tests.component.harness.ApiInThread): no orchestrator
runs, so each test writes the tasks and rollout status an orchestrator would, and checks what the CLI
prints and how it exits."""

from __future__ import annotations

import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from click.testing import Result

from controller.store.base import Put
from dockyard.cli.exitcodes import ExitCode
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiInThread, run_cli
from tests.polling import wait_for

S = pb.UpdateStatus


def spec_file(tmp_path: Path, image: str = "app:1", replicas: int = 2) -> str:
    path = tmp_path / "web.yaml"  # beside the API's store, under the same tmp_path
    path.write_text(f"services:\n  web:\n    image: {image}\n    replicas: {replicas}\n")
    return str(path)


def stored(cli_api: ApiInThread) -> pb.Service:
    [service] = cli_api.run(cli_api.api.store.list_services())
    return service


def run_tasks(cli_api: ApiInThread, service: pb.Service, revision: int, count: int = 2) -> None:
    """Writes `count` running tasks of the service at `revision`, as the orchestrator and agents would."""
    tasks = []
    for slot in range(1, count + 1):
        task = pb.Task(id=f"t{slot}-{revision}", service_id=service.id, service_name="web", slot=slot)
        task.revision = revision
        task.node_id = "n1"
        task.desired_state = pb.DESIRED_STATE_RUNNING
        task.status.state = pb.TASK_STATE_RUNNING
        tasks.append(task)
    cli_api.run(cli_api.api.store.commit([Put(t) for t in tasks]))


def set_status(cli_api: ApiInThread, state: pb.UpdateStatus.State.ValueType, message: str = "", **fields: int) -> None:
    """Writes the service's update status (and any other fields given) as the orchestrator would."""
    service = stored(cli_api)
    service.update_status.state = state
    service.update_status.to_revision = fields.pop("to_revision", service.spec_revision)
    service.update_status.message = message
    for name, value in fields.items():
        setattr(service, name, value)
    cli_api.run(cli_api.api.store.commit([Put(service)]))


def test_apply_waits_and_exits_0_once_the_rollout_completed_with_every_task_healthy(
    cli_api: ApiInThread, tmp_path: Path
) -> None:
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-d").exit_code == 0
    run_tasks(cli_api, stored(cli_api), revision=1)
    set_status(cli_api, S.STATE_COMPLETED)

    applied = run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-o", "json")

    assert applied.exit_code == 0, applied.output
    document = json.loads(applied.stdout)
    assert (document["outcome"], document["exit_code"]) == ("ok", 0)
    [row] = document["services"]
    assert {k: row[k] for k in ("service", "action", "revision", "updated", "healthy", "failed", "rollout")} == {
        "service": "web",
        "action": "unchanged",
        "revision": 1,
        "updated": 2,
        "healthy": 2,
        "failed": 0,
        "rollout": "completed",
    }


def test_apply_that_rolled_back_exits_3_with_the_reason_though_every_task_runs(
    cli_api: ApiInThread, tmp_path: Path
) -> None:
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-d").exit_code == 0
    run_tasks(cli_api, stored(cli_api), revision=1)
    with ThreadPoolExecutor(1) as pool:
        applying: Future[Result] = pool.submit(run_cli, cli_api, "apply", "-f", spec_file(tmp_path, image="app:2"))
        wait_for(lambda: stored(cli_api).spec_revision == 2, 10, "the apply to be stored")
        # The orchestrator's rollback: revision 1's spec again as revision 3, which the old tasks run.
        set_status(
            cli_api,
            S.STATE_ROLLBACK_COMPLETED,
            "rollback to revision 1: 2 of 2 tasks failed",
            to_revision=3,
            revision=3,
            spec_revision=3,
            also_current_from=1,
            also_current_to=1,
        )
        applied = applying.result(timeout=30)

    assert applied.exit_code == ExitCode.ROLLED_BACK, applied.output
    assert "web: updated (revision 2)" in applied.stderr
    assert "Error: web: rolled back: rollback to revision 1: 2 of 2 tasks failed" in applied.stderr
    assert "rollback_completed" in applied.stdout  # the final table's rollout column


def test_apply_whose_rollout_pauses_exits_4(cli_api: ApiInThread, tmp_path: Path) -> None:
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-d").exit_code == 0
    run_tasks(cli_api, stored(cli_api), revision=1)
    with ThreadPoolExecutor(1) as pool:
        applying: Future[Result] = pool.submit(
            run_cli, cli_api, "apply", "-f", spec_file(tmp_path, image="app:2"), "-o", "json"
        )
        wait_for(lambda: stored(cli_api).spec_revision == 2, 10, "the apply to be stored")
        set_status(cli_api, S.STATE_PAUSED, "update paused: 1 of 2 tasks failed")  # as the orchestrator would
        applied = applying.result(timeout=30)

    assert applied.exit_code == ExitCode.PAUSED
    document = json.loads(applied.stdout)
    assert document["outcome"] == "paused"
    assert document["reason"] == "web: rollout paused: update paused: 1 of 2 tasks failed"


def test_apply_times_out_with_exit_6_saying_what_is_missing(cli_api: ApiInThread, tmp_path: Path) -> None:
    applied = run_cli(cli_api, "apply", "-f", spec_file(tmp_path, replicas=1), "--timeout", "1")
    assert applied.exit_code == ExitCode.TIMEOUT
    assert "Error: timed out after 1s: web: 0/1 updated, 0 healthy" in applied.stderr


def test_detach_returns_at_once_with_the_stored_change(cli_api: ApiInThread, tmp_path: Path) -> None:
    applied = run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "--detach", "-o", "json")
    assert applied.exit_code == 0, applied.output
    assert json.loads(applied.stdout) == [{"service": "web", "action": "created", "revision": 1}]


def test_a_bare_if_revision_of_0_means_no_service_of_the_file_exists_yet(cli_api: ApiInThread, tmp_path: Path) -> None:
    created = run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-d", "--if-revision", "0")
    assert created.exit_code == 0, created.output
    again = run_cli(cli_api, "apply", "-f", spec_file(tmp_path, image="app:2"), "-d", "--if-revision", "0")
    assert again.exit_code == ExitCode.ERROR
    assert "services.web: exists at revision 1, expected it not to exist" in again.output
    assert stored(cli_api).spec.image == "app:1"


def test_plan_prints_the_change_and_exits_2_then_0_once_applied(cli_api: ApiInThread, tmp_path: Path) -> None:
    planned = run_cli(cli_api, "plan", "-f", spec_file(tmp_path))
    assert planned.exit_code == ExitCode.CHANGES, planned.output
    assert "+ web: create (revision 1)" in planned.stdout
    # No node has joined: the scheduler says why the tasks cannot be placed.
    assert "    ! web.1 cannot be placed: " in planned.stdout
    document = json.loads(run_cli(cli_api, "plan", "-f", spec_file(tmp_path), "-o", "json").stdout)
    state = document["state_revision"]
    assert f"planned against state revision {state} (apply with --if-revision {state})" in planned.stdout
    assert [t["kind"] for t in document["services"][0]["tasks"]] == ["unplaced", "unplaced"]

    applied = run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-d", "--if-revision", str(state))
    assert applied.exit_code == 0, applied.output
    stale = run_cli(cli_api, "apply", "-f", spec_file(tmp_path, image="app:2"), "-d", "--if-revision", str(state))
    assert stale.exit_code == ExitCode.ERROR, stale.output
    assert stored(cli_api).spec.image == "app:1"
    fresh_state = json.loads(run_cli(cli_api, "plan", "-f", spec_file(tmp_path, image="app:2"), "-o", "json").stdout)
    fresh = run_cli(
        cli_api,
        "apply",
        "-f",
        spec_file(tmp_path, image="app:2"),
        "-d",
        "--if-revision",
        str(fresh_state["state_revision"]),
    )
    assert fresh.exit_code == 0, fresh.output
    assert stored(cli_api).spec.image == "app:2"

    updated = run_cli(cli_api, "plan", "-f", spec_file(tmp_path, image="app:3"))
    assert updated.exit_code == ExitCode.CHANGES
    assert "~ web: update (revision 3)\n    image: app:2 -> app:3\n" in updated.stdout
    assert run_cli(cli_api, "plan", "-f", spec_file(tmp_path, image="app:2")).exit_code == ExitCode.CHANGES  # unplaced


def test_history_and_a_detached_rollback(cli_api: ApiInThread, tmp_path: Path) -> None:
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-d").exit_code == 0
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path, image="app:2"), "-d").exit_code == 0

    rolled = run_cli(cli_api, "rollback", "web", "-d", "-o", "json")
    assert rolled.exit_code == 0, rolled.output
    assert json.loads(rolled.stdout) == {"service": "web", "action": "rolled back", "revision": 3}
    assert stored(cli_api).spec.image == "app:1"

    history = json.loads(run_cli(cli_api, "history", "web", "-o", "json").stdout)
    assert [(r["revision"], r["current"], r["summary"]) for r in history] == [
        (3, True, "image: app:2 -> app:1"),
        (2, False, "image: app:1 -> app:2"),
        (1, False, "created"),
    ]
    assert history[0]["change_cause"].startswith("rollback to revision 1")
    table = run_cli(cli_api, "history", "web")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[1].startswith("*")


def test_a_detached_rebalance_is_stored(cli_api: ApiInThread, tmp_path: Path) -> None:
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-d").exit_code == 0
    asked = run_cli(cli_api, "service", "rebalance", "web", "-d")
    assert asked.exit_code == 0, asked.output
    assert stored(cli_api).rebalance_generation == 1


def test_a_rollback_to_the_current_spec_of_a_paused_rollout_says_it_resumed(
    cli_api: ApiInThread, tmp_path: Path
) -> None:
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path), "-d").exit_code == 0
    assert run_cli(cli_api, "apply", "-f", spec_file(tmp_path, image="app:2"), "-d").exit_code == 0
    set_status(cli_api, S.STATE_PAUSED, "update paused: 1 of 2 tasks failed")

    resumed = run_cli(cli_api, "rollback", "web", "--to", "2", "-d", "-o", "json")

    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout) == {"service": "web", "action": "resumed", "revision": 2}
    assert stored(cli_api).update_status.state == S.STATE_UPDATING
