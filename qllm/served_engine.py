"""What a server needs of an engine, and nothing more: the seam between `qllm-serve` and the engine.

The server submits requests, steps the engine on its one engine thread, aborts the request of a
client that went away, asks up front why a request could never be served, and shows the engine's
stats as gauges. `qllm.engine.QLLMEngine` is one; the server checks the protocol when it builds the
engine, so an engine that lacks a part of it is refused in one line.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from qllm.events import EngineStats
from qllm.request import Request


@runtime_checkable
class ServedEngine(Protocol):
    model_config: Any  # the model's Hugging Face config: context length, vocabulary, EOS token

    def submit(self, request: Request) -> None:
        """Queue `request`, or report it rejected to the event sink."""

    def step(self) -> None:
        """Run one quantum of work."""

    def idle(self) -> bool:
        """Nothing left to run."""

    def abort(self, request_id: str) -> bool:
        """Drop an unfinished request and free what it holds; False when none has that id."""

    def rejection_reason(self, request: Request) -> str | None:
        """Why `request` can never be served; None when it can."""

    def stats(self) -> EngineStats:
        """Queues and memory now."""
