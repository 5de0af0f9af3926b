"""The dispatcher's side of networks: maps per node, the gate that holds a task until its map is queued ahead
of it, DNS tables merged in the outbox, and address reports that count as news."""

from __future__ import annotations

from datetime import UTC, datetime

from controller.dispatcher.committer import bound_addresses
from controller.dispatcher.networks import NetworkPublisher
from controller.dispatcher.session import AgentSession
from controller.dispatcher.status import judge_status
from controller.network.dns import dns_message, merge_dns
from controller.network.maps import covers, network_map, peer_host
from controller.store.base import Action, Event, Kind, Put
from controller.store.sqlite import SqliteStore
from dockyard.clock import FakeClock
from dockyard.v1 import agent_pb2 as apb
from dockyard.v1 import types_pb2 as pb

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_peer_host() -> None:
    assert peer_host("ipv4:10.0.0.5:45678") == "10.0.0.5"
    assert peer_host("ipv6:[fd00::1]:80") == "fd00::1"
    assert peer_host("ipv4:10.0.0.5") == "10.0.0.5"
    assert peer_host("") == ""


def test_map_lists_every_subnet_of_the_nodes_networks_with_peer_addresses() -> None:
    networks = {
        "dockyard": pb.Network(name="dockyard", subnets={"n1": "10.128.0.0/24", "n2": "10.128.1.0/24"}),
        "shop_default": pb.Network(name="shop_default", internal=True, subnets={"n2": "10.128.2.0/24"}),
    }
    hosts = {"n1": "192.0.2.1", "n2": "192.0.2.2"}
    m = network_map(networks, hosts, {"dockyard"}, "10.128.0.0/9", 7)
    assert m.version == 7 and m.pool == "10.128.0.0/9"
    assert [(s.network, s.node_id, s.node_address, s.subnet) for s in m.subnets] == [
        ("dockyard", "n1", "192.0.2.1", "10.128.0.0/24"),
        ("dockyard", "n2", "192.0.2.2", "10.128.1.0/24"),
    ]
    both = network_map(networks, hosts, {"dockyard", "shop_default"}, "10.128.0.0/9", 7)
    assert [s.internal for s in both.subnets] == [False, False, True]
    # The gate: a spec's networks (the default one when it names none) must all have this node's subnet.
    assert covers(networks, "n1", pb.ServiceSpec(name="web"))
    assert not covers(networks, "n1", pb.ServiceSpec(name="web", stack="shop"))
    assert covers(networks, "n2", pb.ServiceSpec(name="web", stack="shop"))
    assert covers(networks, "n1", pb.ServiceSpec(name="web", networks=["nowhere"]))  # the agent says so
    assert covers(networks, "n1", None)


def task(
    task_id: str, state: int = pb.TASK_STATE_ASSIGNED, desired: int = pb.DESIRED_STATE_RUNNING, revision: int = 1
) -> pb.Task:
    t = pb.Task(id=task_id, service_id="svc", revision=revision, node_id="n1", desired_state=desired)  # type: ignore[arg-type]
    t.status.state = state  # type: ignore[assignment]
    return t


def kinds(messages: list[apb.ControllerMessage]) -> list[str]:
    return [str(m.WhichOneof("msg")) for m in messages]


def test_gate_holds_new_tasks_until_a_covering_map_is_queued_ahead_of_them() -> None:
    covered: set[str] = set()
    session = AgentSession(node_id="n1", session_id="s", backlog=None)
    session.gate = lambda t, spec: t.id in covered
    specs = {
        ("svc", 1): pb.ServiceSpec(name="web", image="img:1"),
        ("svc", 2): pb.ServiceSpec(name="web", image="img:2"),
    }
    session.send_full([task("a", revision=2), task("b", state=pb.TASK_STATE_RUNNING)], specs)
    # "b" runs on the agent already: never held. "a" is new and not covered: held.
    (full,) = session.take()
    assert [t.id for t in full.assignments.tasks] == ["b"]
    assert set(session.held) == {"a"}
    # A change to the held task replaces it; a stopped one is no longer waited for.
    session.on_task(task("c"), False, specs)
    session.on_task(task("c", desired=pb.DESIRED_STATE_SHUTDOWN, state=pb.TASK_STATE_SHUTDOWN), False, specs)
    assert set(session.held) == {"a"} and session.take() == []
    # The map that covers it is queued, then the held task goes: the map is written first.
    covered.add("a")
    session.network_map(apb.NetworkMap(version=3), b"content")
    session.release_held()
    messages = session.take()
    assert kinds(messages) == ["network_map", "assignments"]
    assert [t.id for t in messages[1].assignments.tasks] == ["a"]
    assert [s.spec.image for s in messages[1].assignments.specs] == ["img:2"]  # its spec comes with it
    assert session.held == {}
    # The same map again is not news.
    session.network_map(apb.NetworkMap(version=4), b"content")
    assert session.take() == []


def test_dns_outbox_merges_full_and_deltas() -> None:
    full = dns_message({"a.dockyard": ("10.0.0.1",), "b.dockyard": ("10.0.0.2",)}, 5, full=True)
    delta = dns_message({"a.dockyard": (), "c.dockyard": ("10.0.0.3",)}, 6, full=False)
    merged = merge_dns(full, delta)
    assert merged.full and merged.version == 6
    assert {r.name: list(r.addresses) for r in merged.records} == {
        "b.dockyard": ["10.0.0.2"],
        "c.dockyard": ["10.0.0.3"],
    }
    two = merge_dns(delta, dns_message({"c.dockyard": ("10.0.0.4",)}, 7, full=False))
    assert not two.full
    assert {r.name: list(r.addresses) for r in two.records} == {"a.dockyard": [], "c.dockyard": ["10.0.0.4"]}
    assert merge_dns(two, full) is full


def test_a_report_that_changes_only_addresses_is_written() -> None:
    stored = task("a", state=pb.TASK_STATE_RUNNING)
    stored.status.timestamp.FromDatetime(NOW)
    report = pb.TaskStatus()
    report.CopyFrom(stored.status)
    assert judge_status(stored, "n1", report, NOW).task is None  # nothing new
    report.addresses["dockyard"] = "10.128.0.2"
    verdict = judge_status(stored, "n1", report, NOW)
    assert verdict.task is not None and dict(verdict.task.status.addresses) == {"dockyard": "10.128.0.2"}


def test_reported_addresses_are_bounded() -> None:
    status = pb.TaskStatus(addresses={"dockyard": "10.128.0.2", "bad": "nope", "v6": "fd00::1", "": "10.0.0.1"})
    bound_addresses(status)
    assert dict(status.addresses) == {"dockyard": "10.128.0.2"}
    many = pb.TaskStatus(addresses={f"n{i:03}": f"10.0.{i}.1" for i in range(100)})
    bound_addresses(many)
    assert len(many.addresses) == 32


async def test_publisher_sends_maps_only_to_changed_sessions_and_dns_deltas_to_all() -> None:
    async with SqliteStore(":memory:") as store:
        net = pb.Network(id="net", name="dockyard", subnets={"n1": "10.128.0.0/24"})
        node1 = pb.Node(id="n1", address="ipv4:192.0.2.1:1000", status=pb.NODE_STATUS_READY)
        node2 = pb.Node(id="n2", address="ipv4:192.0.2.2:1000", status=pb.NODE_STATUS_READY)
        service = pb.Service(id="svc", name="web", spec=pb.ServiceSpec(name="web"))
        await store.commit([Put(net), Put(node1), Put(node2), Put(service)])
        sessions = {n: AgentSession(node_id=n, session_id=n, backlog=None) for n in ("n1", "n2")}
        publisher = NetworkPublisher(store, FakeClock(), sessions, "10.128.0.0/9")
        await publisher.load()
        for session in sessions.values():
            publisher.greet(session)
        first = {n: s.take() for n, s in sessions.items()}
        assert kinds(first["n1"]) == ["network_map", "dns"]
        assert [s.node_address for s in first["n1"][0].network_map.subnets] == ["192.0.2.1"]
        assert list(first["n2"][0].network_map.subnets) == []  # no subnet yet: an empty map
        assert first["n1"][1].dns.full and list(first["n1"][1].dns.records) == []
        # n2 gets a subnet: both maps change. A task of web turns running with an address: both get the delta.
        grown = pb.Network()
        grown.CopyFrom(net)
        grown.subnets["n2"] = "10.128.1.0/24"
        revision = await store.commit([Put(grown)])
        publisher.on_event(Event(revision, Kind.NETWORK, Action.PUT, "net", grown))
        running = task("t1", state=pb.TASK_STATE_RUNNING)
        running.status.addresses["dockyard"] = "10.128.0.2"
        publisher.on_event(Event(revision + 1, Kind.TASK, Action.PUT, "t1", running))
        publisher.publish()
        for n in ("n1", "n2"):
            messages = sessions[n].take()
            assert kinds(messages) == ["network_map", "dns"], n
            assert len(messages[0].network_map.subnets) == 2
            assert messages[0].network_map.version == revision + 1
            assert [(r.name, list(r.addresses)) for r in messages[1].dns.records] == [("web.dockyard", ["10.128.0.2"])]
            assert not messages[1].dns.full
        # A node's new port (a new session) is no news for the map.
        moved = pb.Node()
        moved.CopyFrom(node2)
        moved.address = "ipv4:192.0.2.2:2000"
        publisher.on_event(Event(revision + 2, Kind.NODE, Action.PUT, "n2", moved))
        publisher.publish()
        assert sessions["n1"].take() == [] and sessions["n2"].take() == []


async def test_a_session_greeted_before_a_publish_gets_the_delta_at_a_newer_version() -> None:
    # Agents drop a delta whose version is not above their table's: a greeting's full table must carry the
    # version of what was published, not of changes still waiting for the window.
    async with SqliteStore(":memory:") as store:
        await store.commit([Put(pb.Service(id="svc", name="web", spec=pb.ServiceSpec(name="web")))])
        sessions = {"n1": AgentSession(node_id="n1", session_id="s", backlog=None)}
        publisher = NetworkPublisher(store, FakeClock(), sessions, "10.128.0.0/9")
        await publisher.load()
        running = task("t1", state=pb.TASK_STATE_RUNNING)
        running.status.addresses["dockyard"] = "10.128.0.2"
        publisher.on_event(Event(store.revision + 1, Kind.TASK, Action.PUT, "t1", running))
        publisher.greet(sessions["n1"])  # while the change waits for the window
        (greeting,) = [m.dns for m in sessions["n1"].take() if m.HasField("dns")]
        assert greeting.full and list(greeting.records) == []
        publisher.publish()
        (delta,) = [m.dns for m in sessions["n1"].take() if m.HasField("dns")]
        assert not delta.full and delta.version > greeting.version
        assert [(r.name, list(r.addresses)) for r in delta.records] == [("web.dockyard", ["10.128.0.2"])]


async def test_a_task_whose_subnet_is_in_the_view_but_not_yet_sent_brings_its_map_along() -> None:
    # The real controller's race: the subnet is committed, the task assigned, and the publish window not over.
    async with SqliteStore(":memory:") as store:
        net = pb.Network(id="net", name="dockyard")
        spec = pb.ServiceSpec(name="web", image="img:1")
        await store.commit([Put(net), Put(pb.Service(id="svc", name="web", revision=1, spec_revision=1, spec=spec))])
        sessions = {"n1": AgentSession(node_id="n1", session_id="s", backlog=None)}
        publisher = NetworkPublisher(store, FakeClock(), sessions, "10.128.0.0/9")
        await publisher.load()
        session = sessions["n1"]
        publisher.greet(session)
        session.take()
        specs = {("svc", 1): spec}
        session.on_task(task("early"), False, specs)
        assert set(session.held) == {"early"} and session.take() == []  # no subnet anywhere yet: held

        given = pb.Network(id="net", name="dockyard", subnets={"n1": "10.128.0.0/24"})
        publisher.on_event(Event(store.revision + 1, Kind.NETWORK, Action.PUT, "net", given))
        session.on_task(task("late"), False, specs)  # before any publish
        messages = session.take()
        assert kinds(messages) == ["network_map", "assignments"]
        assert [s.subnet for s in messages[0].network_map.subnets] == ["10.128.0.0/24"]
        assert [t.id for t in messages[1].assignments.tasks] == ["late"]
        publisher.publish()  # the held one follows; the map is not sent twice
        messages = session.take()
        assert kinds(messages) == ["assignments"] and [t.id for t in messages[0].assignments.tasks] == ["early"]


async def test_peer_changes_wait_for_the_map_interval_but_held_tasks_do_not() -> None:
    async with SqliteStore(":memory:") as store:
        net = pb.Network(id="net", name="dockyard", subnets={"n1": "10.128.0.0/24"})
        spec = pb.ServiceSpec(name="web", image="img:1", networks=["back"])
        back = pb.Network(id="back", name="back")
        service = pb.Service(id="svc", name="web", revision=1, spec_revision=1, spec=spec)
        await store.commit([Put(net), Put(back), Put(service)])
        clock = FakeClock()
        sessions = {"n1": AgentSession(node_id="n1", session_id="s", backlog=None)}
        publisher = NetworkPublisher(store, clock, sessions, "10.128.0.0/9", map_interval=1.0)
        await publisher.load()
        session = sessions["n1"]
        publisher.greet(session)
        session.take()
        publisher.publish()  # a round: the next map round is due a second later
        session.on_task(task("t"), False, {("svc", 1): spec})
        assert set(session.held) == {"t"}
        revision = store.revision
        # A peer joins (no hurry) and the network role gives n1 its subnet of `back` (a task waits for it).
        grown = pb.Network(id="net", name="dockyard", subnets={"n1": "10.128.0.0/24", "n2": "10.128.1.0/24"})
        publisher.on_event(Event(revision + 1, Kind.NETWORK, Action.PUT, "net", grown))
        given = pb.Network(id="back", name="back", subnets={"n1": "10.128.2.0/24"})
        publisher.on_event(Event(revision + 2, Kind.NETWORK, Action.PUT, "back", given))
        publisher.publish()
        messages = session.take()
        assert kinds(messages) == ["network_map", "assignments"]  # its own map, whole, with the task
        assert {(s.network, s.node_id) for s in messages[0].network_map.subnets} == {
            ("dockyard", "n1"),
            ("dockyard", "n2"),
            ("back", "n1"),
        }
        # Another peer: its subnet waits for the interval, then goes.
        more = pb.Network(id="net", name="dockyard", subnets={**grown.subnets, "n3": "10.128.3.0/24"})
        publisher.on_event(Event(revision + 3, Kind.NETWORK, Action.PUT, "net", more))
        publisher.publish()
        assert session.take() == []
        await clock.advance(1.0)
        publisher.publish()
        (late,) = session.take()
        assert len(late.network_map.subnets) == 4
