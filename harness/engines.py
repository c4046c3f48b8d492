"""The engines a run measures: the protocol every engine implements. Each is built from config by
`qllm.resources.RunResources`, which passes its constructor what it names of the run (`executor`,
`model`, `clock`: a fresh one per engine run, of the kind the executor config names, `events`: the
run's `Recorder`, and `name`)."""

from __future__ import annotations

from typing import Protocol

from qllm.request import Request
from qllm.resources import RunResources  # noqa: F401  (how the harness builds each engine)


class Engine(Protocol):
    name: str  # how the engine appears in result tables

    def submit(self, request: Request) -> None:
        """The request has arrived; the engine queues it (or rejects it through its event sink)."""

    def step(self) -> None:
        """Run one non-preemptible quantum of work, then return so new arrivals can be seen."""

    def idle(self) -> bool:
        """True when nothing is queued, running or suspended."""
