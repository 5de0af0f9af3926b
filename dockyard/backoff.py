"""Jittered exponential backoff, pure so tests can drive it with a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Yields delays that double from base up to cap, each drawn uniformly from [delay/2, delay] ("equal jitter")."""

    base: float = 0.2
    cap: float = 10.0
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """Returns the delay before the next attempt and counts the attempt."""
        ceiling = min(self.cap, self.base * 2.0 ** min(self.attempt, 64))
        self.attempt += 1
        return ceiling / 2 + self.rng.random() * ceiling / 2

    def reset(self) -> None:
        """Starts over after a success."""
        self.attempt = 0
