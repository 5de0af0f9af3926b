"""Hypothesis strategies for hostile requests: any message of a descriptor, filled with what an attacker sends.

Strings are near and far past every size limit, carry control characters, NULs and odd Unicode; numbers sit
on every integer type's edges; enums take numbers the proto does not define; repeated fields and maps are
sometimes long. Invalid UTF-8 cannot be set through the Python API, so `bad_utf8` splices it into the
encoded bytes of any string field, nested or in a map, and `deep_groups` nests unknown groups past
protobuf's recursion limit.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

__all__ = ["bad_utf8", "deep_groups", "has_strings", "hostile_text", "message_of", "varint"]

# Sizes just below, at and above the limits the spec table and the API use (63 for names, 255/256 for keys,
# 1024 and 4096 for values, 128 KiB for arguments, 256 KiB for a whole spec), and one far past them all.
_EDGE_SIZES = (0, 1, 63, 64, 255, 256, 257, 1024, 1025, 4096, 4097, 128 * 1024, 256 * 1024 + 1, 1024 * 1024)
_ODD = ("\x00", "\n", "\r", "\t", "\x1b", "\u202e", "\ufeff", "\U0001f600", "é", "../", "%s", "=", "\\", "'", '"')

hostile_text: st.SearchStrategy[str] = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(_ODD), max_size=20).map("".join),
    st.builds(lambda size, char: char * size, st.sampled_from(_EDGE_SIZES), st.sampled_from(("a", "é", "\x00"))),
    st.sampled_from(("web", "n1", "host-a", "dockyard.dev/x", "a=b", "-a", "A", "web.", "*")),
)

_INT_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _edge_ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = sorted(
        {v for v in (low, low + 1, -1, 0, 1, 2, 3, 10_000, 10_001, 2**31 - 1, 2**32 - 1, high) if low <= v <= high}
    )
    return st.one_of(st.sampled_from(edges), st.integers(low, high), st.integers(0, 20))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    """Values for one scalar field: hostile strings, edge numbers, undefined enum numbers."""
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return st.binary(max_size=64)
        return hostile_text
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if cpp in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from((0.0, -0.0, 1e300)))
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        defined = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(defined), st.integers(-(2**31), 2**31 - 1), st.integers(-3, 50))
    return _edge_ints(*_INT_RANGES[cpp])


def _repeated(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    # Mostly a few elements; sometimes many (one short value repeated: cheap to draw, still a long list).
    many = st.builds(lambda value, count: [value] * count, _short(element), st.integers(200, 5000))
    return st.one_of(st.lists(element, max_size=3), many)


def _many_entries(key: st.SearchStrategy[Any], value: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[Any, Any]]:
    """A map of a few hostile entries, or of hundreds of distinct keys made from one drawn key."""

    def spread(key: Any, value: Any, count: int) -> dict[Any, Any]:
        if isinstance(key, str):
            return {f"{key}{i}": value for i in range(count)}
        return {i: value for i in range(count)}

    return st.one_of(
        st.dictionaries(key, value, max_size=4), st.builds(spread, _short(key), _short(value), st.integers(100, 2000))
    )


def _short(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The values, strings cut to 16 characters: a long list of long strings is only a big message."""
    return values.map(lambda value: value[:16] if isinstance(value, str) else value)


@st.composite
def message_of(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """Any message of `descriptor`, every field maybe set with a hostile value (nesting cut at depth 3)."""
    message: Message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = (
                field.message_type.fields_by_name["key"],
                field.message_type.fields_by_name["value"],
            )
            if value_field.message_type is not None:
                continue  # no map of messages in the protocol's requests
            getattr(message, field.name).update(draw(_many_entries(_scalar(key_field), _scalar(value_field))))
        elif field.message_type is not None:
            if depth >= 3:
                continue
            if field.is_repeated:
                for part in draw(st.lists(message_of(field.message_type, depth + 1), max_size=2)):
                    getattr(message, field.name).add().CopyFrom(part)
            else:
                getattr(message, field.name).CopyFrom(draw(message_of(field.message_type, depth + 1)))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(_repeated(_scalar(field))))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def varint(value: int) -> bytes:
    """The protobuf varint encoding of a non-negative integer."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _length_delimited(number: int, body: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(body)) + body


_INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"a\x80b", b"\xc0\xaf")


def _string_paths(descriptor: Descriptor, depth: int = 0) -> list[list[FieldDescriptor]]:
    """Every path of fields from `descriptor` to a string field (through messages and map entries)."""
    paths: list[list[FieldDescriptor]] = []
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            paths.append([field])
        elif field.message_type is not None and depth < 3:
            paths.extend([field, *rest] for rest in _string_paths(field.message_type, depth + 1))
    return paths


def has_strings(descriptor: Descriptor) -> bool:
    """Tells whether a message has a string field anywhere (else bad_utf8 has nowhere to put one)."""
    return bool(_string_paths(descriptor))


@st.composite
def bad_utf8(draw: st.DrawFn, descriptor: Descriptor, valid: bytes = b"") -> bytes:
    """Encoded `valid` plus one string field, anywhere in the message, holding invalid UTF-8."""
    paths = _string_paths(descriptor)
    path = draw(st.sampled_from(paths))
    body = draw(st.text(max_size=5)).encode() + draw(st.sampled_from(_INVALID_UTF8))
    encoded = _length_delimited(path[-1].number, body)
    for field in reversed(path[:-1]):
        encoded = _length_delimited(field.number, encoded)
    return valid + encoded


def deep_groups(depth: int, number: int = 15) -> bytes:
    """Unknown groups of field `number` nested `depth` deep: past protobuf's limit of 100, parsing must fail."""
    return varint(number << 3 | 3) * depth + varint(number << 3 | 4) * depth
