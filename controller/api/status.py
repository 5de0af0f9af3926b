"""Every error the API answers, bounded: a capped message and capped google.rpc details.

grpcio and grpc-java refuse response metadata beyond 8 KiB (the status message travels in the
`grpc-message` header, the details in `grpc-status-details-bin`, base64-encoded, and the message is
repeated inside the details). So one request with a thousand problems must not produce a thousand
lines: the message keeps the first few and says how many more there were, the details keep the first
problems that fit a byte budget, and an ErrorInfo gives a program the full count. The budgets keep a
whole error under 5 KiB on the wire (a test holds them to it; 1,000 invalid services measure 4.6 KiB).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

# Neither package marks itself typed; the second code keeps this line clean once mypy is told to skip them.
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dockyard.spec.issues import Issue

__all__ = [
    "ERROR_DOMAIN",
    "MAX_DETAILS_BYTES",
    "MAX_LINES",
    "MAX_MESSAGE_BYTES",
    "MAX_VIOLATIONS",
    "Context",
    "Stale",
    "abort",
    "abort_invalid",
    "abort_stale",
    "abort_store_damaged",
    "bounded_message",
    "error_status",
]

Context = grpc.aio.ServicerContext[bytes, Message]

ERROR_DOMAIN = "dockyard.dev"
MAX_LINES = 8  # lines of the message before "... and N more"
MAX_MESSAGE_BYTES = 800  # the message as sent (percent-encoded)
MAX_LINE_BYTES = 240  # one line as sent; longer ones end in "..."
MAX_VIOLATIONS = 50  # field violations in the details, at most
MAX_DETAILS_BYTES = 2048  # the serialized BadRequest or PreconditionFailure, at most
MAX_FIELD_BYTES = 128  # one violation's field path (UTF-8)
MAX_DESCRIPTION_BYTES = 240  # one violation's description (UTF-8)
_ELLIPSIS = "..."


@dataclass(frozen=True)
class Stale:
    """A write's precondition that no longer holds: what it names, and what was expected and found."""

    subject: str  # e.g. "services.web"
    description: str  # e.g. "revision is 3, not 2 as expected"

    def __str__(self) -> str:
        """Renders the line users see: "<subject>: <description>; read it again and retry"."""
        return f"{self.subject}: {self.description}; read it again and retry"


def _sent_size(char: str) -> int:
    """Bytes one character takes in grpc-message: printable ASCII but '%' as is, anything else percent-encoded."""
    code = ord(char)
    if 0x20 <= code <= 0x7E and char != "%":
        return 1
    return 3 * len(char.encode("utf-8", "replace"))


def _sent_length(text: str) -> int:
    return sum(_sent_size(c) for c in text)


def _clip(text: str, limit: int, size: Callable[[str], int]) -> str:
    """Returns text, or its longest prefix that fits `limit` together with a trailing "..."."""
    if sum(size(c) for c in text) <= limit:
        return text
    room = limit - len(_ELLIPSIS)
    kept: list[str] = []
    for char in text:
        room -= size(char)
        if room < 0:
            break
        kept.append(char)
    return "".join(kept) + _ELLIPSIS


def _utf8_size(char: str) -> int:
    return len(char.encode("utf-8", "replace"))


def _one_line(text: str) -> str:
    # A newline inside one problem would read as two problems.
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def bounded_message(lines: Sequence[str]) -> str:
    """Joins problem lines into a message of at most MAX_LINES lines and MAX_MESSAGE_BYTES as sent.

    Lines that do not fit are counted in a last line "... and N more"; the first line is always kept
    (clipped when it alone is too long).
    """
    kept: list[str] = []
    used = 0
    for index, raw in enumerate(lines):
        line = _clip(_one_line(raw), MAX_LINE_BYTES, _sent_size)
        cost = _sent_length(line) + (3 if kept else 0)  # "\n" is sent as %0A
        left = len(lines) - index - 1
        tail = _sent_length(f"... and {left} more") + 3 if left else 0
        if kept and (len(kept) == MAX_LINES or used + cost + tail > MAX_MESSAGE_BYTES):
            break
        kept.append(line)
        used += cost
    if len(kept) < len(lines):
        kept.append(f"... and {len(lines) - len(kept)} more")
    return "\n".join(kept)


def _capped_details(
    items: Sequence[tuple[str, str]],
    make: Callable[[list[tuple[str, str]]], Message],
) -> tuple[Message, int]:
    """Builds a detail of the first items within MAX_VIOLATIONS and MAX_DETAILS_BYTES; returns it and their count."""
    chosen: list[tuple[str, str]] = []
    for field, text in items[:MAX_VIOLATIONS]:
        candidate = (
            _clip(_one_line(field), MAX_FIELD_BYTES, _utf8_size),
            _clip(_one_line(text), MAX_DESCRIPTION_BYTES, _utf8_size),
        )
        if make([*chosen, candidate]).ByteSize() > MAX_DETAILS_BYTES:
            break
        chosen.append(candidate)
    return make(chosen), len(chosen)


def _bad_request(pairs: list[tuple[str, str]]) -> Message:
    detail: Message = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in pairs]
    )
    return detail


def _precondition_failure(pairs: list[tuple[str, str]]) -> Message:
    detail: Message = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(type="REVISION", subject=s, description=d) for s, d in pairs
        ]
    )
    return detail


def _truncation(total: int, listed: int) -> Message:
    """An ErrorInfo that tells a program how many problems there were when the details list fewer."""
    detail: Message = error_details_pb2.ErrorInfo(
        reason="VIOLATIONS_TRUNCATED",
        domain=ERROR_DOMAIN,
        metadata={"total": str(total), "listed": str(listed)},
    )
    return detail


def error_status(code: grpc.StatusCode, lines: Sequence[str], details: Sequence[Message]) -> grpc.Status:
    """Returns the status to abort with: the bounded message, plus the details in grpc-status-details-bin."""
    packed: list[any_pb2.Any] = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        packed.append(wrapped)
    number: int = code.value[0]
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=number, message=bounded_message(lines), details=packed)
    )
    return status


async def abort(
    context: Context, code: grpc.StatusCode, lines: str | Sequence[str], details: Sequence[Message] = ()
) -> NoReturn:
    """Ends the RPC with `code`, a bounded message of `lines` and optional google.rpc details; never returns."""
    lines = [lines] if isinstance(lines, str) else lines
    if details:
        await context.abort_with_status(error_status(code, lines, details))
    else:
        await context.abort(code, bounded_message(lines))
    raise AssertionError("abort returned")  # it always raises; this satisfies the type checker


async def abort_store_damaged(context: Context, damage: Exception) -> NoReturn:
    """Ends the RPC with UNAVAILABLE and the store's one-line message, marked STORE_DAMAGED for programs.

    The ErrorInfo also tells a client this UNAVAILABLE came from the API, not from a lost connection.
    """
    info = error_details_pb2.ErrorInfo(reason="STORE_DAMAGED", domain=ERROR_DOMAIN)
    await abort(context, grpc.StatusCode.UNAVAILABLE, str(damage), [info])


async def abort_invalid(context: Context, issues: Sequence[Issue]) -> NoReturn:
    """Ends the RPC with INVALID_ARGUMENT: the capped "<path>: <problem>" lines and a capped BadRequest."""
    detail, listed = _capped_details([(i.path, i.message) for i in issues], _bad_request)
    details = [detail] if listed == len(issues) else [detail, _truncation(len(issues), listed)]
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, [str(i) for i in issues], details)


async def abort_stale(context: Context, stale: Sequence[Stale]) -> NoReturn:
    """Ends the RPC with FAILED_PRECONDITION naming each object that moved, with a capped PreconditionFailure."""
    detail, listed = _capped_details([(s.subject, s.description) for s in stale], _precondition_failure)
    details = [detail] if listed == len(stale) else [detail, _truncation(len(stale), listed)]
    await abort(context, grpc.StatusCode.FAILED_PRECONDITION, [str(s) for s in stale], details)
