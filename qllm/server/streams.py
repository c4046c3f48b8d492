"""From the engine thread to each request's asyncio handler: the server's event sink.

`ServerEvents` is the `qllm.events.EventSink` the served engine reports to. It runs on the engine
thread, turns events into Prometheus metrics, and hands each request's tokens to its
`RequestStream`, whose queue lives on the server's event loop (`loop.call_soon_threadsafe`: one
wake-up per engine event, however many requests it concerns).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from qllm.events import Clock, Quantum
from qllm.request import Request
from qllm.server.errors import APIError
from qllm.server.metrics import ServerMetrics

END = object()  # the engine generated the request's last token


class RequestStream:
    """One request's tokens as they are generated, read by its handler on the event loop."""

    def __init__(self, request: Request, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.loop = loop
        self.items: asyncio.Queue = asyncio.Queue()  # token ids, then END or an APIError
        self.has_ended = False  # the engine is done with it: END or an error was read
        self.num_generated = 0  # tokens the engine produced (engine thread)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    async def token_ids(self) -> AsyncIterator[int]:
        """Each token as it arrives; ends after the last one; raises the APIError of a rejected or failed request."""
        while True:
            item = await self.items.get()
            if item is END:
                self.has_ended = True
                return
            if isinstance(item, APIError):
                self.has_ended = True
                raise item
            yield item


def _deliver(items: list[tuple[RequestStream, object]]) -> None:
    for stream, item in items:
        stream.items.put_nowait(item)


class ServerEvents:
    """The engine's event sink while it serves (engine thread only): requests it does not know,
    such as warm-up requests or aborted ones, are ignored."""

    def __init__(self, clock: Clock, metrics: ServerMetrics) -> None:
        self.clock = clock
        self.metrics = metrics
        self.streams: dict[str, RequestStream] = {}  # requests submitted and not ended

    def register(self, stream: RequestStream) -> None:
        self.streams[stream.request_id] = stream

    def unregister(self, request_id: str) -> RequestStream | None:
        return self.streams.pop(request_id, None)

    def fail_all(self, message: str) -> None:
        """The engine stopped: every open request ends with a server error."""
        self._post([(stream, APIError(message, status=500, kind="InternalServerError")) for stream in self.streams.values()])
        self.streams.clear()

    def tokens(self, token_ids: dict[str, int]) -> None:
        now_s, deliveries = self.clock.now(), []
        self.metrics.generation_tokens.inc(len(token_ids))  # aborted requests' too: what the engine really ran
        for request_id, token_id in token_ids.items():
            stream = self.streams.get(request_id)
            if stream is None:
                continue
            if stream.num_generated == 0:
                self.metrics.ttft.labels(stream.request.priority_class).observe(now_s - stream.request.arrival_s)
            stream.num_generated += 1
            deliveries.append((stream, int(token_id)))
        self._post(deliveries)

    def finished(self, request_id: str) -> None:
        stream = self.unregister(request_id)
        if stream is not None:
            priority_class = stream.request.priority_class
            self.metrics.e2e.labels(priority_class).observe(self.clock.now() - stream.request.arrival_s)
            self.metrics.requests.labels(priority_class, "finished").inc()
            self._post([(stream, END)])

    def rejected(self, request_id: str, reason: str) -> None:
        stream = self.unregister(request_id)
        if stream is not None:
            self.metrics.requests.labels(stream.request.priority_class, "rejected").inc()
            self._post([(stream, APIError(f"the engine cannot serve this request: {reason}"))])

    def preempted(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            stream = self.streams.get(request_id)
            if stream is not None:
                self.metrics.preemptions.labels(stream.request.priority_class).inc()

    def scheduled(self, request_id: str) -> None:
        pass

    def resumed(self, request_ids: Iterable[str]) -> None:
        pass

    def quantum(self, quantum: Quantum) -> None:
        pass  # the engine thread refreshes the gauges from the engine itself (ServerMetrics.observe)

    @staticmethod
    def _post(deliveries: list[tuple[RequestStream, object]]) -> None:
        """Hand items to their streams on the event loop, in one wake-up (every stream shares the server's loop)."""
        if deliveries:
            deliveries[0][0].loop.call_soon_threadsafe(_deliver, deliveries)
