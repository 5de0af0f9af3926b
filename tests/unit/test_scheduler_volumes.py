"""Volumes and placement: a task that mounts a volume living on a node runs only there (the reason names the
volume and the node, and says when that node is down); a task placed with an unplaced volume pins it, for the
tasks after it in the same pass and, through the role's commit, in the store; the pure helpers of
controller.volumes; and the records a hello's volume names make."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from controller.scheduler import Decision, reference_schedule, schedule
from controller.scheduler.role import Scheduler
from controller.store.base import Check, ConflictError, Kind, Put
from controller.store.sqlite import SqliteStore
from controller.volumes import pin_ops, pinned_nodes, reported_ops, users_of, volume_records
from dockyard.clock import FakeClock
from dockyard.v1 import types_pb2 as pb
from dockyard.volumes import mounted_volumes

NOW = datetime(2025, 1, 1, tzinfo=UTC)
DATA = "shop_db-data"


def node(node_id: str, hostname: str, status: pb.NodeStatus.ValueType = pb.NODE_STATUS_READY) -> pb.Node:
    result = pb.Node(id=node_id, status=status)
    result.description.hostname = hostname
    result.description.cpus = 4
    result.description.memory_bytes = 1 << 30
    return result


def spec(name: str, *volumes: str, stack: str = "shop") -> pb.ServiceSpec:
    """A spec mounting each volume (the first as TYPE_VOLUME, the rest unspecified, which means VOLUME)."""
    result = pb.ServiceSpec(name=name, image="postgres:16", stack=stack)
    for i, volume in enumerate(volumes):
        mount_type = pb.Mount.TYPE_VOLUME if i == 0 else pb.Mount.TYPE_UNSPECIFIED
        result.mounts.append(pb.Mount(type=mount_type, source=volume, target=f"/data{i}"))
    return result


def pending(task_id: str, service_id: str, slot: int = 1, node_id: str = "") -> pb.Task:
    task = pb.Task(id=task_id, service_id=service_id, service_name=service_id, slot=slot, revision=1, node_id=node_id)
    task.desired_state = pb.DESIRED_STATE_RUNNING
    task.status.state = pb.TASK_STATE_PENDING
    return task


NODES = [node("n1", "h1"), node("n2", "h2"), node("n3", "h3")]


def both(
    nodes: list[pb.Node],
    tasks: list[pb.Task],
    specs: dict[tuple[str, int], pb.ServiceSpec],
    volumes: dict[str, str] | None = None,
    removing: frozenset[str] = frozenset(),
) -> dict[str, Decision]:
    """Runs the engine and the reference; they must agree, and the engine's decisions are returned by task id."""
    fast = schedule(nodes, tasks, tasks, specs, NOW, 7, volumes=volumes, removing=removing)
    slow = reference_schedule(nodes, tasks, tasks, specs, NOW, 7, volumes=volumes, removing=removing)
    assert fast == slow
    return {d.task_id: d for d in fast}


def test_mounted_volumes_are_the_named_volume_mounts() -> None:
    mixed = spec("db", "b-vol", "a-vol", "b-vol")
    mixed.mounts.append(pb.Mount(type=pb.Mount.TYPE_BIND, source="/srv", target="/srv"))
    mixed.mounts.append(pb.Mount(type=pb.Mount.TYPE_TMPFS, target="/tmp"))
    mixed.mounts.append(pb.Mount(type=pb.Mount.TYPE_VOLUME, source="", target="/anonymous"))
    assert mounted_volumes(mixed) == ("a-vol", "b-vol")


def test_a_task_whose_volume_lives_on_a_node_runs_only_there() -> None:
    specs = {("db", 1): spec("db", DATA)}
    decisions = both(NODES, [pending("t1", "db")], specs, volumes={DATA: "n3"})
    assert decisions["t1"].node_id == "n3"


def test_the_reason_names_the_volume_and_its_node_and_says_it_is_down() -> None:
    nodes = [node("n1", "h1"), node("n2", "h2", pb.NODE_STATUS_DOWN), node("n3", "h3")]
    decisions = both(nodes, [pending("t1", "db")], {("db", 1): spec("db", DATA)}, volumes={DATA: "n2"})
    assert decisions["t1"].node_id is None
    assert decisions["t1"].reason == f"3 nodes: 2 lack volume {DATA} (it is on node h2, which is down), 1 not ready"


def test_a_volume_on_a_node_that_is_gone_says_so() -> None:
    decisions = both(NODES, [pending("t1", "db")], {("db", 1): spec("db", DATA)}, volumes={DATA: "n9"})
    assert decisions["t1"].reason == f"3 nodes: 3 lack volume {DATA} (it is on node n9, which is not in the cluster)"


def test_a_pinned_task_elsewhere_is_told_where_the_volume_is() -> None:
    task = pending("t1", "db", node_id="n1")
    decisions = both(NODES, [task], {("db", 1): spec("db", DATA)}, volumes={DATA: "n2"})
    assert decisions["t1"].reason == f"node h1: lacks volume {DATA} (it is on node h2)"


def test_an_unplaced_volume_is_pinned_by_the_first_task_placed_for_the_rest_of_the_pass() -> None:
    # Spread would put three replicas on three nodes; the volume keeps them together.
    tasks = [pending(f"t{i}", "db", slot=i) for i in (1, 2, 3)]
    # Another service mounting the same volume follows it too.
    tasks.append(pending("w1", "worker"))
    specs = {("db", 1): spec("db", DATA), ("worker", 1): spec("worker", "other", DATA)}
    decisions = both(NODES, tasks, specs)
    nodes = {d.node_id for d in decisions.values()}
    assert len(nodes) == 1 and None not in nodes


def test_tasks_without_volumes_still_spread() -> None:
    tasks = [pending(f"t{i}", "web", slot=i) for i in (1, 2, 3)]
    decisions = both(NODES, tasks, {("web", 1): spec("web")}, volumes={DATA: "n1"})
    assert sorted(str(d.node_id) for d in decisions.values()) == ["n1", "n2", "n3"]


def test_pin_ops_pin_unpinned_records_check_pinned_ones_and_make_missing_ones() -> None:
    records = {
        "free": pb.Volume(id="v-free", name="free", version=4),
        "here": pb.Volume(id="v-here", name="here", node_id="n1", version=5),
    }
    placed = [(spec("db", "free", "here", "new"), "n1"), (spec("db", "free"), "n1")]
    made = iter(["v-new"])
    ops = pin_ops(placed, records, NOW, lambda: next(made))
    assert ops[1] == Check(Kind.VOLUME, "v-here", 5)
    free, new = ops[0], ops[2]
    assert isinstance(free, Put) and free.expect_version == 4
    assert free.obj == pb.Volume(id="v-free", name="free", node_id="n1", version=4)
    assert isinstance(new, Put) and new.expect_version == 0 and isinstance(new.obj, pb.Volume)
    assert (new.obj.id, new.obj.name, new.obj.node_id, new.obj.stack) == ("v-new", "new", "n1", "shop")
    assert records["free"].node_id == "", "the caller's records are not changed"
    with pytest.raises(ValueError, match="free placed on nodes n1 and n2"):
        pin_ops([(spec("a", "free"), "n1"), (spec("b", "free"), "n2")], records, NOW, lambda: "x")


def test_reported_volumes_get_records_on_their_node() -> None:
    records = {
        "known": pb.Volume(id="v1", name="known", node_id="n2", version=3),
        "free": pb.Volume(id="v2", name="free", version=2),
    }
    ids = iter(["v-new"])
    ops = reported_ops("n1", ["known", "free", "found", "found", "-bad name"], records, NOW, lambda: next(ids))
    assert [(type(op).__name__, op.obj.name, op.obj.node_id, op.expect_version) for op in ops] == [  # type: ignore[union-attr]
        ("Put", "free", "n1", 2),
        ("Put", "found", "n1", 0),
    ]


def test_users_and_pins_from_records() -> None:
    services = [
        pb.Service(name="shop_db", spec=spec("shop_db", DATA)),
        pb.Service(name="shop_web", spec=spec("shop_web")),
        pb.Service(name="backup", spec=spec("backup", "x", DATA)),
    ]
    assert users_of(DATA, services) == ["backup", "shop_db"]
    records = volume_records([pb.Volume(name="a", node_id="n1"), pb.Volume(name="b"), pb.Network(name="a")])
    assert pinned_nodes(records) == {"a": "n1"}


@pytest.fixture
async def store() -> AsyncIterator[SqliteStore]:
    async with SqliteStore(":memory:") as s:
        yield s


async def test_the_role_pins_the_volume_in_the_assignment_commit(store: SqliteStore) -> None:
    service = pb.Service(id="db", name="db", revision=1, spec=spec("db", DATA))
    volume = pb.Volume(id="v1", name=DATA, stack="shop")
    await store.commit([Put(n) for n in NODES] + [Put(service), Put(volume), Put(pending("t1", "db"))])
    scheduler = Scheduler(store, FakeClock(NOW))
    assert await scheduler.reconcile(None) is None
    task = await store.get_task("t1")
    assert task is not None and task.node_id
    record = await store.get_object(Kind.VOLUME, DATA)
    assert isinstance(record, pb.Volume) and record.node_id == task.node_id
    assert record.version == task.version, "pinned in the same commit"
    # A second task of the service goes to the same node.
    await store.commit([Put(pending("t2", "db", slot=2))])
    await scheduler.reconcile(None)
    second = await store.get_task("t2")
    assert second is not None and second.node_id == task.node_id


async def test_a_volume_repinned_meanwhile_fails_the_commit(store: SqliteStore) -> None:
    service = pb.Service(id="db", name="db", revision=1, spec=spec("db", DATA))
    volume = pb.Volume(id="v1", name=DATA)
    await store.commit([Put(n) for n in NODES] + [Put(service), Put(volume), Put(pending("t1", "db"))])
    records = volume_records(await store.list_objects(Kind.VOLUME))
    moved = pb.Volume()
    moved.CopyFrom(volume)
    moved.node_id = "n2"
    await store.commit([Put(moved)])
    with pytest.raises(ConflictError):
        await store.commit(pin_ops([(service.spec, "n1")], records, NOW, lambda: "x"))


def test_a_task_mounting_a_volume_being_removed_is_not_placed_and_says_so() -> None:
    tasks = [pending("t1", "db"), pending("t2", "web", node_id="n1"), pending("t3", "web2")]
    specs = {("db", 1): spec("db", DATA), ("web", 1): spec("web", DATA), ("web2", 1): spec("web2", "other")}
    decisions = both(NODES, tasks, specs, volumes={DATA: "n1"}, removing=frozenset({DATA}))
    reason = f"volume {DATA} is being removed (if no `dockyard volume rm {DATA}` is running, run it again: it clears "
    assert decisions["t1"].node_id is None and decisions["t1"].reason.startswith(reason)
    assert decisions["t2"].node_id is None and decisions["t2"].reason.startswith(reason)
    assert decisions["t3"].node_id is not None


async def test_the_role_places_nothing_on_a_volume_being_removed(store: SqliteStore) -> None:
    service = pb.Service(id="db", name="db", revision=1, spec=spec("db", DATA))
    volume = pb.Volume(id="v1", name=DATA, removing=True)
    await store.commit([Put(n) for n in NODES] + [Put(service), Put(volume), Put(pending("t1", "db"))])
    await Scheduler(store, FakeClock(NOW)).reconcile(None)
    task = await store.get_task("t1")
    assert task is not None and not task.node_id
    assert f"volume {DATA} is being removed" in task.status.message
    record = await store.get_object(Kind.VOLUME, DATA)
    assert isinstance(record, pb.Volume) and not record.node_id, "not pinned either"
