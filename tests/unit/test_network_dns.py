"""DNS records from services and tasks: which tasks count, the names, deltas, and the incremental index
equal to the from-scratch function after any sequence of events (Hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.network.dns import DnsIndex, counts, dns_delta, dns_records
from dockyard.v1 import types_pb2 as pb

HEALTHS = [
    pb.TaskHealth.STATE_UNSPECIFIED,
    pb.TaskHealth.STATE_STARTING,
    pb.TaskHealth.STATE_HEALTHY,
    pb.TaskHealth.STATE_UNHEALTHY,
]


def service(sid: str, name: str, stack: str = "") -> pb.Service:
    return pb.Service(id=sid, name=name, spec=pb.ServiceSpec(name=name, stack=stack))


def task(
    tid: str,
    sid: str,
    address: str | None = "10.128.0.2",
    state: int = pb.TASK_STATE_RUNNING,
    health: int = pb.TaskHealth.STATE_UNSPECIFIED,
    desired: int = pb.DESIRED_STATE_RUNNING,
) -> pb.Task:
    t = pb.Task(id=tid, service_id=sid, desired_state=desired)  # type: ignore[arg-type]
    t.status.state = state  # type: ignore[assignment]
    t.status.health.state = health  # type: ignore[assignment]
    if address is not None:
        t.status.addresses["dockyard"] = address
    return t


def test_which_tasks_count() -> None:
    assert counts(task("t", "s"))
    assert counts(task("t", "s", health=pb.TaskHealth.STATE_HEALTHY))
    assert not counts(task("t", "s", health=pb.TaskHealth.STATE_STARTING))
    assert not counts(task("t", "s", health=pb.TaskHealth.STATE_UNHEALTHY))
    assert not counts(task("t", "s", state=pb.TASK_STATE_STARTING))
    assert not counts(task("t", "s", desired=pb.DESIRED_STATE_SHUTDOWN))
    assert not counts(task("t", "s", address=None))
    assert not counts(task("t", "s", address="not-an-ip"))


def test_names_and_addresses() -> None:
    services = [service("s1", "shop_web", stack="shop"), service("s2", "api"), service("s3", "idle")]
    tasks = [
        task("t1", "s1", "10.128.1.10"),
        task("t2", "s1", "10.128.0.9"),
        task("t3", "s2", "10.128.2.2"),
        task("t4", "s2", "10.128.2.3", health=pb.TaskHealth.STATE_UNHEALTHY),
        task("t5", "s3", "10.128.2.4", state=pb.TASK_STATE_FAILED),
        task("t6", "gone", "10.128.2.5"),  # a service deleted meanwhile
    ]
    # Sorted numerically, not as text.
    assert dns_records(services, tasks) == {
        "web.shop.dockyard": ("10.128.0.9", "10.128.1.10"),
        "api.dockyard": ("10.128.2.2",),
    }


def test_delta_says_gone_with_no_addresses() -> None:
    before = {"a.dockyard": ("10.0.0.1",), "b.dockyard": ("10.0.0.2",)}
    after = {"a.dockyard": ("10.0.0.1", "10.0.0.3"), "c.dockyard": ("10.0.0.4",)}
    assert dns_delta(before, after) == {
        "a.dockyard": ("10.0.0.1", "10.0.0.3"),
        "b.dockyard": (),
        "c.dockyard": ("10.0.0.4",),
    }
    assert dns_delta(after, after) == {}


def test_index_reports_an_address_or_health_change() -> None:
    index = DnsIndex()
    index.reset([service("s", "web")], [task("t", "s", health=pb.TaskHealth.STATE_STARTING)])
    published = dict(index.records())
    assert index.take_changes(published) == {}
    index.on_task(task("t", "s", health=pb.TaskHealth.STATE_HEALTHY), deleted=False)
    assert index.take_changes(published) == {"web.dockyard": ("10.128.0.2",)}
    published = index.records()
    index.on_task(task("t", "s", address="10.128.0.7"), deleted=False)
    assert index.take_changes(published) == {"web.dockyard": ("10.128.0.7",)}
    published = index.records()
    index.on_service(service("s", "web"), deleted=True)
    assert index.take_changes(published) == {"web.dockyard": ()}


SERVICE_IDS = ["s0", "s1", "s2"]
SERVICE_NAMES = ["web", "db", "shop_web"]
events = st.one_of(
    st.tuples(
        st.just("service"),
        st.sampled_from(SERVICE_IDS),
        st.sampled_from(SERVICE_NAMES),
        st.sampled_from(["", "shop"]),
        st.booleans(),
    ),
    st.tuples(
        st.just("task"),
        st.sampled_from(["t0", "t1", "t2", "t3", "t4"]),
        st.sampled_from([*SERVICE_IDS, "ghost"]),
        st.sampled_from([None, "10.128.0.2", "10.128.0.3", "10.128.1.2", "bad"]),
        st.sampled_from([pb.TASK_STATE_STARTING, pb.TASK_STATE_RUNNING, pb.TASK_STATE_FAILED]),
        st.sampled_from(HEALTHS),
        st.booleans(),
    ),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, max_size=40), st.integers(1, 5))
def test_index_equals_scratch_and_deltas_rebuild_the_table(steps: list[tuple[object, ...]], every: int) -> None:
    index = DnsIndex()
    index.reset([], [])
    services: dict[str, pb.Service] = {}
    tasks: dict[str, pb.Task] = {}
    published: dict[str, tuple[str, ...]] = {}
    for i, step in enumerate(steps):
        if step[0] == "service":
            _, sid, name, stack, deleted = step
            s = service(str(sid), str(name), str(stack))
            services.pop(s.id, None) if deleted else services.__setitem__(s.id, s)
            index.on_service(s, bool(deleted))
        else:
            _, tid, sid, address, state, health, deleted = step
            t = task(str(tid), str(sid), None if address is None else str(address), int(str(state)), int(str(health)))
            tasks.pop(t.id, None) if deleted else tasks.__setitem__(t.id, t)
            index.on_task(t, bool(deleted))
        if i % every == 0:
            # As the dispatcher publishes: the deltas applied to what agents hold give the whole table.
            for name, addresses in index.take_changes(published).items():
                if addresses:
                    published[name] = addresses
                else:
                    published.pop(name, None)
            assert published == dns_records(services.values(), tasks.values())
        assert index.records() == dns_records(services.values(), tasks.values())
