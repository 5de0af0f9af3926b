"""When Docker was away (agent.outages.Outages): which container ends count as the host's fault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.outages import MARGIN, Outages

T0 = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_nothing_is_covered_without_an_outage() -> None:
    outages = Outages()
    assert not outages.down
    assert not outages.covers(at(0))
    assert not outages.covers(None)


def test_an_open_outage_covers_from_just_before_it_began() -> None:
    outages = Outages()
    outages.went_down(at(10))
    outages.went_down(at(12))  # later failures of the same outage do not move its start
    assert outages.down
    assert outages.covers(at(10 - MARGIN))
    assert outages.covers(at(100))
    assert not outages.covers(at(10 - MARGIN - 0.001))


def test_a_closed_outage_covers_its_window_only() -> None:
    outages = Outages()
    outages.went_down(at(10))
    outages.came_back(at(20))
    assert not outages.down
    assert outages.covers(at(9))
    assert outages.covers(at(20))
    assert not outages.covers(at(20.001)), "a crash after Docker came back is the task's own"
    assert not outages.covers(at(5))


def test_an_answer_without_an_outage_records_nothing_and_old_outages_are_forgotten() -> None:
    outages = Outages(keep=2)
    outages.came_back(at(1))
    assert not outages.covers(at(1))
    for start in (10, 20, 30):
        outages.went_down(at(start))
        outages.came_back(at(start + 1))
    assert not outages.covers(at(10.5))
    assert outages.covers(at(20.5))
    assert outages.covers(at(30.5))
