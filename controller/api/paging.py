"""Pages of a list RPC: a page size with a server maximum, an opaque token, and a byte budget per page.

A page continues after the sort key of the last item of the previous page, so an item is never listed
twice and a change between pages moves nothing it has not passed. The token carries that key (and which
list and query it belongs to) as base64 of JSON; clients must treat it as opaque.

Items come from a `Source`: "the items after this key, in key order, at most this many". The store's
`list_*_page` methods are sources (keyset paging on their indexes), so a page costs what it returns, not
the whole table. `read_page` asks for a few items first and then for as many as the byte budget still
seems to hold at their average size, so a page of large items does not read (and decode) a thousand of
them to keep ten. `filtered_source` drops items a list's filter refuses and reads on until the page is
full or the source ends, so filtering never shortens a page. `ordered_source` adapts a list already in
memory (tests, small fixed lists).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeVar

from google.protobuf.message import Message

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_BYTES",
    "MAX_PAGE_SIZE",
    "Key",
    "Page",
    "PageLimits",
    "PageTokenError",
    "Source",
    "decode_token",
    "encode_token",
    "filtered_source",
    "framed_size",
    "ordered_source",
    "read_page",
]

T = TypeVar("T", bound=Message)
T_co = TypeVar("T_co", bound=Message, covariant=True)
Key = tuple[str | int, ...]

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000
# Far under gRPC's 4 MiB default receive limit, so a client with default settings reads any page, even
# one whose single item is as large as a spec may be.
MAX_PAGE_BYTES: Final = 1024 * 1024
_MAX_TOKEN_CHARS: Final = 4096
_TOKEN_FORMAT: Final = 1
# read_page's first read: enough for small items to need one more read at most, few enough that a page of
# items near the byte budget decodes only a handful it will not send.
_FIRST_READ: Final = 8
# filtered_source reads at least this many items at a time, so skipping a long run of refused items (such
# as finished tasks) takes few reads.
_MIN_FILTERED_READ: Final = 100


@dataclass(frozen=True)
class PageLimits:
    """How large a page may be: items by default and at most, and bytes of items."""

    default_size: int = DEFAULT_PAGE_SIZE
    max_size: int = MAX_PAGE_SIZE
    max_bytes: int = MAX_PAGE_BYTES

    def size(self, requested: int) -> int:
        """Returns the page size to use: the default for 0, clamped to the maximum."""
        return min(requested or self.default_size, self.max_size)


class PageTokenError(ValueError):
    """A page token that this server did not make for this list and query."""


class Source(Protocol[T_co]):
    """The items strictly after `after` (None: from the start), in key order, at most `limit` of them."""

    def __call__(self, after: Key | None, limit: int) -> Awaitable[Sequence[T_co]]:
        """Returns the next items in key order."""
        ...


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page: its items and the token of the next one ("" when this is the last)."""

    items: list[T]
    next_token: str


def _fingerprint(kind: str, query: str) -> str:
    return hashlib.blake2b(f"{kind}\0{query}".encode(), digest_size=6).hexdigest()


def encode_token(kind: str, query: str, key: Key) -> str:
    """Returns the token of the page after `key` in list `kind` with filters `query`."""
    payload = json.dumps([_TOKEN_FORMAT, _fingerprint(kind, query), list(key)], separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_token(token: str, kind: str, query: str, shape: Sequence[type]) -> Key:
    """Returns the key a token continues after; PageTokenError when it is not from this list and query."""
    if len(token) > _MAX_TOKEN_CHARS:
        raise PageTokenError("too long to be a page token")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        fmt, fingerprint, key = json.loads(raw)
    except (binascii.Error, ValueError, TypeError):
        raise PageTokenError("not a page token of this server") from None
    if fmt != _TOKEN_FORMAT or fingerprint != _fingerprint(kind, query):
        raise PageTokenError("made for another list or other filters")
    if not isinstance(key, list) or len(key) != len(shape):
        raise PageTokenError("not a page token of this server")
    for value, kind_of in zip(key, shape, strict=True):
        if type(value) is not kind_of:  # bool is an int, but never a key
            raise PageTokenError("not a page token of this server")
    return tuple(key)


def ordered_source(fetch: Callable[[], Awaitable[list[T]]], key: Callable[[T], Key]) -> Source[T]:
    """Adapts "every item" (a list in memory) to a Source, ordering by `key`; each call reads them all."""

    async def source(after: Key | None, limit: int) -> list[T]:
        items = sorted(await fetch(), key=key)
        if after is not None:
            items = [item for item in items if key(item) > after]
        return items[:limit]

    return source


def filtered_source(source: Source[T], key: Callable[[T], Key], keep: Callable[[T], bool]) -> Source[T]:
    """Returns a Source of the items of `source` that `keep` accepts, in the same order.

    It reads on past refused items until it has `limit` accepted ones or the source ends, so the page
    size stays honest; each read continues after the last item read, accepted or not.
    """

    async def filtered(after: Key | None, limit: int) -> list[T]:
        found: list[T] = []
        while len(found) < limit:
            want = max(limit - len(found), _MIN_FILTERED_READ)
            batch = await source(after, want)
            found.extend(item for item in batch if keep(item))
            if len(batch) < want:
                break
            after = key(batch[-1])
        # Whatever was read beyond limit is read again by the next call, which starts after the last kept.
        return found[:limit]

    return filtered


def framed_size(message: Message) -> int:
    """Bytes an item takes as one element of a repeated message field: tag, length varint, body."""
    size = message.ByteSize()
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


async def read_page(
    source: Source[T],
    key: Callable[[T], Key],
    *,
    after: Key | None,
    size: int,
    max_bytes: int,
    token_for: Callable[[Key], str],
    finish: Callable[[T], Awaitable[T]] | None = None,
) -> Page[T]:
    """Reads up to `size` items after `after` whose framed sizes add up to at most `max_bytes`.

    `finish` completes an item before it is measured (e.g. fills a task's spec). A page always holds
    at least one item when there is one, so a single item larger than the budget is still listed. The
    source is read in steps: a few items, then as many as the rest of the budget holds at the average
    size so far (plus one, to learn whether more follow), never more than size + 1 in all.
    """
    items: list[T] = []
    used = 0
    cursor = after
    want = min(size + 1, _FIRST_READ)
    while True:
        fetched = await source(cursor, want)
        for item in fetched:
            if len(items) == size:
                return Page(items, token_for(key(items[-1])))
            done = await finish(item) if finish is not None else item
            cost = framed_size(done)
            if items and used + cost > max_bytes:
                return Page(items, token_for(key(items[-1])))
            items.append(done)
            used += cost
        if len(fetched) < want:
            return Page(items, "")
        cursor = key(fetched[-1])
        average = max(1, used // len(items))
        # At least one: a first item alone may have spent more than the budget; the next then ends the page.
        want = min(size + 1 - len(items), max(1, (max_bytes - used) // average + 1))
