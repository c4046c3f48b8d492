"""`fcfs_rtc`, the paper's baseline: FCFS batches, each run to completion before new prompts start."""

from __future__ import annotations

from collections import deque

from qllm.batch import Batch
from qllm.policies.protocol import Decision, take_prefills
from qllm.sequence import Sequence


class FCFSRunToCompletionPolicy:
    """Up to B waiting prompts form a cohort; it decodes until every member has finished, and only
    then do the next prompts start. Nothing is ever preempted."""

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.prefill: deque[Sequence] = deque()
        self.cohort: list[Sequence] = []  # the running batch's unfinished sequences, ready to decode

    def add(self, sequence: Sequence) -> None:
        (self.prefill if sequence.is_prefill else self.cohort).append(sequence)

    def has_waiting(self) -> bool:
        return bool(self.prefill or self.cohort)

    def waiting(self, now_s: float) -> list[Sequence]:
        return [*self.prefill, *self.cohort]

    def finished(self, sequence: Sequence) -> None:
        pass

    def schedule(self, suspended: list[Batch], now_s: float) -> Decision:
        if self.cohort:
            batch, self.cohort = self.cohort, []
            return Decision(start=batch)
        return Decision(start=take_prefills(self.prefill, self.max_batch_size, self.max_batch_tokens))
