"""What engines report while they run; the harness turns it into tables (harness.results.metrics).

The `Recorder` is the harness's `qllm.events.EventSink`: engines call its methods at the moment
something happens, and it stamps each event with the run's clock. It never computes a metric.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from qllm.events import Quantum


@dataclass
class RequestEvents:
    """Every event of one request, in seconds on the run's clock."""

    first_scheduled_s: float | None = None
    token_s: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_s: float | None = None
    preempted_s: list[float] = field(default_factory=list)
    resumed_s: list[float] = field(default_factory=list)
    rejected_reason: str | None = None
    failed_reason: str | None = None  # a remote engine's request that broke: HTTP error, timeout, disconnect


class Recorder:
    def __init__(self, clock) -> None:
        self.clock = clock
        self.requests: dict[str, RequestEvents] = defaultdict(RequestEvents)
        self.quanta: list[Quantum] = []
        self.num_done = 0  # requests finished, rejected or failed

    def now(self) -> float:
        return self.clock.now()

    def scheduled(self, request_id: str) -> None:
        """The request's first work was put into a batch; later calls are ignored."""
        events = self.requests[request_id]
        if events.first_scheduled_s is None:
            events.first_scheduled_s = self.now()

    def tokens(self, token_ids: dict[str, int]) -> None:
        """One new token for each request in the mapping, all produced now."""
        t = self.now()
        for request_id, token_id in token_ids.items():
            events = self.requests[request_id]
            events.token_s.append(t)
            events.token_ids.append(int(token_id))

    def finished(self, request_id: str) -> None:
        self.requests[request_id].finish_s = self.now()
        self.num_done += 1

    def rejected(self, request_id: str, reason: str) -> None:
        events = self.requests[request_id]
        events.rejected_reason = reason
        events.finish_s = self.now()
        self.num_done += 1

    def failed(self, request_id: str, reason: str) -> None:
        """The request broke on its way (an HTTP engine's error, timeout or disconnect); not an engine event."""
        events = self.requests[request_id]
        events.failed_reason = reason
        events.finish_s = self.now()
        self.num_done += 1

    def preempted(self, request_ids) -> None:
        t = self.now()
        for request_id in request_ids:
            self.requests[request_id].preempted_s.append(t)

    def resumed(self, request_ids) -> None:
        t = self.now()
        for request_id in request_ids:
            self.requests[request_id].resumed_s.append(t)

    def quantum(self, quantum: Quantum) -> None:
        self.quanta.append(quantum)
