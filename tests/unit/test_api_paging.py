"""Paging: opaque tokens that only their own list accepts, and pages bounded in items and bytes."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.paging import (
    Key,
    PageLimits,
    PageTokenError,
    decode_token,
    encode_token,
    filtered_source,
    ordered_source,
    read_page,
)
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

SHAPE = (str, int)


def test_a_token_round_trips_for_its_own_list_and_query() -> None:
    token = encode_token("tasks", "svc\0\x000", ("svc", 7))
    assert decode_token(token, "tasks", "svc\0\x000", SHAPE) == ("svc", 7)


@pytest.mark.parametrize(
    ("kind", "query"),
    [("services", "svc\0\x000"), ("tasks", "other\0\x000"), ("tasks", "svc\0\x001")],
)
def test_a_token_of_another_list_or_query_is_refused(kind: str, query: str) -> None:
    token = encode_token("tasks", "svc\0\x000", ("svc", 7))
    with pytest.raises(PageTokenError, match="another list or other filters"):
        decode_token(token, kind, query, SHAPE)


def forged(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        "%%%%",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        forged({"a": 1}),
        forged([1, "x"]),
        "A" * 5000,
    ],
)
def test_garbage_is_refused(token: str) -> None:
    with pytest.raises(PageTokenError):
        decode_token(token, "tasks", "", SHAPE)


def test_a_key_of_the_wrong_shape_is_refused() -> None:
    good = json.loads(base64.urlsafe_b64decode(encode_token("tasks", "", ("a", 1)) + "=="))
    for key in (["a"], ["a", "1"], ["a", True], [1, 1], ["a", 1, 2]):
        with pytest.raises(PageTokenError):
            decode_token(forged([good[0], good[1], key]), "tasks", "", SHAPE)


def test_page_size_defaults_and_clamps() -> None:
    limits = PageLimits(default_size=100, max_size=1000)
    assert (limits.size(0), limits.size(5), limits.size(1000), limits.size(10**6)) == (100, 5, 1000, 1000)


def service(name: str, env_bytes: int = 0) -> pb.Service:
    result = pb.Service(id=f"id-{name}", name=name)
    if env_bytes:
        result.spec.env["BLOB"] = "x" * env_bytes
    return result


def key(s: pb.Service) -> tuple[str | int, ...]:
    return (s.name,)


async def all_pages(items: list[pb.Service], size: int, max_bytes: int) -> list[list[pb.Service]]:
    async def fetch() -> list[pb.Service]:
        return list(items)

    source = ordered_source(fetch, key)
    pages: list[list[pb.Service]] = []
    after = None
    while True:
        page = await read_page(
            source, key, after=after, size=size, max_bytes=max_bytes, token_for=lambda k: encode_token("s", "", k)
        )
        pages.append(page.items)
        if not page.next_token:
            return pages
        after = decode_token(page.next_token, "s", "", (str,))


async def test_pages_hold_at_most_size_items_in_key_order() -> None:
    items = [service(f"s{i:03}") for i in range(25)]
    pages = await all_pages(list(reversed(items)), size=10, max_bytes=1 << 20)
    assert [len(p) for p in pages] == [10, 10, 5]
    assert [s.name for p in pages for s in p] == [s.name for s in items]


async def test_an_exact_multiple_ends_without_an_empty_page() -> None:
    pages = await all_pages([service(f"s{i}") for i in range(10)], size=5, max_bytes=1 << 20)
    assert [len(p) for p in pages] == [5, 5]


async def test_the_byte_budget_ends_a_page_early_but_never_empties_it() -> None:
    items = [service(f"s{i}", env_bytes=400) for i in range(10)]
    pages = await all_pages(items, size=100, max_bytes=1000)
    assert [len(p) for p in pages] == [2, 2, 2, 2, 2]
    lone = await all_pages([service("big", env_bytes=5000), service("small")], size=100, max_bytes=1000)
    assert [[s.name for s in p] for p in lone] == [["big"], ["small"]]


async def test_an_empty_list_is_one_empty_last_page() -> None:
    assert await all_pages([], size=10, max_bytes=1000) == [[]]


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3000), max_size=40),
    size=st.integers(min_value=1, max_value=15),
    budget=st.integers(min_value=200, max_value=8000),
)
async def test_every_item_is_seen_exactly_once_and_pages_keep_their_budget(
    sizes: list[int], size: int, budget: int
) -> None:
    items = [service(f"s{i:02}", env_bytes=n) for i, n in enumerate(sizes)]
    pages = await all_pages(items, size=size, max_bytes=budget)
    assert [s.name for p in pages for s in p] == [s.name for s in items]
    for page in pages:
        assert len(page) <= size
        # The page's items as the response encodes them: what the budget bounds.
        assert len(page) == 1 or cpb.ListServicesResponse(services=page).ByteSize() <= budget


class CountingSource:
    """A source over a sorted list that counts what it hands out, as a store's page method would read it."""

    def __init__(self, items: list[pb.Service]) -> None:
        self.items = sorted(items, key=key)
        self.read = 0
        self.calls = 0

    async def __call__(self, after: Key | None, limit: int) -> list[pb.Service]:
        self.calls += 1
        found = [s for s in self.items if after is None or key(s) > after][:limit]
        self.read += len(found)
        return found


async def one_page(source: CountingSource, size: int, max_bytes: int, after: Key | None = None) -> list[pb.Service]:
    page = await read_page(source, key, after=after, size=size, max_bytes=max_bytes, token_for=lambda k: "t")
    return page.items


async def test_a_page_of_small_items_reads_one_more_than_it_holds() -> None:
    source = CountingSource([service(f"s{i:04}") for i in range(5000)])
    assert len(await one_page(source, size=100, max_bytes=1 << 20)) == 100
    assert source.read == 101
    assert source.calls <= 2


async def test_a_page_of_large_items_reads_few_it_does_not_send() -> None:
    """Ten 100 KiB items fill a 1 MiB page: the source is not asked for the thousand the page size allows."""
    source = CountingSource([service(f"s{i:04}", env_bytes=100 * 1024) for i in range(2000)])
    page = await one_page(source, size=1000, max_bytes=1 << 20)
    assert len(page) == 10
    assert source.read <= 10 + 8
    deep = CountingSource(source.items)
    assert len(await one_page(deep, size=1000, max_bytes=1 << 20, after=("s1500",))) == 10
    assert deep.read == source.read


async def test_filtering_reads_on_until_the_page_is_full() -> None:
    """Most items refused: pages still hold `size` items, each accepted item once, in order."""
    items = [service(f"s{i:04}") for i in range(1000)]
    wanted = [s.name for s in items if int(s.name[1:]) % 37 == 0]

    def keep(s: pb.Service) -> bool:
        return int(s.name[1:]) % 37 == 0

    source = filtered_source(CountingSource(items), key, keep)
    names: list[list[str]] = []
    after: Key | None = None
    while True:
        page = await read_page(source, key, after=after, size=5, max_bytes=1 << 20, token_for=repr)
        names.append([s.name for s in page.items])
        if not page.next_token:
            break
        after = key(page.items[-1])
    assert [n for p in names for n in p] == wanted
    assert [len(p) for p in names] == [5] * (len(wanted) // 5) + ([len(wanted) % 5] if len(wanted) % 5 else [])


@settings(max_examples=50, deadline=None)
@given(
    kept=st.lists(st.booleans(), max_size=300),
    size=st.integers(min_value=1, max_value=20),
)
async def test_a_filtered_source_gives_every_accepted_item_once_in_full_pages(kept: list[bool], size: int) -> None:
    items = [service(f"s{i:03}", env_bytes=int(k)) for i, k in enumerate(kept)]
    source = filtered_source(CountingSource(items), key, lambda s: bool(s.spec.env))
    pages: list[list[str]] = []
    after: Key | None = None
    while True:
        page = await read_page(source, key, after=after, size=size, max_bytes=1 << 20, token_for=lambda k: "t")
        pages.append([s.name for s in page.items])
        if not page.next_token:
            break
        after = key(page.items[-1])
    assert [n for p in pages for n in p] == [s.name for s, k in zip(items, kept, strict=True) if k]
    assert all(len(p) == size for p in pages[:-1])
