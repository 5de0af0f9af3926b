"""The caps on expensive reads: a full gate refuses at once, and its log lines are rate-limited."""

from __future__ import annotations

from typing import NoReturn, cast

import grpc
import pytest
from structlog.testing import capture_logs

from controller.api.bounds import Gate
from controller.api.status import Context
from dockyard.clock import FakeClock


class Aborted(Exception):
    """What FakeContext.abort raises, as grpc's own abort raises to end the RPC."""


class FakeContext:
    """The one part of a servicer context a gate uses: abort."""

    async def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        raise Aborted(code, details)


async def test_a_full_gate_refuses_at_once_and_logs_a_few_lines_per_interval() -> None:
    clock = FakeClock()
    gate = Gate.with_clock("list calls", 1, clock)
    context = cast(Context, FakeContext())
    with capture_logs() as logs:
        async with gate.hold(context, "ListTasks"):
            for _ in range(10):
                with pytest.raises(Aborted) as refused:
                    async with gate.hold(context, "ListTasks"):
                        raise AssertionError("admitted beyond the cap")
            await clock.advance(10)
            with pytest.raises(Aborted):
                async with gate.hold(context, "ListNodes"):
                    pass
        async with gate.hold(context, "ListTasks"):
            assert gate.held == 1  # the place freed when the first holder left
    assert refused.value.args == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ListTasks: 1 list calls are already being served, the most this controller serves at once; retry shortly",
    )
    assert [(line["method"], line["suppressed"]) for line in logs] == [
        ("ListTasks", 0),
        ("ListTasks", 0),
        ("ListTasks", 0),
        ("ListNodes", 7),  # the first line after the interval counts those left out
    ]
    assert gate.held == 0
