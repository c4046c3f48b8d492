"""The clock a run is timed by: seconds since the run started."""

from __future__ import annotations

import time

from qllm.clock import WallClock


class RealClock(WallClock):
    """Wall-clock time, zero at construction, that a replay can also sleep on."""

    def sleep_until(self, t_s: float) -> None:
        delay = t_s - self.now()
        if delay > 0:
            time.sleep(delay)
