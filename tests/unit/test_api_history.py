"""The API's pure parts for issue 9: history answers, rollback targets, and the plan's simulation."""

from __future__ import annotations

from datetime import UTC, datetime

from controller.api.history import Resume, history_response, rollback_target
from controller.api.planning import simulate
from controller.store.base import ServiceRevision
from dockyard.spec.issues import Issue
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def spec(image: str, replicas: int = 1, env_bytes: int = 0) -> pb.ServiceSpec:
    s = pb.ServiceSpec(name="web", image=image, replicas=replicas)
    if env_bytes:
        s.env["BLOB"] = "x" * env_bytes
    return s


def kept(revision: int, spec_revision: int, s: pb.ServiceSpec) -> ServiceRevision:
    return ServiceRevision(revision, spec_revision, s, NOW, "apply", revision * 10)


def service(revision: int, spec_revision: int, s: pb.ServiceSpec) -> pb.Service:
    result = pb.Service(id="svc", name="web", revision=revision, spec_revision=spec_revision)
    result.spec.CopyFrom(s)
    return result


def test_history_keeps_the_newest_revisions_that_fit_and_marks_the_current_one() -> None:
    revisions = [kept(r, r, spec(f"app:{r}", env_bytes=1000)) for r in (5, 4, 3, 2, 1)]
    response = history_response(service(5, 5, spec("app:5")), revisions, max_bytes=2500)
    assert [(r.revision, r.current) for r in response.revisions] == [(5, True), (4, False)]
    one = history_response(service(5, 5, spec("app:5")), revisions, max_bytes=10)
    assert [r.revision for r in one.revisions] == [5], "the newest is answered whatever its size"


def test_rollback_goes_before_the_current_spec_or_to_a_kept_other_spec() -> None:
    # 1 app:1, 2 app:1 scaled, 3 app:2, 4 app:2 scaled.
    revisions = [
        kept(4, 3, spec("app:2", 3)),
        kept(3, 3, spec("app:2", 2)),
        kept(2, 1, spec("app:1", 2)),
        kept(1, 1, spec("app:1", 1)),
    ]
    current = service(4, 3, spec("app:2", 3))
    target = rollback_target(current, revisions, 0)
    assert not isinstance(target, (Issue, Resume))
    assert target.revision == 2
    named = rollback_target(current, revisions, 1)
    assert not isinstance(named, (Issue, Resume))
    assert named.revision == 1
    same = rollback_target(current, revisions, 3)
    assert isinstance(same, Issue)
    assert same.path == "to_revision"
    gone = rollback_target(current, revisions[:2], 0)
    assert isinstance(gone, Issue)
    assert gone.path == "service"


def rolled_back(state: pb.UpdateStatus.State.ValueType, s: pb.ServiceSpec, left: int, revision: int) -> pb.Service:
    """The service as a rollback from spec revision `left` wrote it at `revision`, now in `state`."""
    result = service(revision, revision, s)
    result.update_status.state = state
    result.update_status.from_revision, result.update_status.to_revision = left, revision
    return result


def test_rollback_after_a_rollback_never_returns_to_the_failed_spec() -> None:
    # 1 app:0, 2 app:1, 3 app:bad (failed), 4 app:1 again (the automatic rollback, paused), 3 and 4 kept.
    good, bad = spec("app:1"), spec("app:bad")
    revisions = [kept(4, 4, good), kept(3, 3, bad), kept(2, 2, good), kept(1, 1, spec("app:0"))]
    paused = rolled_back(pb.UpdateStatus.STATE_ROLLBACK_PAUSED, good, 3, 4)

    # `dockyard rollback` and `--to 2` both resume the paused rollback of app:1; --to 3 is asked for by name.
    assert rollback_target(paused, revisions, 0) == Resume(2)
    assert rollback_target(paused, revisions, 2) == Resume(2)
    named = rollback_target(paused, revisions, 3)
    assert not isinstance(named, (Issue, Resume))
    assert named.spec == bad

    # Once the rollback completed there is nothing to resume: refused, naming where it stands.
    done = rolled_back(pb.UpdateStatus.STATE_ROLLBACK_COMPLETED, good, 3, 4)
    refusal = rollback_target(done, revisions, 0)
    assert isinstance(refusal, Issue)
    assert (refusal.path, refusal.message) == (
        "service",
        "'web' was rolled back from revision 3 and runs the spec of revision 2 already; "
        "give the revision to go to (see `dockyard history web`)",
    )
    # Earlier revisions of the failed spec are skipped too: 1 app:bad, 2 app:1, 3 app:bad, 4 app:1.
    again = [kept(4, 4, good), kept(3, 3, bad), kept(2, 2, spec("app:2")), kept(1, 1, bad)]
    target = rollback_target(rolled_back(pb.UpdateStatus.STATE_ROLLBACK_STARTED, good, 3, 4), again, 0)
    assert not isinstance(target, (Issue, Resume))
    assert target.revision == 2
    none = rollback_target(rolled_back(pb.UpdateStatus.STATE_ROLLBACK_STARTED, good, 3, 4), again[:2] + again[3:], 0)
    assert isinstance(none, Issue)
    assert none.message.startswith("'web' was rolled back from revision 3 and keeps no other spec before it")


def test_a_rollback_to_the_current_spec_resumes_a_paused_update() -> None:
    revisions = [kept(2, 2, spec("app:2")), kept(1, 1, spec("app:1"))]
    paused = service(2, 2, spec("app:2"))
    paused.update_status.state = pb.UpdateStatus.STATE_PAUSED
    paused.update_status.from_revision, paused.update_status.to_revision = 1, 2
    assert rollback_target(paused, revisions, 2) == Resume(2)
    # With no revision named it is an ordinary rollback, to the spec before.
    target = rollback_target(paused, revisions, 0)
    assert not isinstance(target, (Issue, Resume))
    assert target.revision == 1


def test_a_rollback_ignores_a_rollback_status_the_spec_has_moved_past() -> None:
    # Applied app:3 after a rollback completed; the orchestrator has not started its rollout yet.
    revisions = [kept(5, 5, spec("app:3")), kept(4, 4, spec("app:1")), kept(3, 3, spec("app:bad"))]
    current = service(5, 5, spec("app:3"))
    current.update_status.state = pb.UpdateStatus.STATE_ROLLBACK_COMPLETED
    current.update_status.from_revision, current.update_status.to_revision = 3, 4
    target = rollback_target(current, revisions, 0)
    assert not isinstance(target, (Issue, Resume))
    assert target.revision == 4


def test_a_target_differing_only_in_controller_settings_is_the_current_spec() -> None:
    tuned = spec("app:2")
    tuned.update.parallelism = 3
    revisions = [kept(3, 2, tuned), kept(2, 2, spec("app:2")), kept(1, 1, spec("app:1"))]
    refusal = rollback_target(service(3, 2, tuned), revisions, 2)
    assert isinstance(refusal, Issue)
    assert refusal.message.startswith(
        "revision 2 of 'web' has the current spec (apart from replicas, update, rollback, restart, depends_on, "
        "placement.rebalance and stack)"
    )


def nodes(*names: str) -> list[pb.Node]:
    out = []
    for name in names:
        node = pb.Node(id=f"id-{name}", status=pb.NODE_STATUS_READY, availability=pb.NODE_AVAILABILITY_ACTIVE)
        node.description.hostname = name
        node.description.cpus = 4
        node.description.memory_bytes = 8 << 30
        out.append(node)
    return out


def test_simulation_starts_every_replica_and_writes_nothing_back() -> None:
    created = service(1, 1, spec("app:1", replicas=3))
    result = simulate({"svc": created}, [], nodes("a", "b", "c"), {}, NOW, seed=0)
    assert result.settled
    started = result.started["svc"]
    assert sorted(t.slot for t in started) == [1, 2, 3]
    assert sorted(t.node_id for t in started) == ["id-a", "id-b", "id-c"]
    assert all(t.status.state == pb.TASK_STATE_RUNNING for t in started)
    assert result.unplaced == {}


def test_simulation_reports_unplaced_tasks_with_the_scheduler_reason() -> None:
    wanted = spec("app:1", replicas=2)
    wanted.placement.constraints.append("node.labels.role == db")
    result = simulate({"svc": service(1, 1, wanted)}, [], nodes("a"), {}, NOW, seed=0)
    assert len(result.unplaced) == 2
    assert all("node.labels.role == db" in reason for reason in result.unplaced.values())


def test_simulation_stops_at_its_round_bound() -> None:
    result = simulate({"svc": service(1, 1, spec("app:1", replicas=2))}, [], nodes("a"), {}, NOW, seed=0, max_rounds=1)
    assert not result.settled
    assert result.rounds == 1


def test_simulation_runs_a_global_service_on_every_node() -> None:
    everywhere = spec("app:1", replicas=0)
    everywhere.mode = pb.SERVICE_MODE_GLOBAL
    result = simulate({"svc": service(1, 1, everywhere)}, [], nodes("a", "b"), {}, NOW, seed=0)
    assert sorted((t.slot, t.node_id) for t in result.started["svc"]) == [(0, "id-a"), (0, "id-b")]


def test_simulation_starts_a_dependent_once_its_dependency_holds() -> None:
    migrate = pb.Service(id="svc-migrate", name="migrate", revision=1, spec_revision=1)
    migrate.spec.CopyFrom(spec("app:1"))
    migrate.spec.name = "migrate"
    migrate.spec.mode = pb.SERVICE_MODE_JOB
    web = service(1, 1, spec("app:1", replicas=2))
    web.spec.depends_on["migrate"].condition = pb.Dependency.CONDITION_SERVICE_COMPLETED_SUCCESSFULLY
    result = simulate({"svc": web, "svc-migrate": migrate}, [], nodes("a", "b"), {}, NOW, seed=0)
    assert result.settled
    assert len(result.started["svc"]) == 2
    assert all(t.status.state == pb.TASK_STATE_RUNNING for t in result.started["svc"])
    assert [t.status.state for t in result.started["svc-migrate"]] == [pb.TASK_STATE_COMPLETE]


def test_simulation_reports_a_task_held_by_a_dependency_that_never_holds() -> None:
    db = pb.Service(id="svc-db", name="db", revision=1, spec_revision=1)
    db.spec.CopyFrom(spec("db:1"))
    db.spec.name = "db"
    db.spec.placement.constraints.append("node.labels.role == db")
    web = service(1, 1, spec("app:1"))
    web.spec.depends_on["db"].condition = pb.Dependency.CONDITION_SERVICE_HEALTHY
    result = simulate({"svc": web, "svc-db": db}, [], nodes("a"), {}, NOW, seed=0)
    [held] = result.started["svc"]
    assert result.unplaced[held.id].startswith("waiting for db"), result.unplaced[held.id]


def test_simulation_of_a_start_first_update_stops_every_old_task_once_its_successor_runs() -> None:
    first = service(1, 1, spec("app:1", replicas=2))
    made = simulate({"svc": first}, [], nodes("a", "b"), {}, NOW, seed=0)
    running = [t for t in made.started["svc"]]
    for index, task in enumerate(running):
        task.id = f"old-{index}"
    update = service(2, 2, spec("app:2", replicas=2))
    update.spec.update.order = pb.UpdateConfig.ORDER_START_FIRST
    result = simulate({"svc": update}, running, nodes("a", "b"), {("svc", 1): first.spec}, NOW, seed=0)
    assert result.settled
    assert sorted(t.id for t in result.stopped["svc"]) == ["old-0", "old-1"]
    assert sorted((t.slot, t.revision) for t in result.started["svc"]) == [(1, 2), (2, 2)]
    assert all(t.status.state == pb.TASK_STATE_RUNNING for t in result.started["svc"])
