"""What the scheduler asks a scheduling policy, and the decision it gets back.

The scheduler owns every sequence; a policy keeps the queued ones in its own order (through
`qllm.queues`) and, when nothing runs, picks the next batch from them. Suspended batches are the
scheduler's: it resumes one whenever no queued sequence outranks it (`outranking`) or the policy
has nothing to start, so no policy can strand one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from qllm.batch import Batch
from qllm.errors import ConfigurationError
from qllm.policies.base import SchedulerView
from qllm.sequence import Sequence


@dataclass
class Decision:
    """The next batch to start, and sequences the policy moved between iterations."""

    start: list[Sequence] = field(default_factory=list)  # sequences of a new batch, all of one phase
    preempted: list[Sequence] = field(default_factory=list)  # put back to wait between iterations, KV kept
    readmitted: list[Sequence] = field(default_factory=list)  # earlier preempted sequences running again


class SchedulingPolicy(Protocol):
    """`qllm.policies.base.QueuePolicy` derives all but `add` and `schedule` from the queues a policy
    declares; the engine checks a policy has every part when it is built (`check_policy`)."""

    # Ranks some queued work above running work, so a checkpoint policy may preempt a pass for it
    # (and what it was preempted for runs next). False: an iteration-level policy.
    serves_preemption: bool

    def bind(self, scheduler: SchedulerView) -> None:
        """The read-only view of the scheduler that runs the policy (what has started, say)."""

    def add(self, sequence: Sequence) -> None:
        """`sequence` is ready for its next pass: a new prompt, or one more decode token."""

    def queued(self) -> Iterable[Sequence]:
        """Every queued sequence."""

    def has_queued(self) -> bool:
        """Any sequence queued."""

    def outranking(self, batch: Batch) -> Iterable[Sequence]:
        """The queued sequences that should run before `batch` (running or suspended) goes on, as
        an iterable the scheduler may stop reading at the first (asked at every checkpoint: keep
        it cheap, e.g. one of the policy's own queues)."""

    def promote(self, sequences: list[Sequence]) -> None:
        """These queued sequences, oldest first, are served as LS from now on (BE aging has just
        set `is_promoted`): a policy that queues by class moves them."""

    def schedule(self) -> Decision:
        """The next batch, when nothing runs."""

    def finished(self, sequence: Sequence) -> None:
        """`sequence` has generated its last token and left the engine."""

    def remove(self, sequence: Sequence) -> None:
        """Forget `sequence`, queued or inside a batch, as if it had never been added: it was
        aborted, or its batch was dissolved (the scheduler then `add`s it again)."""


POLICY_PARTS = ("serves_preemption", "bind", "add", "queued", "has_queued", "outranking", "promote", "schedule",
                "finished", "remove")  # fmt: skip


def check_policy(name: str, policy) -> None:
    """Refuse, when the engine is built, a scheduling policy that lacks a part of the protocol."""
    missing = [part for part in POLICY_PARTS if not hasattr(policy, part)]
    if missing:
        raise ConfigurationError(
            f"engine {name}: scheduling policy {type(policy).__name__} lacks {', '.join(missing)}; subclass "
            f"qllm.policies.base.QueuePolicy, which derives them from the queues the policy declares"
        )


def is_outranked(policy: SchedulingPolicy, batch: Batch) -> bool:
    """Some queued sequence should run before `batch` goes on (reads the policy's first one only)."""
    return next(iter(policy.outranking(batch)), None) is not None
