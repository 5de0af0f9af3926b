"""Following the store's feed across a gap, and the one retry policy for optimistic writes."""

from __future__ import annotations

import asyncio

import pytest

from controller.store.base import ConflictError, Event, Put
from controller.store.follow import RESYNC, Resync, follow
from controller.store.retry import CONFLICT_TRIES, retry_on_conflict
from controller.store.sqlite import SqliteStore
from dockyard.v1 import types_pb2 as pb


async def test_follow_yields_live_events_then_resync_after_a_trimmed_gap() -> None:
    store = SqliteStore(":memory:", keep_events=2, watch_buffer=1)
    await store.open()
    try:
        seen: list[Event | Resync] = []
        ready = asyncio.Event()

        async def consume() -> None:
            async for item in follow(store, since=0):
                seen.append(item)
                ready.set()
                await asyncio.sleep(0.05)  # a slow follower: falls behind on purpose

        consumer = asyncio.create_task(consume())
        await store.commit([Put(pb.Node(id="n0"))])
        await ready.wait()
        for i in range(1, 8):
            await store.commit([Put(pb.Node(id=f"n{i}"))])
        await asyncio.sleep(0.5)
        consumer.cancel()
        assert isinstance(seen[0], Event) and seen[0].id == "n0"
        assert RESYNC in seen, "a follower whose backlog was trimmed is told to re-read, not left with a hole"
        after = seen[seen.index(RESYNC) + 1 :]
        revisions = [e.revision for e in after if isinstance(e, Event)]
        assert revisions == sorted(revisions)
    finally:
        await store.close()


async def test_follow_ends_when_the_store_closes() -> None:
    store = SqliteStore(":memory:")
    await store.open()
    items: list[Event | Resync] = []

    async def consume() -> None:
        async for item in follow(store):
            items.append(item)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    await store.commit([Put(pb.Node(id="n1"))])
    await store.close()
    await asyncio.wait_for(consumer, 2)
    assert [i.id for i in items if isinstance(i, Event)] == ["n1"]


async def test_retry_on_conflict_reruns_until_the_attempt_wins() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConflictError("someone wrote first")
        return "written"

    assert await retry_on_conflict(attempt) == "written"
    assert calls == 3


async def test_retry_on_conflict_gives_up_after_its_tries() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ConflictError("always")

    with pytest.raises(ConflictError):
        await retry_on_conflict(attempt)
    assert calls == CONFLICT_TRIES


async def test_the_spec_cache_is_bounded_by_bytes_and_reads_each_revision_once() -> None:
    from controller.store.specs import SpecCache

    store = SqliteStore(":memory:")
    await store.open()
    try:
        for revision in range(1, 6):
            service = pb.Service(id="svc", name="web", revision=revision, spec_revision=revision)
            service.spec.name = "web"
            service.spec.env["BLOB"] = str(revision) * 10_000
            await store.commit([Put(service)])
        reads: list[tuple[str, int]] = []
        real = store.get_service_spec

        async def counted(service_id: str, revision: int) -> pb.ServiceSpec | None:
            reads.append((service_id, revision))
            return await real(service_id, revision)

        store.get_service_spec = counted  # type: ignore[method-assign]
        cache = SpecCache(store, max_bytes=25_000)
        for revision in (1, 2, 1, 2):
            spec = await cache.get("svc", revision)
            assert spec is not None and spec.env["BLOB"][0] == str(revision)
        assert reads == [("svc", 1), ("svc", 2)], "a revision's spec is read once while it fits"
        await cache.get("svc", 3)  # three 10 KB specs do not fit in 25 KB: the least recently used goes
        await cache.get("svc", 1)
        assert reads[-1] == ("svc", 1)
        assert await cache.get("svc", 99) is None
    finally:
        await store.close()


async def test_a_pruned_scale_only_revision_still_finds_its_spec() -> None:
    from controller.store.specs import SpecCache

    store = SqliteStore(":memory:", history_limit=3)
    await store.open()
    try:
        service = pb.Service(id="svc", name="web", revision=1, spec_revision=1)
        service.spec.name, service.spec.image, service.spec.replicas = "web", "img:1", 1
        await store.commit([Put(service)])
        for revision in range(2, 10):  # scaling only: the spec stays, the revision moves
            service.revision, service.spec.replicas = revision, revision
            await store.commit([Put(service, expect_version=service.version)])
        assert await store.get_service_spec("svc", 1) is None, "revision 1 was pruned from the history"
        spec = await SpecCache(store).get("svc", 1)
        assert spec is not None and spec.image == "img:1"
        service.revision, service.spec_revision, service.spec.image = 10, 10, "img:2"
        await store.commit([Put(service, expect_version=service.version)])
        assert await SpecCache(store).get("svc", 1) is None, "an older spec than spec_revision is not guessed"
    finally:
        await store.close()
