"""Checkpoint policies: at each checkpoint of a running forward pass, continue or preempt.

The engine hands a policy a `CheckpointState`, a snapshot of everything a decision may need, and
the policy answers `should_preempt(state)`. Which queued work is worth preempting for is the
scheduling policy's ranking (`state.outranking`): the checkpoint policy decides when. A user's
policy is one class with that method and a YAML file in conf/checkpoint/; it never touches the
engine, the queues or a tensor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

from qllm.request import LS
from qllm.sequence import Sequence


@dataclass(frozen=True)
class WaitingRequest:
    """A queued sequence, as a checkpoint policy sees it."""

    request_id: str
    priority_class: str  # LS or BE
    is_urgent: bool  # served as LS: an LS request, or a BE one promoted by aging
    is_prefill: bool  # waits for its prompt pass (no token yet); else for its next decode token
    waited_s: float  # since the request arrived
    queued_s: float  # since it became ready for its next pass


@dataclass(frozen=True)
class CheckpointState:
    now_s: float  # the run's clock
    running_classes: tuple[str, ...]  # priority class of each sequence in the running batch
    running_is_urgent: bool  # the running batch holds LS (or promoted) work
    running_is_prefill: bool
    layer: int  # the decoder layer the pass has just completed (or is inside, with `expert`)
    expert: int | None  # inside `layer` (expert granularity): -1 after attention, else the last expert
    # of the group just run (the last group's checkpoint ends the layer); None at a layer boundary
    num_layers: int
    run_s: float  # compute time the running pass has used so far, suspensions excluded
    num_suspended: int  # batches set aside earlier, waiting to resume
    # The scheduler's queued sequences, read on demand (policies read `waiting`), and the scheduling
    # policy's ranking: those the running batch should give way to (policies read `outranking`).
    queued: Callable[[], Iterable[Sequence]] = field(repr=False)
    outranking_queued: Callable[[], Iterable[Sequence]] = field(repr=False)

    @property
    def is_outranked(self) -> bool:
        """Some queued work ranks above the running batch (reads only the first)."""
        return next(iter(self.outranking_queued()), None) is not None

    @cached_property
    def outranking(self) -> tuple[WaitingRequest, ...]:
        """The queued sequences that rank above the running batch."""
        return tuple(self._view(s) for s in self.outranking_queued())

    @cached_property
    def waiting(self) -> tuple[WaitingRequest, ...]:
        """Every queued sequence, in no particular order (built on first use)."""
        return tuple(self._view(s) for s in self.queued())

    @property
    def queue_lengths(self) -> Counter:
        """Waiting sequences per (priority class, phase), e.g. `state.queue_lengths["LS", "prefill"]`."""
        return Counter((w.priority_class, "prefill" if w.is_prefill else "decode") for w in self.waiting)

    @property
    def remaining_s(self) -> float:
        """The running pass's remaining compute time, extrapolated from the layers done so far
        (a layer in progress counts as not done: the estimate errs towards preempting)."""
        layers_done = self.layer if self.expert is not None else self.layer + 1
        if layers_done == 0:
            return self.run_s * self.num_layers
        return self.run_s * (self.num_layers - layers_done) / layers_done

    def _view(self, sequence: Sequence) -> WaitingRequest:
        return WaitingRequest(
            request_id=sequence.request_id,
            priority_class=sequence.request.priority_class,
            is_urgent=sequence.is_urgent,
            is_prefill=sequence.is_prefill,
            waited_s=self.now_s - sequence.request.arrival_s,
            queued_s=self.now_s - sequence.ready_s,
        )


# What a checkpoint policy preempts for (its `preempts_for`), which tells the engine where a pass could
# stop, so a simulated pass runs past the checkpoints where nothing would happen.
OUTRANKING_WORK = "outranking_work"  # only queued work that outranks the running batch (`state.outranking`)
NOTHING = "nothing"  # never preempts
ANYTHING = "anything"  # any checkpoint with work queued may stop the pass (a policy that declares nothing)


def preempts_for(policy: CheckpointPolicy) -> str:
    return getattr(policy, "preempts_for", ANYTHING)


class CheckpointPolicy(Protocol):
    preempts_for: str  # OUTRANKING_WORK, NOTHING or ANYTHING (the default when not declared)

    def should_preempt(self, state: CheckpointState) -> bool:
        """True sets the running batch aside now; it resumes later where it stopped."""


class StrictPriority:
    """Preempt as soon as queued work outranks the running batch (the paper: "when an LS request
    arrives, the running BE batch is preempted and the LS prefill runs")."""

    preempts_for = OUTRANKING_WORK

    def should_preempt(self, state: CheckpointState) -> bool:
        return state.is_outranked


class SLOSlack:
    """Preempt only when an outranking LS prompt would otherwise miss its TTFT SLO: when its slack
    (SLO minus time waited) no longer covers the running pass's remaining time plus `margin_s`.
    Fewer preemptions than strict priority, at the cost of LS TTFT closer to the SLO."""

    preempts_for = OUTRANKING_WORK

    def __init__(self, ttft_slo_s: float, margin_s: float = 0.0) -> None:
        self.ttft_slo_s = ttft_slo_s
        self.margin_s = margin_s  # covers the LS prefill itself and estimation error

    def should_preempt(self, state: CheckpointState) -> bool:
        budget_s = state.remaining_s + self.margin_s
        return any(
            w.priority_class == LS and w.is_prefill and self.ttft_slo_s - w.waited_s <= budget_s
            for w in state.outranking
        )


class NeverPreempt:
    """Run every pass to its end (the iteration-level baselines)."""

    preempts_for = NOTHING

    def should_preempt(self, state: CheckpointState) -> bool:
        return False
