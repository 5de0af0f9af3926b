"""When Docker was away, as this agent saw it: tells a container that Docker's stop or restart ended from one
that ended by itself.

Docker closes its API (and with it the event stream) before it stops the containers when it shuts down, and
a dockerd that was killed ends the containers it finds when it comes back. Either way the container's
finish time falls inside the time the agent could not reach Docker, from the first failed call to the
first answer after it. A small margin before the first failure covers a finish the agent learnt of a moment
late; the cost of a misjudged crash is one retry that does not count toward the restart policy.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

# Seconds before the first failed call that still count as "while Docker was going away".
MARGIN = 2.0
# Outages remembered: a container's finish is judged when the agent next looks, soon after Docker is back.
KEEP = 16


class Outages:
    """The recent windows in which Docker did not answer (times from the agent's wall clock)."""

    def __init__(self, margin: float = MARGIN, keep: int = KEEP) -> None:
        """Remembers the last `keep` outages; a finish up to `margin` seconds before one counts as inside it."""
        self._margin = timedelta(seconds=margin)
        self._closed: deque[tuple[datetime, datetime]] = deque(maxlen=keep)
        self._open: datetime | None = None

    @property
    def down(self) -> bool:
        """Tells whether Docker is away now, as far as the agent knows."""
        return self._open is not None

    def went_down(self, when: datetime) -> None:
        """Records a call that found Docker away; the first of a streak opens an outage."""
        if self._open is None:
            self._open = when

    def came_back(self, when: datetime) -> None:
        """Records an answer from Docker, which closes the open outage if there is one."""
        if self._open is not None:
            self._closed.append((self._open, when))
            self._open = None

    def covers(self, finished_at: datetime | None) -> bool:
        """Tells whether a container that finished at `finished_at` ended while Docker was away."""
        if finished_at is None:
            return False
        if self._open is not None and finished_at >= self._open - self._margin:
            return True
        return any(start - self._margin <= finished_at <= end for start, end in self._closed)
