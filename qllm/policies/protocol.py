"""What the engine asks a scheduling policy, and the decision it gets back."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from qllm.batch import Batch
from qllm.sequence import Sequence


@dataclass
class Decision:
    """The policy's answer when nothing is running: resume a suspended batch, or start a new one."""

    resume: Batch | None = None  # a suspended batch to continue where it stopped
    start: list[Sequence] = field(default_factory=list)  # sequences of a new batch, all of one phase
    preempted: list[Sequence] = field(default_factory=list)  # sequences put back to wait, KV kept
    readmitted: list[Sequence] = field(default_factory=list)  # earlier preempted sequences running again


class SchedulingPolicy(Protocol):
    def add(self, sequence: Sequence) -> None:
        """`sequence` is ready for its next pass: a new prompt, or one more decode token."""

    def schedule(self, suspended: list[Batch], now_s: float) -> Decision:
        """The next batch, when nothing runs; `suspended` holds preempted batches, oldest first."""

    def waiting(self, now_s: float) -> Iterable[Sequence]:
        """Every queued sequence, for the checkpoint policy's snapshot."""

    def has_waiting(self) -> bool:
        """Any sequence queued (not counting suspended batches)."""

    def finished(self, sequence: Sequence) -> None:
        """`sequence` has generated its last token and left the engine."""


def take_prefills(
    queue: deque[Sequence], max_sequences: int, max_tokens: int, oversized_head: bool = True
) -> list[Sequence]:
    """Pop sequences from the head of `queue` while the batch stays within both limits.

    With `oversized_head` the head is taken even alone over `max_tokens`, so that a long prompt
    cannot block its queue forever.
    """
    batch: list[Sequence] = []
    num_tokens = 0
    while queue and len(batch) < max_sequences:
        cost = queue[0].num_new_tokens
        if num_tokens + cost > max_tokens and (batch or not oversized_head):
            break
        batch.append(queue.popleft())
        num_tokens += cost
    return batch
