"""The shared clock: the system clock keeps its promises, and the fake one moves only when told."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from dockyard.clock import Clock, FakeClock, SystemClock
from dockyard.timestamps import from_timestamp, to_timestamp


async def test_fake_sleep_returns_only_once_time_is_advanced_far_enough() -> None:
    clock = FakeClock()
    woke: list[float] = []

    async def sleeper(seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(clock.monotonic())

    tasks = [asyncio.create_task(sleeper(s)) for s in (5.0, 1.0, 3.0)]
    await clock.advance(0.5)
    assert woke == [] and clock.sleepers == 3
    await clock.advance(2.0)
    assert woke == [1.0]
    await clock.advance(10)
    assert woke == [1.0, 3.0, 5.0], "timers fire in deadline order at their own time"
    assert clock.monotonic() == 12.5
    await asyncio.gather(*tasks)


async def test_fake_now_follows_monotonic() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    clock = FakeClock(start)
    await clock.advance(90)
    assert clock.now() == start + timedelta(seconds=90)


async def test_fake_timeout_fires_in_virtual_time_and_not_before() -> None:
    clock = FakeClock()
    outcome: list[str] = []

    async def guarded() -> None:
        try:
            async with clock.timeout(2):
                await asyncio.Event().wait()
        except TimeoutError:
            outcome.append(f"timed out at {clock.monotonic()}")

    task = asyncio.create_task(guarded())
    await clock.advance(1.9)
    assert outcome == []
    await clock.advance(0.1)
    await task
    assert outcome == ["timed out at 2.0"]


async def test_fake_timeout_that_does_not_fire_leaves_no_timer_and_outer_cancel_still_works() -> None:
    clock = FakeClock()
    async with clock.timeout(5):
        await clock.sleep(0)
    assert clock.sleepers == 0

    started = asyncio.Event()

    async def body() -> None:
        async with clock.timeout(5):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(body())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_advance_with_step_runs_every_round_of_a_periodic_loop() -> None:
    clock = FakeClock()
    beats: list[float] = []

    async def heartbeat() -> None:
        while True:
            beats.append(clock.monotonic())
            await clock.sleep(1.0)

    task = asyncio.create_task(heartbeat())
    await clock.advance(5, step=0.5)
    task.cancel()
    assert beats == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


async def test_system_clock_sleeps_and_times_out_for_real() -> None:
    clock: Clock = SystemClock()
    before = clock.monotonic()
    await clock.sleep(0.01)
    assert clock.monotonic() - before >= 0.009
    with pytest.raises(TimeoutError):
        async with clock.timeout(0.01):
            await asyncio.Event().wait()
    assert clock.now().tzinfo is UTC


def test_both_clocks_satisfy_the_protocol() -> None:
    clocks: list[Clock] = [SystemClock(), FakeClock()]
    assert all(callable(c.now) and callable(c.monotonic) for c in clocks)


async def test_a_timer_due_as_the_body_leaves_does_not_cancel_what_follows() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    log: list[str] = []

    async def body() -> None:
        async with clock.timeout(5):
            await event.wait()
        log.append("left the block")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        log.append("still running")

    task = asyncio.create_task(body())
    await asyncio.sleep(0)
    # The body's wake-up and the timer's callback land in the same loop turn, the wake-up first. advance()
    # lets woken tasks run before it fires timers, so this reaches into the clock to make the race certain.
    clock._elapsed = 5
    event.set()
    clock._fire_due()
    await task
    assert log == ["left the block", "still running"]


def test_to_timestamp_agrees_with_protobufs_own_conversion() -> None:
    for when in (
        datetime(2026, 11, 30, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 5, tzinfo=timezone(timedelta(hours=5))),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    ):
        expected = Timestamp()
        expected.FromDatetime(when.astimezone(UTC))
        assert to_timestamp(when) == expected
        assert from_timestamp(to_timestamp(when)) == when
