"""The wall clock an engine is timed by when it serves live traffic: seconds since it started."""

from __future__ import annotations

import time


class WallClock:
    """Seconds from `time.perf_counter`, zero at construction (a `qllm.events.Clock`)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._start
