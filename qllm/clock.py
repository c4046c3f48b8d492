"""The clocks an engine is timed by: seconds since it started.

`WallClock` times a served engine. A run's clock is named by the executor config
(conf/executor/*.yaml, `clock`): the real executor runs in wall time (`RealClock`, which a replay
restarts and can also sleep on); the simulator advances a `VirtualClock`, which the replay, the recorder and the
engine read as well, so a simulated run never sleeps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch


class WallClock:
    """Seconds from `time.perf_counter`, zero at construction (a `qllm.events.Clock`). On a CUDA
    `device` each reading first waits for the GPU (`torch.cuda.synchronize`), so a time read after
    a quantum includes the kernels it queued, not just their launch."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.synchronizes = torch.device(device).type == "cuda"
        self.device = device
        self._start = self._read()

    def _read(self) -> float:
        if self.synchronizes:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def now(self) -> float:
        return self._read() - self._start


class RealClock(WallClock):
    """Wall-clock time, zero at construction and again when a replay starts, that a replay can also sleep on."""

    def sleep_until(self, t_s: float) -> None:
        delay = t_s - self.now()
        if delay > 0:
            time.sleep(delay)

    def start_replay(self, arrival_s: Iterable[float]) -> None:
        """Time zero is now: a trace's arrival times count from the replay's loop, not from the
        engine's construction or the progress bar's (4-8 ms and, a process's first bar, 0.5 ms), in
        which requests would arrive unseen and then join the first batch together, as they never do
        on a simulated run."""
        self._start = self._read()


class VirtualClock:
    """Simulated time, zero at construction: it moves only when the simulated executor runs a stage
    or the replay waits for the next arrival, and it knows when requests arrive, so a simulated
    pass can run on to the next one."""

    def __init__(self) -> None:
        self._now = 0.0
        self._arrivals = np.zeros(0)  # sorted
        # After idling so long, how long past an arrival the engine looks at its queue (the simulated
        # executor's cost model sets it: qllm.sim.executor.SimExecutor.woken).
        self.wake_up_s: Callable[[float], float] = lambda idle_s: 0.0

    def now(self) -> float:
        return self._now

    def advance_to(self, t_s: float) -> None:
        if t_s < self._now:
            raise ValueError(f"a clock does not go back: now {self._now} s, asked for {t_s} s")
        self._now = t_s

    def sleep_until(self, t_s: float) -> None:
        """Idle until `t_s`, then as long as the engine takes to wake up (`wake_up_s`): requests arriving
        meanwhile are submitted with the one it woke for, as a real replay's are."""
        if t_s > self._now:
            self._now = t_s + self.wake_up_s(t_s - self._now)

    def start_replay(self, arrival_s: Iterable[float]) -> None:
        """The replay's arrival times, so that `next_arrival_s` can say when the next one is due.
        Time is zero already: a virtual clock moves only once the replay runs."""
        self._arrivals = np.sort(np.fromiter(arrival_s, dtype=float))

    def next_arrival_s(self) -> float:
        """The first arrival after now (inf: none), which the replay has not submitted yet."""
        index = int(np.searchsorted(self._arrivals, self._now, side="right"))
        return float(self._arrivals[index]) if index < len(self._arrivals) else math.inf
