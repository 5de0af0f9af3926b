"""Component tests of SqliteStore against a real SQLite database, in memory and on disk."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.store.base import (
    Action,
    ConflictError,
    Delete,
    Event,
    Kind,
    Op,
    Put,
    Store,
    StoredObject,
    WatchExpired,
)
from controller.store.sqlite import SqliteStore
from dockyard.v1 import types_pb2 as pb

DEADLINE = 5.0


def service(sid: str, name: str | None = None, revision: int = 1, image: str = "nginx:1") -> pb.Service:
    """Returns a service whose spec carries the name and image."""
    name = name if name is not None else f"svc-{sid}"
    return pb.Service(id=sid, name=name, revision=revision, spec=pb.ServiceSpec(name=name, image=image))


def node(nid: str, hostname: str) -> pb.Node:
    """Returns a node with that hostname."""
    return pb.Node(id=nid, description=pb.NodeDescription(hostname=hostname))


def task(tid: str, service_id: str = "s1", node_id: str = "", slot: int = 1, created: int = 0) -> pb.Task:
    """Returns a task; created is its creation time in seconds."""
    t = pb.Task(id=tid, service_id=service_id, node_id=node_id, slot=slot)
    t.created_at.seconds = created
    return t


async def until(condition: Callable[[], bool]) -> None:
    """Waits for condition, polling briefly, failing after the deadline."""
    async with asyncio.timeout(DEADLINE):
        # The store offers no notification for arbitrary conditions; a millisecond poll is cheap here.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


async def take(events: AsyncIterator[Event], count: int) -> list[Event]:
    """Returns the next count events, failing after the deadline."""
    out: list[Event] = []
    async with asyncio.timeout(DEADLINE):
        while len(out) < count:
            out.append(await anext(events))
    return out


async def drain(events: AsyncIterator[Event]) -> list[Event]:
    """Returns every event until the iterator ends, failing after the deadline."""
    async with asyncio.timeout(DEADLINE):
        return [event async for event in events]


@pytest.fixture(params=["memory", "file"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An open store, in memory or in a fresh file."""
    path = ":memory:" if request.param == "memory" else tmp_path / "store.db"
    async with SqliteStore(path) as s:
        yield s


def test_satisfies_the_store_protocol() -> None:
    """The class is usable wherever a Store is expected."""
    s: Store = SqliteStore(":memory:")
    assert s.revision == 0


async def test_services_put_get_list(store: SqliteStore) -> None:
    """Services come back by id or name, listed by name, as fresh copies."""
    rev = await store.commit([Put(service("id-b", "beta")), Put(service("id-a", "alpha"))])
    await store.commit([Put(service("id-c", "charlie"))])
    assert [s.name for s in await store.list_services()] == ["alpha", "beta", "charlie"]
    by_id = await store.get_service("id-a")
    by_name = await store.get_service("alpha")
    assert by_id is not None
    assert by_id == by_name
    assert by_id.version == rev
    assert by_id.spec.image == "nginx:1"
    assert await store.get_service("nope") is None

    by_id.name = "mutated"
    (await store.list_services())[0].name = "mutated too"
    again = await store.get_service("id-a")
    assert again is not None
    assert again.name == "alpha"


async def test_get_service_prefers_an_id_over_a_name(store: SqliteStore) -> None:
    """When one service's name is another's id, the id wins."""
    await store.commit([Put(service("x", "y")), Put(service("y", "z"))])
    found = await store.get_service("y")
    assert found is not None
    assert found.id == "y"


async def test_nodes_listed_by_hostname_then_id(store: SqliteStore) -> None:
    """Nodes order by hostname, ties by id."""
    await store.commit([Put(node("n3", "b")), Put(node("n2", "a")), Put(node("n1", "b"))])
    assert [n.id for n in await store.list_nodes()] == ["n2", "n1", "n3"]
    got = await store.get_node("n2")
    assert got is not None
    assert got.description.hostname == "a"
    assert await store.get_node("n9") is None


async def test_tasks_filtered_and_ordered(store: SqliteStore) -> None:
    """Tasks filter by service and node and order by service, slot, creation."""
    await store.commit(
        [
            Put(task("t1", "s2", "n1", slot=1, created=5)),
            Put(task("t2", "s1", "n2", slot=2, created=1)),
            Put(task("t3", "s1", "n1", slot=1, created=9)),
            Put(task("t4", "s1", "n1", slot=1, created=3)),
        ]
    )
    assert [t.id for t in await store.list_tasks()] == ["t4", "t3", "t2", "t1"]
    assert [t.id for t in await store.list_tasks(service_id="s1")] == ["t4", "t3", "t2"]
    assert [t.id for t in await store.list_tasks(node_id="n1")] == ["t4", "t3", "t1"]
    assert [t.id for t in await store.list_tasks(service_id="s1", node_id="n2")] == ["t2"]
    assert await store.list_tasks(service_id="none") == []
    got = await store.get_task("t1")
    assert got is not None
    assert got.node_id == "n1"
    assert await store.get_task("t9") is None


async def test_every_write_gets_the_commit_revision(store: SqliteStore) -> None:
    """Objects written by one commit all carry its revision, in the store and on the caller's objects."""
    svc, n = service("s1"), node("n1", "h")
    first = await store.commit([Put(svc), Put(n)])
    assert first == store.revision == 1
    assert svc.version == n.version == 1
    t = task("t1")
    second = await store.commit([Put(t), Put(svc, expect_version=svc.version)])
    assert second == 2
    stored_node = await store.get_node("n1")
    stored_svc = await store.get_service("s1")
    stored_task = await store.get_task("t1")
    assert stored_node is not None
    assert stored_svc is not None
    assert stored_task is not None
    assert (stored_node.version, stored_svc.version, stored_task.version) == (1, 2, 2)


async def test_commit_snapshots_the_callers_object(store: SqliteStore) -> None:
    """Changing an object after commit started reaches neither the table nor the events."""
    svc = service("s1", "before")
    pending = asyncio.create_task(store.commit([Put(svc)]))
    await asyncio.sleep(0)
    svc.name = "after"
    await pending
    stored = await store.get_service("s1")
    assert stored is not None
    assert stored.name == "before"
    async with contextlib.aclosing(store.watch(0)) as events:
        (event,) = await take(events, 1)
    assert isinstance(event.obj, pb.Service)
    assert event.obj.name == "before"


async def test_empty_and_no_op_batches_take_no_revision(store: SqliteStore) -> None:
    """Nothing written, no revision spent."""
    assert await store.commit([]) == 0
    assert await store.commit([Delete(Kind.TASK, "ghost")]) == 0
    await store.commit([Put(node("n1", "h"))])
    assert await store.commit([Delete(Kind.NODE, "ghost")]) == 1
    assert store.revision == 1


async def test_expect_zero_on_existing_rolls_back_the_whole_batch(store: SqliteStore) -> None:
    """A conflict anywhere in a batch writes nothing and leaves the caller's objects alone."""
    await store.commit([Put(service("s1"))])
    fresh = task("t1")
    svc = service("s1", image="nginx:2")
    with pytest.raises(ConflictError, match=r"service s1: expected version 0, found 1"):
        await store.commit([Put(fresh, expect_version=0), Put(node("n1", "h")), Put(svc, expect_version=0)])
    assert store.revision == 1
    assert await store.get_task("t1") is None
    assert await store.get_node("n1") is None
    stored = await store.get_service("s1")
    assert stored is not None
    assert stored.spec.image == "nginx:1"
    assert fresh.version == 0
    assert svc.version == 0
    # The failed batch is invisible to the feed too; the next commit takes revision 2.
    assert await store.commit([Put(node("n2", "h"))]) == 2
    async with contextlib.aclosing(store.watch(0)) as events:
        assert [(e.revision, e.id) for e in await take(events, 2)] == [(1, "s1"), (2, "n2")]


async def test_wrong_version_conflicts_and_right_one_wins(store: SqliteStore) -> None:
    """Optimistic concurrency: the second writer working from the same read loses."""
    n = node("n1", "h")
    await store.commit([Put(n)])
    mine = await store.get_node("n1")
    theirs = await store.get_node("n1")
    assert mine is not None
    assert theirs is not None
    theirs.status = pb.NODE_STATUS_READY
    await store.commit([Put(theirs, expect_version=theirs.version)])
    mine.status = pb.NODE_STATUS_DOWN
    with pytest.raises(ConflictError, match=r"node n1: expected version 1, found 2"):
        await store.commit([Put(mine, expect_version=mine.version)])
    with pytest.raises(ConflictError, match=r"task t1: expected version 3, found 0"):
        await store.commit([Put(task("t1"), expect_version=3)])
    stored = await store.get_node("n1")
    assert stored is not None
    assert stored.status == pb.NODE_STATUS_READY


async def test_ops_in_a_batch_see_earlier_ops(store: SqliteStore) -> None:
    """Each expect_version is checked against the state the batch's earlier ops left."""
    next_rev = store.revision + 1
    await store.commit([Put(task("t1"), expect_version=0), Delete(Kind.TASK, "t1", expect_version=next_rev)])
    assert await store.get_task("t1") is None
    with pytest.raises(ConflictError):
        await store.commit([Put(task("t2"), expect_version=0), Put(task("t2"), expect_version=0)])


async def test_delete_semantics(store: SqliteStore) -> None:
    """Deletes check versions, report the last value, and a blind delete of nothing is silent."""
    await store.commit([Put(task("t1", slot=7)), Put(node("n1", "h"))])
    with pytest.raises(ConflictError, match=r"task ghost: expected version 1, found none"):
        await store.commit([Delete(Kind.TASK, "ghost", expect_version=1)])
    with pytest.raises(ConflictError, match=r"task ghost: expected version 0, found none"):
        await store.commit([Delete(Kind.TASK, "ghost", expect_version=0)])
    with pytest.raises(ConflictError, match=r"node n1: expected version 5, found 1"):
        await store.commit([Delete(Kind.NODE, "n1", expect_version=5)])
    rev = await store.commit([Delete(Kind.TASK, "t1", expect_version=1), Delete(Kind.TASK, "ghost")])
    assert rev == 2
    assert await store.get_task("t1") is None
    assert await store.get_node("n1") is not None
    async with contextlib.aclosing(store.watch(1)) as events:
        (event,) = await take(events, 1)
    assert (event.revision, event.kind, event.action, event.id) == (2, Kind.TASK, Action.DELETE, "t1")
    assert isinstance(event.obj, pb.Task)
    assert (event.obj.slot, event.obj.version) == (7, 1)


async def test_service_names_are_unique(store: SqliteStore) -> None:
    """A second service may not take a name in use, but a batch may free a name and reuse it."""
    await store.commit([Put(service("s1", "web"))])
    with pytest.raises(ConflictError, match="web"):
        await store.commit([Put(node("n1", "h")), Put(service("s2", "web"))])
    assert await store.get_node("n1") is None
    assert store.revision == 1
    await store.commit([Delete(Kind.SERVICE, "s1"), Put(service("s2", "web"))])
    found = await store.get_service("web")
    assert found is not None
    assert found.id == "s2"
    await store.commit([Put(service("s2", "web2"))])
    assert await store.get_service("web") is None


async def test_service_history_per_revision(store: SqliteStore) -> None:
    """Each service revision's spec is kept, the first write of a revision wins, a delete drops it."""
    await store.commit([Put(service("s1", revision=1, image="a"))])
    await store.commit([Put(service("s1", revision=2, image="b"))])
    await store.commit([Put(service("s1", revision=2, image="c"))])
    one = await store.get_service_spec("s1", 1)
    two = await store.get_service_spec("s1", 2)
    assert one is not None
    assert two is not None
    assert (one.image, two.image) == ("a", "b")
    assert await store.get_service_spec("s1", 3) is None
    current = await store.get_service("s1")
    assert current is not None
    assert current.spec.image == "c"

    await store.commit([Delete(Kind.SERVICE, "s1")])
    assert await store.get_service_spec("s1", 1) is None
    # Deleted and recreated in one batch: only the new incarnation's history remains.
    await store.commit([Put(service("s9", revision=1, image="x"))])
    await store.commit([Delete(Kind.SERVICE, "s9"), Put(service("s9", revision=1, image="y"))])
    spec = await store.get_service_spec("s9", 1)
    assert spec is not None
    assert spec.image == "y"


async def test_reopen_restores_everything(tmp_path: Path) -> None:
    """Revision, objects, history and events survive a close and reopen."""
    path = tmp_path / "store.db"
    async with SqliteStore(path) as first:
        await first.commit([Put(service("s1", revision=1, image="a")), Put(node("n1", "h"))])
        await first.commit([Put(service("s1", revision=2, image="b")), Put(task("t1"))])
        await first.commit([Delete(Kind.NODE, "n1")])
    async with SqliteStore(path) as second:
        assert second.revision == 3
        assert [s.id for s in await second.list_services()] == ["s1"]
        assert await second.list_nodes() == []
        assert [t.version for t in await second.list_tasks()] == [2]
        spec = await second.get_service_spec("s1", 1)
        assert spec is not None
        assert spec.image == "a"
        async with contextlib.aclosing(second.watch(0)) as events:
            replayed = await take(events, 5)
        assert [(e.revision, e.id, e.action) for e in replayed] == [
            (1, "s1", Action.PUT),
            (1, "n1", Action.PUT),
            (2, "s1", Action.PUT),
            (2, "t1", Action.PUT),
            (3, "n1", Action.DELETE),
        ]
        assert await second.commit([Put(node("n2", "h"))]) == 4


async def test_watch_from_zero_replays_then_goes_live(store: SqliteStore) -> None:
    """A watcher from 0 sees the history in order, then commits as they happen."""
    await store.commit([Put(node("n1", "a")), Put(node("n2", "b"))])
    await store.commit([Put(task("t1"))])
    async with contextlib.aclosing(store.watch(0)) as events:
        replayed = await take(events, 3)
        assert [(e.revision, e.id) for e in replayed] == [(1, "n1"), (1, "n2"), (2, "t1")]
        assert all(e.obj.version == e.revision for e in replayed)
        await store.commit([Delete(Kind.NODE, "n1")])
        (live,) = await take(events, 1)
        assert (live.revision, live.action, live.id) == (3, Action.DELETE, "n1")


async def test_watch_resumes_from_the_middle(store: SqliteStore) -> None:
    """A watcher sees only revisions after its since."""
    for i in range(6):
        await store.commit([Put(task(f"t{i}"))])
    async with contextlib.aclosing(store.watch(4)) as events:
        assert [e.revision for e in await take(events, 2)] == [5, 6]
        await store.commit([Put(task("t9"))])
        assert [e.revision for e in await take(events, 1)] == [7]


async def test_watch_from_the_future_skips_until_then(store: SqliteStore) -> None:
    """Asking for events above a revision not yet reached yields nothing before it."""
    async with contextlib.aclosing(store.watch(2)) as events:
        for i in range(3):
            await store.commit([Put(task(f"t{i}"))])
        assert [e.revision for e in await take(events, 1)] == [3]


async def test_watchers_get_their_own_copies(store: SqliteStore) -> None:
    """One watcher mutating an event's object does not affect another's."""
    async with (
        contextlib.aclosing(store.watch(0)) as one,
        contextlib.aclosing(store.watch(0)) as two,
    ):
        await store.commit([Put(node("n1", "h"))])
        (a,) = await take(one, 1)
        assert isinstance(a.obj, pb.Node)
        a.obj.description.hostname = "changed"
        (b,) = await take(two, 1)
        assert isinstance(b.obj, pb.Node)
        assert b.obj.description.hostname == "h"


@pytest.mark.parametrize("watch_buffer", [4096, 3])
async def test_no_gaps_or_duplicates_while_watchers_attach_under_load(tmp_path: Path, watch_buffer: int) -> None:
    """Watchers attaching while 200 commits race see exactly the revisions after their since.

    The small buffer forces watchers through the overflow path (re-reading from the table) too.
    """
    total = 200
    async with SqliteStore(tmp_path / "store.db", watch_buffer=watch_buffer) as store:

        async def watcher(start_at: int, lag: int) -> tuple[int, list[int]]:
            await until(lambda: store.revision >= start_at)
            since = max(store.revision - lag, 0)
            seen: list[int] = []
            async with contextlib.aclosing(store.watch(since)) as events:
                async for event in events:
                    seen.append(event.revision)
                    if event.revision == total:
                        break
            return since, seen

        watchers = [asyncio.create_task(watcher(start, lag)) for start in (0, 20, 50, 100, 150) for lag in (0, 15)]
        commits = [asyncio.create_task(store.commit([Put(task(f"t{i}", slot=i))])) for i in range(total)]
        async with asyncio.timeout(DEADLINE):
            revisions = await asyncio.gather(*commits)
            results = await asyncio.gather(*watchers)
        assert sorted(revisions) == list(range(1, total + 1))
        for since, seen in results:
            assert seen == list(range(since + 1, total + 1))


async def test_slow_watcher_does_not_block_commits_and_catches_up() -> None:
    """A watcher that stops reading neither stalls commits nor misses anything once it resumes."""
    small = SqliteStore(":memory:", watch_buffer=2)
    async with small, contextlib.aclosing(small.watch(0)) as events:
        await small.commit([Put(task("t0"))])
        (first,) = await take(events, 1)
        async with asyncio.timeout(DEADLINE):
            for i in range(1, 30):
                await small.commit([Put(task(f"t{i}")), Put(node(f"n{i}", "h"))])
        rest = await take(events, 58)
    assert first.revision == 1
    assert [e.revision for e in rest] == [r for r in range(2, 31) for _ in range(2)]


async def test_watch_expired_after_trimming(tmp_path: Path) -> None:
    """Watching from before the trimmed horizon raises; whole revisions are kept."""
    path = tmp_path / "store.db"
    async with SqliteStore(path, keep_events=3) as store:
        for i in range(6):
            await store.commit([Put(task(f"t{i}"))])
        # Revision 7 has two events; with revisions 6 and 7 together 3 events remain.
        await store.commit([Put(task("a")), Put(task("b"))])
        with pytest.raises(WatchExpired):
            await drain(store.watch(4))
        async with contextlib.aclosing(store.watch(5)) as events:
            assert [e.revision for e in await take(events, 3)] == [6, 7, 7]
    async with SqliteStore(path, keep_events=3) as reopened:
        with pytest.raises(WatchExpired):
            await drain(reopened.watch(0))
        async with contextlib.aclosing(reopened.watch(5)) as events:
            assert [e.revision for e in await take(events, 3)] == [6, 7, 7]


async def test_lagging_watcher_expires_when_its_backlog_is_trimmed() -> None:
    """An overflowed watcher whose missed events were trimmed gets WatchExpired, not a gap."""
    async with SqliteStore(":memory:", keep_events=2, watch_buffer=1) as store:
        events = store.watch(0)
        await store.commit([Put(task("t0"))])
        assert [e.revision for e in await take(events, 1)] == [1]
        for i in range(1, 10):
            await store.commit([Put(task(f"t{i}"))])
        with pytest.raises(WatchExpired):
            await take(events, 9)


async def test_watchers_end_when_the_store_closes(tmp_path: Path) -> None:
    """Every watcher's iteration finishes cleanly on close, after what was committed before it."""
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    await store.commit([Put(task("t0"))])
    watchers = [asyncio.create_task(drain(store.watch(since))) for since in (0, 1, 5)]
    await asyncio.sleep(0)
    await store.commit([Put(task("t1"))])
    await store.close()
    async with asyncio.timeout(DEADLINE):
        results = await asyncio.gather(*watchers)
    assert [[e.revision for e in r] for r in results] == [[1, 2], [2], []]
    assert await drain(store.watch(0)) == []
    with pytest.raises(RuntimeError, match="closed"):
        await store.commit([Put(task("t2"))])
    await store.close()


async def test_cancelled_commit_still_lands_consistently(store: SqliteStore) -> None:
    """Cancelling the caller does not tear a commit: it completes and the next one follows it."""
    pending = asyncio.create_task(store.commit([Put(task("t1"))]))
    await asyncio.sleep(0)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await until(lambda: store.revision == 1)
    assert await store.commit([Put(task("t2"))]) == 2
    assert [t.version for t in await store.list_tasks()] == [1, 2]


# A small model check: random batches against a dict, covering expect_version handling and batch order.

_KINDS = (Kind.SERVICE, Kind.NODE, Kind.TASK)
_CURRENT = -1  # resolved to the model's version before the batch, as a reader would have seen it

op_strategy = st.tuples(
    st.sampled_from(_KINDS),
    st.sampled_from("abc"),
    st.booleans(),
    st.one_of(st.none(), st.just(0), st.just(_CURRENT), st.integers(1, 6)),
    st.integers(0, 3),
)


def _make(kind: Kind, oid: str, payload: int) -> StoredObject:
    """Returns an object of the kind whose payload field is set."""
    if kind is Kind.SERVICE:
        return service(oid, image=f"img{payload}")
    if kind is Kind.NODE:
        return node(oid, f"host{payload}")
    return task(oid, slot=payload)


def _payload(obj: StoredObject) -> str:
    """Returns the field _make varied."""
    if isinstance(obj, pb.Service):
        return obj.spec.image
    if isinstance(obj, pb.Node):
        return obj.description.hostname
    return str(obj.slot)


async def _run_model(batches: list[list[tuple[Kind, str, bool, int | None, int]]]) -> None:
    """Applies batches to a store and a dict model and compares them after each."""
    model: dict[tuple[Kind, str], tuple[int, str]] = {}
    revision = 0
    event_count = 0
    async with SqliteStore(":memory:", keep_events=1000) as store:
        for batch in batches:
            ops: list[Op] = []
            trial = dict(model)
            conflict = False
            events = 0
            for kind, oid, is_put, wanted, payload in batch:
                expect = model.get((kind, oid), (0, ""))[0] if wanted == _CURRENT else wanted
                actual = trial.get((kind, oid), (0, ""))[0]
                conflict = conflict or (expect is not None and expect != actual)
                # A checked delete needs something to delete, even when it expects version 0.
                conflict = conflict or (not is_put and expect is not None and (kind, oid) not in trial)
                if is_put:
                    obj = _make(kind, oid, payload)
                    ops.append(Put(obj, expect_version=expect))
                    trial[(kind, oid)] = (revision + 1, _payload(obj))
                    events += 1
                else:
                    ops.append(Delete(kind, oid, expect_version=expect))
                    events += (kind, oid) in trial
                    trial.pop((kind, oid), None)
            if conflict:
                with pytest.raises(ConflictError):
                    await store.commit(ops)
            else:
                if events:
                    revision += 1
                    event_count += events
                    model = trial
                assert await store.commit(ops) == revision
            assert store.revision == revision
            stored: dict[tuple[Kind, str], tuple[int, str]] = {}
            everything: list[StoredObject] = [
                *await store.list_services(),
                *await store.list_nodes(),
                *await store.list_tasks(),
            ]
            for obj in everything:
                kind = Kind.SERVICE if isinstance(obj, pb.Service) else Kind.NODE
                kind = Kind.TASK if isinstance(obj, pb.Task) else kind
                stored[(kind, obj.id)] = (obj.version, _payload(obj))
            assert stored == model

        # The feed, replayed onto nothing, rebuilds the same state.
        rebuilt: dict[tuple[Kind, str], tuple[int, str]] = {}
        async with contextlib.aclosing(store.watch(0)) as feed:
            for event in await take(feed, event_count):
                if event.action is Action.PUT:
                    rebuilt[(event.kind, event.id)] = (event.obj.version, _payload(event.obj))
                else:
                    del rebuilt[(event.kind, event.id)]
        assert rebuilt == model
        await store.close()
        assert await drain(store.watch(0)) == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(op_strategy, max_size=4), max_size=8))
def test_store_matches_a_dict_model(batches: list[list[tuple[Kind, str, bool, int | None, int]]]) -> None:
    """Whatever the batches, the store's contents and feed match a plain dict model."""
    asyncio.run(_run_model(batches))


async def test_check_op_guards_a_batch_without_writing() -> None:
    from controller.store.base import Check

    store = SqliteStore(":memory:")
    await store.open()
    try:
        node = pb.Node(id="n1")
        await store.commit([Put(node)])
        task = pb.Task(id="t1", service_id="s")
        revision = await store.commit([Check(Kind.NODE, "n1", node.version), Put(task)])
        assert (await store.get_task("t1")) is not None
        assert (await store.get_node("n1")).version == node.version  # type: ignore[union-attr]
        with pytest.raises(ConflictError):
            await store.commit([Check(Kind.NODE, "n1", node.version + 99), Put(pb.Task(id="t2"))])
        assert await store.get_task("t2") is None
        assert store.revision == revision
    finally:
        await store.close()


# Specs are stored once and referred to by digest: a model of services, their bounded history and the
# spec bodies, under random puts, deletes and trimming.

spec_op_strategy = st.tuples(
    st.sampled_from("ab"),
    st.booleans(),
    st.integers(1, 6),
    st.integers(0, 2),
    st.integers(0, 2),
)


async def _check_spec_references(store: SqliteStore) -> None:
    """Every digest a row refers to has its body, and every body is referred to by something."""
    db = store._connection()
    referred = {
        row[0]
        for sql in (
            "SELECT spec_digest FROM services WHERE spec_digest IS NOT NULL",
            "SELECT digest FROM service_history",
            "SELECT spec_digest FROM events WHERE spec_digest IS NOT NULL",
        )
        for row in await db.execute_fetchall(sql)
    }
    stored = {row[0] for row in await db.execute_fetchall("SELECT digest FROM specs")}
    assert referred == stored


async def _run_spec_model(batches: list[list[tuple[str, bool, int, int, int]]], limit: int) -> None:
    """Applies service batches to a store and to a model of its rows and history; compares after each."""
    services: dict[str, pb.Service] = {}
    history: dict[str, dict[int, pb.ServiceSpec]] = {}
    async with SqliteStore(":memory:", keep_events=4, history_limit=limit) as store:
        for batch in batches:
            ops: list[Op] = []
            written: dict[str, int] = {}
            for sid, is_put, revision, image, replicas in batch:
                if is_put:
                    svc = service(sid, revision=revision, image=f"img{image}")
                    svc.spec.replicas = replicas
                    ops.append(Put(svc))
                    services[sid] = svc
                    history.setdefault(sid, {}).setdefault(revision, svc.spec)
                    written[sid] = revision
                else:
                    ops.append(Delete(Kind.SERVICE, sid))
                    services.pop(sid, None)
                    history.pop(sid, None)
                    written.pop(sid, None)
            for sid, current in written.items():
                keep = sorted(history[sid], key=lambda r, c=current: (r != c, -r))[:limit]
                history[sid] = {r: s for r, s in history[sid].items() if r in keep}
            await store.commit(ops)
            for sid in "ab":
                stored = await store.get_service(sid)
                want = services.get(sid)
                if want is None:
                    assert stored is None
                else:
                    assert stored is not None
                    assert stored.version == want.version  # the commit gave the caller's object its version
                    assert stored == want
                for revision in range(1, 7):
                    assert await store.get_service_spec(sid, revision) == history.get(sid, {}).get(revision)
            await _check_spec_references(store)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(spec_op_strategy, max_size=4), max_size=10), st.integers(1, 3))
def test_specs_history_and_bodies_match_a_model(
    batches: list[list[tuple[str, bool, int, int, int]]], limit: int
) -> None:
    """Whatever the batches: reads give whole services, the history keeps what the limit says, no body leaks."""
    asyncio.run(_run_spec_model(batches, limit))
