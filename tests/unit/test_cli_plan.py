"""How `dockyard plan`, `history` and `ps` print: pure formatting of the API's answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

from dockyard.cli.history import history_rows
from dockyard.cli.planning import has_changes, plan_document, plan_lines
from dockyard.cli.views import task_detail, task_view
from dockyard.spec.diff import spec_changes
from dockyard.timestamps import to_timestamp
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

P = cpb.ServicePlan
T = cpb.PlannedTask


def a_plan() -> cpb.PlanApplyResponse:
    db = P(name="db", action=P.ACTION_CREATE, revision=1, start_order=0)
    db.tasks.add(kind=T.KIND_START, slot=1, node_id="n1", node_name="host-a", revision=1)
    web = P(name="web", action=P.ACTION_UPDATE, revision=5, start_order=1, depends_on=["db"])
    web.changes.add(path="image", old_value="app:1", new_value="app:2")
    web.changes.add(path="env.MODE", old_value="", new_value="prod")
    web.tasks.add(kind=T.KIND_STOP, slot=1, node_id="n2", node_name="host-b", revision=4, task_id="abcdef1234567890")
    web.tasks.add(kind=T.KIND_START, slot=1, node_id="n2", node_name="host-b", revision=5, reason="update")
    web.tasks.add(kind=T.KIND_UNPLACED, slot=2, revision=5, reason="3 nodes: 3 lack memory (need 4GiB)")
    old = P(name="old", action=P.ACTION_REMOVE)
    old.tasks.add(kind=T.KIND_STOP, slot=1, node_id="n1", node_name="host-a", revision=2, task_id="ffff")
    return cpb.PlanApplyResponse(state_revision=812, services=[db, web, old])


def test_plan_lines_show_services_fields_tasks_order_and_the_state_revision() -> None:
    assert plan_lines(a_plan()) == [
        "+ db: create (revision 1)",
        "    start db.1 on host-a at revision 1",
        "~ web: update (revision 5)",
        "    image: app:1 -> app:2",
        "    env.MODE: (unset) -> prod",
        "    waits for: db",
        "    stop  web.1 [abcdef123456] on host-b",
        "    start web.1 on host-b at revision 5 (update)",
        "    ! web.2 cannot be placed: 3 nodes: 3 lack memory (need 4GiB)",
        "- old: remove",
        "    stop  old.1 [ffff] on host-a",
        "start order: db, then web",
        "1 to create, 1 to update, 1 to remove; 2 task(s) to start, 2 to stop, 1 cannot be placed",
        "planned against state revision 812 (apply with --if-revision 812)",
    ]


def test_a_plan_without_changes() -> None:
    response = cpb.PlanApplyResponse(state_revision=9, services=[P(name="web", action=P.ACTION_UNCHANGED)])
    assert not has_changes(response)
    assert plan_lines(response) == [
        "= web: unchanged",
        "no service changes; 0 task(s) to start, 0 to stop",
        "planned against state revision 9 (apply with --if-revision 9)",
    ]
    # An unchanged spec whose tasks are not all running yet still starts some: that is a change.
    response.services[0].tasks.add(kind=T.KIND_START, slot=1, node_id="n1", revision=3)
    assert has_changes(response)


def test_the_plan_document() -> None:
    document = plan_document(a_plan())
    assert document["state_revision"] == 812 and document["changes"] is True
    web = document["services"][1]
    assert web["changes"] == [
        {"path": "image", "old": "app:1", "new": "app:2"},
        {"path": "env.MODE", "old": "", "new": "prod"},
    ]
    assert web["tasks"][2] == {
        "kind": "unplaced",
        "slot": 2,
        "node": None,
        "node_id": None,
        "revision": 5,
        "task_id": None,
        "reason": "3 nodes: 3 lack memory (need 4GiB)",
    }
    assert (web["depends_on"], web["start_order"]) == (["db"], 1)
    json.dumps(document)


# --- history --------------------------------------------------------------------------------------------


def revision(number: int, image: str, replicas: int, cause: str, current: bool = False) -> cpb.ServiceRevision:
    spec = pb.ServiceSpec(name="web", image=image, replicas=replicas)
    made = to_timestamp(datetime(2026, 3, 1, 12, number, tzinfo=UTC))
    return cpb.ServiceRevision(
        revision=number, spec_revision=number, spec=spec, created_at=made, change_cause=cause, current=current
    )


def simple_diff(old: pb.ServiceSpec, new: pb.ServiceSpec) -> Sequence[cpb.FieldChange]:
    """A stand-in for dockyard.spec.diff.spec_changes over two fields."""
    changes = []
    for path in ("image", "replicas"):
        before, after = str(getattr(old, path)), str(getattr(new, path))
        if before != after:
            changes.append(cpb.FieldChange(path=path, old_value=before, new_value=after))
    return changes


def test_history_rows_say_what_changed_since_the_revision_before() -> None:
    revisions = [
        revision(4, "app:1", 3, "rollback to revision 2 (requested)", current=True),
        revision(3, "app:2", 3, "apply"),
        revision(2, "app:1", 3, "scale to 3"),
        revision(1, "app:1", 1, "apply"),
    ]
    rows = history_rows(revisions, simple_diff)
    assert [(r["mark"], r["revision"], r["change_cause"], r["summary"]) for r in rows] == [
        ("*", 4, "rollback to revision 2 (requested)", "image: app:2 -> app:1"),
        ("", 3, "apply", "image: app:1 -> app:2"),
        ("", 2, "scale to 3", "replicas: 1 -> 3"),
        ("", 1, "apply", "created"),
    ]
    assert rows[0]["created_at"] == "2026-03-01T12:04:00+00:00"
    assert rows[0]["changes"] == [{"path": "image", "old": "app:2", "new": "app:1"}]
    json.dumps(rows)


def test_the_oldest_kept_revision_is_not_called_created() -> None:
    rows = history_rows([revision(7, "app:7", 1, "apply", current=True)], simple_diff)
    assert rows[0]["summary"] == "(the oldest revision kept)"


# --- ps -------------------------------------------------------------------------------------------------


def ps_row(task: pb.Task) -> dict[str, object]:
    return task_view(task, {})


def test_ps_shows_a_failed_tasks_exit_code_cause_and_attempt() -> None:
    task = pb.Task(id="t", service_name="web", slot=1, attempt=2)
    task.status.state = pb.TASK_STATE_FAILED
    task.status.exit_code = 1
    task.status.error = "exited with code 1"
    row = ps_row(task)
    assert (row["cause"], row["attempt"]) == ("task", 2)
    assert task_detail(row) == "exit 1: exited with code 1"
    task.status.cause = pb.TaskStatus.CAUSE_UNHEALTHY
    assert task_detail(ps_row(task)) == "exit 1, unhealthy: exited with code 1"
    task.status.cause = pb.TaskStatus.CAUSE_HOST
    task.status.exit_code = 0
    task.status.error = "image app:2 cannot be pulled on this node"
    assert task_detail(ps_row(task)) == "host fault: image app:2 cannot be pulled on this node"


def test_ps_shows_health_and_the_last_probe_output_of_a_task_not_yet_healthy() -> None:
    task = pb.Task(id="t", service_name="web", slot=1)
    task.status.state = pb.TASK_STATE_STARTING
    task.status.message = "waiting to be healthy"
    task.status.health.state = pb.TaskHealth.STATE_STARTING
    task.status.health.output = "curl: (7) Failed to connect"
    task.status.health.failing_streak = 2
    row = ps_row(task)
    assert (row["health"], row["failing_streak"]) == ("starting", 2)
    assert task_detail(row) == "waiting to be healthy; last probe: curl: (7) Failed to connect"
    task.status.state = pb.TASK_STATE_RUNNING
    task.status.message = "started"
    task.status.health.state = pb.TaskHealth.STATE_HEALTHY
    assert (ps_row(task)["health"], task_detail(ps_row(task))) == ("healthy", "started")
    assert ps_row(pb.Task(id="u"))["health"] is None  # no health check


def test_history_rows_with_the_spec_helpers_diff() -> None:
    rows = history_rows(
        [revision(2, "app:2", 3, "apply", current=True), revision(1, "app:1", 1, "apply")], spec_changes
    )
    assert rows[0]["summary"] == "image: app:1 -> app:2; replicas: 1 -> 3"
