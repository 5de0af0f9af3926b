"""Bounded API errors: the message keeps a few lines and counts the rest, details stay under their budget."""

from __future__ import annotations

import base64

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

from controller.api.status import (
    MAX_DETAILS_BYTES,
    MAX_LINES,
    MAX_MESSAGE_BYTES,
    Stale,
    bounded_message,
    error_status,
)
from controller.api.writes import revision_stale, version_stale
from dockyard.v1 import types_pb2 as pb


def sent_size(text: str) -> int:
    """What grpc-message costs on the wire: printable ASCII but '%' as is, other bytes as %XX."""
    return sum(1 if 0x20 <= b <= 0x7E and b != 0x25 else 3 for b in text.encode())


def test_a_few_lines_pass_unchanged() -> None:
    lines = ["services.web.image: is required", "services.db.replicas: must be at most 10000"]
    assert bounded_message(lines) == "\n".join(lines)


def test_many_lines_keep_the_first_and_count_the_rest() -> None:
    lines = [f"services.svc-{i}.image: is required; name an image such as nginx:1.27" for i in range(1000)]
    message = bounded_message(lines)
    kept = message.split("\n")
    assert kept[:-1] == lines[: len(kept) - 1]
    assert kept[-1] == f"... and {1000 - (len(kept) - 1)} more"
    assert len(kept) <= MAX_LINES + 1
    assert sent_size(message) <= MAX_MESSAGE_BYTES


def test_one_huge_line_is_clipped_not_dropped() -> None:
    message = bounded_message(["name: " + "x" * 100_000])
    assert message.startswith("name: xxx")
    assert message.endswith("...")
    assert sent_size(message) <= MAX_MESSAGE_BYTES


def test_a_newline_inside_a_problem_does_not_make_two_lines() -> None:
    assert bounded_message(["a: first\nsecond"]) == "a: first second"


@given(st.lists(st.text(max_size=2000), min_size=1, max_size=300))
def test_any_lines_fit_the_budget(lines: list[str]) -> None:
    message = bounded_message(lines)
    assert sent_size(message) <= MAX_MESSAGE_BYTES
    shown = message.split("\n")
    assert len(shown) <= MAX_LINES + 1


def test_error_status_carries_the_message_in_both_places() -> None:
    info = error_details_pb2.ErrorInfo(reason="R", domain="d")
    status = error_status(grpc.StatusCode.UNAVAILABLE, ["store: damaged"], [info])
    assert status.code == grpc.StatusCode.UNAVAILABLE
    assert status.details == "store: damaged"
    [(key, value)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    rich = status_pb2.Status.FromString(value)
    assert (rich.code, rich.message, len(rich.details)) == (grpc.StatusCode.UNAVAILABLE.value[0], "store: damaged", 1)


def test_budgets_leave_room_under_the_8_kib_metadata_limit() -> None:
    # Message (sent once as grpc-message, once inside the details) plus the details, base64-encoded.
    worst = MAX_MESSAGE_BYTES + len(base64.b64encode(bytes(MAX_MESSAGE_BYTES + MAX_DETAILS_BYTES + 256)))
    assert worst < 5 * 1024


@pytest.mark.parametrize(
    ("expected", "service", "problem"),
    [
        (None, pb.Service(revision=3), None),
        (3, pb.Service(revision=3), None),
        (2, pb.Service(revision=3), "services.web: revision is 3, not 2 as expected; read it again and retry"),
        (0, None, None),
        (
            0,
            pb.Service(revision=1),
            "services.web: exists at revision 1, expected it not to exist; read it again and retry",
        ),
        (4, None, "services.web: does not exist, expected revision 4; read it again and retry"),
    ],
)
def test_revision_preconditions(expected: int | None, service: pb.Service | None, problem: str | None) -> None:
    stale = revision_stale("services.web", expected, service)
    assert (str(stale) if stale else None) == problem


def test_version_preconditions() -> None:
    node = pb.Node(id="n1", version=57)
    assert version_stale("nodes.a", None, node) is None
    assert version_stale("nodes.a", 57, node) is None
    assert version_stale("nodes.a", 50, node) == Stale("nodes.a", "version is 57, not 50 as expected")
