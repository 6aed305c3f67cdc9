"""How many times to try a GET again and how long to wait in between.

Full jitter (a uniform wait between 0 and an exponentially growing cap) spreads the
retries of many workers that failed together, which is what throttling needs most;
throttled attempts start from a longer base.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5  # GETs per object, the first one included
    resumes: int = 3  # Range resumes of a streamed body in a row without progress
    base: float = 0.05  # seconds
    throttled_base: float = 0.25
    cap: float = 2.0

    def delay(self, failures: int, *, throttled: bool = False, rng: random.Random | None = None) -> float:
        """The wait before the next try, after ``failures`` failed tries (>= 1)."""
        base = self.throttled_base if throttled else self.base
        ceiling = min(self.cap, base * (2 ** (failures - 1)))
        return (rng or random).uniform(0, ceiling)
