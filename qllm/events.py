"""What an engine reports while it runs, and the clock it reads: the seam between an engine and
whoever builds and measures it (DESIGN.md, "Layers"), such as a benchmark's recorder or a server."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the run started."""


@dataclass(frozen=True)
class Quantum:
    """One non-preemptible piece of work an engine executed."""

    t_start_s: float
    t_end_s: float
    kind: str  # "prefill", "decode", or "mixed" (prompts and decode tokens in one pass)
    request_ids: tuple[str, ...]  # the sequences in the batch
    num_tokens: int  # tokens fed to the model in this quantum (prompt or decode tokens)
    # Decoder layer the quantum ended after; None at a pass's end (its LM head), but a catch-up pass ends
    # after the layer of the batch it joins (qllm.engine): its last quantum records that layer.
    layer: int | None = None
    expert: int | None = None  # expert (group) the quantum ended after, inside `layer`
    is_resume: bool = False  # the quantum continued a batch that had been preempted
    # The engine's state when the quantum ended, where the engine reports it (QLLM: every quantum):
    num_queued: int | None = None  # requests waiting for memory or for a batch
    num_suspended: int | None = None  # sequences inside preempted batches
    kv_reserved_bytes: int | None = None  # KV the admitted sequences may grow to (what a budget bounds)
    kv_allocated_bytes: int | None = None  # KV blocks handed out to sequences
    kv_needed_bytes: int | None = None  # KV of the tokens those blocks hold (allocated minus the rounding)
    suspended_bytes: int | None = None  # tensors kept by preempted forward passes


@dataclass(frozen=True)
class EngineStats:
    """An engine's state between steps: the first six fields are what each Quantum records
    (TIMELINE_GAUGES: the run's timeline), and a server's gauges show every field."""

    num_queued: int  # requests waiting for memory or for a batch
    num_suspended: int  # sequences inside preempted batches
    kv_reserved_bytes: int  # KV the admitted sequences may grow to (what a budget bounds)
    kv_allocated_bytes: int  # KV blocks handed out to sequences
    kv_needed_bytes: int  # KV of the tokens those blocks hold (allocated minus the rounding)
    suspended_bytes: int  # tensors kept by preempted forward passes
    num_waiting_by_class: Mapping[str, int]  # queued requests per priority class (LS, BE)
    num_running_batches: int  # batches in a forward pass (0 or 1)
    num_suspended_batches: int  # batches preempted mid forward pass


TIMELINE_GAUGES = tuple(f.name for f in fields(EngineStats))[:6]


class EventSink(Protocol):
    """Called at the moment something happens; the sink stamps each event with its clock."""

    def scheduled(self, request_id: str) -> None:
        """The request's first work was put into a batch (later calls are ignored)."""

    def tokens(self, token_ids: dict[str, int]) -> None:
        """One new token for each request in the mapping, all produced now."""

    def finished(self, request_id: str) -> None:
        """The request generated its last token."""

    def rejected(self, request_id: str, reason: str) -> None:
        """The request can never be served; `reason` says why."""

    def preempted(self, request_ids: Iterable[str]) -> None:
        """These requests' work was set aside (mid-pass, or back to the queue between iterations)."""

    def resumed(self, request_ids: Iterable[str]) -> None:
        """Work set aside earlier runs again."""

    def quantum(self, quantum: Quantum) -> None:
        """A quantum of work ended."""
