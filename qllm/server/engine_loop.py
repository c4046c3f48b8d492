"""The one thread that steps the served engine.

Handlers never touch the engine: they put commands (submit a request, abort one) on a
thread-safe queue, and the engine thread applies them between steps, so the engine runs exactly
as it does in-process: one quantum per `step()`, arrivals seen at checkpoints. When the engine is
idle the thread sleeps on the queue instead of spinning.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

from qllm.server.metrics import ServerMetrics
from qllm.server.streams import RequestStream, ServerEvents

log = logging.getLogger(__name__)
STOP = object()


@dataclass(frozen=True)
class Submit:
    stream: RequestStream


@dataclass(frozen=True)
class Abort:
    request_id: str
    status: str  # what the requests metric counts it as: aborted (client gone) or stopped (end-of-sequence token)


class EngineLoop:
    """Steps `engine` (a QLLMEngine) in a background thread; thread-safe `submit` and `abort`."""

    def __init__(self, engine, events: ServerEvents, metrics: ServerMetrics, gauge_interval_s: float = 0.01) -> None:
        self.engine = engine
        self.events = events
        self.metrics = metrics
        self.gauge_interval_s = gauge_interval_s  # refresh the metrics gauges at most this often while busy
        self.commands: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="qllm-engine", daemon=True)
        self.error: BaseException | None = None  # what stopped the thread, if it failed

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self.commands.put(STOP)
        self.thread.join(timeout_s)

    @property
    def is_healthy(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def submit(self, stream: RequestStream) -> None:
        self.commands.put(Submit(stream))

    def abort(self, request_id: str, status: str = "aborted") -> None:
        self.commands.put(Abort(request_id, status))

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as error:  # a bug in the engine: fail every open request, report unhealthy
            self.error = error
            log.exception("the engine thread failed")
            self.events.fail_all(f"the engine failed: {error!r}")

    def _serve(self) -> None:
        refreshed_s = -float("inf")
        while True:
            for command in self._take_commands(wait=self.engine.idle()):
                if command is STOP:
                    return
                self._apply(command)
            if not self.engine.idle():
                self.engine.step()
            now_s = time.perf_counter()
            if self.engine.idle() or now_s - refreshed_s >= self.gauge_interval_s:
                self.metrics.observe(self.engine.stats())
                refreshed_s = now_s

    def _take_commands(self, wait: bool) -> list:
        """Every command queued now; with `wait`, block until there is at least one."""
        commands = [self.commands.get()] if wait else []
        while True:
            try:
                commands.append(self.commands.get_nowait())
            except queue.Empty:
                return commands

    def _apply(self, command: Submit | Abort) -> None:
        if isinstance(command, Submit):
            self.events.register(command.stream)
            self.engine.submit(command.stream.request)
            return
        stream = self.events.unregister(command.request_id)
        if self.engine.abort(command.request_id) and stream is not None:
            self.metrics.requests.labels(stream.request.priority_class, command.status).inc()
