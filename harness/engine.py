"""The protocol every engine implements, real or simulated (see DESIGN.md, "Engines")."""

from __future__ import annotations

from typing import Protocol

from harness.request import Request


class Engine(Protocol):
    name: str  # how the engine appears in result tables

    def submit(self, request: Request) -> None:
        """The request has arrived; the engine queues it (or rejects it through the recorder)."""

    def step(self) -> None:
        """Run one non-preemptible quantum of work, then return so new arrivals can be seen."""

    def idle(self) -> bool:
        """True when nothing is queued, running or suspended."""
