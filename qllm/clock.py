"""The wall clock an engine is timed by when it serves live traffic: seconds since it started."""

from __future__ import annotations

import time

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
