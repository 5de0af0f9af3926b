"""PlanApply predicts what the apply then does: the same nodes, on an unchanged cluster of simulated agents.

The in-process cluster runs the real controller (orchestrator, scheduler, dispatcher) and agents on fake
runtimes. Each test plans, applies with the plan's state revision, waits for the cluster to settle, and
compares the nodes the plan named with those the tasks run on.
"""

from __future__ import annotations

from collections import Counter

import grpc
import pytest

from dockyard.client import ApiError, Client
from dockyard.timestamps import duration
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import IMAGE, FakeCluster
from tests.polling import eventually

HOSTS = ("host-1", "host-2", "host-3")
START = cpb.PlannedTask.KIND_START
STOP = cpb.PlannedTask.KIND_STOP
UNPLACED = cpb.PlannedTask.KIND_UNPLACED


def spec(name: str, replicas: int = 1, *, constraint: str = "", env: str = "1", port: int = 0) -> pb.ServiceSpec:
    s = pb.ServiceSpec(name=name, image=IMAGE, command=["sleep", "3600"], replicas=replicas)
    s.env["V"] = env
    s.stop_grace_period.CopyFrom(duration(0))
    s.update.order = pb.UpdateConfig.ORDER_STOP_FIRST
    if constraint:
        s.placement.constraints.append(constraint)
    if port:
        s.ports.add(host_port=port, container_port=80, protocol="tcp")
    return s


async def cluster_of(fake_cluster: FakeCluster) -> Client:
    for name in HOSTS:
        await fake_cluster.start_agent(name)
    client = fake_cluster.client()
    await client.__aenter__()

    async def ready() -> list[pb.Node]:
        nodes = await client.list_nodes()
        return nodes if sum(n.status == pb.NODE_STATUS_READY for n in nodes) == len(HOSTS) else []

    await eventually(ready, what="every host ready")
    await client.update_node("host-2", set_labels={"role": "db"})
    return client


async def settled(client: Client, specs: list[pb.ServiceSpec]) -> dict[str, list[pb.Task]]:
    """Waits until each service runs its replicas at its current spec and nothing else is left running."""

    async def check() -> dict[str, list[pb.Task]]:
        out: dict[str, list[pb.Task]] = {}
        for s in specs:
            service = await client.get_service(s.name)
            tasks = await client.list_tasks(s.name)
            current = [t for t in tasks if t.revision >= service.spec_revision]
            running = [t for t in current if t.status.state == pb.TASK_STATE_RUNNING]
            if len(running) != s.replicas or len(tasks) != len(running):
                return {}
            out[s.name] = running
        return out

    return await eventually(check, within=20, what="the apply to settle")


def planned_nodes(plan: cpb.PlanApplyResponse, kind: int = START) -> dict[str, Counter[str]]:
    return {p.name: Counter(t.node_name for t in p.tasks if t.kind == kind) for p in plan.services}


def planned_slots(plan: cpb.PlanApplyResponse) -> dict[str, dict[int, str]]:
    """Service -> slot -> the node the plan starts that slot's task on."""
    return {p.name: {t.slot: t.node_name for t in p.tasks if t.kind == START} for p in plan.services}


def running_nodes(tasks: dict[str, list[pb.Task]], names: dict[str, str]) -> dict[str, Counter[str]]:
    return {service: Counter(names[t.node_id] for t in group) for service, group in tasks.items()}


def running_slots(tasks: dict[str, list[pb.Task]], names: dict[str, str]) -> dict[str, dict[int, str]]:
    return {service: {t.slot: names[t.node_id] for t in group} for service, group in tasks.items()}


async def node_names(client: Client) -> dict[str, str]:
    return {n.id: n.description.hostname for n in await client.list_nodes()}


async def test_plan_predicts_the_nodes_of_a_first_apply(fake_cluster: FakeCluster) -> None:
    client = await cluster_of(fake_cluster)
    async with client:
        specs = [
            spec("web", 4),
            spec("db", 1, constraint="node.labels.role == db"),
            spec("cache", 2, constraint="node.labels.role != db"),
        ]
        plan = await client.plan(specs)

        assert plan.state_revision > 0
        assert [(p.name, p.action) for p in plan.services] == [
            ("cache", cpb.ServicePlan.ACTION_CREATE),
            ("db", cpb.ServicePlan.ACTION_CREATE),
            ("web", cpb.ServicePlan.ACTION_CREATE),
        ]
        predicted = planned_nodes(plan)
        assert {name: predicted[name] for name in ("cache", "db")} == {
            "cache": Counter({"host-1": 1, "host-3": 1}),
            "db": Counter({"host-2": 1}),
        }
        # Four replicas on three hosts: which host takes two is the scheduler's tie-break.
        assert sorted(predicted["web"].values()) == [1, 1, 2]
        assert await client.list_services() == [], "a plan writes nothing"

        await client.apply(specs, if_state_revision=plan.state_revision)
        tasks = await settled(client, specs)
        names = await node_names(client)
        assert running_nodes(tasks, names) == predicted
        # Each slot on the node the plan named: ties are broken by service name, slot and generation, which
        # the plan's tasks share with the apply's (their ids differ).
        assert running_slots(tasks, names) == planned_slots(plan)


async def test_plan_of_an_update_names_stops_starts_and_what_cannot_be_placed(fake_cluster: FakeCluster) -> None:
    client = await cluster_of(fake_cluster)
    async with client:
        first = [spec("web", 3), spec("old", 1)]
        await client.apply(first)
        before = await settled(client, first)
        names = await node_names(client)

        healthy = pb.Dependency.CONDITION_SERVICE_HEALTHY
        api = spec("api", 2, constraint="node.labels.role != db")
        api.depends_on["web"].condition = healthy
        # Two replicas that want the same host port on the one node that matches: one cannot be placed.
        pinned = spec("pinned", 2, constraint="node.labels.role == db", port=8080)
        update = [spec("web", 3, env="2"), api, pinned]
        plan = await client.plan(update, prune=True)

        by_name = {p.name: p for p in plan.services}
        assert [p.name for p in plan.services][-1] == "api", "api starts after web, which it depends on"
        assert (by_name["api"].start_order, by_name["web"].start_order) == (1, 0)
        assert list(by_name["api"].depends_on) == ["web"]
        web = by_name["web"]
        assert web.action == cpb.ServicePlan.ACTION_UPDATE
        assert [(c.path, c.old_value, c.new_value) for c in web.changes] == [("env.V", "1", "2")]
        # Every old web task stops, by id and on its node; its successor in the slot takes the freed node.
        stopped = {t.task_id: t.node_name for t in web.tasks if t.kind == STOP}
        assert stopped == {t.id: names[t.node_id] for t in before["web"]}
        assert by_name["old"].action == cpb.ServicePlan.ACTION_REMOVE
        assert [(t.kind, t.task_id) for t in by_name["old"].tasks] == [(STOP, before["old"][0].id)]
        [unplaced] = [t for t in by_name["pinned"].tasks if t.kind == UNPLACED]
        assert unplaced.reason.endswith("1 has port 8080/tcp in use"), unplaced.reason

        await client.apply(update, prune=True, if_state_revision=plan.state_revision)
        placeable = [s for s in update if s.name != "pinned"]
        tasks = await settled(client, placeable)
        names = await node_names(client)
        actual = running_slots(tasks, names)
        predicted = planned_slots(plan)
        assert actual == {name: predicted[name] for name in actual}
        pinned_tasks = await client.list_tasks("pinned")
        assert sorted(names.get(t.node_id, "") for t in pinned_tasks) == ["", "host-2"]


async def test_an_apply_refuses_a_plan_the_cluster_has_moved_past(fake_cluster: FakeCluster) -> None:
    client = await cluster_of(fake_cluster)
    async with client:
        await client.apply([spec("web", 1)])
        plan = await client.plan([spec("web", 2)])
        await client.scale("web", 3)
        with pytest.raises(ApiError) as caught:
            await client.apply([spec("web", 2)], if_state_revision=plan.state_revision)
        assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert str(caught.value).startswith("services.web: changed at store revision")


async def test_plan_predicts_a_start_first_update(fake_cluster: FakeCluster) -> None:
    client = await cluster_of(fake_cluster)
    async with client:
        first = [spec("web", 4)]
        await client.apply(first)
        before = await settled(client, first)
        names = await node_names(client)

        update = spec("web", 4, env="2")
        update.update.order = pb.UpdateConfig.ORDER_START_FIRST
        update.update.parallelism = 2
        plan = await client.plan([update])

        [web] = plan.services
        assert sorted(t.task_id for t in web.tasks if t.kind == STOP) == sorted(t.id for t in before["web"])
        await client.apply([update], if_state_revision=plan.state_revision)
        tasks = await settled(client, [update])
        assert running_slots(tasks, names) == planned_slots(plan)


async def test_a_change_of_update_settings_only_keeps_every_task(fake_cluster: FakeCluster) -> None:
    client = await cluster_of(fake_cluster)
    async with client:
        first = [spec("web", 3)]
        await client.apply(first)
        before = await settled(client, first)
        spec_revision = (await client.get_service("web")).spec_revision

        tuned = spec("web", 3)
        tuned.update.parallelism = 3
        plan = await client.plan([tuned])
        [web] = plan.services
        assert [(c.path, c.old_value, c.new_value) for c in web.changes] == [("update.parallelism", "0", "3")]
        assert list(web.tasks) == [], "no task stops or starts"
        await client.apply([tuned], if_state_revision=plan.state_revision)
        service = await client.get_service("web")
        assert (service.revision, service.spec_revision) == (2, spec_revision)

        # Scaling up once more settles at the current spec: had the settings rolled out, no old task would be left.
        scaled = spec("web", 4)
        scaled.update.parallelism = 3
        await client.apply([scaled])
        after = await settled(client, [scaled])
        assert {t.id for t in before["web"]} < {t.id for t in after["web"]}
