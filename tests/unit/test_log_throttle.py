"""The log throttle: bursts per key and window, counts what it drops, bounded keys."""

from __future__ import annotations

from dockyard.clock import FakeClock
from dockyard.logs import Throttle


async def test_lets_a_burst_through_then_counts_the_rest_until_the_window_ends() -> None:
    clock = FakeClock()
    throttle = Throttle(clock, interval=10.0, burst=3)
    assert [throttle.allow("refused") for _ in range(3)] == [0, 0, 0]
    assert [throttle.allow("refused") for _ in range(4)] == [None] * 4
    await clock.advance(10.0)
    assert throttle.allow("refused") == 4  # the next line written reports what was dropped
    assert throttle.allow("refused") == 0


def test_keys_are_independent_and_bounded() -> None:
    clock = FakeClock()
    throttle = Throttle(clock, interval=10.0, burst=1, keys=2)
    assert throttle.allow("a") == 0
    assert throttle.allow("a") is None
    assert throttle.allow("b") == 0
    assert throttle.allow("c") == 0  # "a", least recently used, is forgotten
    assert throttle.allow("a") == 0
