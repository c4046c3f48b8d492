"""The clock a run is timed by: seconds since the run started."""

from __future__ import annotations

import time


class RealClock:
    """Wall-clock time from `time.perf_counter`, zero at construction."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def now(self) -> float:
        return time.perf_counter() - self._start

    def sleep_until(self, t_s: float) -> None:
        delay = t_s - self.now()
        if delay > 0:
            time.sleep(delay)
