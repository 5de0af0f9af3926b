"""Conversions between protobuf Timestamp/Duration and Python time values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)


def to_timestamp(when: datetime) -> Timestamp:
    """Returns a Timestamp for an aware datetime."""
    # Integer arithmetic on the difference, not Timestamp.FromDatetime (a time tuple and timegm): the same
    # result in about a third of the time, and the dispatcher stamps every heartbeat ack.
    seconds, micros = divmod((when - _EPOCH) // _MICROSECOND, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def from_timestamp(ts: Timestamp) -> datetime | None:
    """Returns the aware datetime of a Timestamp, or None when it is unset (zero) or malformed.

    Malformed (nanos outside 0..999,999,999, seconds outside years 1 to 9999) is possible in a store written
    before the controller stamped reports itself; reading it must not break a listing.
    """
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        return None


def seconds(duration: Duration) -> float:
    """Returns a Duration as float seconds."""
    return duration.seconds + duration.nanos / 1e9


def duration(value: float) -> Duration:
    """Returns a Duration for float seconds."""
    d = Duration()
    d.FromNanoseconds(round(value * 1e9))
    return d
