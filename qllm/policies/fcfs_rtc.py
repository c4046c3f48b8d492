"""`fcfs_rtc`, the paper's baseline: FCFS batches, each run to completion before new prompts start."""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from qllm.batch import Batch
from qllm.policies.protocol import Decision
from qllm.queues import FCFSQueue, take_batch
from qllm.sequence import Sequence


class FCFSRunToCompletionPolicy:
    """Up to B waiting prompts form a cohort; it decodes until every member has finished, and only
    then do the next prompts start. Nothing is ever preempted."""

    serves_preemption = False

    def __init__(self, max_batch_size: int = 16, max_batch_tokens: int = 2048):
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.prefill = FCFSQueue()
        self.cohort = FCFSQueue()  # the running cohort's unfinished sequences, ready to decode

    def add(self, sequence: Sequence) -> None:
        (self.prefill if sequence.is_prefill else self.cohort).add(sequence)

    def queued(self):
        return chain(self.prefill, self.cohort)

    def has_queued(self) -> bool:
        return bool(len(self.prefill) or len(self.cohort))

    def outranking(self, batch: Batch) -> Iterable[Sequence]:
        return ()

    def promote(self, sequences: list[Sequence]) -> None:
        pass  # the order here does not depend on the class

    def finished(self, sequence: Sequence) -> None:
        pass

    def remove(self, sequence: Sequence) -> None:
        for queue in (self.prefill, self.cohort):
            if sequence in queue:
                queue.remove(sequence)

    def schedule(self) -> Decision:
        if len(self.cohort):
            return Decision(start=take_batch(self.cohort, len(self.cohort)))
        return Decision(start=take_batch(self.prefill, self.max_batch_size, self.max_batch_tokens))
