"""Rolling updates in the pure reconciler: table tests for each rule, and properties over simulated rollouts."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.orchestrator import rollout
from controller.orchestrator.depends import DependencyView
from controller.orchestrator.nodes import NodeFacts
from controller.orchestrator.plan import Plan
from controller.orchestrator.reconciler import reconcile_service, waits_for_running
from dockyard.task_state import HOST_FAULT_LIMIT, is_terminal, runs_current_spec
from dockyard.timestamps import duration, from_timestamp, to_timestamp
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NODES = NodeFacts.of(
    [pb.Node(id=f"n{i}", status=pb.NODE_STATUS_READY, availability=pb.NODE_AVAILABILITY_ACTIVE) for i in (1, 2, 3)]
)
STATE = pb.UpdateStatus
START_FIRST = pb.UpdateConfig.ORDER_START_FIRST
STOP_FIRST = pb.UpdateConfig.ORDER_STOP_FIRST


def spec(image: str, replicas: int, **update: object) -> pb.ServiceSpec:
    result = pb.ServiceSpec(name="web", image=image, replicas=replicas)
    result.restart.condition = pb.RestartPolicy.CONDITION_ANY
    result.restart.delay.CopyFrom(duration(0))
    if update:
        result.update.CopyFrom(pb.UpdateConfig(**update))  # type: ignore[arg-type]
    return result


@dataclass
class Sim:
    """A service and its tasks, moved by the reconciler's plans and by what the test makes agents report."""

    service: pb.Service
    tasks: dict[str, pb.Task] = field(default_factory=dict)
    now: datetime = NOW
    specs: dict[int, pb.ServiceSpec] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    last: Plan = field(default_factory=Plan)

    @classmethod
    def running(cls, first: pb.ServiceSpec) -> Sim:
        """A service at revision 1 whose tasks all run."""
        sim = cls(pb.Service(id="svc", name="web", revision=1, spec_revision=1, spec=first))
        sim.specs[1] = first
        sim.step()
        for task in sim.live():
            sim.report(task, pb.TASK_STATE_RUNNING)
        sim.step()
        return sim

    def new_id(self) -> str:
        return f"t{next(self.ids)}"

    def apply(self, new: pb.ServiceSpec) -> None:
        """Writes a new spec as the API does."""
        service = pb.Service()
        service.CopyFrom(self.service)
        service.revision += 1
        service.spec_revision = service.revision
        service.also_current_from = service.also_current_to = 0
        service.spec.CopyFrom(new)
        self.service = service
        self.specs[service.revision] = new

    def target(self) -> rollout.RollbackTarget | None:
        back = self.service.update_status.from_revision
        return rollout.RollbackTarget(back, self.specs[back], back, back) if back in self.specs else None

    def step(self) -> Plan:
        """Runs the reconciler once and commits its plan."""
        plan = reconcile_service(
            self.service, list(self.tasks.values()), NODES, self.now, self.new_id, rollback_to=self.target()
        )
        for task in [*plan.create, *plan.update]:
            self.tasks[task.id] = task
        for task in plan.delete:
            del self.tasks[task.id]
        if plan.service is not None:
            self.service = plan.service
            self.specs.setdefault(self.service.revision, self.service.spec)
        self.last = plan
        return plan

    def report(self, task: pb.Task, state: int, cause: int = 0, error: str = "") -> None:
        """Writes an agent's report (placing a pending task on a node first, as the scheduler would)."""
        stored = self.tasks[task.id]
        if not stored.node_id:
            stored.node_id = "n1"
        stored.status.state = state  # type: ignore[assignment]
        stored.status.cause = cause  # type: ignore[assignment]
        stored.status.error = error
        stored.status.timestamp.CopyFrom(to_timestamp(self.now))

    def live(self) -> list[pb.Task]:
        return [t for t in self.tasks.values() if t.desired_state == pb.DESIRED_STATE_RUNNING]

    def serving(self) -> list[pb.Task]:
        """The tasks that run healthy and are meant to."""
        return [t for t in self.live() if t.status.state == pb.TASK_STATE_RUNNING]

    def stop_stopping(self) -> None:
        for task in self.tasks.values():
            if task.desired_state == pb.DESIRED_STATE_SHUTDOWN and not is_terminal(task.status.state):
                self.report(task, pb.TASK_STATE_SHUTDOWN)

    def run_new(self) -> None:
        for task in self.live():
            if not is_terminal(task.status.state) and task.status.state < pb.TASK_STATE_RUNNING:
                self.report(task, pb.TASK_STATE_RUNNING)

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def state(self) -> int:
        return self.service.update_status.state

    def at_revision(self) -> list[int]:
        return sorted(t.revision for t in self.serving())


def settle(sim: Sim, rounds: int = 60, tick: float = 1.0) -> None:
    """Lets every task do what it is told (new ones run, stopping ones stop) until the rollout ends."""
    for _ in range(rounds):
        sim.step()
        sim.stop_stopping()
        sim.run_new()
        sim.advance(tick)
    sim.step()


# --- table tests -------------------------------------------------------------------------------------------


def test_a_new_spec_starts_a_rollout_and_a_change_of_replicas_does_not() -> None:
    sim = Sim.running(spec("img:1", 3))
    assert sim.state() == STATE.STATE_UNSPECIFIED, "creating a service is no rollout"
    scaled = spec("img:1", 4)
    sim.apply(scaled)
    sim.service.spec_revision = 1  # the API keeps spec_revision when only replicas change
    sim.step()
    assert sim.state() == STATE.STATE_UNSPECIFIED
    sim.apply(spec("img:2", 4))
    sim.step()
    status = sim.service.update_status
    assert (status.state, status.from_revision, status.to_revision) == (STATE.STATE_UPDATING, 2, 3)
    assert from_timestamp(status.started_at) == NOW


def test_defaults_are_one_at_a_time_stop_first_rolling_back() -> None:
    got = rollout.policy(pb.ServiceSpec(), rolling_back=False)
    assert (got.parallelism, got.start_first, got.failure_action) == (1, False, pb.UpdateConfig.FAILURE_ACTION_ROLLBACK)
    assert got.monitor == timedelta(seconds=5)
    back = rollout.policy(pb.ServiceSpec(), rolling_back=True)
    assert back.failure_action == pb.UpdateConfig.FAILURE_ACTION_PAUSE, "a rollback pauses, never rolls back"
    own = spec("x", 1)
    own.rollback.CopyFrom(pb.UpdateConfig(parallelism=3, failure_action=pb.UpdateConfig.FAILURE_ACTION_CONTINUE))
    assert rollout.policy(own, rolling_back=True).parallelism == 3
    assert rollout.policy(own, rolling_back=True).failure_action == pb.UpdateConfig.FAILURE_ACTION_CONTINUE


@pytest.mark.parametrize("parallelism", [1, 2, 0])
def test_stop_first_changes_parallelism_slots_at_a_time(parallelism: int) -> None:
    sim = Sim.running(spec("img:1", 4))
    sim.apply(spec("img:2", 4, parallelism=parallelism, order=STOP_FIRST))
    sim.step()
    stopping = [t for t in sim.tasks.values() if t.desired_state == pb.DESIRED_STATE_SHUTDOWN]
    assert len(stopping) == (parallelism or 4)
    assert not sim.last.create, "stop-first: nothing new while the old still runs"
    sim.stop_stopping()
    sim.step()
    assert len(sim.last.create) == (parallelism or 4)
    assert sim.step().empty(), "the next batch waits for this one to run"


def test_start_first_keeps_the_old_task_until_its_successor_runs() -> None:
    sim = Sim.running(spec("img:1", 2))
    sim.apply(spec("img:2", 2, parallelism=1, order=START_FIRST, monitor=duration(0)))
    sim.step()
    [old] = [t for t in sim.live() if t.replaced]
    [new] = sim.last.create
    assert (new.slot, new.revision, new.generation) == (old.slot, 2, old.generation + 1)
    assert old.desired_state == pb.DESIRED_STATE_RUNNING and len(sim.serving()) == 2
    sim.report(new, pb.TASK_STATE_STARTING)
    assert sim.step().empty(), "starting (not yet healthy) is not running"
    sim.report(new, pb.TASK_STATE_RUNNING)
    sim.step()
    assert sim.tasks[old.id].desired_state == pb.DESIRED_STATE_SHUTDOWN
    assert len(sim.last.create) == 1, "and the next slot starts"
    settle(sim)
    assert sim.state() == STATE.STATE_COMPLETED
    assert sim.at_revision() == [2, 2]


def test_delay_waits_between_batches_and_asks_to_be_woken() -> None:
    sim = Sim.running(spec("img:1", 2))
    sim.apply(spec("img:2", 2, parallelism=1, order=START_FIRST, delay=duration(10)))
    sim.step()
    [new] = sim.last.create
    sim.report(new, pb.TASK_STATE_RUNNING)
    sim.step()
    assert not sim.last.create, "the delay has not passed"
    assert sim.last.wake_at == NOW + timedelta(seconds=10)
    sim.advance(10)
    sim.step()
    assert len(sim.last.create) == 1


def test_completion_waits_out_the_monitor() -> None:
    sim = Sim.running(spec("img:1", 1))
    sim.apply(spec("img:2", 1, parallelism=1, monitor=duration(30)))
    sim.step()
    sim.stop_stopping()
    sim.step()
    sim.run_new()
    sim.step()
    assert sim.state() == STATE.STATE_UPDATING
    assert sim.last.wake_at == NOW + timedelta(seconds=30)
    sim.advance(30)
    sim.step()
    assert sim.state() == STATE.STATE_COMPLETED
    assert from_timestamp(sim.service.update_status.completed_at) == sim.now


def fail_new(sim: Sim, cause: int = pb.TaskStatus.CAUSE_UNHEALTHY) -> None:
    for task in sim.live():
        if task.revision == sim.service.spec_revision and not is_terminal(task.status.state):
            sim.report(task, pb.TASK_STATE_FAILED, cause, "health check failed: 503")


def test_a_failing_update_rolls_back_to_the_old_spec_by_default() -> None:
    sim = Sim.running(spec("img:1", 3))
    sim.apply(spec("img:2", 3, parallelism=1, order=START_FIRST))
    sim.step()
    fail_new(sim)
    sim.step()
    service = sim.service
    assert (service.revision, service.spec_revision, service.spec.image) == (3, 3, "img:1")
    assert (service.also_current_from, service.also_current_to) == (1, 1)
    assert service.change_cause == "rollback to revision 1: 1 of 3 updated tasks failed: health check failed: 503"
    status = service.update_status
    assert (status.state, status.from_revision, status.to_revision) == (STATE.STATE_ROLLBACK_STARTED, 2, 3)
    settle(sim)
    assert sim.state() == STATE.STATE_ROLLBACK_COMPLETED
    assert sim.at_revision() == [1, 1, 1], "the tasks never updated were left alone"
    assert not any(t.replaced for t in sim.live())


def test_a_host_fault_is_not_the_specs_fault_but_a_slot_no_host_takes_is() -> None:
    sim = Sim.running(spec("img:1", 2))
    sim.apply(spec("img:2", 2, parallelism=1, order=START_FIRST))
    sim.step()
    for _ in range(HOST_FAULT_LIMIT - 1):
        fail_new(sim, pb.TaskStatus.CAUSE_HOST)
        sim.step()
        assert sim.state() == STATE.STATE_UPDATING, "a refusal is retried elsewhere"
        assert [t.revision for t in sim.last.create] == [2]
    # The slot's hosts refused it HOST_FAULT_LIMIT times in a row (an image no node can pull): one failure.
    fail_new(sim, pb.TaskStatus.CAUSE_HOST)
    sim.step()
    assert sim.state() == STATE.STATE_ROLLBACK_STARTED
    assert sim.service.change_cause == "rollback to revision 1: 1 of 2 updated tasks failed: health check failed: 503"


def test_pause_stops_changing_slots_and_a_resume_counts_anew() -> None:
    sim = Sim.running(spec("img:1", 3))
    sim.apply(spec("img:2", 3, parallelism=1, failure_action=pb.UpdateConfig.FAILURE_ACTION_PAUSE))
    sim.step()
    sim.stop_stopping()
    sim.step()
    fail_new(sim)
    sim.step()
    assert sim.state() == STATE.STATE_PAUSED
    assert sim.service.update_status.message == "1 of 3 updated tasks failed: health check failed: 503"
    settle(sim, rounds=5)
    assert sim.state() == STATE.STATE_PAUSED
    assert sim.at_revision() == [1, 1, 2], "the failed slot restarts at the new spec, no other slot changes"
    sim.service = rollout.resumed(sim.service, sim.now)
    settle(sim)
    assert sim.state() == STATE.STATE_COMPLETED
    assert sim.at_revision() == [2, 2, 2]


def test_max_failure_ratio_tolerates_that_share() -> None:
    sim = Sim.running(spec("img:1", 4))
    sim.apply(spec("img:2", 4, parallelism=2, max_failure_ratio=0.25, order=START_FIRST))
    sim.step()
    [first, _] = sim.last.create
    sim.report(first, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_TASK, "exit 1")
    sim.step()
    assert sim.state() == STATE.STATE_UPDATING, "1 of 4 is not more than a quarter"
    fail_new(sim)
    sim.step()
    assert sim.state() == STATE.STATE_ROLLBACK_STARTED


def test_a_crash_looping_slot_reaches_the_failure_ratio_although_stopped_tasks_are_pruned() -> None:
    # Parallelism 1: one slot crash-loops; the slot's history keeps 3 stopped tasks, the ratio needs 6 failures.
    sim = Sim.running(spec("img:1", 10))
    pause = pb.UpdateConfig.FAILURE_ACTION_PAUSE
    sim.apply(spec("img:2", 10, parallelism=1, max_failure_ratio=0.5, failure_action=pause))
    failed = 0
    for _ in range(40):
        sim.step()
        if sim.state() == STATE.STATE_PAUSED:
            break
        sim.stop_stopping()
        for task in sim.live():
            if task.revision == 2 and task.status.state < pb.TASK_STATE_RUNNING:
                sim.report(task, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_TASK, "exit 1")
                failed += 1
        sim.advance(1)
    assert sim.state() == STATE.STATE_PAUSED
    assert sim.service.update_status.message == "6 of 10 updated tasks failed: exit 1"
    assert failed == 6, "no failure forgotten, none counted twice"
    assert len([t for t in sim.tasks.values() if t.revision == 1]) == 9, "only one slot changed"


def test_a_new_spec_replaces_a_crash_looping_task_at_once_with_a_new_streak() -> None:
    def crashing(image: str) -> pb.ServiceSpec:
        result = spec(image, 1)
        result.restart.delay.CopyFrom(duration(5))  # the defaults: 5 s doubling up to 5 min
        result.restart.max_delay.CopyFrom(duration(300))
        return result

    sim = Sim.running(crashing("img:1"))
    (task,) = sim.live()
    sim.tasks[task.id].attempt = 6  # the slot crashed 6 times in a row: its next restart waits 300 s
    sim.report(task, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_TASK, "exit 1")
    sim.advance(1)
    sim.step()
    assert not sim.last.create, "the crash loop backs off"
    sim.apply(crashing("img:2-fixed"))
    sim.advance(1)
    sim.step()
    assert [(t.revision, t.attempt) for t in sim.last.create] == [(2, 0)], "the fix runs now, on a streak of its own"
    assert sim.state() == STATE.STATE_UPDATING


def test_continue_goes_on_and_a_rollback_that_cannot_find_its_spec_pauses() -> None:
    sim = Sim.running(spec("img:1", 2))
    sim.apply(spec("img:2", 2, failure_action=pb.UpdateConfig.FAILURE_ACTION_CONTINUE, order=START_FIRST))
    sim.step()
    fail_new(sim)
    sim.step()
    assert sim.state() == STATE.STATE_UPDATING
    lost = Sim.running(spec("img:1", 2))
    lost.apply(spec("img:2", 2, order=START_FIRST))
    lost.step()
    del lost.specs[1]  # pruned from history
    fail_new(lost)
    lost.step()
    assert lost.state() == STATE.STATE_PAUSED
    assert lost.service.update_status.message.endswith("; cannot roll back: revision 1 is not kept")


def test_a_failing_rollback_pauses() -> None:
    sim = Sim.running(spec("img:1", 2))
    sim.apply(spec("img:2", 2, order=START_FIRST))
    sim.step()
    fail_new(sim)
    sim.step()
    assert sim.state() == STATE.STATE_ROLLBACK_STARTED
    sim.step()
    fail_new(sim)  # nothing of the rolled-back spec was started yet: nothing fails
    for task in sim.live():
        if task.revision == 2 and not is_terminal(task.status.state):
            sim.report(task, pb.TASK_STATE_RUNNING)
    sim.step()
    sim.stop_stopping()
    sim.step()
    assert sim.state() == STATE.STATE_ROLLBACK_STARTED


def test_a_new_apply_during_a_rollout_rolls_back_to_the_last_good_spec() -> None:
    sim = Sim.running(spec("img:1", 2))
    sim.apply(spec("img:2", 2))
    sim.step()
    sim.apply(spec("img:3", 2))
    sim.step()
    assert sim.service.update_status.from_revision == 1, "revision 2 never completed"
    settle(sim)
    sim.apply(spec("img:4", 2))
    sim.step()
    assert sim.service.update_status.from_revision == 3


def test_waits_for_running_while_a_rollout_is_active() -> None:
    sim = Sim.running(spec("img:1", 1))
    sim.apply(spec("img:2", 1, order=START_FIRST))
    sim.step()
    assert waits_for_running(sim.service, list(sim.tasks.values()), NODES)
    settle(sim)
    assert not waits_for_running(sim.service, list(sim.tasks.values()), NODES)


def test_a_controller_restart_resumes_from_the_store() -> None:
    """Nothing is kept between passes but the service and its tasks: a new reconciler picks up half-way."""
    sim = Sim.running(spec("img:1", 4))
    sim.apply(spec("img:2", 4, parallelism=1, order=START_FIRST))
    for _ in range(3):
        sim.step()
        sim.stop_stopping()
        sim.run_new()
    revived = Sim(sim.service, dict(sim.tasks), sim.now, dict(sim.specs), itertools.count(100))
    settle(revived)
    assert revived.state() == STATE.STATE_COMPLETED
    assert revived.at_revision() == [2, 2, 2, 2]


def test_job_tasks_that_complete_are_done_and_a_new_spec_runs_them_again() -> None:
    job = spec("migrate:1", 2)
    job.mode = pb.SERVICE_MODE_JOB
    sim = Sim.running(job)
    for task in sim.live():
        sim.report(task, pb.TASK_STATE_COMPLETE)
    assert sim.step().empty(), "a completed job task is never replaced"
    again = spec("migrate:2", 2)
    again.mode = pb.SERVICE_MODE_JOB
    sim.apply(again)
    settle(sim)
    assert sorted(t.revision for t in sim.live()) == [2, 2]


def test_rolling_back_a_failed_job_does_not_run_the_job_it_completed_again() -> None:
    def job(image: str) -> pb.ServiceSpec:
        result = spec(image, 2, parallelism=1)
        result.mode = pb.SERVICE_MODE_JOB
        result.restart.condition = pb.RestartPolicy.CONDITION_ON_FAILURE
        return result

    sim = Sim.running(job("migrate:1"))
    for task in sim.live():
        sim.report(task, pb.TASK_STATE_COMPLETE)
    assert sim.step().empty()
    sim.apply(job("migrate:2"))
    sim.step()  # one slot's completed migrate:1 task is told to stop (it has), a migrate:2 task made
    (v2,) = [t for t in sim.live() if t.revision == 2]
    sim.report(v2, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_TASK, "exit 1")
    sim.advance(1)
    sim.step()
    assert sim.state() == STATE.STATE_ROLLBACK_STARTED, "rolled back to revision 1 as revision 3"
    settle(sim, rounds=5)
    assert sim.state() == STATE.STATE_ROLLBACK_COMPLETED
    assert not [t for t in sim.tasks.values() if t.revision == 3], "both slots completed migrate:1 already"
    assert sim.tasks[v2.id].desired_state == pb.DESIRED_STATE_SHUTDOWN, "the failed update's task is done with"


def test_rollback_service_is_what_both_rollbacks_write() -> None:
    service = pb.Service(id="s", name="web", revision=7, spec_revision=6, spec=spec("img:3", 5), version=40)
    target = rollout.RollbackTarget(4, spec("img:2", 2), 3, 5)
    back = rollout.rollback_service(service, target, NOW, rollout.requested_cause(4))
    assert (back.revision, back.spec_revision, back.spec.image, back.spec.replicas) == (8, 8, "img:2", 5)
    assert (back.also_current_from, back.also_current_to) == (3, 5)
    assert back.change_cause == "rollback to revision 4 (requested)"
    status = back.update_status
    assert (status.state, status.from_revision, status.to_revision) == (STATE.STATE_ROLLBACK_STARTED, 6, 8)
    old_task = pb.Task(revision=4)
    assert runs_current_spec(back, old_task)


async def test_find_rollback_target_walks_the_revisions_of_the_same_spec() -> None:
    kept = {2: spec("a", 1), 3: spec("b", 1), 4: spec("b", 3), 5: spec("b", 2), 6: spec("c", 2), 7: spec("c", 2)}

    async def spec_at(revision: int) -> pb.ServiceSpec | None:
        return kept.get(revision)

    service = pb.Service(revision=7, spec_revision=6)
    target = await rollout.find_rollback_target(service, 4, spec_at)
    assert target is not None and (target.also_current_from, target.also_current_to) == (3, 5)
    assert await rollout.find_rollback_target(service, 1, spec_at) is None, "not kept"
    edge = await rollout.find_rollback_target(service, 2, spec_at)
    assert edge is not None and (edge.also_current_from, edge.also_current_to) == (2, 2)


async def test_find_rollback_target_covers_live_tasks_of_the_same_spec_across_revisions_none_runs() -> None:
    # 1: A; 2: B (failed, rolled back); 3: A; 4: C (failing now). Tasks of 1 and 3 run A, none runs 2.
    kept = {1: spec("a", 2), 2: spec("b", 2), 3: spec("a", 2), 4: spec("c", 2), 5: spec("b", 2)}

    async def spec_at(revision: int) -> pb.ServiceSpec | None:
        return kept.get(revision)

    service = pb.Service(revision=4, spec_revision=4)
    target = await rollout.find_rollback_target(service, 3, spec_at, live_revisions=[1, 3, 4])
    assert target is not None and (target.also_current_from, target.also_current_to) == (1, 3)
    # A live task of revision 2 (spec B) must not become current: the range stops short of it.
    blocked = await rollout.find_rollback_target(service, 3, spec_at, live_revisions=[1, 2, 3, 4])
    assert blocked is not None and (blocked.also_current_from, blocked.also_current_to) == (3, 3)
    later = pb.Service(revision=6, spec_revision=6)
    kept[6] = spec("d", 2)
    ahead = await rollout.find_rollback_target(later, 1, spec_at, live_revisions=[3, 6])
    assert ahead is not None and (ahead.also_current_from, ahead.also_current_to) == (1, 3), "never the current one"


class RoleTargetSim(Sim):
    """A Sim whose rollback target is found as the orchestrator's role finds it: the kept specs and the
    revisions its live tasks run."""

    def target(self) -> rollout.RollbackTarget | None:
        async def spec_at(revision: int) -> pb.ServiceSpec | None:
            return self.specs.get(revision)

        live = {t.revision for t in self.live()}
        back = self.service.update_status.from_revision
        return asyncio.run(rollout.find_rollback_target(self.service, back, spec_at, live_revisions=live))


def test_a_second_rollback_to_the_same_spec_leaves_its_old_tasks_alone() -> None:
    def fail_until_rolled_back(image: str, revision: int) -> None:
        sim.apply(spec(image, 4, parallelism=1))
        for _ in range(10):
            sim.step()
            sim.stop_stopping()
            for task in sim.live():
                if task.revision == revision and task.status.state < pb.TASK_STATE_RUNNING:
                    sim.report(task, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_TASK, "exit 1")
            sim.advance(1)
            if sim.state() == STATE.STATE_ROLLBACK_STARTED:
                return
        raise AssertionError("did not roll back")

    sim = RoleTargetSim.running(spec("img:A", 4, parallelism=1))
    fail_until_rolled_back("img:B", 2)  # rolled back to A as revision 3, also current [1, 1]
    settle(sim, rounds=30, tick=10)
    assert sim.state() == STATE.STATE_ROLLBACK_COMPLETED
    untouched = {t.id for t in sim.serving() if t.revision == 1}
    assert len(untouched) == 3
    fail_until_rolled_back("img:C", 4)  # rolled back to revision 3 (spec A) as revision 5
    assert (sim.service.also_current_from, sim.service.also_current_to) == (1, 3)
    settle(sim, rounds=30, tick=10)
    assert sim.state() == STATE.STATE_ROLLBACK_COMPLETED
    assert {t.id for t in sim.serving() if t.revision == 1} == untouched, "tasks already running A stay"


# --- properties ------------------------------------------------------------------------------------------

Event = Callable[[Sim], None]


@dataclass(frozen=True)
class Scenario:
    replicas: int
    parallelism: int
    start_first: bool
    bad: bool  # the new spec's tasks fail before they run
    moves: list[tuple[int, int]]  # (what, which task) the world does between passes


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    return Scenario(
        replicas=draw(st.integers(1, 5)),
        parallelism=draw(st.integers(0, 3)),
        start_first=draw(st.booleans()),
        bad=draw(st.booleans()),
        moves=draw(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 50)), max_size=60)),
    )


def world(sim: Sim, what: int, which: int, bad: bool) -> None:
    """One thing the world does: a task progresses, a stopping one stops, time passes, or a pass runs."""
    tasks = sorted(sim.tasks.values(), key=lambda t: t.id)
    if what == 4 or not tasks:
        sim.advance(3)
        return
    task = tasks[which % len(tasks)]
    if is_terminal(task.status.state):
        return
    if task.desired_state == pb.DESIRED_STATE_SHUTDOWN:
        sim.report(task, pb.TASK_STATE_SHUTDOWN)
    elif task.status.state < pb.TASK_STATE_RUNNING:
        if bad and sim.specs[task.revision].image == "img:2" and what % 2:
            sim.report(task, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_UNHEALTHY, "unhealthy")
        else:
            sim.report(task, pb.TASK_STATE_STARTING if what == 0 else pb.TASK_STATE_RUNNING)


@settings(max_examples=250, deadline=None)
@given(scenarios())
def test_rollouts_keep_their_bounds(scenario: Scenario) -> None:
    """Start-first: never more than replicas + parallelism serving, never fewer than replicas serving (old tasks
    do not fail here; new ones fail only before they run). Stop-first: never more than replicas placed, and
    (nothing failing) never more than parallelism slots without a serving task."""
    update = {"parallelism": scenario.parallelism, "order": START_FIRST if scenario.start_first else STOP_FIRST}
    sim = Sim.running(spec("img:1", scenario.replicas, **update))  # its settings roll it back
    assert len(sim.serving()) == scenario.replicas
    sim.apply(spec("img:2", scenario.replicas, **update))
    most = scenario.replicas + (scenario.parallelism or scenario.replicas)
    for what, which in [*scenario.moves, *([(1, i) for i in range(40)] if not scenario.bad else [])]:
        sim.step()
        serving = sim.serving()
        alive = [t for t in sim.tasks.values() if not is_terminal(t.status.state) and t.node_id]
        if scenario.start_first:
            assert len(serving) <= most
            assert len(serving) >= scenario.replicas
        else:
            assert len([t for t in alive if t.status.state >= pb.TASK_STATE_ASSIGNED]) <= scenario.replicas
            if not scenario.bad and scenario.parallelism:
                assert scenario.replicas - len(serving) <= scenario.parallelism, "at most parallelism slots out"
        slots = [t.slot for t in sim.live() if not t.replaced and not is_terminal(t.status.state)]
        assert len(slots) == len(set(slots)), "one task per slot besides the replaced ones"
        world(sim, what, which, scenario.bad)
    settle(sim)
    assert sim.state() in (STATE.STATE_COMPLETED, STATE.STATE_ROLLBACK_COMPLETED)
    assert len(sim.serving()) == scenario.replicas
    assert all(runs_current_spec(sim.service, t) and not t.replaced for t in sim.serving())
    if not scenario.bad:
        assert sim.state() == STATE.STATE_COMPLETED and sim.service.spec.image == "img:2"


# --- depends_on, restart, rebalance -------------------------------------------------------------------------


def dependency(state: int, replicas: int = 1) -> DependencyView:
    db = pb.Service(id="db", name="db", revision=1, spec_revision=1, spec=pb.ServiceSpec(name="db", replicas=replicas))
    tasks = [
        pb.Task(id=f"db{i}", service_id="db", slot=i, revision=1, generation=1, status=pb.TaskStatus(state=state))  # type: ignore[arg-type]
        for i in range(1, replicas + 1)
    ]
    return DependencyView(db, tasks)


def dependent(replicas: int = 2) -> pb.Service:
    web = pb.Service(id="svc", name="web", revision=1, spec_revision=1, spec=spec("img:1", replicas))
    web.spec.depends_on["db"].condition = pb.Dependency.CONDITION_SERVICE_HEALTHY
    return web


def test_new_tasks_are_held_until_the_dependencies_hold_then_released() -> None:
    web = dependent()
    plan = reconcile_service(
        web, [], NODES, NOW, iter(["a", "b"]).__next__, deps={"db": dependency(pb.TASK_STATE_STARTING)}
    )
    assert [t.status.state for t in plan.create] == [pb.TASK_STATE_NEW] * 2, "the scheduler places only pending ones"
    assert plan.create[0].status.message == "waiting for db (service_healthy): 0 of 1 task healthy"
    held = plan.create
    same = reconcile_service(
        web, held, NODES, NOW, iter(["c"]).__next__, deps={"db": dependency(pb.TASK_STATE_STARTING)}
    )
    assert same.empty()
    missing = reconcile_service(web, held, NODES, NOW, iter(["c"]).__next__, deps={})
    assert [t.status.message for t in missing.update] == ["waiting for db (service_healthy): no such service"] * 2
    released = reconcile_service(
        web, held, NODES, NOW, iter(["c"]).__next__, deps={"db": dependency(pb.TASK_STATE_RUNNING)}
    )
    assert [(t.status.state, t.status.message) for t in released.update] == [
        (pb.TASK_STATE_PENDING, "waiting for a node")
    ] * 2
    assert not released.create
    ungated = reconcile_service(web, held, NODES, NOW, iter(["c"]).__next__)
    assert len(ungated.update) == 2, "no deps given (a plan that does not judge them): nothing is held"


def test_running_tasks_are_never_stopped_by_a_dependency_and_a_rollout_waits_for_it() -> None:
    sim = Sim.running(spec("img:1", 2))
    sim.service.spec.depends_on["db"].condition = pb.Dependency.CONDITION_SERVICE_HEALTHY
    down = {"db": dependency(pb.TASK_STATE_FAILED)}
    plan = reconcile_service(sim.service, list(sim.tasks.values()), NODES, NOW, sim.new_id, deps=down)
    assert plan.empty()
    updated = spec("img:2", 2)
    updated.depends_on["db"].condition = pb.Dependency.CONDITION_SERVICE_HEALTHY
    sim.apply(updated)
    plan = reconcile_service(sim.service, list(sim.tasks.values()), NODES, NOW, sim.new_id, deps=down)
    assert not plan.update and not plan.create, "stopping a task it could not replace would only take it down"
    assert plan.service is not None and plan.service.update_status.state == STATE.STATE_UPDATING


def test_a_failed_task_is_replaced_with_the_restart_helpers_attempt_and_avoided_node() -> None:
    sim = Sim.running(spec("img:1", 1))
    [task] = sim.live()
    sim.report(task, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_TASK, "exit 1")
    sim.step()
    [first] = sim.last.create
    assert (first.attempt, list(first.avoid_node_ids)) == (1, [])
    sim.report(first, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_HOST, "image not found")
    sim.step()
    [second] = sim.last.create
    assert (second.attempt, list(second.avoid_node_ids)) == (1, ["n1"]), "a host fault: same attempt, other node"


def placed(sim: Sim, nodes: list[str]) -> None:
    for task, node_id in zip(sorted(sim.live(), key=lambda t: t.slot), nodes, strict=True):
        task.node_id = node_id


def test_a_rebalance_moves_tasks_start_first_only_when_asked() -> None:
    sim = Sim.running(spec("img:1", 4))
    placed(sim, ["n1", "n1", "n1", "n2"])
    assert sim.step().empty(), "a node that joined moves nothing by itself"
    plan = reconcile_service(sim.service, list(sim.tasks.values()), NODES, NOW, sim.new_id, rebalance=True)
    assert plan.rebalanced
    moved = [t for t in plan.update if t.replaced]
    assert len(moved) == 1 and moved[0].node_id == "n1" and moved[0].desired_state == pb.DESIRED_STATE_RUNNING
    [successor] = plan.create
    assert (successor.slot, list(successor.avoid_node_ids)) == (moved[0].slot, ["n1"])
    sim.service.spec.placement.rebalance = True
    sim.step()
    assert len(sim.last.create) == 1, "placement.rebalance: every pass"
    sim.report(sim.last.create[0], pb.TASK_STATE_RUNNING)
    sim.tasks[sim.last.create[0].id].node_id = "n3"
    sim.step()
    assert [t.desired_state for t in sim.last.update] == [pb.DESIRED_STATE_SHUTDOWN], "the moved task stops"
    assert sorted(t.node_id for t in sim.serving()) == ["n1", "n1", "n2", "n3"]


def test_a_rebalance_waits_while_a_paused_rollout_holds_its_spec_back() -> None:
    sim = Sim.running(spec("img:1", 4))
    placed(sim, ["n1", "n1", "n1", "n1"])
    sim.apply(spec("img:2", 4, parallelism=1, failure_action=pb.UpdateConfig.FAILURE_ACTION_PAUSE))
    for _ in range(6):
        sim.step()
        sim.stop_stopping()
        for task in sim.live():
            if task.revision == 2 and task.status.state < pb.TASK_STATE_RUNNING:
                sim.report(task, pb.TASK_STATE_FAILED, pb.TaskStatus.CAUSE_TASK, "exit 1")
        sim.advance(1)
    assert sim.state() == STATE.STATE_PAUSED
    sim.service.rebalance_generation += 1
    plan = reconcile_service(sim.service, list(sim.tasks.values()), NODES, sim.now, sim.new_id, rebalance=True)
    assert not plan.rebalanced and not any(t.avoid_node_ids for t in plan.create), "no slot moves to img:2"
    assert plan.service is None or plan.service.rebalanced_generation == 0, "the request stays pending"
    sim.apply(spec("img:3", 4))  # a working spec ends it; the request is then acted on
    settle(sim)
    assert sim.state() == STATE.STATE_COMPLETED
    plan = reconcile_service(sim.service, list(sim.tasks.values()), NODES, sim.now, sim.new_id, rebalance=True)
    assert plan.rebalanced
