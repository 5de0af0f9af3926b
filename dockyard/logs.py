"""Structured logging set-up shared by the controller, the agent and the supervisor."""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict

import structlog

from dockyard.clock import Clock


def configure(level: str = "info", fmt: str = "console", component: str = "") -> None:
    """Routes structlog and stdlib logging to stderr as key=value lines (console) or JSON lines (json)."""
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if component:
        processors.append(_bind_component(component))
    structlog.configure(
        processors=[*processors, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _bind_component(component: str) -> structlog.types.Processor:
    def add(_logger: object, _name: str, event: structlog.types.EventDict) -> structlog.types.EventDict:
        event.setdefault("component", component)
        return event

    return add


class Throttle:
    """Rate-limits log lines a peer can trigger: at most `burst` lines per key in each `interval` seconds.

    Lines beyond that are counted, not written; the next line let through for the key reports the count.
    At most `keys` keys are remembered (the least recently used goes first), so a peer that invents keys
    costs bounded memory. Time is the given clock's monotonic time.
    """

    def __init__(self, clock: Clock, interval: float = 10.0, burst: int = 5, keys: int = 1024) -> None:
        self._clock = clock
        self._interval = interval
        self._burst = burst
        self._keys = keys
        # key -> [start of the current window, lines let through in it, lines suppressed since the last one]
        self._windows: OrderedDict[str, list[float]] = OrderedDict()

    def allow(self, key: str) -> int | None:
        """Returns None to drop this line, else how many lines for `key` were dropped since the last one written."""
        now = self._clock.monotonic()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self._interval:
            suppressed = int(window[2]) if window is not None else 0
            self._windows[key] = [now, 1, 0]
        elif window[1] < self._burst:
            suppressed = int(window[2])
            window[1] += 1
            window[2] = 0
        else:
            window[2] += 1
            self._windows.move_to_end(key)
            return None
        self._windows.move_to_end(key)
        while len(self._windows) > self._keys:
            self._windows.popitem(last=False)
        return suppressed
