"""The simulated fleet's host: assignments handled as the agent handles them, steps reported as the worker does.

bench/fleet.py and tests/load trust what the simulated agents say they run; these tests pin that it is what a
real agent would run after the same messages, and that a joined simulated agent holds its controller to its
cluster and store as the real agent's ClusterGuard does.
"""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from agent.identity import ClusterGuard, Membership
from agent.testing.fleet import FleetConfig, SimAgent, SimHost, SimIdentity
from dockyard.clock import FakeClock
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

SPEC = apb.ServiceRevisionSpec(service_id="svc", revision=1, spec=pb.ServiceSpec(name="web", image="img", replicas=3))


def task(task_id: str, desired: pb.DesiredState.ValueType = pb.DESIRED_STATE_RUNNING, version: int = 1) -> pb.Task:
    return pb.Task(
        id=task_id,
        service_id="svc",
        service_name="web",
        revision=1,
        node_id="n1",
        desired_state=desired,
        generation=1,
        version=version,
        status=pb.TaskStatus(state=pb.TASK_STATE_ASSIGNED),
    )


def full(*tasks: pb.Task, specs: tuple[apb.ServiceRevisionSpec, ...] = (SPEC,)) -> apb.Assignments:
    return apb.Assignments(kind=apb.Assignments.KIND_FULL, tasks=tasks, specs=specs)


def incremental(*tasks: pb.Task, removed: tuple[str, ...] = ()) -> apb.Assignments:
    return apb.Assignments(kind=apb.Assignments.KIND_INCREMENTAL, tasks=tasks, removed_task_ids=removed)


def state_of(host: SimHost, task_id: str) -> int | None:
    known = host.book.get(task_id)
    return None if known is None else known.status.state


def scanned_running(host: SimHost) -> set[str]:
    """What running() must say, read from the book and the containers the slow way."""
    return {
        t.id
        for t in host.book
        if t.desired_state == pb.DESIRED_STATE_RUNNING
        and t.status.state == pb.TASK_STATE_RUNNING
        and t.id in host.containers()
    }


def settle(host: SimHost, task_ids: set[str]) -> None:
    """Steps every task until idle (bounded: a task never needs more than five steps), checking running()."""
    for task_id in task_ids:
        for _ in range(5):
            more = host.step(task_id)
            assert host.running() == scanned_running(host)
            assert len(list(host.running_slots())) == len(host.running())
            if not more:
                break
        else:
            raise AssertionError(f"task {task_id} never became idle")


def test_an_assigned_task_reports_preparing_starting_running_in_turn() -> None:
    host = SimHost("n1", FakeClock())
    assert host.apply(full(task("a"))) == {"a"}
    seen = []
    while host.step("a"):
        seen.append(state_of(host, "a"))
    assert seen == [pb.TASK_STATE_PREPARING, pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING]
    assert host.running() == {"a"}
    reported = host.book.get("a")
    assert reported is not None
    assert reported.status.message == "started"
    assert reported.status.container_id  # as Docker's, every report after the create names the container


async def test_statuses_queued_between_sends_go_as_one_batch_with_the_latest_per_task() -> None:
    host = SimHost("n1", FakeClock())
    settle(host, host.apply(full(task("a"), task("b"))))
    update = await host.reporter.take()
    assert {(u.task_id, u.status.state) for u in update.updates} == {
        ("a", pb.TASK_STATE_RUNNING),
        ("b", pb.TASK_STATE_RUNNING),
    }
    assert host.reported[pb.TASK_STATE_PREPARING] == host.reported[pb.TASK_STATE_RUNNING] == 2


def test_an_incremental_set_adds_tasks_and_leaves_the_others_alone() -> None:
    host = SimHost("n1", FakeClock())
    settle(host, host.apply(full(task("a"))))
    assert host.apply(incremental(task("b"))) == {"b"}
    settle(host, {"b"})
    assert host.running() == {"a", "b"}


def test_a_removed_task_is_stopped_reported_shutdown_and_forgotten() -> None:
    host = SimHost("n1", FakeClock())
    settle(host, host.apply(full(task("a"), task("b"))))
    assert host.apply(incremental(removed=("a",))) == {"a"}
    assert host.running() == {"b"}  # no longer wanted: not counted as running while it stops
    assert host.step("a")  # stop: nothing to report yet
    assert state_of(host, "a") == pb.TASK_STATE_RUNNING
    assert host.step("a")  # remove
    assert state_of(host, "a") == pb.TASK_STATE_SHUTDOWN
    assert not host.step("a")
    assert host.book.get("a") is None
    assert host.running() == {"b"}
    assert host.containers() == {"b"}


def test_desired_shutdown_in_an_incremental_set_stops_the_task_as_a_removal_does() -> None:
    host = SimHost("n1", FakeClock())
    settle(host, host.apply(full(task("a"))))
    assert host.apply(incremental(task("a", desired=pb.DESIRED_STATE_SHUTDOWN, version=2))) == {"a"}
    settle(host, {"a"})
    assert host.book.get("a") is None
    assert host.reported[pb.TASK_STATE_SHUTDOWN] == 1
    assert not host.running()


def test_a_full_set_shuts_down_what_it_leaves_out_and_wakes_every_task() -> None:
    host = SimHost("n1", FakeClock())
    settle(host, host.apply(full(task("a"), task("b"))))
    # As the agent's link: after a full set every task is stepped, changed or not.
    assert host.apply(full(task("b"), task("c"))) == {"a", "b", "c"}
    settle(host, {"a", "b", "c"})
    assert host.running() == {"b", "c"}
    assert host.book.get("a") is None
    assert host.reported[pb.TASK_STATE_SHUTDOWN] == 1


def test_a_task_removed_before_it_was_created_reports_shutdown_without_a_container() -> None:
    host = SimHost("n1", FakeClock())
    host.apply(full(task("a")))
    assert host.step("a")  # prepared, not created
    host.apply(incremental(removed=("a",)))
    assert host.step("a")
    assert state_of(host, "a") == pb.TASK_STATE_SHUTDOWN
    assert not host.step("a")
    assert host.book.get("a") is None
    assert not host.containers()


def test_a_stale_copy_does_not_undo_a_newer_one() -> None:
    host = SimHost("n1", FakeClock())
    settle(host, host.apply(full(task("a", version=5))))
    assert host.apply(incremental(task("a", desired=pb.DESIRED_STATE_SHUTDOWN, version=3))) == set()
    assert host.running() == {"a"}


def test_a_task_whose_spec_was_never_sent_is_rejected_not_run() -> None:
    host = SimHost("n1", FakeClock())
    settle(host, host.apply(full(task("a"), specs=())))
    assert state_of(host, "a") == pb.TASK_STATE_REJECTED
    assert not host.running()
    assert not host.containers()


def test_the_inventory_carries_what_the_host_observed() -> None:
    host = SimHost("n1", FakeClock())
    settle(host, host.apply(full(task("a"))))
    assert [(i.task_id, i.status.state) for i in host.book.inventory()] == [("a", pb.TASK_STATE_RUNNING)]


class _Call:
    """A session call that answers the hello with one prepared message."""

    def __init__(self, answer: apb.ControllerMessage) -> None:
        self.sent: list[apb.AgentMessage] = []
        self._answer = answer

    async def write(self, message: apb.AgentMessage) -> None:
        self.sent.append(message)

    async def read(self) -> apb.ControllerMessage:
        return self._answer


def welcome(cluster_id: str, store_epoch: int) -> apb.ControllerMessage:
    return apb.ControllerMessage(welcome=apb.Welcome(node_id="n1", cluster_id=cluster_id, store_epoch=store_epoch))


async def test_a_joined_agent_names_its_node_and_refuses_a_welcome_of_another_cluster_or_store(tmp_path: Path) -> None:
    membership = Membership(node_id="n1", cluster_id="c1", controller="127.0.0.1:1")
    identity = SimIdentity("n1", "sim-1", membership=membership)
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:  # never dialled: the calls are fakes
        agent = SimAgent(
            0, identity, channel, FleetConfig(), FakeClock(), random.Random(0), ClusterGuard(tmp_path, membership)
        )
        call = _Call(welcome("c1", 7))
        await agent._hello(call)  # type: ignore[arg-type]  # the first welcome of its cluster: its epoch is kept
        assert call.sent[0].hello.node_id == "n1"
        assert call.sent[0].hello.description.hostname == "sim-1"
        for cluster_id, epoch in (("c2", 7), ("c1", 8)):
            with pytest.raises(Exception, match="controller refused"):
                await agent._hello(_Call(welcome(cluster_id, epoch)))  # type: ignore[arg-type]
    assert agent.sessions == 1
