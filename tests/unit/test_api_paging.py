"""Paging: opaque tokens that only their own list accepts, and pages bounded in items and bytes."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.api.paging import (
    PageLimits,
    PageTokenError,
    decode_token,
    encode_token,
    ordered_source,
    read_page,
)
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
        assert len(page) == 1 or sum(s.ByteSize() + 4 for s in page) <= budget
